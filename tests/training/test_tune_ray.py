"""`mtl-ray tune` and `mtl-ray quickstart` end to end on a real local Ray, against a real
`mlflow server` (sqlite + s3 artifacts on moto_server) and a local sqlite store."""

import json

import numpy as np
import pytest
import torch
import yaml
from checkpoints import fresh_predict, own_probabilities

from mtl_ray.data.images import decode_image, encode_image
from mtl_ray.data.synth.dataset import synthesize
from mtl_ray.model import checkpoint
from mtl_ray.model.partition import network
from mtl_ray.registry.pyfunc import MultiTaskModel

SIZE = 32
GROUPS = "pedestrian,stop_sign|car,traffic_light"


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "shards"
    synthesize(str(out), 800, image_size=SIZE, shards=2, seed=3)
    return str(out)


def _images(tmp_path, n=4, size=SIZE):
    rng = np.random.default_rng(2)
    encoded = [encode_image(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "png") for _ in range(n)]
    paths = []
    for i, data in enumerate(encoded):
        (tmp_path / f"i{i}.png").write_bytes(data)
        paths.append(str(tmp_path / f"i{i}.png"))
    return encoded, paths


def _checkpoint_model(directory: str) -> torch.nn.Module:
    """The network a checkpoint holds, rebuilt by hand (one, or one per task group)."""
    state, meta = checkpoint.load(directory)
    model = network(meta["backbone"], meta["tasks"], groups=meta.get("groups"))
    model.load_state_dict(state["model"])
    return model.eval()


def test_quickstart_leaves_a_champion_a_fresh_process_can_use(ray_session, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = cli("quickstart", "--out", "qs", "--scenes", "400", "--epochs", "1", "--json", "-")
    assert out.code == 0, out.err[-3000:]
    result = out.json()
    assert result["tracking_uri"] == f"sqlite:///{tmp_path}/mlruns.db"
    assert result["model_uri"] == "models:/mtl-ray@champion"
    assert result["data"] == "qs/data"
    assert len(result["trials"]) == 4
    assert {t["config"]["backbone"] for t in result["trials"]} == {"xs", "s"}
    assert {json.dumps(t["config"]["weighting"]) for t in result["trials"]} == {
        '{"name": "equal"}',
        '{"name": "uncertainty"}',
    }
    assert result["registered"]["alias_moved"] is True
    assert len(result["predictions"]) == 5
    assert "mlflow ui --backend-store-uri sqlite:///" in out.err

    encoded, paths = _images(tmp_path, size=64)  # the quickstart's scenes are 64 px
    got = fresh_predict(
        "models:/mtl-ray@champion",
        paths,
        {"MLFLOW_TRACKING_URI": result["tracking_uri"], "PATH": "/usr/bin:/bin"},
        tmp_path,
    )
    model = _checkpoint_model(result["best"]["checkpoint"])
    np.testing.assert_allclose(np.array(got["values"]), own_probabilities(model, encoded, size=64), atol=1e-5)


def test_a_tracking_server_down_at_registration_keeps_the_best_checkpoint_for_a_later_register(
    ray_session, small_scenes, cli, tmp_path, monkeypatch
):
    """The server is killed by pid when the search ends: tune prints the best trial's checkpoint and
    exits 1; with a server back on the same database, `register --checkpoint` succeeds."""
    import os
    import signal
    import time

    from conftest import start_mlflow_server, stop_group
    from ray.tune import Callback

    from mtl_ray.config import TuneConfig
    from mtl_ray.registry.register import register
    from mtl_ray.training.tune import tune

    (tmp_path / "artifacts").mkdir()
    env = dict(os.environ)
    server, uri = start_mlflow_server(tmp_path, str(tmp_path / "artifacts"), env)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)

    class StopServer(Callback):  # pickled with the experiment state: it holds the pid only
        def __init__(self, pid: int):
            self.pid = pid

        def on_experiment_end(self, trials, **info):
            os.killpg(self.pid, signal.SIGKILL)

    config = TuneConfig.model_validate(
        {"train": {"epochs": 1}, "search": {"backbone": ["xs"]}, "num_samples": 1, "tracking": {"uri": uri}}
    )
    result = tune(small_scenes, config=config, storage_path=str(tmp_path / "runs"), callbacks=[StopServer(server.pid)])
    stopped = time.monotonic()
    assert server.wait(timeout=10) == -signal.SIGKILL
    assert result.exit_code == 1 and result.registered is None
    assert "unreachable" in result.registration_error
    assert f"mtl-ray register --checkpoint {result.best.checkpoint}" in result.registration_error
    assert result.best.mean_auroc is not None and f"checkpoint {result.best.checkpoint}" in result.render()
    server, uri = start_mlflow_server(tmp_path, str(tmp_path / "artifacts"), env)  # the same database
    try:
        later = register(checkpoint_uri=result.best.checkpoint, tracking_uri=uri)
        assert later.version == "1" and later.alias_moved
        print(f"registration gave up {time.monotonic() - stopped:.0f} s after the server stopped")
    finally:
        stop_group(server)


def test_tune_resume_finishes_a_killed_search_and_registers_once(ray_session, small_scenes, cli, tmp_path, monkeypatch):
    """The tune driver (and its own local Ray) killed by pid once the first of two trials is done;
    `--resume NAME` keeps that trial, runs the other, logs into the same parent run, registers once.
    The search is over task groups: one shared network, or one network per group, which the registered
    model class loads from its checkpoint."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from mlflow import MlflowClient

    db = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", db)
    config = tmp_path / "tune.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "train": {"epochs": 1, "backbone": "xs"},
                "search": {"groups": [None, GROUPS]},
                "scheduler": {"name": "fifo"},
                "max_concurrent_trials": 1,
                "registry": {"name": "resumed"},
            }
        )
    )
    runs = tmp_path / "runs"
    command = ["tune", "--data", small_scenes, "--config", config, "--storage", runs]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # its own local Ray
    driver = subprocess.Popen(
        [sys.executable, "-m", "mtl_ray.cli", *map(str, command), "--name", "killed"],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    while not list(runs.glob("killed-*/checkpoint_*")):  # a 1-epoch trial is done with its checkpoint
        assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no trial finished within 300 s"
        time.sleep(0.5)
    killed = time.monotonic()
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)
    driver.stderr.close()

    again = cli(*command, "--resume", "killed", "--json", "-")
    assert again.code == 0, again.err
    out = again.json()
    assert out["name"] == "killed" and len(out["trials"]) == 2
    assert {t["status"] for t in out["trials"]} == {"completed"}, out["trials"]
    assert sorted(str(t["config"]["groups"]) for t in out["trials"]) == ["None", GROUPS]
    grouped = next(t for t in out["trials"] if t["config"]["groups"])
    _, meta = checkpoint.load(grouped["checkpoint"])
    assert meta["groups"] == [g.split(",") for g in GROUPS.split("|")] and 0.0 < meta["metrics"]["mean_auroc"] <= 1.0
    encoded, _ = _images(tmp_path)
    registered = MultiTaskModel()
    registered.load(*checkpoint.load(grouped["checkpoint"]))
    pixels = np.stack([decode_image(b, size=(SIZE, SIZE)) for b in encoded])
    np.testing.assert_allclose(
        registered.probabilities(pixels),
        own_probabilities(_checkpoint_model(grouped["checkpoint"]), encoded),
        atol=1e-5,
    )
    assert out["registered"]["version"] == "1"
    client = MlflowClient(db)
    assert len(client.search_model_versions("name='resumed'")) == 1
    experiment = client.get_experiment_by_name("mtl-ray").experiment_id
    parents = client.search_runs([experiment], filter_string="tags.`mtl_ray.kind` = 'tune'")
    assert [p.info.run_id for p in parents] == [out["parent_run_id"]]
    children = client.search_runs([experiment], filter_string=f"tags.`mlflow.parentRunId` = '{out['parent_run_id']}'")
    assert len({c.data.tags["mtl_ray.trial_id"] for c in children}) == 2
    print(f"resumed search finished {time.monotonic() - killed:.0f} s after the kill")


def test_resuming_a_search_saved_by_the_flat_layout_is_refused_in_one_line(
    ray_session, small_scenes, cli, tmp_path, monkeypatch
):
    """A search started before the packages by stage saved its Tune callbacks as `mtl_ray.tune.*`:
    Tune cannot unpickle that state today, and the resume says so instead of a traceback."""
    import sys
    import types

    import ray.cloudpickle as pickle
    from ray.tune import Callback

    old = types.ModuleType("mtl_ray.tune")
    exec("class TrialLogger(Callback):\n    pass", {"Callback": Callback}, old.__dict__)
    old.TrialLogger.__module__ = "mtl_ray.tune"
    monkeypatch.setitem(sys.modules, "mtl_ray.tune", old)
    state = pickle.dumps({"_run_config": {"callbacks": [old.TrialLogger()]}, "__trainable_name": "train_driver"})
    monkeypatch.delitem(sys.modules, "mtl_ray.tune")
    (tmp_path / "runs" / "before-the-move").mkdir(parents=True)
    (tmp_path / "runs" / "before-the-move" / "tuner.pkl").write_bytes(state)
    config = tmp_path / "tune.yaml"
    config.write_text(yaml.safe_dump({"train": {"epochs": 1}, "search": {"backbone": ["xs"]}}))

    out = cli(
        "tune",
        "--data",
        small_scenes,
        "--config",
        config,
        "--storage",
        tmp_path / "runs",
        "--resume",
        "before-the-move",
    )
    assert out.code == 2, out.err[-2000:]
    assert len(out.err.strip().splitlines()) == 1, out.err
    assert "--resume before-the-move: the search was started by another version of mtl-ray" in out.err
    assert "No module named 'mtl_ray.tune'" in out.err
