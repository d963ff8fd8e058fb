"""`mtl-ray advise`: the three conditions, measured on small synthetic data."""

import os

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from mlflow import MlflowClient

from mtl_ray.data.synth import families
from mtl_ray.data.synth.dataset import synthesize
from mtl_ray.model.backbones import build
from mtl_ray.studies.advise import data_amounts
from mtl_ray.studies.probes import gradient_cosines


def test_data_amounts_counts_what_the_other_tasks_add():
    out = data_amounts({"a": 10, "b": 90, "c": 0})
    assert out["a"] == {"labeled": 10, "others_labeled": 90, "ratio": 9.0}
    assert out["b"]["ratio"] == pytest.approx(10 / 90)
    assert out["c"]["ratio"] is None


def test_gradient_cosine_of_identical_tasks_is_one():
    import torch

    torch.manual_seed(0)
    model = build("xs", 2)
    with torch.no_grad():
        model.heads.weight[1] = model.heads.weight[0]
        model.heads.bias[1] = model.heads.bias[0]
    images = torch.randint(0, 256, (16, 32, 32, 3), dtype=torch.uint8)
    y = torch.randint(0, 2, (16, 1)).float()
    cos = gradient_cosines(model, images, torch.cat([y, y], dim=1), ["a", "b"])
    assert cos["a~b"] == pytest.approx(1.0, abs=1e-5)
    cos = gradient_cosines(model, images, torch.cat([y, 1 - y], dim=1), ["a", "b"])
    assert cos["a~b"] < 0.99


def test_advise_reports_three_conditions(cli, tmp_path):
    data = tmp_path / "scenes"
    synthesize(str(data), 400, label_rates={"traffic_light": 0.1}, seed=7)
    res = cli("advise", "--data", data, "--rows", 128, "--steps", 4, "--json", "-")
    assert res.code == 0, res.err
    out = res.json()
    assert set(out["conditions"]) == {"shared_features", "data_amounts", "capacity"}
    for condition in out["conditions"].values():
        assert condition["verdict"] in ("yes", "weak", "no")
        assert condition["evidence"]
    amounts = out["conditions"]["data_amounts"]["evidence"]
    assert amounts["focus"] == "traffic_light"
    assert amounts["tasks"]["traffic_light"]["ratio"] > 5
    assert out["conditions"]["data_amounts"]["verdict"] == "yes"
    shared = out["conditions"]["shared_features"]["evidence"]
    assert len(shared["pairs"]) == 6 and shared["focus"] == "traffic_light"
    assert 0.0 <= shared["probe_auroc"] <= 1.0 and 0.0 <= shared["stl_auroc"] <= 1.0
    assert shared["labels"] > 0
    for condition in out["conditions"].values():
        assert "{" not in condition["summary"], condition["summary"]  # every value filled in
    assert f"{amounts['tasks']['traffic_light']['labeled']:,} labels" in out["conditions"]["data_amounts"]["summary"]
    assert set(out["conditions"]["capacity"]["evidence"]["probes"]) == {"xs", "m"}
    assert out["recommendation"]
    assert "advise 1/4: a trunk trained on the other tasks, probed for traffic_light" in res.err
    assert "advise 4/4: multi-task against single-task on traffic_light, backbone m" in res.err

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run = client.get_run(out["tracking"]["run_id"])
    assert run.data.tags["mtl_ray.kind"] == "advise"
    for name, condition in out["conditions"].items():
        assert run.data.params[f"{name}.verdict"] == condition["verdict"]
    assert run.data.metrics["conditions.shared_features.evidence.probe_auroc"] == pytest.approx(shared["probe_auroc"])
    assert not [k for k in run.data.metrics if ".pairs." in k]  # per pair of tasks: in advise.json, not T² metrics
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"advise.json", "advise.txt"}


def test_advise_needs_two_tasks(cli, tmp_path):
    data = tmp_path / "one"
    synthesize(str(data), 40, tasks=["car"], seed=8)
    res = cli("advise", "--data", data)
    assert res.code == 2 and "one task only" in res.err


def test_advise_counts_unassigned_rows_as_training_rows(cli, tmp_path):
    """Rows with split 'train' and rows with a null split are both training rows (the rule of
    `shards.split_members`); advise once counted only the 'train' ones when that split existed."""
    import pyarrow.parquet as pq

    data = tmp_path / "scenes"
    synthesize(str(data), 300, shards=1, label_rates={"traffic_light": 0.2}, seed=9)
    (path,) = data.glob("*.parquet")
    table = pq.read_table(path)
    splits = table.column("split").to_pylist()
    train_rows = [i for i, s in enumerate(splits) if s == "train"]
    unassigned = set(train_rows[::2])
    splits = [None if i in unassigned else s for i, s in enumerate(splits)]
    index = table.schema.get_field_index("split")
    pq.write_table(table.set_column(index, "split", pa.array(splits, pa.string())), path)
    labeled = table.filter(pc.equal(table.column("split"), "train")).column("traffic_light").is_valid()
    res = cli("advise", "--data", data, "--rows", 64, "--steps", 2, "--no-track", "--quiet", "--json", "-")
    assert res.code == 0, res.err
    assert res.json()["tracking"] is None and "advise 1/4" not in res.err
    focus = res.json()["conditions"]["data_amounts"]["evidence"]["tasks"]["traffic_light"]
    assert focus["labeled"] == pc.sum(labeled.cast(pa.int64())).as_py()  # train and unassigned rows together
    assert 0 < len(unassigned) < len(train_rows)


@pytest.mark.slow
def test_advise_groups_recovers_the_two_families(cli, tmp_path):
    """A world of two task families that share nothing (`mtl_ray.data.synth.families`): --groups
    recommends one network per family, and says so in the JSON, the summary and the MLflow run."""
    data = families.write(str(tmp_path / "families"), 1280, seed=0)
    res = cli(
        "advise", "--data", data, "--rows", 1024, "--steps", 4, "--groups", "--affinity-steps", 100, "--json", "-"
    )
    assert res.code == 0, res.err
    groups = res.json()["groups"]
    assert groups["partition"] == [list(f) for f in families.FAMILIES]
    assert set(groups["affinity"]) == set(families.TASKS) and groups["score"] > groups["score_all"]
    within = [groups["affinity"][a][b] for a, b in (families.FAMILIES[0], families.FAMILIES[1])]
    assert all(isinstance(v, float) for v in within)
    assert "groups           2    shape_big,shape_huge|red_strong,red_max" in res.err
    assert "advise groups: inter-task affinity" in res.err
    run = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(res.json()["tracking"]["run_id"])
    assert run.data.params["groups"] == "shape_big,shape_huge|red_strong,red_max"
    assert run.data.metrics["groups.score"] == pytest.approx(groups["score"])
    assert not [k for k in run.data.metrics if k.startswith("groups.affinity")]


def test_advise_max_groups_must_be_positive(cli, tmp_path):
    res = cli("advise", "--data", tmp_path, "--groups", "--max-groups", 0)
    assert res.code == 2 and "--max-groups" in res.err
