"""masked_bce and per_task_losses against BCE written out by hand with math.log, and against torch's own BCE."""

import math

import pytest
import torch

from mtl_ray.errors import UserError
from mtl_ray.model.losses import masked_bce, per_task_losses, task_terms

NAN = float("nan")
LOGITS = [
    [0.5, -1.0, 2.0, 0.0],
    [1.5, 0.3, -0.7, 1.0],
    [-2.0, 0.8, 0.1, -0.4],
]
# Column 2 is unknown throughout; (1, 1) is unknown too: 8 known entries.
TARGETS = [
    [1.0, 0.0, NAN, 1.0],
    [0.0, NAN, NAN, 1.0],
    [1.0, 1.0, NAN, 0.0],
]
WEIGHTS = [1.0, 2.0, 0.5, 3.0]


def bce(x: float, y: float) -> float:
    """-[y·log σ(x) + (1−y)·log(1−σ(x))], written without torch."""
    p = 1.0 / (1.0 + math.exp(-x))
    return -(y * math.log(p) + (1.0 - y) * math.log(1.0 - p))


def known_terms() -> dict[tuple[int, int], float]:
    return {
        (i, j): bce(LOGITS[i][j], TARGETS[i][j]) for i in range(3) for j in range(4) if not math.isnan(TARGETS[i][j])
    }


def expected(reduction: str, weights: list[float]) -> float:
    terms = known_terms()
    total = sum(weights[j] * b for (_, j), b in terms.items())
    if reduction == "seed":
        return total / 3
    if reduction == "labeled":
        return total / len(terms)
    out = 0.0
    for j in range(4):
        column = [b for (_, k), b in terms.items() if k == j]
        if column:
            out += weights[j] * sum(column) / (len(column) if reduction == "per_task" else math.sqrt(3 * len(column)))
    return out


def tensors() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(LOGITS, requires_grad=True), torch.tensor(TARGETS)


@pytest.mark.parametrize("reduction", ["seed", "labeled", "per_task", "sqrt"])
def test_matches_torch_bce_on_the_known_entries(reduction):
    """Every reduction, rebuilt from torch's own BCE over the known entries only."""
    logits, targets = tensors()
    known = ~torch.isnan(targets)
    terms = torch.nn.functional.binary_cross_entropy_with_logits(logits[known], targets[known], reduction="none")
    weights = torch.tensor(WEIGHTS)[known.nonzero()[:, 1]]
    if reduction == "seed":
        want = (weights * terms).sum() / logits.shape[0]
    elif reduction == "labeled":
        want = (weights * terms).sum() / known.sum()
    else:
        columns = known.nonzero()[:, 1]
        per_task = [(WEIGHTS[j], terms[columns == j]) for j in columns.unique().tolist()]
        if reduction == "per_task":
            want = sum(w * t.mean() for w, t in per_task)
        else:  # sqrt: each task's sum over the root of (batch size × its known labels)
            want = sum(w * t.sum() / math.sqrt(logits.shape[0] * len(t)) for w, t in per_task)
    got = masked_bce(logits, targets, task_weights=WEIGHTS, reduction=reduction)
    assert got.item() == pytest.approx(float(want), rel=1e-6)


@pytest.mark.parametrize("reduction", ["seed", "labeled", "per_task", "sqrt"])
@pytest.mark.parametrize("weights", [None, WEIGHTS])
def test_matches_hand_computation(reduction, weights):
    logits, targets = tensors()
    loss = masked_bce(logits, targets, task_weights=weights, reduction=reduction)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected(reduction, weights or [1.0] * 4), rel=1e-6)


def test_default_reduction_is_seed():
    logits, targets = tensors()
    assert masked_bce(logits, targets).item() == pytest.approx(expected("seed", [1.0] * 4), rel=1e-6)


def test_weights_as_tensor():
    logits, targets = tensors()
    loss = masked_bce(logits, targets, task_weights=torch.tensor(WEIGHTS), reduction="labeled")
    assert loss.item() == pytest.approx(expected("labeled", WEIGHTS), rel=1e-6)


def test_seed_gradient_is_weighted_residual_over_m_and_zero_where_unknown():
    logits, targets = tensors()
    masked_bce(logits, targets, task_weights=WEIGHTS).backward()
    for i in range(3):
        for j in range(4):
            y = TARGETS[i][j]
            want = 0.0 if math.isnan(y) else WEIGHTS[j] * (1 / (1 + math.exp(-LOGITS[i][j])) - y) / 3
            assert logits.grad[i, j].item() == pytest.approx(want, abs=1e-7)
    assert torch.all(logits.grad[:, 2] == 0)
    assert logits.grad[1, 1] == 0


@pytest.mark.parametrize("reduction", ["seed", "labeled", "per_task", "sqrt"])
def test_all_unknown_column_gives_finite_zero_gradient(reduction):
    logits, targets = tensors()
    loss = masked_bce(logits, targets, task_weights=WEIGHTS, reduction=reduction)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()
    assert torch.all(logits.grad[:, 2] == 0)


@pytest.mark.parametrize("reduction", ["seed", "labeled", "per_task", "sqrt"])
def test_all_unknown_batch_is_zero_loss_and_zero_gradient(reduction):
    logits = torch.tensor(LOGITS, requires_grad=True)
    loss = masked_bce(logits, torch.full((3, 4), NAN), task_weights=WEIGHTS, reduction=reduction)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.all(logits.grad == 0)


def test_bf16_logits_give_float32_loss_and_finite_gradient():
    logits = torch.tensor(LOGITS, dtype=torch.bfloat16, requires_grad=True)
    loss = masked_bce(logits, torch.tensor(TARGETS))
    loss.backward()
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected("seed", [1.0] * 4), rel=1e-2)
    assert torch.isfinite(logits.grad.float()).all()


def test_per_task_losses():
    logits, targets = tensors()
    losses = per_task_losses(logits, targets)
    terms = known_terms()
    want = [
        sum(terms[i, 0] for i in range(3)) / 3,
        (terms[0, 1] + terms[2, 1]) / 2,
        0.0,
        sum(terms[i, 3] for i in range(3)) / 3,
    ]
    assert losses.shape == (4,)
    assert losses.tolist() == pytest.approx(want, rel=1e-6)
    losses.sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert torch.all(logits.grad[:, 2] == 0)


def test_per_task_losses_all_unknown():
    assert per_task_losses(torch.zeros(2, 3), torch.full((2, 3), NAN)).tolist() == [0.0, 0.0, 0.0]


def test_bad_reduction_lists_valid_ones():
    logits, targets = tensors()
    with pytest.raises(UserError, match="mean") as err:
        masked_bce(logits, targets, reduction="mean")
    assert "seed, labeled, per_task, sqrt" in str(err.value)


@pytest.mark.parametrize("reduction", ["seed", "labeled", "per_task", "sqrt"])
@pytest.mark.parametrize("weights", [[1.0, 2.0, 3.0], [1.0] * 5, [[1.0] * 4]])
def test_weights_of_wrong_length(reduction, weights):
    logits, targets = tensors()
    with pytest.raises(UserError, match="expected 4 values"):
        masked_bce(logits, targets, task_weights=weights, reduction=reduction)


def test_shape_mismatch_is_an_internal_error():
    with pytest.raises(ValueError):
        masked_bce(torch.zeros(3, 4), torch.zeros(3, 5))


@pytest.mark.parametrize("reduction", ["seed", "labeled", "per_task", "sqrt"])
def test_gradient_reaches_learnable_weights(reduction):
    logits, targets = tensors()
    weights = torch.tensor(WEIGHTS, requires_grad=True)
    masked_bce(logits, targets, task_weights=weights, reduction=reduction).backward()
    assert weights.grad[2] == 0
    assert torch.all(weights.grad[[0, 1, 3]] > 0)


def test_sqrt_is_seed_for_a_fully_labeled_task_and_lifts_a_sparse_one_by_root_of_its_rate():
    torch.manual_seed(0)
    logits = torch.randn(64, 2)
    targets = (torch.rand(64, 2) < 0.5).float()
    targets[16:, 1] = NAN  # task 1 labeled on a quarter of the rows
    seed, sqrt = task_terms(logits, targets, "seed"), task_terms(logits, targets, "sqrt")
    assert sqrt[0].item() == pytest.approx(seed[0].item(), rel=1e-6)
    assert sqrt[1].item() == pytest.approx(seed[1].item() * 2, rel=1e-6)  # 1 / sqrt(1/4)
