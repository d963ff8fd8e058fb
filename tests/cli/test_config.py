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
    with pytest.raises(UserError, match="cannot read"):
        config.load_yaml(str(tmp_path / "missing.yaml"))


def test_cli_reports_config_key(cli, tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("batch: 3\n")
    res = cli("train", "--data", str(tmp_path), "--config", str(path))
    assert res.code == 2
    assert res.err.strip() == f"mtl-ray: error: {path}: unknown key 'batch'"


def test_train_config_from_a_job_configs_train_section(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("train: {backbone: m, epochs: 7, loss_reduction: per_task}\nsearch: {lr: [0.001]}\n")
    cfg = config.load_train(str(path), {"epochs": 2, "backbone": None})
    assert (cfg.backbone, cfg.epochs, cfg.loss_reduction) == ("m", 2, "per_task")


def test_job_config_is_checked_whole_and_bad_train_key_named(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("train: {epochs: 3}\nsearch_alg: random\n")
    with pytest.raises(UserError, match=r"job.yaml: key 'search_alg'"):
        config.load_train(str(path))
    path.write_text("train: {epoch: 3}\n")
    with pytest.raises(UserError, match=r"job.yaml: unknown key 'train.epoch'"):
        config.load_train(str(path))


def test_workers_flag_gives_a_count_or_an_elastic_range():
    """`--workers` arrives as text: "2" is two workers, "1-3" elastic, anything else names the key."""
    from mtl_ray.cli.app import build_parser
    from mtl_ray.cli.train import train_config

    parser = build_parser()
    for given, expected in {"2": 2, "1-3": (1, 3), "3-3": 3}.items():
        assert train_config(parser.parse_args(["train", "--data", "d", "--workers", given])).workers == expected
    with pytest.raises(UserError, match="key 'workers'"):
        train_config(parser.parse_args(["train", "--data", "d", "--workers", "two"]))
