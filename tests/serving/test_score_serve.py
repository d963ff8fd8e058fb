"""`mtl-ray score` (Ray Data into Parquet on S3) and `mtl-ray serve` (a real Ray Serve app answered
over HTTP), against a sqlite registry, on the test session's Ray; every path gives the numbers the
registered model gives."""

import base64
import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from checkpoints import TASKS, make_checkpoint
from test_requests import multipart

from mtl_ray.cluster.runtime import free_port
from mtl_ray.data.images import encode_image
from mtl_ray.data.shards import image_bytes
from mtl_ray.data.storage import s3_filesystem
from mtl_ray.data.synth.dataset import synthesize

pytestmark = pytest.mark.slow
SIZE = 32


@pytest.fixture
def champion(cli, local_mlflow, tmp_path):
    """An xs model registered as models:/mtl-ray@champion (version 1)."""
    make_checkpoint(tmp_path / "v1", 0.7, seed=0)
    assert cli("register", "--checkpoint", tmp_path / "v1").code == 0
    return "models:/mtl-ray@champion"


def corrupt(path, row: int) -> bytes:
    """Replace the image of `row` in shard `path` with bytes no decoder reads; returns its id."""
    table = pq.read_table(path)
    images = image_bytes(table.column("image")).to_pylist()
    images[row] = b"\x89PNG\r\n\x1a\n damaged in transfer"
    table = table.set_column(table.schema.get_field_index("image"), "image", pa.array(images, pa.binary()))
    pq.write_table(table.replace_schema_metadata(pq.read_schema(path).metadata), path)
    return table.column("id")[row].as_py()


def predictions(cli, model: str, data) -> dict[str, list[float]]:
    out = cli("predict", "--model", model, "--data", data, "--json", "-")
    assert out.code in (0, 2), out.err
    doc = out.json()
    return {i: [p[t] for t in TASKS] for i, p in zip(doc["ids"], doc["predictions"], strict=True)}


def test_score_writes_s3_lists_the_corrupt_row_and_matches_predict(ray_session, s3, cli, champion, tmp_path):
    data = tmp_path / "scenes"
    synthesize(str(data), 1200, image_size=SIZE, shards=2, encoding="png", seed=5)
    bad_id = corrupt(data / "part-00001-of-00002.parquet", 450)  # deep: validation decodes a sample
    out = f"s3://{s3.bucket()}/scores"

    res = cli("score", "--model", champion, "--data", data, "--out", out, "--json", "-")
    assert res.code == 0, res.err[-3000:]
    summary = res.json()
    assert (summary["rows"], summary["skipped"], summary["model_version"]) == (1199, 1, "1")
    assert "score: rows: 1200/1200" in res.err
    fs = s3_filesystem()
    root = out[len("s3://") :]
    files = [f.path for f in fs.get_file_info(pafs.FileSelector(root)) if f.path.endswith(".parquet")]
    assert len(files) == summary["files"] == 1  # a file of many blocks, not one per block
    scores = pq.read_table(files[0], filesystem=fs)
    assert scores.column_names == ["id", *TASKS, "model_version"]
    assert set(scores.column("model_version").to_pylist()) == {"1"} and bad_id not in scores.column("id").to_pylist()
    with fs.open_input_stream(f"{root}/_skipped.jsonl") as f:
        listed = [json.loads(line) for line in f.read().decode().splitlines()]
    assert [s["id"] for s in listed] == [bad_id] and "part-00001-of-00002.parquet" in listed[0]["problem"]
    assert "cannot decode image" in listed[0]["problem"]

    expected = predictions(cli, champion, data)  # the registered model, as users load it
    got = dict(
        zip(scores.column("id").to_pylist(), np.stack([scores.column(t) for t in TASKS], 1).tolist(), strict=True)
    )
    common = sorted(set(got) & set(expected))
    assert len(common) == 1199
    np.testing.assert_allclose([got[i] for i in common], [expected[i] for i in common], atol=1e-6)

    again = cli("score", "--model", champion, "--data", data, "--out", out)
    assert again.code == 2 and "already holds 2 files" in again.err and "--overwrite" in again.err
    strict = cli("score", "--model", champion, "--data", data, "--out", out, "--overwrite", "--strict")
    errors = [line for line in strict.err.splitlines() if not line.startswith("score: rows")]
    assert strict.code == 2 and len(errors) == 1 and errors[0].startswith("mtl-ray: error: "), strict.err[-2000:]
    assert "part-00001-of-00002.parquet: row 450: cannot decode image" in strict.err


def post(url: str, body: bytes, content_type: str = "application/octet-stream") -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_serve_batches_requests_and_follows_the_alias_without_dropping_one(ray_session, cli, champion, tmp_path):
    from mtl_ray.config import ServeConfig
    from mtl_ray.serving.serve import start, stop

    rng = np.random.default_rng(4)
    images = [encode_image(rng.integers(0, 256, (SIZE + 9, SIZE - 5, 3), dtype=np.uint8), "png") for _ in range(5)]
    paths = []
    for i, data in enumerate(images):
        (tmp_path / f"{i}.png").write_bytes(data)
        paths.append(str(tmp_path / f"{i}.png"))
    own = cli("predict", "--model", champion, *paths, "--json", "-").json()["predictions"]
    want = np.array([[p[t] for t in TASKS] for p in own])

    options = ServeConfig(model=champion, watch_s=0.5, max_batch_size=8, replica_cpus=0.5, max_body_mb=0.05)
    started = start(options, port=free_port())
    try:
        url = started.url
        assert started.model_version == "1"
        with urllib.request.urlopen(f"{url}/healthz", timeout=10) as answer:
            assert answer.status == 200 and json.loads(answer.read())["model_version"] == "1"

        status, one = post(f"{url}/predict", images[0], "image/png")
        assert status == 200 and one["model_version"] == "1"
        np.testing.assert_allclose([[one["predictions"][0][t] for t in TASKS]], want[:1], atol=1e-6)
        status, many = post(f"{url}/predict", *multipart(*images[1:3]))
        assert status == 200 and len(many["predictions"]) == 2
        np.testing.assert_allclose([[p[t] for t in TASKS] for p in many["predictions"]], want[1:3], atol=1e-6)
        body = json.dumps({"images": [base64.b64encode(x).decode() for x in images[2:5]]}).encode()
        status, listed = post(f"{url}/predict", body, "application/json")
        assert status == 200
        np.testing.assert_allclose([[p[t] for t in TASKS] for p in listed["predictions"]], want[2:5], atol=1e-6)

        for body, content_type, message in (
            (b"GIF89a not really", "image/gif", "image 0: cannot decode image"),
            (b"{oops", "application/json", "not valid JSON"),
            (b"x" * 60000, "image/png", "the body is 60,000 bytes; the limit is 52,428"),
        ):
            status, answer = post(f"{url}/predict", body, content_type)
            assert status == 400 and message in answer["error"] and "Traceback" not in answer["error"], answer
        assert post(f"{url}/nowhere", b"x")[0] == 404

        answers, failed, done = [], [], threading.Event()

        def load() -> None:  # bounded: until told to stop, at most 60 s
            deadline = time.monotonic() + 60
            while not done.is_set() and time.monotonic() < deadline:
                status, answer = post(f"{url}/predict", images[0], "image/png")
                (answers if status == 200 else failed).append(answer)

        clients = [threading.Thread(target=load) for _ in range(4)]
        for client in clients:
            client.start()
        make_checkpoint(tmp_path / "v2", 0.9, seed=1)  # claims a better score: the gate moves the alias
        moved = cli("register", "--checkpoint", tmp_path / "v2", "--json", "-")
        assert moved.code == 0 and moved.json()["alias_moved"] is True
        deadline = time.monotonic() + 30
        while not any(a["model_version"] == "2" for a in answers[-20:]) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        done.set()
        for client in clients:
            client.join()
        versions = [a["model_version"] for a in answers]
        assert failed == [] and "1" in versions and "2" in versions, (failed[:3], versions[-5:])
        assert versions.index("2") > 0 and all(v == "2" for v in versions[versions.index("2") :][-10:])
    finally:
        stop()
