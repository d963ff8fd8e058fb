"""Config loading: YAML into pydantic, errors that name the key."""

import pytest

from mtl_ray import config
from mtl_ray.config import TrainConfig
from mtl_ray.errors import UserError


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("backbone: m\nepochs: 5\nlr: 0.01\n")
    cfg = config.load(TrainConfig, str(path), {"epochs": 2, "workers": None})
    assert (cfg.backbone, cfg.epochs, cfg.lr, cfg.workers) == ("m", 2, 0.01, None)


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("epoch: 5\n")
    with pytest.raises(UserError, match=r"train.yaml: unknown key 'epoch'"):
        config.load(TrainConfig, str(path))


def test_ill_typed_key_is_named(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("epochs: many\n")
    with pytest.raises(UserError, match=r"key 'epochs'.*'many'"):
        config.load(TrainConfig, str(path))


def test_out_of_range_and_bad_choice():
    with pytest.raises(UserError, match="key 'epochs'"):
        config.parse(TrainConfig, {"epochs": 0}, "cfg")
    with pytest.raises(UserError, match="key 'loss_reduction'"):
        config.parse(TrainConfig, {"loss_reduction": "mean"}, "cfg")


def test_not_yaml_and_not_mapping(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n")
    with pytest.raises(UserError, match="not valid YAML"):
        config.load_yaml(str(bad))
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="expected a mapping"):
        config.load_yaml(str(listing))
    with pytest.raises(UserError, match="cannot read config"):
        config.load_yaml(str(tmp_path / "missing.yaml"))


def test_cli_reports_config_key(cli, tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("batch: 3\n")
    res = cli("train", "--data", str(tmp_path), "--config", str(path))
    assert res.code == 2
    assert res.err.strip() == f"mtl-ray: error: {path}: unknown key 'batch'"
