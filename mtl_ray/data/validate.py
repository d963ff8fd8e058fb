"""`mtl-ray data validate`: is a dataset fit for multi-task training, and what do its labels look like?

Every shard is checked against the first readable one (same tasks, label types and image layout),
images are decoded (a sample per shard, or all with `full`), and a per-task, per-split label table
is counted from the label columns alone. Problems make the dataset unusable (exit 2) and are all
collected so one run lists everything to fix; warnings flag data that trains but makes multi-task
learning shaky. Training calls `validate` before starting Ray and streams `report.paths`.

Parquet from elsewhere (no `mtl_ray` metadata) is read as `convert` would plan it (`advice`): bool
and int8 0/1 columns are tasks as they are, other integers are left out with a warning, and a file
in a convention only convert reads gets one problem saying which convert to run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mtl_ray import progress
from mtl_ray.data.convert.advice import Export, plan_export
from mtl_ray.data.images import show_size
from mtl_ray.data.shards import (
    METADATA_KEY,
    SPLIT_COLUMN,
    SPLITS,
    UNASSIGNED,
    Decoded,
    ShardFormat,
    decode_column,
    image_bytes,
    labels_of,
    open_shard,
    shard_format,
    split_members,
)
from mtl_ray.data.storage import display, inner_path, list_shards, split_glob
from mtl_ray.errors import UserError
from mtl_ray.result import Result, table

SAMPLE_ROWS = 16
"""Images decoded from the start of the first and of the last row group of each shard by default."""
MIN_LABELS = 50
"""Fewer known labels than this for a task: too few to learn it or to measure it."""
DEFAULT_SIZE = (64, 64)
"""Training size (height, width) when the images come in several sizes and none is configured."""
MAX_LABEL_RATIO = 20.0
"""Largest/smallest labeled count above this: the big task dominates an unweighted loss."""


@dataclass(frozen=True)
class Shard:
    """One Parquet file: its path inside `ValidationReport.fs` (for Ray Data) and its name for people."""

    path: str
    name: str
    rows: int | None
    """None when the file could not be opened as Parquet."""


@dataclass(frozen=True)
class _Reference:
    """The first readable shard; every other shard must match its format and label types."""

    name: str
    fmt: ShardFormat
    types: dict[str, pa.DataType]


@dataclass
class ValidationReport(Result):
    """What `validate` found. `problems` make the dataset unusable; `warnings` do not."""

    path: str
    fs: pafs.FileSystem
    full: bool
    fmt: ShardFormat | None = None
    shards: list[Shard] = field(default_factory=list)
    rows: int = 0
    tasks: dict[str, dict[str, int]] = field(default_factory=dict)
    splits: dict[str, dict] = field(default_factory=dict)
    decoded: int = 0
    image_sizes: set[tuple[int, int]] = field(default_factory=set)
    """(height, width) of the images decoded (EXIF orientation applied)."""
    ignored_files: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def paths(self) -> list[str]:
        """Shard paths inside `fs`, e.g. for `ray.data.read_parquet(report.paths, filesystem=report.fs)`."""
        return [s.path for s in self.shards]

    @property
    def has_split_column(self) -> bool:
        return any(s in self.splits for s in SPLITS)

    def rows_in(self, split: str) -> int:
        """Rows of `split` (training rows include unassigned ones)."""
        return sum(self.splits.get(s, {}).get("rows", 0) for s in split_members(split))

    def labeled_in(self, split: str) -> dict[str, int]:
        """Known labels per task in the rows of `split` (training rows include unassigned ones)."""
        members = [self.splits[s] for s in split_members(split) if s in self.splits]
        return {t: sum(m["tasks"][t]["labeled"] for m in members) for t in self.tasks}

    def profile(self, split: str | None) -> dict:
        """Rows and per-task labeled/positive counts of `split` (None: every row), with a digest of
        the shards behind them: what a tracker records of the data a run used."""
        if split is None:
            tasks = {t: {"labeled": c["labeled"], "positive": c["positive"]} for t, c in self.tasks.items()}
            rows = self.rows
        else:
            members = [self.splits[s] for s in split_members(split) if s in self.splits]
            tasks = {
                t: {k: sum(m["tasks"][t][k] for m in members) for k in ("labeled", "positive")} for t in self.tasks
            }
            rows = self.rows_in(split)
        shards = [[s.name, s.rows] for s in self.shards]
        digest = hashlib.sha256(json.dumps([shards, split, tasks]).encode()).hexdigest()[:16]
        return {"source": self.path, "split": split or "all", "rows": rows, "tasks": tasks, "digest": digest}

    def training_size(self) -> tuple[tuple[int, int], str]:
        """The (height, width) to train at when none is configured, and why: the shards' size when
        all images share one, else DEFAULT_SIZE (images are letterboxed to it by default)."""
        if self.fmt is not None and self.fmt.shape:
            return tuple(self.fmt.shape[:2]), "the shards' size"
        if len(self.image_sizes) == 1:
            return next(iter(self.image_sizes)), "the size of every image validation decoded"
        return DEFAULT_SIZE, f"the default: images come in {len(self.image_sizes)} sizes"

    @property
    def usable(self) -> bool:
        return not self.problems and self.fmt is not None

    @property
    def exit_code(self) -> int:
        return 0 if self.usable else 2

    def raise_if_unusable(self, need_tasks: bool = True) -> None:
        """Raise a UserError with the first problem (and how many more there are); with `need_tasks`
        (training), shards without a task column are one too. Images to score or predict need none."""
        if self.usable and need_tasks and not self.fmt.tasks:
            raise UserError(
                f"{self.path}: no task columns: training needs at least one bool or int8 label column "
                "(null = unknown); `mtl-ray data convert` writes them"
            )
        if self.usable:
            return
        first = self.problems[0] if self.problems else f"{self.path}: no readable shard"
        more = len(self.problems) - 1
        suffix = (
            f" (and {more} more problem{'s' if more > 1 else ''}; run: mtl-ray data validate {self.path})"
            if more > 0
            else ""
        )
        raise UserError(first + suffix)

    def to_json(self) -> dict:
        return {
            "path": self.path,
            "usable": self.usable,
            "rows": self.rows,
            "shards": len(self.shards),
            "tasks": {
                t: {**c, "label_rate": c["labeled"] / c["rows"] if c["rows"] else 0.0} for t, c in self.tasks.items()
            },
            "splits": self.splits,
            "image": self.fmt.to_json()["image"] if self.fmt else None,
            "decoded": self.decoded,
            "image_sizes": sorted(list(size) for size in self.image_sizes),
            "full": self.full,
            "ignored_files": len(self.ignored_files),
            "problems": list(self.problems),
            "warnings": list(self.warnings),
        }

    def render(self) -> str:
        """The human summary: dataset size, image layout, per-task table, warnings (not problems)."""
        lines = [f"{self.path}: {len(self.shards)} shard{'s' if len(self.shards) != 1 else ''}, {self.rows:,} rows"]
        if self.fmt:
            shape = "x".join(map(str, self.fmt.shape)) if self.fmt.shape else "any size"
            lines.append(f"image: column {self.fmt.image_column!r}, {self.fmt.encoding}, {shape}")
            if not self.fmt.shape and self.image_sizes:
                sizes = sorted(self.image_sizes)
                shown = ", ".join(show_size(size) for size in sizes[:6]) + (", ..." if len(sizes) > 6 else "")
                lines.append(f"decoded sizes (HxW): {shown}")
        how = "every image" if self.full else "a sample per shard; --full decodes every image"
        lines.append(f"decoded {self.decoded:,} images ({how})")
        if self.splits:
            lines.append("splits: " + ", ".join(f"{s} {v['rows']:,}" for s, v in self.splits.items()))
        if self.tasks:
            lines.append(self._task_table())
        if self.ignored_files:
            lines.append(
                f"ignored {len(self.ignored_files)} non-Parquet file{'s' if len(self.ignored_files) != 1 else ''}"
            )
        lines += [f"warning: {w}" for w in self.warnings]
        n = len(self.problems)
        lines.append("usable" if self.usable else f"NOT usable: {n} problem{'s' if n != 1 else ''} (listed on stderr)")
        return "\n".join(lines)

    def _task_table(self) -> str:
        """Tasks × (rows, labeled, positive, rate, then labeled count per split)."""
        head = ["task", "rows", "labeled", "positive", "rate"] + [f"{s}:labeled" for s in self.splits]
        body = []
        for task, c in self.tasks.items():
            rate = f"{c['labeled'] / c['rows']:.1%}" if c["rows"] else "-"
            per_split = [f"{v['tasks'][task]['labeled']:,}" for v in self.splits.values()]
            body.append([task, f"{c['rows']:,}", f"{c['labeled']:,}", f"{c['positive']:,}", rate] + per_split)
        return "\n".join(table(head, body))


def validate(path: str, *, full: bool = False, image_column: str | None = None) -> ValidationReport:
    """Check every shard under PATH; path-level errors (missing, empty, no bucket) raise UserError."""
    fs, files, ignored = list_shards(path)
    base = split_glob(path)[0]
    root = inner_path(base)
    report = ValidationReport(path=path, fs=fs, full=full, ignored_files=[display(f, root, base) for f in ignored])
    split_counts: dict[str, dict] = {}
    reference: _Reference | None = None
    export: Export | None = None
    for file in progress.Counter("validate --full: shards", len(files)).each(files) if full else files:
        name = display(file, root, base)
        try:
            pf = open_shard(fs, file, name)
        except UserError as exc:
            report.shards.append(Shard(file, name, None))
            report.problems.append(str(exc))
            continue
        rows = pf.metadata.num_rows
        report.shards.append(Shard(file, name, rows))
        report.rows += rows
        raw = METADATA_KEY not in (pf.schema_arrow.metadata or {})
        if raw and export is None:
            export = plan_export(path, fs, files, pf, name, image_column)
            report.warnings += export.warnings
            if export.problem:
                report.problems.append(export.problem)
        if export is not None and export.problem:
            continue  # convert first: what else is wrong here, convert reports
        try:
            fmt = shard_format(pf, name, image_column, export.tasks if raw else None)
        except UserError as exc:
            report.problems.append(_named(name, exc))
            continue
        if rows == 0:
            report.problems.append(f"{name}: shard has no rows")
            continue
        if reference is None:
            reference = _Reference(name, fmt, _label_types(pf, fmt))
            report.fmt = fmt
            report.tasks = {t: {"rows": 0, "labeled": 0, "positive": 0} for t in fmt.tasks}
        else:
            report.problems += _drift(reference, name, fmt, _label_types(pf, fmt))
        _count_labels(report, split_counts, pf, [t for t in reference.fmt.tasks if t in fmt.tasks], name)
        _check_images(report, pf, fmt, name)
    report.splits = _ordered_splits(split_counts)
    _check_tasks(report)
    return report


def _named(name: str, exc: UserError) -> str:
    """The error's message, prefixed with the shard name unless it already starts with it."""
    msg = str(exc)
    return msg if msg.startswith(name) else f"{name}: {msg}"


def _label_types(pf: pq.ParquetFile, fmt: ShardFormat) -> dict[str, pa.DataType]:
    schema = pf.schema_arrow
    return {t: schema.field(t).type for t in fmt.tasks}


def _drift(ref: _Reference, name: str, fmt: ShardFormat, types: dict[str, pa.DataType]) -> list[str]:
    """Differences between a shard and the reference shard, one line each."""
    problems = [
        f"{name}: task {t!r} is not in {ref.name} (every shard must have the same tasks)"
        for t in fmt.tasks
        if t not in ref.types
    ]
    problems += [
        f"{name}: task {t!r} of {ref.name} is missing (every shard must have the same tasks)"
        for t in ref.fmt.tasks
        if t not in types
    ]
    problems += [
        f"{name}: task {t!r} has type {types[t]} but {ref.types[t]} in {ref.name} (label types must match "
        f"across shards)"
        for t in ref.fmt.tasks
        if t in types and types[t] != ref.types[t]
    ]
    for what, mine, theirs in (
        ("image column", fmt.image_column, ref.fmt.image_column),
        ("image encoding", fmt.encoding, ref.fmt.encoding),
        ("image shape", list(fmt.shape) if fmt.shape else None, list(ref.fmt.shape) if ref.fmt.shape else None),
    ):
        if mine != theirs:
            problems.append(f"{name}: {what} is {mine!r} but {theirs!r} in {ref.name}")
    return problems


def _split_codes(table: pa.Table, name: str, problems: list[str]) -> tuple[np.ndarray, list[str]]:
    """Per-row index into the returned split names; the last name is UNASSIGNED (null or no column)."""
    if SPLIT_COLUMN not in table.column_names:
        return np.zeros(table.num_rows, dtype=np.int64), [UNASSIGNED]
    col = table.column(SPLIT_COLUMN).combine_chunks()
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        problems.append(
            f"{name}: column {SPLIT_COLUMN!r} has type {col.type}: expected string ({', '.join(SPLITS)} or null)"
        )
        return np.zeros(table.num_rows, dtype=np.int64), [UNASSIGNED]
    encoded = pc.dictionary_encode(col)
    values = encoded.dictionary.to_pylist()
    codes = np.asarray(pc.fill_null(encoded.indices, len(values))).astype(np.int64)
    for k, value in enumerate(values):
        if value not in SPLITS:
            rows = np.flatnonzero(codes == k)
            problems.append(
                f"{name}: row {rows[0]}: column {SPLIT_COLUMN!r} has value {value!r} ({len(rows)} "
                f"row{'s' if len(rows) > 1 else ''}): expected {', '.join(SPLITS)} or null"
            )
    return codes, values + [UNASSIGNED]


def _count_labels(
    report: ValidationReport, split_counts: dict[str, dict], pf: pq.ParquetFile, tasks: list[str], name: str
) -> None:
    """Add one shard's label counts, reading only its label and split columns."""
    split_column = [SPLIT_COLUMN] if SPLIT_COLUMN in pf.schema_arrow.names else []
    table = pf.read(columns=tasks + split_column)
    codes, split_names = _split_codes(table, name, report.problems)
    k = len(split_names)
    rows_by_split = np.bincount(codes, minlength=k)
    for s, n in zip(split_names, rows_by_split, strict=True):
        entry = split_counts.setdefault(
            s, {"rows": 0, "tasks": {t: {"labeled": 0, "positive": 0} for t in report.tasks}}
        )
        entry["rows"] += int(n)
    for task in tasks:
        try:
            values = labels_of(table, (task,), where=name)[:, 0]
        except UserError as exc:
            report.problems.append(str(exc))
            continue
        known = ~np.isnan(values)
        labeled_by_split = np.bincount(codes, weights=known, minlength=k)
        positive_by_split = np.bincount(codes, weights=values == 1.0, minlength=k)
        counts = report.tasks[task]
        counts["rows"] += table.num_rows
        counts["labeled"] += int(known.sum())
        counts["positive"] += int(positive_by_split.sum())
        for s, labeled, positive in zip(split_names, labeled_by_split, positive_by_split, strict=True):
            split_task = split_counts[s]["tasks"][task]
            split_task["labeled"] += int(labeled)
            split_task["positive"] += int(positive)


def _check_images(report: ValidationReport, pf: pq.ParquetFile, fmt: ShardFormat, name: str) -> None:
    """Decode the sample (or every image) one row group at a time; record the first bad row, a count,
    and the sizes the images come in."""
    starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
    groups = range(pf.num_row_groups) if report.full else sorted({0, pf.num_row_groups - 1})
    first_error, bad = None, 0
    for g in groups:
        column = pf.read_row_group(g, columns=[fmt.image_column]).column(fmt.image_column)
        if not report.full:
            column = column.slice(0, SAMPLE_ROWS)
        for i, decoded in enumerate(_decode_each(column, fmt)):
            if decoded.first:
                first_error = first_error or f"{name}: row {int(starts[g]) + i + decoded.first[0]}: {decoded.first[1]}"
                bad += int(decoded.bad.sum())
            if len(decoded.images) > int(decoded.bad.sum()):
                report.image_sizes.add(tuple(decoded.images.shape[1:3]))
        report.decoded += len(column)
    if first_error:
        report.problems.append(first_error + (f" (and {bad - 1} more bad images in this shard)" if bad > 1 else ""))


def _decode_each(column: pa.ChunkedArray, fmt: ShardFormat) -> list[Decoded]:
    """Raw pixels as one batch (only nulls fail); encoded images one at a time, since sizes may differ."""
    arr = image_bytes(column)
    if fmt.encoding == "raw":
        return [decode_column(arr, fmt)]
    return [decode_column(arr.slice(i, 1), fmt) for i in range(len(arr))]


def _ordered_splits(split_counts: dict[str, dict]) -> dict[str, dict]:
    """Splits that have rows: train, val, test first, then any unexpected values, then UNASSIGNED."""
    split_counts = {s: v for s, v in split_counts.items() if v["rows"]}
    order = [s for s in SPLITS if s in split_counts]
    order += sorted(s for s in split_counts if s not in SPLITS and s != UNASSIGNED)
    order += [UNASSIGNED] if UNASSIGNED in split_counts else []
    return {s: split_counts[s] for s in order}


def _check_tasks(report: ValidationReport) -> None:
    """Dataset-level problems (a task with no label at all) and warnings about label balance."""
    if report.fmt is not None and not report.fmt.tasks:
        report.warnings.append("no task columns: images to score or predict, not to train on")
    for task, c in report.tasks.items():
        if not c["rows"]:
            continue
        if c["labeled"] == 0:
            report.problems.append(
                f"{report.path}: task {task!r} has no known label in any shard (every value is null)"
            )
            continue
        if c["labeled"] < MIN_LABELS:
            report.warnings.append(
                f"task {task!r} has only {c['labeled']} labeled rows (fewer than {MIN_LABELS}): too few to "
                f"learn or evaluate it"
            )
        if c["positive"] == 0:
            report.warnings.append(f"task {task!r} has no positive label ({c['labeled']} labeled, all negative)")
        elif c["positive"] == c["labeled"]:
            report.warnings.append(f"task {task!r} has no negative label ({c['labeled']} labeled, all positive)")
    labeled = {t: c["labeled"] for t, c in report.tasks.items() if c["labeled"]}
    if len(labeled) > 1:
        most, least = max(labeled, key=labeled.get), min(labeled, key=labeled.get)
        if labeled[most] > MAX_LABEL_RATIO * labeled[least]:
            report.warnings.append(
                f"uneven label counts: task {most!r} has {labeled[most]} labeled rows, {least!r} only {labeled[least]} "
                f"(more than {MAX_LABEL_RATIO:g}x): an unweighted loss is dominated by {most!r}"
            )
