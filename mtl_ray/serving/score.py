"""`mtl-ray score`: a trained model scores every row of a set of shards with Ray Data, into Parquet.

The model is named once (`models:/NAME@ALIAS` resolved to its version here, before anything runs,
so one output never mixes two versions), loaded on the driver and put in the object store; an actor
pool (`Scorer`, one model per actor, on a GPU each with `gpu`) takes the rows that Ray Data read
and decoded in tasks (`mtl_ray.training.dataset.read`: the same decode and resize as training and
the registered model) and writes `id`, one probability column per task and `model_version`, in
files of about `FILE_ROWS` rows. An unreadable image is skipped, counted and listed in
`OUT/_skipped.jsonl` (with `strict`, the first one is an error naming its shard and row). Memory is
bounded by the stream, not by the data: nothing is materialized.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from mtl_ray import progress
from mtl_ray.data import storage
from mtl_ray.data.shards import ID_COLUMN
from mtl_ray.data.validate import ValidationReport, validate
from mtl_ray.errors import UserError
from mtl_ray.result import Result, plural

FILE_ROWS = 200_000
"""Rows per output file, about: scores are small (an id and a float per task), so few large files."""
REPORT_NAME = "_skipped.jsonl"
VERSION_COLUMN = "model_version"
BATCH_ROWS = 256


@dataclass
class ScoreResult(Result):
    """What `score` wrote: rows scored and skipped, how fast, where, and with which model version."""

    model: str
    model_version: str
    tasks: list[str]
    rows: int
    skipped: int
    images_per_s: float
    seconds: float
    out: str
    files: int
    report: str | None

    def render(self) -> str:
        from mtl_ray.registry.sources import named

        model = named(self.model, self.model_version)
        lines = [
            f"scored {self.rows:,} rows with {model} into {plural(self.files, 'file')} at {self.out}: "
            f"{self.images_per_s:,.0f} images/s, {self.seconds:.0f} s; tasks: {', '.join(self.tasks)}"
        ]
        if self.skipped:
            lines.append(f"skipped {plural(self.skipped, 'unreadable image')}, listed in {self.report}")
        return "\n".join(lines)


class Scorer:
    """Ray Data actor: the model, loaded once from the object store; a batch of decoded rows → the
    scores of its readable rows. Unreadable rows (marked upstream) go to the inbox, as the first user
    error with `strict`."""

    def __init__(
        self, weights: list, meta: dict, version: str, fmt, inbox, strict: bool, device: str, threads: int
    ) -> None:
        import ray
        import torch

        from mtl_ray.registry.pyfunc import MultiTaskModel

        torch.set_num_threads(threads)
        self.model = MultiTaskModel()
        self.model.load(ray.get(weights[0]), meta, device)
        self.version, self.fmt, self.inbox, self.strict = version, fmt, inbox, strict

    def __call__(self, batch: pa.Table) -> pa.Table:
        import ray

        from mtl_ray.data.shards import decode_column
        from mtl_ray.training.dataset import PROBLEM_COLUMN, SKIP_COLUMN

        skip = np.asarray(batch.column(SKIP_COLUMN), dtype=bool)
        skipped = []
        if skip.any():
            problems = batch.column(PROBLEM_COLUMN).to_pylist()
            ids = batch.column(ID_COLUMN).to_pylist()
            skipped = [{"id": ids[i], "problem": problems[i]} for i in np.flatnonzero(skip).tolist()]
            if self.strict:
                ray.get(self.inbox.put.remote(next(p for p in problems if p)))
                raise UserError("an unreadable image (--strict)")
            batch = batch.filter(pa.array(~skip))
        self.inbox.report.remote({"rows": batch.num_rows, "skipped": skipped})
        probs = self.model.probabilities(decode_column(batch.column(self.fmt.image_column), self.fmt).images)
        columns = {ID_COLUMN: batch.column(ID_COLUMN)}
        columns.update({task: pa.array(probs[:, j]) for j, task in enumerate(self.model.tasks)})
        columns[VERSION_COLUMN] = pa.array([self.version] * batch.num_rows, pa.string())
        return pa.table(columns)


def _check_ids(report: ValidationReport) -> None:
    """Scores are written by row id: every shard needs its `id` column."""
    import pyarrow.parquet as pq

    for shard in report.shards:
        names = pq.read_schema(report.fs.open_input_file(shard.path)).names
        if ID_COLUMN not in names:
            raise UserError(
                f"{shard.name}: no {ID_COLUMN!r} column; scores are written by row id (mtl-ray data convert writes one)"
            )


def _prepare_out(out: str, overwrite: bool) -> tuple[pafs.FileSystem, str]:
    """The output location, empty or emptied: files already there are refused unless `overwrite`."""
    fs, root = storage.prepare_output(out)
    found = [
        e
        for e in fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        if e.type == pafs.FileType.File
    ]
    if found and not overwrite:
        example = storage.display(found[0].path, root, out)
        raise UserError(f"{out}: already holds {plural(len(found), 'file')} (e.g. {example}); pass --overwrite")
    if found:
        fs.delete_dir_contents(root)
    return fs, root


def _concurrency(text: str | int | None) -> tuple[int, int] | None:
    """`N` or `MIN-MAX` actors (an autoscaling pool); None for the default."""
    if text is None or isinstance(text, int):
        return None if text is None else (text, text)
    low, sep, high = str(text).partition("-")
    try:
        pair = (int(low), int(high if sep else low))
    except ValueError:
        pair = (0, 0)
    if not 1 <= pair[0] <= pair[1]:
        raise UserError(f"--concurrency {text}: expected N or MIN-MAX with 1 <= MIN <= MAX")
    return pair


def _rows_to_score(data: str, split: str | None) -> tuple[ValidationReport, int]:
    report = validate(data)
    report.raise_if_unusable(need_tasks=False)
    _check_ids(report)
    rows = report.rows if split is None else report.rows_in(split)
    if rows == 0:
        raise UserError(f"{data}: no rows with split {split!r}")
    return report, rows


def _scores(report: ValidationReport, split, trained, inbox, pool, gpu: bool, batch_size: int, strict: bool):
    """The Ray Data pipeline: shard rows, decoded to the model's size in tasks, scored by the actor pool."""
    import ray

    from mtl_ray.cluster.resources import plan_workers
    from mtl_ray.cluster.runtime import alive_nodes
    from mtl_ray.model import checkpoint
    from mtl_ray.training import dataset

    nodes = alive_nodes()
    cpus = sum(float(n.get("CPU", 0)) for n in nodes) or 1
    plan = plan_workers(
        nodes,
        gpu=gpu,
        workers=pool[1] if pool else None,
        flag="--concurrency",
        noun="scoring actor",
        default_cpu_workers=max(1, int(cpus)),  # one single-threaded actor per CPU: 1.1x of one with every thread
    )
    size, resize = checkpoint.input_spec(trained.meta)
    source = dataset.Source(
        report.fs,
        tuple(report.paths),
        replace(report.fmt, tasks=()),
        split,
        report.has_split_column,
        strict=strict,
        keep_ids=True,
        explain=True,
    )
    return dataset.read(source, size, resize).map_batches(
        Scorer,
        fn_constructor_kwargs={
            "weights": [ray.put({"model": trained.state["model"]})],
            "meta": trained.meta,
            "version": trained.version,
            "fmt": dataset.decoded_format(source.fmt, size),
            "inbox": inbox,
            "strict": strict,
            "device": "cuda" if gpu else "cpu",
            # compute-bound actors share every CPU; the few tasks that read them run beside
            "threads": max(1, int(cpus // plan.workers)),
        },
        batch_size=batch_size,
        batch_format="pyarrow",
        concurrency=pool or plan.workers,
        num_cpus=plan.cpus_per_worker,
        num_gpus=1 if gpu else 0,
    )


def score(
    model: str,
    data: str,
    out: str,
    *,
    split: str | None = None,
    concurrency: str | int | None = None,
    gpu: bool = False,
    batch_size: int = BATCH_ROWS,
    strict: bool = False,
    overwrite: bool = False,
    tracking_uri: str | None = None,
) -> ScoreResult:
    """Score every row of the shards at `data` (of `split` only, when given) with `model` into
    Parquet under `out`; see the module docstring."""
    from mtl_ray.cluster.inbox import new_inbox, reported
    from mtl_ray.cluster.runtime import ensure_ray
    from mtl_ray.registry.sources import load_trained

    started = time.perf_counter()
    pool = _concurrency(concurrency)
    report, rows = _rows_to_score(data, split)
    trained = load_trained(model, tracking_uri=tracking_uri)
    fs, root = _prepare_out(out, overwrite)
    ensure_ray()
    inbox = new_inbox()
    scores = _scores(report, split, trained, inbox, pool, gpu, batch_size, strict)
    counter = progress.Counter("score: rows", rows)
    done = {"rows": 0, "skipped": []}

    def on_report(scored: dict) -> None:
        done["rows"] += scored["rows"]
        done["skipped"] += scored["skipped"]
        counter.advance(scored["rows"] + len(scored["skipped"]))

    reported(inbox, on_report, lambda: scores.write_parquet(root, filesystem=fs, min_rows_per_file=FILE_ROWS))
    seconds = time.perf_counter() - started
    found = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return ScoreResult(
        model=model,
        model_version=trained.version,
        tasks=list(trained.meta["tasks"]),
        rows=done["rows"],
        skipped=len(done["skipped"]),
        images_per_s=done["rows"] / max(seconds, 1e-9),
        seconds=seconds,
        out=out,
        files=sum(e.path.endswith(".parquet") for e in found),
        report=_write_skipped(fs, root, out, done["skipped"]),
    )


def _write_skipped(fs: pafs.FileSystem, root: str, out: str, skipped: list[dict]) -> str | None:
    """`OUT/_skipped.jsonl`, one line per unreadable row (its id, shard and why), when there are any."""
    if not skipped:
        return None
    with fs.open_output_stream(f"{root}/{REPORT_NAME}") as f:
        f.write("".join(json.dumps(s) + "\n" for s in sorted(skipped, key=lambda s: str(s["id"]))).encode())
    return os.path.join(out, REPORT_NAME) if not storage.is_s3(out) else f"{out.rstrip('/')}/{REPORT_NAME}"
