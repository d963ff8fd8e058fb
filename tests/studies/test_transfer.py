"""Transfer learning: where the first weights come from (`--init`), how they are loaded, the label
budgets and conditions of `mtl-ray transfer`, and its bad input; the runs themselves on a real Ray."""

import json
import os

import numpy as np
import pytest
import torch

from mtl_ray.config import TrainConfig, TuneConfig
from mtl_ray.data.synth.dataset import synthesize
from mtl_ray.data.validate import validate
from mtl_ray.errors import UserError
from mtl_ray.model import backbones as models
from mtl_ray.model import checkpoint
from mtl_ray.model.weighting import get as get_weighting
from mtl_ray.registry.sources import resolve_init
from mtl_ray.studies.transfer import labeled_ids, parse_labels
from mtl_ray.training.driver import init_settings
from mtl_ray.training.search import check_search, init_sources

SOURCE_TASKS = ["pedestrian", "car", "stop_sign"]


def source_checkpoint(
    directory, tasks=SOURCE_TASKS, backbone="xs", size=(32, 32), seed=0, heads="linear"
) -> torch.nn.Module:
    directory.mkdir(parents=True)
    torch.manual_seed(seed)
    model = build = models.build(backbone, len(tasks), heads=heads)
    meta = {
        "epoch": 1,
        "first_epoch": 1,
        "tasks": tasks,
        "backbone": backbone,
        **({"heads": heads} if heads != "linear" else {}),
        "config": TrainConfig(backbone=backbone).model_dump(),
        "image": {"size": list(size), "channels": 3, "resize": "letterbox"},
        "data": {"train_rows": 5000},
        "metrics": {"mean_auroc": 0.8, "train_images_per_s": 1.0, "val": {}},
        "history": [],
    }
    checkpoint.save(
        str(directory), build, get_weighting("equal", len(tasks)), torch.optim.AdamW(model.parameters()), meta
    )
    return model


def test_label_budgets_parse_and_refuse_nonsense():
    assert parse_labels("25, 50,all") == [25, 50, "all"]
    for bad in ("0", "ten", ",", "5,-1"):
        with pytest.raises(UserError, match="--labels"):
            parse_labels(bad)


def test_label_budgets_are_nested_and_the_same_on_every_call(tmp_path):
    synthesize(str(tmp_path / "d"), 300, tasks=["traffic_light"], label_rates={"traffic_light": 0.5}, seed=1)
    report = validate(str(tmp_path / "d"))
    ranked = labeled_ids(report, ["traffic_light"])
    assert ranked == labeled_ids(validate(str(tmp_path / "d")), ["traffic_light"])
    assert len(ranked) == report.labeled_in("train")["traffic_light"]
    assert set(ranked[:25]) < set(ranked[:50])
    assert ranked[:50] != sorted(ranked)[:50]  # by hash of the id, not by file order


def test_a_checkpoint_source_brings_its_trunk_and_the_heads_of_shared_tasks(tmp_path):
    model = source_checkpoint(tmp_path / "src")
    source = resolve_init(str(tmp_path / "src"), "m")
    assert source.backbone == "xs" and source.tasks == SOURCE_TASKS and source.size == (32, 32)
    assert source.train_rows == 5000 and source.lineage == {"uri": str(tmp_path / "src"), "tasks": SOURCE_TASKS}
    target = models.build("xs", 2)
    kept = target.load_initial(source.state, source.tasks, ["traffic_light", "car"])
    assert kept == ["car"]
    torch.testing.assert_close(target.trunk.state_dict(), model.trunk.state_dict())
    torch.testing.assert_close(target.heads.weight[1], model.heads.weight[1])  # car's head came along
    assert not torch.equal(target.heads.weight[0], model.heads.weight[0])  # traffic_light's is fresh


def test_a_source_with_tower_heads_brings_each_shared_tasks_tower_and_its_kind_of_heads(tmp_path):
    model = source_checkpoint(tmp_path / "src", heads="tower")
    source = resolve_init(str(tmp_path / "src"), "m")
    assert source.heads == "tower"
    cfg = init_settings(TrainConfig(init=str(tmp_path / "src")), source)
    assert cfg.heads == "tower" and cfg.backbone == "xs"
    target = models.build("xs", 2, heads="tower")
    assert target.load_initial(source.state, source.tasks, ["traffic_light", "car"]) == ["car"]
    car = SOURCE_TASKS.index("car")
    for name, param in target.heads.named_parameters():
        torch.testing.assert_close(param[1], dict(model.heads.named_parameters())[name][car])
        assert not torch.equal(param[0], dict(model.heads.named_parameters())[name][0]), name
    with pytest.raises(UserError, match="another kind of task heads"):
        models.build("xs", 2).load_initial(source.state, source.tasks, ["car"])
    with pytest.raises(UserError, match="heads 'linear' conflicts with --init"):
        init_settings(TrainConfig(init=str(tmp_path / "src"), heads="linear"), source)


def test_backbone_and_size_come_from_the_source_and_a_conflict_names_both(tmp_path):
    source_checkpoint(tmp_path / "src")
    source = resolve_init(str(tmp_path / "src"), "m")
    cfg = init_settings(TrainConfig(init=str(tmp_path / "src")), source)
    assert cfg.backbone == "xs" and cfg.size() == (32, 32) and cfg.resize == "letterbox"
    with pytest.raises(UserError) as caught:
        init_settings(TrainConfig(init=str(tmp_path / "src"), backbone="s"), source)
    assert (
        str(caught.value)
        == f"backbone 's' conflicts with --init {tmp_path / 'src'}, which was trained with backbone 'xs'"
    )


def test_imagenet_weights_load_from_the_torch_cache_or_say_where_they_are_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(UserError) as caught:
        models.imagenet_state("resnet18")
    assert "no ImageNet weights for resnet18 at" in str(caught.value) and "resnet18-f37072fd.pth" in str(caught.value)
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    written = {
        "conv1.weight": torch.randn(64, 3, 7, 7),
        "layer1.0.bn1.running_mean": torch.randn(64),
        "fc.weight": torch.randn(1000, 512),
        "fc.bias": torch.randn(1000),
    }
    torch.save(written, cache / "resnet18-f37072fd.pth")
    state = models.imagenet_state("resnet18")
    assert set(state) == {"trunk.conv1.weight", "trunk.layer1.0.bn1.running_mean"}  # the classifier dropped
    torch.testing.assert_close(state["trunk.conv1.weight"], written["conv1.weight"])
    with pytest.raises(
        UserError, match="ImageNet weights exist for resnet18, resnet34, resnet50, not for backbone 'm'"
    ):
        models.imagenet_state("m")
    (cache / "resnet34-b627a593.pth").write_bytes(b"not torch")
    with pytest.raises(UserError, match="is not a torch state dict"):
        models.imagenet_state("resnet34")


def test_tune_takes_init_as_a_setting_or_a_search_dimension(tmp_path):
    source_checkpoint(tmp_path / "src")
    cfg = TuneConfig.model_validate({"search": {"init": ["scratch", str(tmp_path / "src")]}})
    forms = check_search(cfg, ["a", "b", "c", "d"], "tune.yaml")
    assert forms["init"] == ("grid", ["scratch", str(tmp_path / "src")])
    assert list(init_sources(cfg, "tune.yaml")) == [str(tmp_path / "src")]
    both = TuneConfig.model_validate({"search": {"init": [str(tmp_path / "src")], "backbone": ["xs", "s"]}})
    with pytest.raises(UserError, match="search.backbone and init together"):
        init_sources(both, "tune.yaml")


@pytest.mark.parametrize(
    "uri, message",
    [
        ("models:/no-such-model@champion", "not in the registry at"),
        ("models:/justaname", "expected models:/NAME@ALIAS or models:/NAME/VERSION"),
    ],
)
def test_bad_registry_sources_are_one_line(cli, tmp_path, monkeypatch, uri, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns.db")
    synthesize(str(tmp_path / "d"), 40, seed=2)
    res = cli("train", "--data", tmp_path / "d", "--init", uri)
    assert res.code == 2 and message in res.err and len(res.err.strip().splitlines()) == 1, res.err


def test_a_registry_that_is_down_and_a_foreign_checkpoint_are_one_line(cli, tmp_path, monkeypatch):
    synthesize(str(tmp_path / "d"), 40, seed=3)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user:secret@127.0.0.1:9")
    res = cli("train", "--data", tmp_path / "d", "--init", "models:/mtl-ray@champion")
    assert res.code == 2 and "unreachable" in res.err and "secret" not in res.err and "user:***@" in res.err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "meta.json").write_text(json.dumps({"framework": "something else"}))
    torch.save({"weights": torch.zeros(3)}, foreign / "model.pt")
    res = cli("train", "--data", tmp_path / "d", "--init", foreign)
    assert res.code == 2 and "not an mtl-ray checkpoint" in res.err and len(res.err.strip().splitlines()) == 1


def test_freeze_needs_an_init_and_a_weighting_that_leaves_the_trunk_alone(cli, tmp_path):
    synthesize(str(tmp_path / "d"), 40, seed=4)
    config = tmp_path / "freeze.yaml"
    config.write_text("trunk: freeze\n")
    res = cli("train", "--data", tmp_path / "d", "--config", config)
    assert res.code == 2 and "trunk: freeze keeps the weights an init gave the trunk" in res.err
    source_checkpoint(tmp_path / "src", size=(64, 64))
    res = cli("train", "--data", tmp_path / "d", "--config", config, "--init", tmp_path / "src")
    assert res.code == 2 and "leaves weighting 'gradnorm' no shared gradients" in res.err


# ---- on a real Ray ---------------------------------------------------------------------------


@pytest.mark.slow
def test_train_from_a_checkpoint_records_lineage_and_transfer_draws_the_curve(ray_session, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns.db")
    synthesize(str(tmp_path / "a"), 400, image_size=32, tasks=SOURCE_TASKS, seed=5)
    synthesize(str(tmp_path / "b"), 300, image_size=32, tasks=["traffic_light", "car"], seed=6)
    small = ["--epochs", 1, "--backbone", "xs", "--storage", tmp_path / "runs"]
    source = cli("train", "--data", tmp_path / "a", *small, "--json", "-")
    assert source.code == 0, source.err
    registered = cli("register", "--checkpoint", source.json()["checkpoint"], "--json", "-")
    assert registered.code == 0, registered.err

    res = cli(
        "train",
        "--data",
        tmp_path / "b",
        "--init",
        "models:/mtl-ray@champion",
        "--epochs",
        1,
        "--storage",
        tmp_path / "runs",
        "--json",
        "-",
    )
    assert res.code == 0, res.err
    init = res.json()["init"]
    assert init["uri"] == "models:/mtl-ray@champion" and init["version"] == "1" and init["heads_kept"] == ["car"]
    _, meta = checkpoint.load(res.json()["checkpoint"])
    assert meta["init"] == init and meta["backbone"] == "xs"
    again = cli("register", "--checkpoint", res.json()["checkpoint"], "--json", "-")
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    version = client.get_model_version("mtl-ray", again.json()["version"])
    assert json.loads(version.tags["mtl_ray.init"])["version"] == "1"
    assert json.loads(client.get_run(version.run_id).data.tags["mtl_ray.init"])["uri"] == "models:/mtl-ray@champion"

    curve = cli(
        "transfer",
        "--data",
        tmp_path / "b",
        "--init",
        "models:/mtl-ray/1",  # the alias may have moved to version 2 above
        "--labels",
        "20",
        "--epochs",
        1,
        "--storage",
        tmp_path / "runs",
        "--plots",
        tmp_path / "plots",
        "--json",
        "-",
    )
    assert curve.code == 0, curve.err
    out = curve.json()
    assert [p["labels"] for p in out["points"]] == [20] and out["points"][0]["rows"] == 20
    for point in out["points"]:
        for side in ("scratch", "transfer"):
            assert set(point[side]) == {"traffic_light", "car", "mean"}
            assert 0.0 <= point[side]["mean"] <= 1.0
    assert out["lineage"]["version"] == "1" and set(out["conditions"]) == {"input", "amounts", "features"}
    assert os.path.getsize(tmp_path / "plots" / "transfer.png") > 1000
    assert np.isfinite(out["conditions"]["features"]["source_probe"])
