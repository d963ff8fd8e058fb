"""Per-task metrics over known labels: hand-checkable cases, and scikit-learn on the known entries."""

import json
import warnings

import numpy as np
import pytest

from mtl_ray.model.metrics import best_epoch, evaluate, mean_auroc, patience_spent, task_metrics

NAN = np.nan


def test_perfect_ranking():
    m = task_metrics(np.array([0.1, 0.4, 0.6, 0.9]), np.array([0.0, 0.0, 1.0, 1.0]))
    assert m == {"auroc": 1.0, "accuracy": 1.0, "f1": 1.0, "n_labeled": 4}


def test_reversed_ranking():
    m = task_metrics(np.array([0.9, 0.6, 0.4, 0.1]), np.array([0.0, 0.0, 1.0, 1.0]))
    assert m["auroc"] == 0.0
    assert m["accuracy"] == 0.0
    assert m["f1"] == 0.0


def test_hand_checkable_case():
    # Positives score 0.8 and 0.4, negatives 0.6 and 0.2: of the 4 (pos, neg) pairs, 3 are ordered
    # right -> AUROC 0.75. At 0.5: predictions 1, 0, 1, 0 vs labels 1, 1, 0, 0 -> TP 1, FN 1, FP 1,
    # TN 1 -> accuracy 0.5, F1 = 2·1 / (2·1 + 1 + 1) = 0.5.
    m = task_metrics(np.array([0.8, 0.4, 0.6, 0.2]), np.array([1.0, 1.0, 0.0, 0.0]))
    assert m == {"auroc": 0.75, "accuracy": 0.5, "f1": 0.5, "n_labeled": 4}


def test_threshold_is_inclusive_at_one_half():
    m = task_metrics(np.array([0.5, 0.49]), np.array([1.0, 0.0]))
    assert m["accuracy"] == 1.0


def test_ties_count_half():
    m = task_metrics(np.array([0.5, 0.5]), np.array([1.0, 0.0]))
    assert m["auroc"] == 0.5


def test_nan_targets_are_left_out():
    probs = np.array([0.1, 0.9, 0.2, 0.8, 0.95])
    targets = np.array([0.0, NAN, 1.0, 1.0, NAN])
    # Known: (0.1, 0), (0.2, 1), (0.8, 1) -> both positives outrank the negative.
    m = task_metrics(probs, targets)
    assert m["n_labeled"] == 3
    assert m["auroc"] == 1.0
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("label", [0.0, 1.0])
def test_one_class_gives_no_auroc_and_no_warning(label):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = task_metrics(np.array([0.2, 0.7, 0.9, 0.1]), np.array([label, label, NAN, label]))
    assert m["auroc"] is None
    assert m["n_labeled"] == 3
    assert m["accuracy"] == pytest.approx(1 / 3 if label == 1.0 else 2 / 3)


def test_all_negative_labels_and_predictions_give_f1_zero_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = task_metrics(np.array([0.1, 0.2]), np.array([0.0, 0.0]))
    assert m == {"auroc": None, "accuracy": 1.0, "f1": 0.0, "n_labeled": 2}


def test_no_known_labels():
    m = task_metrics(np.array([0.1, 0.9]), np.array([NAN, NAN]))
    assert m == {"auroc": None, "accuracy": None, "f1": None, "n_labeled": 0}


def test_evaluate_per_task_and_json():
    probs = np.array([[0.1, 0.9, 0.3], [0.9, 0.8, 0.4], [0.2, 0.3, 0.5], [0.7, 0.6, 0.6]], dtype=np.float32)
    targets = np.array([[0, 1, NAN], [1, 1, NAN], [0, 0, NAN], [1, NAN, NAN]], dtype=np.float32)
    result = evaluate(probs, targets, ["pedestrian", "car", "stop_sign"])
    assert list(result) == ["pedestrian", "car", "stop_sign"]
    assert result["pedestrian"] == {"auroc": 1.0, "accuracy": 1.0, "f1": 1.0, "n_labeled": 4}
    assert result["car"]["n_labeled"] == 3
    assert result["car"]["auroc"] == 1.0
    assert result["stop_sign"]["n_labeled"] == 0
    for task in result.values():
        for value in task.values():
            assert value is None or type(value) in (float, int)
    assert json.loads(json.dumps(result)) == result


def test_evaluate_checks_shapes():
    with pytest.raises(ValueError):
        evaluate(np.zeros((3, 2)), np.zeros((3, 2)), ["a", "b", "c"])
    with pytest.raises(ValueError):
        evaluate(np.zeros((3, 2)), np.zeros((4, 2)), ["a", "b"])


def test_mean_auroc_skips_none():
    per_task = {
        "a": {"auroc": 1.0},
        "b": {"auroc": None},
        "c": {"auroc": 0.5},
    }
    assert mean_auroc(per_task) == 0.75
    assert type(mean_auroc(per_task)) is float


def test_mean_auroc_none_when_no_task_has_one():
    assert mean_auroc({"a": {"auroc": None}}) is None
    assert mean_auroc({}) is None


def test_every_metric_equals_scikit_learn_on_the_known_entries():
    """Random scores with ties and unknown labels: each task's numbers are scikit-learn's on its known rows."""
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    rng = np.random.default_rng(7)
    probs = np.round(rng.random((300, 5)), 2)  # rounding makes ties
    targets = (rng.random((300, 5)) < np.array([0.1, 0.3, 0.5, 0.7, 0.9])).astype(np.float64)
    targets[rng.random((300, 5)) < 0.4] = NAN
    result = evaluate(probs, targets, list("abcde"))
    for j, task in enumerate("abcde"):
        known = ~np.isnan(targets[:, j])
        y, p = targets[known, j].astype(int), probs[known, j]
        assert result[task]["n_labeled"] == int(known.sum())
        assert result[task]["auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert result[task]["accuracy"] == pytest.approx(accuracy_score(y, p >= 0.5), abs=1e-12)
        assert result[task]["f1"] == pytest.approx(f1_score(y, p >= 0.5), abs=1e-12)


def test_best_epoch_is_the_earliest_highest_and_patience_counts_epochs_since_it():
    history = [{"epoch": e, "mean_auroc": a} for e, a in enumerate([0.6, None, 0.8, 0.7, 0.8, 0.75], start=1)]
    assert best_epoch(history)["epoch"] == 3
    assert best_epoch([{"epoch": 1, "mean_auroc": None}]) is None
    assert not patience_spent(history[:4], 2) and patience_spent(history[:5], 2)
    assert patience_spent(history, 3) and not patience_spent(history, 4)
    assert not patience_spent(history, None)
