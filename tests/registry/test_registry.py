"""The registry against a real sqlite MLflow: the gated alias, pulling the model back (also in a
process where mtl_ray is not importable), `mtl-ray predict`, and `mlflow models serve`."""

import base64
import json
import os
import subprocess
import sys
import tarfile
import urllib.request
import uuid

import numpy as np
import pytest
import torch
from checkpoints import SIZE, TASKS, fresh_predict, make_checkpoint, own_probabilities
from conftest import REPO, wait_http

from mtl_ray.cluster.runtime import free_port
from mtl_ray.data.images import decode_image, encode_image
from mtl_ray.data.synth.dataset import synthesize
from mtl_ray.model import checkpoint
from mtl_ray.model.backbones import to_input


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(1)
    encoded = [encode_image(rng.integers(0, 256, (SIZE + 8, SIZE + 8, 3), dtype=np.uint8), "png") for _ in range(6)]
    paths = []
    for i, data in enumerate(encoded):
        path = tmp_path / f"img{i}.png"
        path.write_bytes(data)
        paths.append(str(path))
    return encoded, paths


def test_gate_moves_the_alias_only_for_a_better_model(cli, local_mlflow, tmp_path):
    for i, score in enumerate([0.70, 0.60, 0.75]):
        make_checkpoint(tmp_path / f"c{i}", score, seed=i)
    first = cli("register", "--checkpoint", tmp_path / "c0", "--json", "-")
    assert first.code == 0, first.err
    assert first.json()["version"] == "1" and first.json()["alias_moved"] is True
    assert "no champion yet" in first.json()["reason"]

    worse = cli("register", "--checkpoint", tmp_path / "c1", "--json", "-")
    assert worse.code == 0, worse.err
    assert worse.json()["version"] == "2" and worse.json()["alias_moved"] is False
    assert worse.json()["reason"] == (
        "mean_auroc 0.6000 does not beat champion version 1 (0.7000), each on its own validation data: "
        "the checkpoint names no validation rows"
    )

    better = cli("register", "--checkpoint", tmp_path / "c2", "--json", "-")
    assert better.json()["version"] == "3" and better.json()["alias_moved"] is True

    from mlflow import MlflowClient

    client = MlflowClient(local_mlflow)
    assert str(client.get_model_version_by_alias("mtl-ray", "champion").version) == "3"
    assert {str(v.version) for v in client.search_model_versions("name='mtl-ray'")} == {"1", "2", "3"}
    tags = client.get_model_version("mtl-ray", "2").tags
    assert json.loads(tags["tasks"]) == TASKS and tags["backbone"] == "xs" and float(tags["mean_auroc"]) == 0.6
    assert "| car | 0.600 |" in client.get_model_version("mtl-ray", "2").description

    make_checkpoint(tmp_path / "other", 0.99, seed=3, tasks=["cat", "dog"])
    other = cli("register", "--checkpoint", tmp_path / "other", "--json", "-")
    assert other.code == 0 and other.json()["alias_moved"] is False, other.err
    assert "predicts other tasks" in other.json()["reason"] and "do not compare" in other.json()["reason"]
    assert str(client.get_model_version_by_alias("mtl-ray", "champion").version) == "3"


def test_a_champion_whose_artifacts_are_gone_gives_way_to_a_model_that_loads(cli, local_mlflow, tmp_path):
    """The local stack's old failure: the registry kept a champion whose S3 objects were gone. The
    gate reports it and moves the alias to the new, loadable model, whatever the old one's score."""
    import shutil

    from mlflow import MlflowClient

    data = tmp_path / "scenes"
    synthesize(str(data), 120, image_size=SIZE, seed=12)
    val = {"path": str(data), "split": "val"}
    make_checkpoint(tmp_path / "old", 0.99, seed=0, val=val)
    make_checkpoint(tmp_path / "new", 0.51, seed=1, val=val)
    assert cli("register", "--checkpoint", tmp_path / "old").code == 0
    shutil.rmtree(tmp_path / "mlruns")  # every artifact of version 1
    res = cli("register", "--checkpoint", tmp_path / "new", "--json", "-")
    assert res.code == 0, res.err
    out = res.json()
    assert out["alias_moved"] is True and "champion version 1 cannot be loaded" in out["reason"], out["reason"]
    assert out["gate_scores"]["champion"] is None and 0.0 <= out["gate_scores"]["challenger"] <= 1.0
    assert str(MlflowClient(local_mlflow).get_model_version_by_alias("mtl-ray", "champion").version) == "2"


@pytest.mark.slow
def test_two_registrations_at_once_leave_the_alias_on_the_model_that_scores_best_on_the_same_rows(
    mlflow_server, tmp_path, monkeypatch
):
    """The gate scores the champion and the challenger on the challenger's validation rows, with the
    registered models themselves; the `mean_auroc` written in the checkpoints is made to lie (the
    worst model claims the best score) so that only a fair comparison gets the order right. Two
    processes register at once against one `mlflow server`."""
    from mtl_ray.data.rows import shard_rows
    from mtl_ray.data.validate import validate
    from mtl_ray.registry.gate import GATE_ROWS, score
    from mtl_ray.registry.tracking import connect
    from mtl_ray.studies.probes import load_sample, probe_fit

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    name = "gate-race"
    data = tmp_path / "scenes"
    synthesize(str(data), 600, image_size=SIZE, seed=11)
    val = {"path": str(data), "split": "val"}
    images, labels = load_sample(validate(str(data)), "train", 512, (SIZE, SIZE))
    make_checkpoint(tmp_path / "untrained", 0.99, seed=0, val=val)
    for steps in (8, 80):
        make_checkpoint(
            tmp_path / f"trained{steps}", 0.5, seed=0, val=val, model=probe_fit("xs", images, labels, steps)
        )
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.uri}
    register = [sys.executable, "-m", "mtl_ray.cli", "register", "--name", name, "--json", "-", "--checkpoint"]
    first = subprocess.run([*register, tmp_path / "untrained"], env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0 and json.loads(first.stdout)["alias_moved"] is True, first.stderr
    racers = [
        subprocess.Popen([*register, tmp_path / f"trained{s}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for s in (8, 80)
    ]
    results = []
    for racer in racers:
        out, err = racer.communicate(timeout=300)
        assert racer.returncode == 0, err.decode()[-2000:]
        results.append(json.loads(out))
    for result in results:
        assert result["gate_scores"]["rows"] == min(GATE_ROWS, validate(str(data)).rows_in("val"))
        assert "on the same" in result["reason"], result["reason"]

    client = connect(mlflow_server.uri)  # this process's MLflow may point at an earlier test's store
    _, encoded, truth = shard_rows(str(data), GATE_ROWS, "val", tuple(TASKS))
    fair = {v: score(f"models:/{name}/{v}", encoded, truth, TASKS) for v in ("1", "2", "3")}
    assert max(fair["2"], fair["3"]) > fair["1"] + 0.05, fair  # training helped: the claim of 0.99 was a lie
    assert fair["2"] != fair["3"]
    assert str(client.get_model_version_by_alias(name, "champion").version) == max(fair, key=fair.get), (
        fair,
        results,
    )


def test_predictions_through_the_registry_equal_the_checkpoints_own(cli, local_mlflow, tmp_path, images):
    model = make_checkpoint(tmp_path / "c", 0.7, seed=3)
    assert cli("register", "--checkpoint", tmp_path / "c").code == 0
    encoded, paths = images
    out = cli("predict", "--model", "models:/mtl-ray@champion", *paths, "--json", "-")
    assert out.code == 0, out.err
    got = out.json()
    assert got["tasks"] == TASKS
    assert got["ids"] == paths
    probs = np.array([[row[t] for t in TASKS] for row in got["predictions"]])
    assert ((probs >= 0) & (probs <= 1)).all()
    np.testing.assert_allclose(probs, own_probabilities(model, encoded), atol=1e-5)


@pytest.mark.parametrize(
    "kind",
    [{"heads": "tower"}, {"groups": [["pedestrian", "traffic_light"], ["car", "stop_sign"]]}],
    ids=["tower", "groups"],
)
def test_the_registered_model_class_loads_a_checkpoint_with_tower_heads_or_task_groups(tmp_path, images, kind):
    """The registered model rebuilds its network from the checkpoint's meta (`checkpoint.network`): a
    checkpoint of tower heads, or of one network per task group, predicts as the network that wrote it."""
    from mtl_ray.model.partition import network
    from mtl_ray.registry.pyfunc import MultiTaskModel

    model = make_checkpoint(tmp_path / "c", 0.7, seed=3, model=network("xs", TASKS, **kind))
    registered = MultiTaskModel()
    registered.load(*checkpoint.load(str(tmp_path / "c")))
    encoded, _ = images
    pixels = np.stack([decode_image(b, size=(SIZE, SIZE)) for b in encoded])
    np.testing.assert_allclose(registered.probabilities(pixels), own_probabilities(model, encoded), atol=1e-6)


def test_a_fresh_process_without_mtl_ray_loads_the_champion(cli, local_mlflow, tmp_path, images):
    model = make_checkpoint(tmp_path / "c", 0.7, seed=4)
    assert cli("register", "--checkpoint", tmp_path / "c").code == 0
    encoded, paths = images
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    got = fresh_predict(
        "models:/mtl-ray@champion", paths, {**os.environ, "MLFLOW_TRACKING_URI": local_mlflow}, elsewhere
    )
    assert got["columns"] == TASKS
    assert "/artifacts/code/mtl_ray/" in got["code"]
    np.testing.assert_allclose(np.array(got["values"]), own_probabilities(model, encoded), atol=1e-5)


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations_and_names_a_bad_row(cli, local_mlflow, tmp_path, images):
    """Over HTTP: good rows are scored, a row whose bytes are not an image gets NaN probabilities and its
    reason in the `error` column, and no stack trace comes back."""
    model = make_checkpoint(tmp_path / "c", 0.7, seed=5)
    assert cli("register", "--checkpoint", tmp_path / "c").code == 0
    encoded, _ = images
    port = free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "mlflow")
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(
        [
            exe,
            "models",
            "serve",
            "-m",
            "models:/mtl-ray@champion",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PATH": f"{os.path.dirname(exe)}{os.pathsep}{os.environ.get('PATH', '')}"},  # its uvicorn
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", timeout=120)
        sent = [encoded[0], b"this is not an image", encoded[1], encoded[2]]
        body = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(b).decode()] for b in sent]}}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 200
            text = response.read().decode()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert "Traceback" not in text and "/site-packages/" not in text
    rows = json.loads(text)["predictions"]
    probs = np.array([[row[t] for t in TASKS] for row in rows], dtype=float)
    good = [0, 2, 3]
    np.testing.assert_allclose(probs[good], own_probabilities(model, encoded[:3]), atol=1e-5)
    assert np.isnan(probs[1]).all()
    assert rows[1]["error"].startswith("row 1: cannot decode image"), rows
    assert not any(isinstance(rows[i].get("error"), str) for i in good), rows


def test_predict_scores_shards(cli, local_mlflow, tmp_path):
    make_checkpoint(tmp_path / "c", 0.7, seed=6)
    assert cli("register", "--checkpoint", tmp_path / "c").code == 0
    synthesize(str(tmp_path / "d"), 12, image_size=SIZE, shards=2)
    out = cli("predict", "--model", "models:/mtl-ray@champion", "--data", tmp_path / "d", "--limit", "8", "--json", "-")
    assert out.code == 0, out.err
    got = out.json()
    assert len(got["predictions"]) == 8 and len(got["ids"]) == 8
    assert got["ids"][0].startswith("synth-0-")
    assert set(got["predictions"][0]) == set(TASKS)


def test_register_and_predict_bad_input(cli, local_mlflow, tmp_path):
    missing = cli("register", "--checkpoint", tmp_path / "nowhere")
    assert missing.code == 2 and "not a checkpoint directory" in missing.err
    no_run = cli("register", "--run", "0123456789abcdef")
    assert no_run.code == 2 and "--run 0123456789abcdef: no such run" in no_run.err
    bad_name = cli("register", "--checkpoint", tmp_path, "--name", "a/b")
    assert bad_name.code == 2 and "registry name 'a/b'" in bad_name.err
    no_model = cli("predict", "--model", "models:/nothing@champion", str(tmp_path / "x.png"))  # no such file
    assert no_model.code == 2 and "x.png: cannot read image" in no_model.err
    make_checkpoint(tmp_path / "c", 0.7, seed=7)
    (tmp_path / "x.png").write_bytes(b"\x89PNG garbage")
    unknown = cli("predict", "--model", "models:/nothing@champion", str(tmp_path / "x.png"))
    assert unknown.code == 2 and "--model models:/nothing@champion: cannot load" in unknown.err
    for result in (missing, no_run, bad_name, no_model, unknown):
        assert len(result.err.strip().splitlines()) == 1, result.err


def test_a_diverged_checkpoint_is_never_registered(cli, local_mlflow, tmp_path):
    from mtl_ray.model.metrics import task_metrics

    make_checkpoint(tmp_path / "nan", 0.9, seed=3)
    _, meta = checkpoint.load(str(tmp_path / "nan"))
    meta["metrics"]["val"]["car"] = task_metrics(np.array([np.nan, 0.5, np.inf]), np.array([1.0, 0.0, 1.0]))
    with open(tmp_path / "nan" / "meta.json", "w") as f:
        json.dump(meta, f)
    res = cli("register", "--checkpoint", tmp_path / "nan")
    assert res.code == 2 and len(res.err.strip().splitlines()) == 1
    assert "not registered: the model's validation outputs are not finite (2 NaN or inf" in res.err
    assert "probabilities for car); it diverged" in res.err
    from mlflow import MlflowClient

    assert MlflowClient(local_mlflow).search_registered_models() == []


def test_unreachable_tracking_server_is_one_line(cli, tmp_path, monkeypatch):
    make_checkpoint(tmp_path / "c", 0.7, seed=8)
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    out = cli("register", "--checkpoint", tmp_path / "c")
    assert out.code == 2
    assert out.err.startswith(f"mtl-ray: error: tracking server {dead}: unreachable after 3 attempts")
    assert len(out.err.strip().splitlines()) == 1


def unpack_model(tmp_path, name: str):
    """A model fixture (tests/fixtures/README.md), unpacked: (model directory, input images, expected)."""
    with tarfile.open(os.path.join(REPO, "tests", "fixtures", f"{name}.tar.gz")) as tar:
        tar.extractall(tmp_path, filter="data")
    root = tmp_path / name
    expected = json.loads((root / "expected.json").read_text())
    return root / "model", sorted(str(p) for p in (root / "inputs").iterdir()), expected


@pytest.mark.parametrize(
    "name, own_module",
    [
        ("model-0.1.0", "format.py"),  # saved before mtl_ray/format.py became mtl_ray/shards.py
        ("model-0.1.0-flat", "train.py"),  # saved by the flat layout, before the packages by stage
    ],
)
def test_an_old_model_predicts_with_its_own_code_and_with_todays(cli, tmp_path, name, own_module):
    model, paths, expected = unpack_model(tmp_path, name)
    assert (model / "code" / "mtl_ray" / own_module).is_file()  # its code is not today's
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    own = fresh_predict(str(model), paths, dict(os.environ), elsewhere)
    assert own["code"].startswith(str(model / "code" / "mtl_ray"))
    assert own["columns"] == expected["tasks"]
    np.testing.assert_allclose(own["values"], expected["probabilities"], atol=1e-6)

    today = cli("predict", "--model", model, *paths, "--json", "-")  # this process has imported today's mtl_ray
    assert today.code == 0, today.err
    probs = [[row[t] for t in expected["tasks"]] for row in today.json()["predictions"]]
    np.testing.assert_allclose(probs, expected["probabilities"], atol=1e-6)


def test_the_gate_scores_a_champion_registered_by_the_flat_layout(cli, local_mlflow, tmp_path):
    """A champion saved by the flat layout's code is loaded by today's gate and scored on the same rows."""
    from mtl_ray.registry.tracking import connect

    model, _, expected = unpack_model(tmp_path, "model-0.1.0-flat")
    client = connect(local_mlflow)  # this process's MLflow may point at an earlier test's store
    client.create_registered_model("mtl-ray")
    run = client.create_run(client.create_experiment("old"))
    client.log_artifacts(run.info.run_id, str(model), "model")
    old = client.create_model_version("mtl-ray", f"runs:/{run.info.run_id}/model", run.info.run_id)
    for key, value in expected["version_tags"].items():
        client.set_model_version_tag("mtl-ray", old.version, key, value)
    client.set_registered_model_alias("mtl-ray", "champion", old.version)
    data = tmp_path / "scenes"
    synthesize(str(data), 300, image_size=SIZE, seed=4)
    image = {"size": [24, 40], "channels": 3, "resize": "letterbox"}
    make_checkpoint(tmp_path / "new", 0.6, seed=2, image=image, val={"path": str(data), "split": "val"})
    res = cli("register", "--checkpoint", tmp_path / "new", "--json", "-")
    assert res.code == 0, res.err
    scores = res.json()["gate_scores"]
    assert scores["champion"] is not None and scores["challenger"] is not None, res.json()["reason"]
    assert f"on the same {scores['rows']} validation rows" in res.json()["reason"]


def test_the_registered_model_letterboxes_as_its_training_run_did(cli, local_mlflow, tmp_path, images):
    """A model trained at 28x56 (HxW) with letterbox: predict brings any image there the same way."""
    from mtl_ray.data.images import fit, read_image

    image = {"size": [28, 56], "channels": 3, "resize": "letterbox"}
    model = make_checkpoint(tmp_path / "c", 0.7, seed=9, image=image)
    assert cli("register", "--checkpoint", tmp_path / "c").code == 0
    encoded, paths = images  # 40x40 images
    out = cli("predict", "--model", "models:/mtl-ray@champion", *paths, "--json", "-")
    assert out.code == 0, out.err
    probs = np.array([[row[t] for t in TASKS] for row in out.json()["predictions"]])
    boxed = np.stack([fit(read_image(b), (28, 56), "letterbox") for b in encoded])
    with torch.no_grad():
        want = torch.sigmoid(model(to_input(torch.from_numpy(boxed)))).double().numpy()
    np.testing.assert_allclose(probs, want, atol=1e-5)
    squashed = np.stack([read_image(b, size=(28, 56), resize="squash") for b in encoded])
    with torch.no_grad():
        other = torch.sigmoid(model(to_input(torch.from_numpy(squashed)))).double().numpy()
    assert np.abs(other - want).max() > 1e-4  # the resize mode matters, so the check above could fail


def test_predict_scores_the_readable_images_and_names_the_others(cli, local_mlflow, tmp_path, images):
    model = make_checkpoint(tmp_path / "c", 0.7, seed=10)
    assert cli("register", "--checkpoint", tmp_path / "c").code == 0
    encoded, paths = images
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    res = cli(
        "predict", "--model", "models:/mtl-ray@champion", paths[0], tmp_path / "broken.png", paths[1], "--json", "-"
    )
    assert res.code == 2
    out = res.json()
    assert out["predictions"][1] == {t: None for t in TASKS}
    assert (
        list(out["errors"]) == [str(tmp_path / "broken.png")]
        and "cannot decode image" in out["errors"][str(tmp_path / "broken.png")]
    )
    probs = np.array([[out["predictions"][i][t] for t in TASKS] for i in (0, 2)])
    np.testing.assert_allclose(probs, own_probabilities(model, encoded[:2]), atol=1e-5)
    assert res.err.count("mtl-ray: error: ") == 1 and "broken.png" in res.err


def test_jobs_starting_at_once_all_get_the_experiment_and_record_their_data(mlflow_server):
    """Tune jobs started together each look the experiment up, find none and create it: the server
    answers all but one RESOURCE_ALREADY_EXISTS, and every job must go on with the one that won. Their
    first trials then record the same datasets at once, which the server inserts by name and digest:
    every run must still get both of its inputs."""
    import threading

    from mlflow import MlflowClient

    from mtl_ray.registry.tracking import experiment_id, log_datasets

    name, jobs = f"race-{uuid.uuid4().hex[:8]}", 8
    tasks = {"car": {"labeled": 3, "positive": 1}}
    profiles = {
        context: {"source": "s3://bucket/data", "split": split, "rows": 3, "tasks": tasks, "digest": split * 4}
        for context, split in (("training", "train"), ("validation", "val"))
    }
    start, logging, got, runs, errors = threading.Barrier(jobs), threading.Barrier(jobs), [], [], []

    def job():
        client = MlflowClient(mlflow_server.uri)
        start.wait()
        try:
            got.append(experiment_id(client, name))
            run_id = client.create_run(got[-1]).info.run_id
            logging.wait()
            log_datasets(client, run_id, profiles)
            runs.append(run_id)
        except Exception as exc:  # the failure this test is about, reported below
            errors.append(exc)

    threads = [threading.Thread(target=job) for _ in range(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == [] and len(got) == jobs and len(set(got)) == 1, (errors, got)
    client = MlflowClient(mlflow_server.uri)
    assert client.get_experiment_by_name(name).experiment_id == got[0]
    for run_id in runs:
        inputs = {i.tags[0].value: i.dataset for i in client.get_run(run_id).inputs.dataset_inputs}
        assert set(inputs) == {"training", "validation"}, (run_id, inputs)
        assert json.loads(inputs["training"].profile)["rows"] == 3
