"""`mtl-ray compare`: Δm, the single-task baselines, the shuffle control and plots."""

import os

import numpy as np
import pyarrow as pa
import pytest

from mtl_ray.compare import delta_m
from mtl_ray.dataset import ShuffleLabels
from mtl_ray.synth import synthesize


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
    job_config.write_text("train: {weighting: {name: static, weights: [1, 3]}}\n")
    res = cli(
        "compare",
        "--data",
        data,
        "--config",
        job_config,
        "--epochs",
        1,
        "--control",
        "shuffle",
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


def test_compare_refuses_a_task_without_known_labels(cli, tmp_path):
    data = tmp_path / "scenes"
    synthesize(str(data), 60, label_rates={"car": 0.0}, seed=5)
    res = cli("compare", "--data", data)
    assert res.code == 2
    assert "task 'car' has no known label in the training rows" in res.err


def test_compare_rejects_unknown_focus(cli, tmp_path):
    data = tmp_path / "scenes"
    synthesize(str(data), 60, seed=6)
    res = cli("compare", "--data", data, "--control", "shuffle", "--focus", "bicycle")
    assert res.code == 2 and "--focus 'bicycle'" in res.err
