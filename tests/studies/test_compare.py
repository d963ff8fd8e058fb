"""`mtl-ray compare`: Δm, the single-task baselines, the shuffle control and plots."""

import os
import re

import numpy as np
import pyarrow as pa
import pytest
from mlflow import MlflowClient

from mtl_ray.data.synth.dataset import synthesize
from mtl_ray.studies.compare import CompareResult, CompareRun
from mtl_ray.studies.stats import delta_m
from mtl_ray.training.dataset import ShuffleLabels
from mtl_ray.training.driver import TrainResult


def test_delta_m_is_mean_relative_gain_in_percent():
    mtl = {"a": {"auroc": 0.9}, "b": {"auroc": 0.6}}
    stl = {"a": {"auroc": 0.8}, "b": {"auroc": 0.75}}
    assert delta_m(mtl, stl) == pytest.approx(((0.9 - 0.8) / 0.8 * 100 + (0.6 - 0.75) / 0.75 * 100) / 2)


def test_delta_m_skips_tasks_without_the_metric():
    mtl = {"a": {"auroc": 0.9}, "b": {"auroc": None}}
    stl = {"a": {"auroc": 0.9}, "b": {"auroc": 0.7}}
    assert delta_m(mtl, stl) == 0.0
    assert delta_m({"a": {"auroc": None}}, {"a": {"auroc": 0.5}}) is None


def test_shuffle_control_permutes_labels_jointly_and_keeps_rates():
    n = 200
    rng = np.random.default_rng(0)
    a = rng.random(n) < 0.3
    table = pa.table({"image": pa.array(range(n)), "a": a, "b": ~a, "focus": a})
    out = ShuffleLabels(("a", "b"), seed=1)(table)
    assert out.column("image").to_pylist() == list(range(n))
    assert out.column("focus").equals(table.column("focus"))
    shuffled = np.asarray(out.column("a"))
    assert shuffled.sum() == a.sum() and not np.array_equal(shuffled, a)
    assert np.array_equal(np.asarray(out.column("b")), ~shuffled)


@pytest.mark.slow
def test_compare_writes_every_key_and_the_plots(ray_session, cli, tmp_path):
    data = tmp_path / "scenes"
    synthesize(str(data), 600, tasks=["car", "traffic_light"], label_rates={"traffic_light": 0.3}, seed=4)
    plots = tmp_path / "plots"
    job_config = (
        tmp_path / "job.yaml"
    )  # static weights: one per task for the multi-task model, none for single-task nets
    job_config.write_text("train: {backbone: xs, weighting: {name: static, weights: [1, 3]}}\n")
    res = cli(
        "compare",
        "--data",
        data,
        "--config",
        job_config,
        "--epochs",
        1,
        "--stl-epochs",
        2,
        "--stl-patience",
        1,
        "--control",
        "shuffle",
        "--groups",
        "car,traffic_light",
        "--plots",
        plots,
        "--storage",
        tmp_path / "runs",
        "--json",
        "-",
    )
    assert res.code == 0, res.err
    out = res.json()
    for key in (
        "tasks",
        "mtl",
        "stl",
        "delta_m_pct",
        "mtl_seconds",
        "stl_seconds",
        "mtl_params",
        "stl_params",
        "control",
    ):
        assert key in out
    assert out["tasks"] == ["car", "traffic_light"]
    assert set(out["mtl"]) == set(out["stl"]) == {"car", "traffic_light"}
    assert out["stl_params"] > out["mtl_params"] > 0
    assert out["mtl_seconds"] > 0 and out["stl_seconds"] > 0
    assert out["control"]["focus"] == "traffic_light"
    for side in ("mtl", "stl"):
        for task, metrics in out[side].items():
            assert 0.0 <= metrics["auroc"] <= 1.0 and 0.0 <= metrics["accuracy"] <= 1.0, (side, task, metrics)
            assert 0.0 <= metrics["f1"] <= 1.0 and metrics["n_labeled"] > 0
    for task in out["tasks"]:
        assert out["delta_pct"][task] == pytest.approx(
            (out["mtl"][task]["auroc"] - out["stl"][task]["auroc"]) / out["stl"][task]["auroc"] * 100
        )
    assert out["delta_m_pct"] == pytest.approx(sum(out["delta_pct"].values()) / 2)
    assert 0.0 <= out["control"]["val"]["traffic_light"]["auroc"] <= 1.0
    for name in ("metrics.png", "curves.png", "task_weights.png"):
        path = plots / name
        assert path.stat().st_size > 1000 and path.read_bytes().startswith(b"\x89PNG")
    assert sorted(out["plots"]) == sorted(
        os.path.join(str(plots), n) for n in ("metrics.png", "curves.png", "task_weights.png")
    )
    for line in ("compare multi-task: car, traffic_light", "compare single-task 2/2: traffic_light"):
        assert line in res.err, res.err[-3000:]
    assert "compare shuffle control: car labels shuffled" in res.err
    assert len(re.findall(r"compare-\S+: epoch 1/1  loss ", res.err)) == 3  # mtl, control, the group
    for task, (seed,) in out["stl_epochs"].items():  # early stopping: 1 epoch without gain ends a run
        assert 1 <= seed["best"] <= seed["trained"] <= 2
        assert seed["trained"] == 2 or seed["trained"] == seed["best"] + 1
        assert len(re.findall(rf"compare-\S+-stl-{task}: epoch \d/2  loss ", res.err)) == seed["trained"], task
    assert " INFO " not in res.err
    groups = out["groups"]
    assert groups["partition"] == [["car", "traffic_light"]] and groups["source"] == "given"
    assert set(groups["grouped"]) == {"car", "traffic_light"} and groups["networks"] == 1 and groups["seconds"] > 0
    assert "compare group: car, traffic_light" in res.err
    assert len(re.findall(r"compare-\S+-group-car-traffic_light: epoch 1/1  loss ", res.err)) == 1
    assert "groups car,traffic_light (given): 1 networks" in res.err

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run = client.get_run(out["tracking"]["run_id"])
    assert run.data.tags["mtl_ray.kind"] == "compare" and run.info.status == "FINISHED"
    assert run.data.metrics["delta_m_pct"] == pytest.approx(out["delta_m_pct"])
    assert run.data.metrics["stl.traffic_light.auroc"] == pytest.approx(out["stl"]["traffic_light"]["auroc"])
    assert run.data.params["control"] == "shuffle" and run.data.params["weighting.name"] == "static"
    assert run.data.params["groups"] == "car,traffic_light"
    assert run.data.metrics["groups.delta_m_pct"] == pytest.approx(groups["delta_m_pct"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"compare.json", "compare.txt", "plots"} <= artifacts
    text = open(client.download_artifacts(run.info.run_id, "compare.txt", str(tmp_path))).read()
    assert text.startswith("task") and "Δm" in text and "traffic_light" in text
    assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} == {
        f"plots/{n}" for n in ("metrics.png", "curves.png", "task_weights.png")
    }


def test_compare_refuses_a_task_without_known_labels(cli, tmp_path):
    data = tmp_path / "scenes"
    synthesize(str(data), 60, label_rates={"car": 0.0}, seed=5)
    res = cli("compare", "--data", data)
    assert res.code == 2
    assert "task 'car' has no known label in the training rows" in res.err


def test_compare_rejects_a_bad_partition_before_training(cli, tmp_path):
    data = tmp_path / "scenes"
    synthesize(str(data), 60, tasks=["car", "pedestrian"], seed=6)
    res = cli("compare", "--data", data, "--groups", "car|bicycle")
    assert res.code == 2 and "--groups 'car|bicycle': unknown task 'bicycle'" in res.err
    res = cli("compare", "--data", data, "--groups", "car|pedestrian", "--max-groups", 2)
    assert res.code == 2 and "--max-groups goes with --groups auto" in res.err


def test_groups_arm_takes_each_group_network_and_single_task_networks_for_tasks_alone():
    stl = {t: _result(f"s{t}", {t: a}, seconds=5.0) for t, a in (("a", 0.80), ("b", 0.70), ("c", 0.60))}
    grouped = {"a,b": _result("g", {"a": 0.88, "b": 0.77}, seconds=12.0)}
    run = CompareRun(0, _result("m", {"a": 0.84, "b": 0.77, "c": 0.54}), stl, grouped=grouped)
    result = CompareResult(
        tasks=["a", "b", "c"], runs=[run], groups={"partition": [["a", "b"], ["c"]], "source": "given"}
    )
    out = result.to_json()["groups"]
    assert out["grouped"]["a"]["auroc"] == pytest.approx(0.88) and out["grouped"]["c"]["auroc"] == pytest.approx(0.60)
    assert out["delta_m_pct"] == pytest.approx((0.08 / 0.80 + 0.07 / 0.70 + 0) / 3 * 100)
    assert out["seconds"] == pytest.approx(17.0) and out["networks"] == 2
    assert "groups a,b|c (given): 2 networks, 17 s, Δm +6.7 %" in result.render()


def test_compare_rejects_unknown_focus(cli, tmp_path):
    data = tmp_path / "scenes"
    synthesize(str(data), 60, seed=6)
    res = cli("compare", "--data", data, "--control", "shuffle", "--focus", "bicycle")
    assert res.code == 2 and "--focus 'bicycle'" in res.err


def _val(aurocs: dict[str, float]) -> dict[str, dict]:
    return {t: {"auroc": a, "accuracy": a, "f1": a, "n_labeled": 100} for t, a in aurocs.items()}


def _result(name: str, aurocs: dict[str, float], seconds: float = 10.0, earlier: list[float] = ()) -> TrainResult:
    """A run whose last epoch has `aurocs`, after epochs with `earlier` AUROCs on every task."""
    epochs = [{t: a for t in aurocs} for a in earlier] + [aurocs]
    history = [
        {"epoch": e, "val": _val(v), "mean_auroc": float(np.mean([*v.values()])), "task_weights": dict.fromkeys(v, 1.0)}
        for e, v in enumerate(epochs, start=1)
    ]
    return TrainResult(
        name=name,
        tasks=list(aurocs),
        params=1000,
        epochs=len(epochs),
        first_epoch=1,
        val=_val(aurocs),
        mean_auroc=history[-1]["mean_auroc"],
        checkpoint=f"/ckpt/{name}",
        train_images_per_s=1.0,
        seconds=seconds,
        history=history,
    )


def test_several_seeds_report_mean_and_std_of_each_number(tmp_path):
    runs = []
    for seed, (a_mtl, b_mtl, b_ctrl) in enumerate([(0.90, 0.80, 0.70), (0.80, 0.70, 0.64)]):
        stl = {"a": _result("sa", {"a": 0.85}), "b": _result("sb", {"b": 0.60})}
        runs.append(
            CompareRun(seed, _result("m", {"a": a_mtl, "b": b_mtl}), stl, _result("c", {"a": 0.5, "b": b_ctrl}))
        )
    result = CompareResult(tasks=["a", "b"], runs=runs, focus="b")
    out = result.to_json()
    assert out["seeds"] == [0, 1]
    assert out["mtl"]["a"]["auroc"] == pytest.approx(0.85) and out["mtl"]["a"]["auroc_std"] == pytest.approx(0.0707107)
    assert out["stl"]["b"]["auroc"] == pytest.approx(0.60) and out["stl"]["b"]["auroc_std"] == pytest.approx(0.0)
    per_seed = [
        delta_m({"a": {"auroc": a}, "b": {"auroc": b}}, {"a": {"auroc": 0.85}, "b": {"auroc": 0.60}})
        for a, b in [(0.90, 0.80), (0.80, 0.70)]
    ]
    assert out["delta_m_pct"] == pytest.approx(np.mean(per_seed))
    assert out["delta_m_pct_std"] == pytest.approx(np.std(per_seed, ddof=1))
    focus = out["control"]["focus_auroc"]
    assert focus["control"] == pytest.approx(0.67) and focus["control_std"] == pytest.approx(
        np.std([0.70, 0.64], ddof=1)
    )
    assert focus["mtl"] == pytest.approx(0.75)
    text = result.render()
    assert "0.750 ± 0.071" in text and "over 2 seeds (mean ± std)" in text
    assert len(result.write_plots(str(tmp_path))) == 3


def test_one_seed_has_no_std_keys():
    stl = {"a": _result("sa", {"a": 0.8}), "b": _result("sb", {"b": 0.7})}
    out = CompareResult(tasks=["a", "b"], runs=[CompareRun(0, _result("m", {"a": 0.9, "b": 0.7}), stl)]).to_json()
    assert "auroc_std" not in out["mtl"]["a"] and "delta_m_pct_std" not in out and "control" not in out
    assert out["delta_m_pct"] == pytest.approx((0.1 / 0.8 * 100 + 0) / 2)


def test_single_task_networks_count_at_their_best_epoch_and_the_multi_task_model_at_its_last():
    stl = {"a": _result("sa", {"a": 0.70}, earlier=[0.60, 0.80, 0.75]), "b": _result("sb", {"b": 0.70})}
    mtl = _result("m", {"a": 0.84, "b": 0.77}, earlier=[0.9])
    result = CompareResult(tasks=["a", "b"], runs=[CompareRun(0, mtl, stl)])
    out = result.to_json()
    assert out["stl"]["a"]["auroc"] == pytest.approx(0.80) and out["mtl"]["a"]["auroc"] == pytest.approx(0.84)
    assert out["stl_epochs"] == {"a": [{"best": 2, "trained": 4}], "b": [{"best": 1, "trained": 1}]}
    assert out["delta_pct"]["a"] == pytest.approx(5.0) and out["delta_pct"]["b"] == pytest.approx(10.0)
    assert "single-task best epoch of trained: a 2 of 4, b 1 of 1" in result.render()


def test_a_sample_of_single_task_networks_scores_the_sampled_tasks_and_says_so(tmp_path):
    stl = {"b": _result("sb", {"b": 0.60}), "d": _result("sd", {"d": 0.80})}
    mtl = _result("m", {"a": 0.9, "b": 0.66, "c": 0.7, "d": 0.76})
    result = CompareResult(tasks=["a", "b", "c", "d"], runs=[CompareRun(0, mtl, stl)])
    out = result.to_json()
    assert out["stl_tasks"] == ["b", "d"] and set(out["stl"]) == {"b", "d"} and set(out["delta_pct"]) == {"b", "d"}
    assert set(out["mtl"]) == {"a", "b", "c", "d"}
    assert out["delta_m_pct"] == pytest.approx((10.0 - 5.0) / 2)
    text = result.render()
    assert "Δm +2.5 % over the 2 of 4 tasks with a single-task network" in text
    assert "single-task: 2 networks" in text and "best epoch of trained: b 1 of 1, d 1 of 1" in text
    assert [line.split()[:3] for line in text.splitlines() if line.startswith("c ")] == [["c", "0.700", "-"]]
    assert len(result.write_plots(str(tmp_path))) == 3


def test_stl_tasks_must_name_tasks_and_cover_a_task_alone_and_the_control_focus(cli, tmp_path):
    data = tmp_path / "scenes"
    synthesize(str(data), 60, tasks=["car", "pedestrian", "stop_sign"], seed=6)
    res = cli("compare", "--data", data, "--stl-tasks", "car,bicycle")
    assert res.code == 2 and "--stl-tasks: 'bicycle' is not a task of" in res.err
    res = cli("compare", "--data", data, "--stl-tasks", "car", "--groups", "car,pedestrian|stop_sign")
    assert (
        res.code == 2 and "task 'stop_sign' is a group of its own" in res.err and "--stl-tasks leaves it out" in res.err
    )
    res = cli("compare", "--data", data, "--stl-tasks", "car", "--control", "shuffle", "--focus", "pedestrian")
    assert res.code == 2 and "its focus task 'pedestrian' needs a single-task network; add it to --stl-tasks" in res.err
