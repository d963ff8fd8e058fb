"""`mtl-ray data convert`: an image folder with a CSV/JSONL label file, or any Parquet dataset, into shards.

The source is read twice, batch by batch. The first pass parses every label, id and split (so a bad
value fails before anything is written) and opens every image header, which settles up front which
rows are unreadable, how many rows each shard gets and whether all images share one shape. The
second pass decodes to RGB, optionally resizes, encodes and writes. A row whose image cannot be
read is skipped, counted and listed in a JSONL report; with `strict` it is an error instead.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import posixpath
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mtl_ray import progress, storage
from mtl_ray.errors import UserError
from mtl_ray.images import (
    Size,
    UnreadableImage,
    as_size,
    encode_image,
    fit,
    image_size,
    read_image,
    show_size,
    unreadable,
)
from mtl_ray.shards import (
    DEFAULT_IMAGE_COLUMN,
    ENCODINGS,
    ID_COLUMN,
    METADATA_KEY,
    ROW_GROUP_ROWS,
    SPLIT_COLUMN,
    SPLITS,
    UNASSIGNED,
    ShardFormat,
    ShardWriter,
    check_task_names_in,
    decode_column,
    default_shard_count,
    encode_images,
    image_bytes,
    make_table,
    open_shard,
    read_format,
    shard_name,
)

POSITIVE = ("1", "true", "yes")
NEGATIVE = ("0", "-1", "false", "no")
MISSING = ("", "?", "nan")
FILE_COLUMNS = ("file", "filename", "image", "path")
JSON_SUFFIXES = (".jsonl", ".json")
REPORT_NAME = "_skipped.jsonl"
BATCH_ROWS = 256


# ---- labels -----------------------------------------------------------------------------------


def _key(value: object) -> str:
    """The lookup key of a label value: numbers in canonical form, text stripped and lower-cased."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        text = value.strip().lower()
        try:
            return _key(float(text))
        except ValueError:
            return text
    return repr(value)


class LabelMap:
    """Label values → 1.0 (positive), 0.0 (negative) or NaN (unknown); null is always unknown.

    User values extend the built-in ones and win over them (`missing=["-1"]` makes -1 unknown).
    """

    def __init__(self, positive: Sequence[str] = (), negative: Sequence[str] = (), missing: Sequence[str] = ()):
        classes = (
            ("positive", POSITIVE, positive, 1.0),
            ("negative", NEGATIVE, negative, 0.0),
            ("unknown", MISSING, missing, math.nan),
        )
        self._values: dict[str, float] = {_key(v): value for _, builtin, _, value in classes for v in builtin}
        self._shown = {name: list(builtin) for name, builtin, _, _ in classes}
        given: dict[str, str] = {}
        for name, _, extra, value in classes:
            for raw in extra:
                key = _key(raw)
                if given.get(key, name) != name:
                    raise UserError(f"label value {raw!r} given as both {given[key]} and {name}")
                given[key] = name
                self._values[key] = value
                self._shown[name].append(str(raw))

    def parse(self, value: object) -> float | None:
        """1.0, 0.0 or NaN; None when the value is outside the mapping."""
        if value is None:
            return math.nan
        return self._values.get(_key(value))

    def expected(self) -> str:
        parts = [
            f"{name} {', '.join(repr(v) if v else 'empty' for v in values)}" for name, values in self._shown.items()
        ]
        return (
            "; ".join(parts) + " (or null = unknown); add values with --positive/--negative/--missing, "
            "or pick label columns with --tasks"
        )


# ---- rows -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Place:
    """A file of the source as the user names it, and what its rows are called there."""

    file: str
    unit: str  # "line" in a label file, "row" in a Parquet file

    def at(self, number: int) -> str:
        return f"{self.file}: {self.unit} {number}"


@dataclass
class Batch:
    """Up to BATCH_ROWS source rows with parsed labels and their image bytes (None when unreadable)."""

    place: Place
    numbers: list[int]
    ids: list[str]
    splits: list[str | None]
    labels: np.ndarray
    images: list[bytes | None]
    problems: list[str | None]
    files: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.numbers)

    def image_file(self, i: int) -> str | None:
        return self.files[i] if self.files else None


def _labels(
    columns: Sequence[Sequence[object]], tasks: Sequence[str], mapping: LabelMap, place: Place, numbers: Sequence[int]
) -> np.ndarray:
    out = np.empty((len(numbers), len(tasks)), dtype=np.float32)
    for j, (task, values) in enumerate(zip(tasks, columns, strict=True)):
        for i, value in enumerate(values):
            parsed = mapping.parse(value)
            if parsed is None:
                raise UserError(
                    f"{place.at(numbers[i])}: column {task!r}: label value {value!r} is not in the mapping; "
                    f"expected {mapping.expected()}"
                )
            out[i, j] = parsed
    return out


def _splits(values: Sequence[object], place: Place, numbers: Sequence[int]) -> list[str | None]:
    out: list[str | None] = []
    for i, value in enumerate(values):
        text = "" if value is None else str(value).strip().lower()
        if text and text not in SPLITS:
            raise UserError(f"{place.at(numbers[i])}: split {value!r}: expected {', '.join(SPLITS)} or empty")
        out.append(text or None)
    return out


def _check_tasks(tasks: Sequence[str], columns: Sequence[str], place: Place) -> tuple[str, ...]:
    check_task_names_in(place.file, tuple(tasks))
    if DEFAULT_IMAGE_COLUMN in tasks:
        raise UserError(
            f"{place.file}: task name {DEFAULT_IMAGE_COLUMN!r} is reserved for the image column; choose tasks "
            f"with --tasks"
        )
    for task in tasks:
        if task not in columns:
            raise UserError(f"{place.file}: task column {task!r} not found (columns: {', '.join(columns)})")
    return tuple(tasks)


# ---- sources ----------------------------------------------------------------------------------


class FolderSource:
    """Image files under a folder, one label-file row each (CSV with a header, or JSON lines)."""

    def __init__(
        self, src: str, labels_file: str, *, tasks: Sequence[str] | None, file_column: str | None, mapping: LabelMap
    ):
        self.src = src
        self.fs, self.root = storage.resolve(src)
        try:
            found = self.fs.get_file_info(self.root).type
        except OSError as exc:
            raise UserError(f"{src}: cannot read ({type(exc).__name__})") from None
        if found != pafs.FileType.Directory:
            raise UserError(f"{src}: not a directory (with --labels-csv, SRC is the image folder)")
        self.place = Place(labels_file, "line")
        header, rows = _read_label_file(labels_file)
        if not rows:
            raise UserError(f"{labels_file}: no rows after the header")
        file_column = self._file_column(header, file_column)
        default = [c for c in header if c not in (file_column, ID_COLUMN, SPLIT_COLUMN)]
        self.tasks = _check_tasks(tasks or default, header, self.place)
        self.numbers = [n for n, _ in rows]
        self.files = [_text(row.get(file_column)) or None for _, row in rows]
        self.labels = _labels(
            [[row.get(t) for _, row in rows] for t in self.tasks], self.tasks, mapping, self.place, self.numbers
        )
        self.splits = _splits([row.get(SPLIT_COLUMN) for _, row in rows], self.place, self.numbers)
        self.ids = [_text(row.get(ID_COLUMN)) or name or "" for (_, row), name in zip(rows, self.files, strict=True)]

    def _file_column(self, header: list[str], given: str | None) -> str:
        if given:
            if given not in header:
                raise UserError(f"{self.place.file}: file column {given!r} not found (columns: {', '.join(header)})")
            return given
        for name in FILE_COLUMNS:
            if name in header:
                return name
        raise UserError(
            f"{self.place.file}: no image file column (expected one of {', '.join(FILE_COLUMNS)}, or name it "
            f"with --file-column)"
        )

    def size_of(self, data: bytes) -> Size:
        return image_size(data)

    def decode(self, data: bytes, size: Size | None, resize: str) -> np.ndarray:
        return read_image(data, size=size, resize=resize)

    def batches(self) -> Iterator[Batch]:
        for start in range(0, len(self.numbers), BATCH_ROWS):
            part = slice(start, start + BATCH_ROWS)
            files = self.files[part]
            read = [self._read(name) for name in files]
            yield Batch(
                self.place,
                self.numbers[part],
                self.ids[part],
                self.splits[part],
                self.labels[part],
                [data for data, _ in read],
                [problem for _, problem in read],
                [storage.display(posixpath.join(self.root, n), self.root, self.src) if n else None for n in files],
            )

    def _read(self, name: str | None) -> tuple[bytes | None, str | None]:
        if not name:
            return None, "no image file named"
        try:
            with self.fs.open_input_file(posixpath.join(self.root, name)) as f:
                return f.read(), None
        except FileNotFoundError:
            return None, "file not found"
        except OSError as exc:
            return None, "cannot read file" + (" (a directory)" if "directory" in str(exc) else "")


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


def _read_label_file(path: str) -> tuple[list[str], list[tuple[int, dict]]]:
    """Header and (line number, {column: value}) rows of a CSV or JSONL label file."""
    fs, inner = storage.resolve(path)
    try:
        with fs.open_input_stream(inner) as f:
            raw = f.read()
    except FileNotFoundError:
        raise UserError(f"{path}: label file not found") from None
    except OSError:
        raise UserError(f"{path}: cannot read the label file") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{path}: label file is not UTF-8 text") from None
    if path.lower().endswith(JSON_SUFFIXES):
        return _read_jsonl(text, path)
    return _read_csv(text, path)


def _read_csv(text: str, path: str) -> tuple[list[str], list[tuple[int, dict]]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [name.strip() for name in next(reader, [])]
        if not header:
            raise UserError(f"{path}: empty label file (expected a header row)")
        for name in header:
            if header.count(name) > 1:
                raise UserError(f"{path}: line 1: column {name!r} appears more than once in the header")
        rows = []
        for fields in reader:
            if not fields:
                continue
            if len(fields) != len(header):
                raise UserError(
                    f"{path}: line {reader.line_num}: {len(fields)} fields, expected {len(header)} "
                    f"({', '.join(header)})"
                )
            rows.append((reader.line_num, dict(zip(header, fields, strict=True))))
    except csv.Error as exc:
        raise UserError(f"{path}: line {reader.line_num}: unreadable CSV ({exc})") from None
    return header, rows


def _read_jsonl(text: str, path: str) -> tuple[list[str], list[tuple[int, dict]]]:
    header: dict[str, None] = {}
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            raise UserError(f"{path}: line {number}: expected one JSON object per line")
        header.update(dict.fromkeys(row))
        rows.append((number, row))
    return list(header), rows


class ParquetSource:
    """Every Parquet file under SRC, read in record batches; images as encoded bytes, HF structs or raw pixels."""

    def __init__(self, src: str, *, image_column: str | None, tasks: Sequence[str] | None, mapping: LabelMap):
        self.src = src
        self.mapping = mapping
        self.column = image_column or DEFAULT_IMAGE_COLUMN
        self.fs, self.paths = _parquet_files(src)
        self.root = storage.resolve(src)[1]
        place = self._place(self.paths[0])
        schema = self._open(self.paths[0]).schema_arrow
        if tasks is None:
            reserved = (ID_COLUMN, SPLIT_COLUMN, self.column)
            tasks = [
                f.name
                for f in schema
                if f.name not in reserved and (pa.types.is_boolean(f.type) or pa.types.is_integer(f.type))
            ]
            if not tasks:
                raise UserError(f"{place.file}: no label columns (bool or integer); name them with --tasks")
        self.tasks = _check_tasks(tasks, schema.names, place)
        self.layout = self._layout(schema, place)

    def _place(self, path: str) -> Place:
        return Place(storage.display(path, self.root, self.src), "row")

    def _open(self, path: str) -> pq.ParquetFile:
        place = self._place(path)
        pf = open_shard(self.fs, path, place.file)
        names = pf.schema_arrow.names
        if self.column not in names:
            raise UserError(
                f"{place.file}: image column {self.column!r} missing (columns: {', '.join(names)}); name it "
                f"with --image-column"
            )
        if names.count(self.column) > 1:
            raise UserError(f"{place.file}: image column {self.column!r} appears more than once")
        return pf

    def _layout(self, schema: pa.Schema, place: Place) -> ShardFormat:
        """The image layout as format.read_format sees the source's image column (raw pixels need a shape).

        A source without mtl_ray metadata is judged on its image column and the chosen tasks only, so
        label columns of any type are accepted here and checked value by value later.
        """
        if METADATA_KEY not in (schema.metadata or {}):
            schema = pa.schema([schema.field(self.column)] + [pa.field(t, pa.bool_()) for t in self.tasks])
        return read_format(schema, place.file, self.column)

    def size_of(self, data: bytes) -> Size:
        if self.layout.encoding == "raw":
            return tuple(self.layout.shape[:2])
        return image_size(data)

    def decode(self, data: bytes, size: Size | None, resize: str) -> np.ndarray:
        if self.layout.encoding == "raw":
            pixels = decode_column(pa.array([data], pa.binary(len(data))), self.layout).images[0]
            return fit(pixels, size, resize) if size is not None else pixels
        return read_image(data, size=size, resize=resize)

    def batches(self) -> Iterator[Batch]:
        for path in self.paths:
            yield from self._file_batches(path)

    def _file_batches(self, path: str) -> Iterator[Batch]:
        place = self._place(path)
        pf = self._open(path)
        names = pf.schema_arrow.names
        for task in self.tasks:
            if task not in names:
                raise UserError(
                    f"{place.file}: task column {task!r} missing (found in {self._place(self.paths[0]).file})"
                )
        extra = [c for c in (ID_COLUMN, SPLIT_COLUMN) if c in names]
        source_name = posixpath.relpath(path, self.root) if path != self.root else posixpath.basename(path)
        offset = 0
        for record in pf.iter_batches(batch_size=BATCH_ROWS, columns=[self.column, *self.tasks, *extra]):
            numbers = list(range(offset, offset + record.num_rows))
            offset += record.num_rows
            ids = record.column(ID_COLUMN).to_pylist() if ID_COLUMN in extra else [None] * len(numbers)
            splits = record.column(SPLIT_COLUMN).to_pylist() if SPLIT_COLUMN in extra else [None] * len(numbers)
            images = image_bytes(record.column(self.column)).to_pylist()
            yield Batch(
                place,
                numbers,
                [_text(v) or f"{source_name}:{n}" for v, n in zip(ids, numbers, strict=True)],
                _splits(splits, place, numbers),
                _labels([record.column(t).to_pylist() for t in self.tasks], self.tasks, self.mapping, place, numbers),
                images,
                [None if data else "image is null or empty" for data in images],
            )


def _parquet_files(src: str) -> tuple[pafs.FileSystem, list[str]]:
    try:
        fs, paths, _ = storage.list_shards(src)
    except UserError as exc:
        fs, inner = storage.resolve(src)
        if not storage.is_s3(src) and fs.get_file_info(inner).type == pafs.FileType.Directory:
            raise UserError(f"{exc}; an image folder needs its label file: --labels-csv F") from None
        raise
    return fs, paths


# ---- output -----------------------------------------------------------------------------------


class ShardSink:
    """Deals rows, in order, into `count` shards of near-equal size, one ROW_GROUP_ROWS row group at a time.

    Sizes are planned from the rows the first pass found readable; if the second pass skips more,
    the last shards come out smaller or not at all, and the written ones are renamed to match.
    """

    def __init__(self, fs: pafs.FileSystem, root: str, fmt: ShardFormat, count: int, planned: int):
        self.fs, self.root, self.fmt, self.count = fs, root, fmt, count
        self._ends = [planned * (j + 1) // count for j in range(count)]
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._written = 0
        self._paths: list[str] = []
        self._writer: ShardWriter | None = None
        self._progress = progress.Counter("convert: rows written", planned)

    def add(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._pending_rows += table.num_rows
        self._drain(final=False)

    def close(self) -> int:
        """Flush what is left; returns the number of shards written."""
        self._drain(final=True)
        if self._writer is not None:
            self._writer.close()
        if len(self._paths) < self.count:
            for j, path in enumerate(self._paths):
                self.fs.move(path, posixpath.join(self.root, shard_name(j, len(self._paths))))
        return len(self._paths)

    def _drain(self, final: bool) -> None:
        while self._pending_rows:
            shard = len(self._paths) - (self._writer is not None)
            chunk = min(self._ends[shard] - self._written, ROW_GROUP_ROWS)
            if self._pending_rows < chunk and not final:
                return
            self._write(self._take(min(chunk, self._pending_rows)))
            if self._written == self._ends[shard]:
                self._writer.close()
                self._writer = None

    def _take(self, n: int) -> pa.Table:
        table = pa.concat_tables(self._pending)
        rest = table.slice(n)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows
        return table.slice(0, n)

    def _write(self, table: pa.Table) -> None:
        if self._writer is None:
            path = posixpath.join(self.root, shard_name(len(self._paths), self.count))
            self._writer = ShardWriter(self.fs, path, self.fmt)
            self._paths.append(path)
        self._writer.write(table)
        self._written += table.num_rows
        self._progress.advance(table.num_rows)


def _check_no_shards(fs: pafs.FileSystem, root: str, out: str) -> None:
    """Refuse to mix a new dataset with shards already at OUT."""
    entries = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    if any(e.type == pafs.FileType.File and e.path.endswith(storage.PARQUET_SUFFIX) for e in entries):
        raise UserError(f"{out}: already holds Parquet files; convert into an empty location")


# ---- conversion -------------------------------------------------------------------------------


@dataclass
class ConvertResult:
    """What `mtl-ray data convert` wrote: row, shard and skip counts, tasks, splits, and the skip report."""

    out: str
    rows: int
    shards: int
    tasks: list[str]
    skipped: int
    report: str | None
    encoding: str
    shape: list[int] | None
    splits: dict[str, int] = field(default_factory=dict)
    exit_code: int = 0

    def to_json(self) -> dict:
        return {
            "rows": self.rows,
            "shards": self.shards,
            "tasks": self.tasks,
            "skipped": self.skipped,
            "report": self.report,
            "out": self.out,
            "image": {"encoding": self.encoding, "shape": self.shape},
            "splits": self.splits,
        }

    def render(self) -> str:
        size = f"{show_size(self.shape[:2])} HxW" if self.shape else "mixed sizes"
        lines = [
            f"converted {_count(self.rows, 'row')} into {_count(self.shards, 'shard')} at {self.out} "
            f"({self.encoding}, {size}); tasks: {', '.join(self.tasks)}",
            "splits: " + ", ".join(f"{name} {n:,}" for name, n in self.splits.items()),
        ]
        if not self.splits.get("val"):
            lines.append(
                "no val rows: training needs some; convert again with --val-fraction 0.2 (a split by row id "
                "that stays put when you rerun or add images), or give train --val PATH"
            )
        if self.skipped:
            lines.append(f"skipped {_count(self.skipped, 'unreadable row')}, listed in {self.report}")
        return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def hashed_split(row_id: str, val_fraction: float) -> str:
    """'val' for a stable `val_fraction` of row ids, else 'train': a hash of the id, so a rerun, or a
    conversion with more images, puts every row where it was before."""
    digest = hashlib.blake2b(row_id.encode(), digest_size=8).digest()
    return "val" if int.from_bytes(digest, "big") / 2**64 < val_fraction else "train"


@dataclass
class _Scan:
    """What the first pass learned: the rows to leave out and the image sizes of the rest."""

    bad: set[tuple[str, int]] = field(default_factory=set)
    skips: list[dict] = field(default_factory=list)
    sizes: set[Size] = field(default_factory=set)
    kept: int = 0


def convert(
    src: str,
    out: str,
    *,
    image_column: str | None = None,
    tasks: Sequence[str] | None = None,
    labels_csv: str | None = None,
    file_column: str | None = None,
    positive: Sequence[str] = (),
    negative: Sequence[str] = (),
    missing: Sequence[str] = (),
    image_size: int | Size | None = None,
    resize: str = "letterbox",
    encoding: str = "png",
    strict: bool = False,
    report: str | None = None,
    shards: int | None = None,
    val_fraction: float | None = None,
) -> ConvertResult:
    """Convert an image folder + label file (`labels_csv`) or a Parquet dataset at SRC into shards at OUT.

    Every image is decoded as `mtl_ray.images` does (EXIF orientation, bit depth, alpha) and, with
    `image_size` (height, width), resized by `resize`. `val_fraction` puts that share of the rows
    without a split of their own into `val`, by a hash of the row id (`hashed_split`).
    """
    if encoding not in ENCODINGS:
        raise UserError(f"encoding {encoding!r}: expected one of {', '.join(ENCODINGS)}")
    if val_fraction is not None and not 0.0 < val_fraction < 1.0:
        raise UserError(f"--val-fraction {val_fraction}: expected a fraction between 0 and 1")
    image_size = as_size(image_size)
    mapping = LabelMap(positive, negative, missing)
    if labels_csv:
        if image_column:
            raise UserError(
                "--image-column is for a Parquet source; an image folder's label file names its files (--file-column)"
            )
        source: FolderSource | ParquetSource = FolderSource(
            src, labels_csv, tasks=tasks, file_column=file_column, mapping=mapping
        )
    else:
        if file_column:
            raise UserError("--file-column needs an image folder with --labels-csv")
        source = ParquetSource(src, image_column=image_column, tasks=tasks, mapping=mapping)
    out_fs, out_root = storage.prepare_output(out)
    _check_no_shards(out_fs, out_root, out)

    scan = _scan(source, strict)
    report_path = report or out.rstrip("/") + "/" + REPORT_NAME
    fmt = ShardFormat(tasks=source.tasks, encoding=encoding, shape=_shape(scan.sizes, image_size, encoding, src))
    if not scan.kept:
        _write_report(report_path, scan.skips)
        raise UserError(f"{src}: no readable images ({len(scan.skips)} rows skipped, listed in {report_path})")
    count = min(shards or default_shard_count(scan.kept), scan.kept)
    sink = ShardSink(out_fs, out_root, fmt, count, scan.kept)
    written_splits = _write(source, scan, sink, fmt, _Output(image_size, resize, strict, val_fraction))
    written = sink.close()
    if scan.skips:
        _write_report(report_path, scan.skips)
    return ConvertResult(
        out=out,
        rows=sum(written_splits.values()),
        shards=written,
        tasks=list(source.tasks),
        skipped=len(scan.skips),
        report=report_path if scan.skips else None,
        encoding=encoding,
        shape=list(fmt.shape) if fmt.shape else None,
        splits=dict(sorted(written_splits.items(), key=lambda kv: (SPLITS + (UNASSIGNED,)).index(kv[0]))),
    )


def _skip(scan: _Scan, batch: Batch, i: int, reason: str, strict: bool) -> None:
    """Leave row i out: record it for the report, or with `strict` stop with an error naming it."""
    file = batch.image_file(i)
    if strict:
        raise UserError(f"{batch.place.at(batch.numbers[i])}: {f'image {file}: ' if file else ''}{reason} (--strict)")
    record = {"file": file, "labels": batch.place.file} if file else {"file": batch.place.file}
    record[batch.place.unit] = batch.numbers[i]
    record["reason"] = reason
    scan.skips.append(record)
    scan.bad.add((batch.place.file, batch.numbers[i]))


def _scan(source: FolderSource | ParquetSource, strict: bool) -> _Scan:
    scan = _Scan()
    for batch in source.batches():
        for i, (data, problem) in enumerate(zip(batch.images, batch.problems, strict=True)):
            if problem is None:
                try:
                    scan.sizes.add(source.size_of(data))
                except Exception as exc:  # Pillow raises many types for bad bytes; all mean "not an image"
                    problem = unreadable(exc)
            if problem is None:
                scan.kept += 1
            else:
                _skip(scan, batch, i, problem, strict)
    return scan


def _shape(sizes: set[Size], image_size: Size | None, encoding: str, src: str) -> tuple[int, int, int] | None:
    if image_size:
        return (*image_size, 3)
    if len(sizes) == 1:
        return (*next(iter(sizes)), 3)
    if encoding == "raw" and sizes:
        shown = ", ".join(show_size(size) for size in sorted(sizes)[:4]) + (", ..." if len(sizes) > 4 else "")
        raise UserError(
            f"{src}: raw encoding needs one image size but the images come in {len(sizes)} sizes (HxW: {shown}); "
            f"give --image-size S or HxW"
        )
    return None


@dataclass(frozen=True)
class _Output:
    """How the second pass turns rows into output rows."""

    size: Size | None
    resize: str
    strict: bool
    val_fraction: float | None


@dataclass(frozen=True)
class _Converted:
    """One row's output image (pixels for raw output, else encoded bytes), or why it has none."""

    image: np.ndarray | bytes | None
    reason: str | None = None


def _write(
    source: FolderSource | ParquetSource, scan: _Scan, sink: ShardSink, fmt: ShardFormat, output: _Output
) -> dict[str, int]:
    """Second pass: decode, convert and write every row the scan kept; returns the rows written per split.

    Pillow releases the GIL while it decodes and compresses, so a thread per core speeds this up.
    """
    written: dict[str, int] = {}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for batch in source.batches():
            keep = [
                i
                for i in range(len(batch))
                if batch.problems[i] is None and (batch.place.file, batch.numbers[i]) not in scan.bad
            ]
            done = []
            convert_row = partial(_convert_row, source, batch, output=output, encoding=fmt.encoding)
            for i, row in zip(keep, pool.map(convert_row, keep), strict=True):
                if row.reason is not None:
                    _skip(scan, batch, i, row.reason, output.strict)
                else:
                    done.append((i, row.image))
            if done:
                splits = [batch.splits[i] for i, _ in done]
                if output.val_fraction is not None:
                    splits = [
                        s or hashed_split(batch.ids[i], output.val_fraction)
                        for s, (i, _) in zip(splits, done, strict=True)
                    ]
                sink.add(_table(batch, done, splits, fmt))
                for split in splits:
                    written[split or UNASSIGNED] = written.get(split or UNASSIGNED, 0) + 1
    return written


def _convert_row(
    source: FolderSource | ParquetSource, batch: Batch, i: int, output: _Output, encoding: str
) -> _Converted:
    """Row i as RGB pixels (raw output) or encoded bytes, or the reason it cannot be decoded."""
    try:
        image = source.decode(batch.images[i], output.size, output.resize)
    except UnreadableImage as exc:
        return _Converted(None, str(exc))
    return _Converted(image if encoding == "raw" else encode_image(image, encoding))


def _table(
    batch: Batch, done: list[tuple[int, np.ndarray | bytes]], splits: list[str | None], fmt: ShardFormat
) -> pa.Table:
    index = [i for i, _ in done]
    if fmt.encoding == "raw":
        images = encode_images(np.stack([image for _, image in done]), fmt)
    else:
        images = pa.array([image for _, image in done], pa.binary())
    return make_table(fmt, images, batch.labels[index], [batch.ids[i] for i in index], splits)


def _write_report(path: str, skips: list[dict]) -> None:
    fs, inner = storage.resolve(path)
    if not storage.is_s3(path):
        fs.create_dir(posixpath.dirname(inner), recursive=True)
    with fs.open_output_stream(inner) as f:
        f.write("".join(json.dumps(record) + "\n" for record in skips).encode())
