"""`mtl-ray data convert`: an image folder with a CSV/JSONL label file, or any Parquet dataset, into shards.

The source is read twice, batch by batch. The first pass parses every label, id and split (so a bad
value fails before anything is written) and opens every image header, which settles up front which
rows are unreadable, how many rows each shard gets and whether all images share one shape. The
second pass decodes to RGB, optionally resizes, encodes and writes. A row whose image cannot be
read is skipped, counted and listed in a JSONL report; with `strict` it is an error instead.

The output encoding is the source's when every image is JPEG (a JPEG kept at its size is written
as it came, byte for byte: re-encoding would lose quality and PNG would triple its size), else PNG,
unless one is asked for. A convert that fails removes the shards it wrote and the OUT folder it
made; only the skip report of a source with no readable image stays, since the error points to it.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from mtl_ray.data import storage
from mtl_ray.data.convert.entries import SHOWN
from mtl_ray.data.convert.labels import LabelMap
from mtl_ray.data.convert.sink import ShardSink
from mtl_ray.data.convert.sources import Batch, FolderSource, ParquetSource
from mtl_ray.data.images import Size, UnreadableImage, as_size, encode_image, show_size, unreadable
from mtl_ray.data.rows import hashed_split
from mtl_ray.data.shards import (
    ENCODINGS,
    SPLITS,
    UNASSIGNED,
    ShardFormat,
    default_shard_count,
    encode_images,
    make_table,
    sniff_encoding,
)
from mtl_ray.errors import UserError
from mtl_ray.result import Result, plural

REPORT_NAME = "_skipped.jsonl"


def _check_no_shards(fs: pafs.FileSystem, root: str, out: str) -> None:
    """Refuse to mix a new dataset with shards already at OUT."""
    entries = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    if any(e.type == pafs.FileType.File and e.path.endswith(storage.PARQUET_SUFFIX) for e in entries):
        raise UserError(f"{out}: already holds Parquet files; convert into an empty location")


def _made_here(out: str) -> bool:
    """Whether OUT is a local folder that does not exist yet (so a failed convert may remove it)."""
    return not storage.is_s3(out) and not os.path.exists(out)


def _remove_if_empty(out: str) -> None:
    fs, root = storage.resolve(out)
    if not fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)):
        fs.delete_dir(root)


# ---- conversion -------------------------------------------------------------------------------


@dataclass
class ConvertResult(Result):
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
    split_files: dict[str, str] = field(default_factory=dict)
    """Source files whose name gave their rows' split (hub layout): name → split."""
    mapping: dict[str, str] = field(default_factory=dict)
    """Label column → what its values mean (Parquet sources)."""
    left_out: dict[str, str] = field(default_factory=dict)
    """Label-like columns that are no task, with the reason."""

    def to_json(self) -> dict:
        out = super().to_json()
        out["image"] = {"encoding": out.pop("encoding"), "shape": out.pop("shape")}
        return out

    def render(self) -> str:
        size = f"{show_size(self.shape[:2])} HxW" if self.shape else "mixed sizes"
        shown = ", ".join(self.tasks[:SHOWN]) + (f", … ({len(self.tasks)} tasks)" if len(self.tasks) > SHOWN else "")
        lines = [
            f"converted {plural(self.rows, 'row')} into {plural(self.shards, 'shard')} at {self.out} "
            f"({self.encoding}, {size}); tasks: {shown}",
            "splits: "
            + ", ".join(f"{name} {n:,}" for name, n in self.splits.items())
            + (f" (by the file names of {plural(len(self.split_files), 'file')})" if self.split_files else ""),
        ]
        lines += _grouped("labels of", self.mapping)
        lines += _grouped("left out:", self.left_out)
        if not self.splits.get("val"):
            lines.append(self._no_val())
        if self.skipped:
            lines.append(f"skipped {plural(self.skipped, 'unreadable row')}, listed in {self.report}")
        return "\n".join(lines)

    def _no_val(self) -> str:
        if self.splits.get(UNASSIGNED):
            return (
                "no val rows: training needs some; convert again with --val-fraction 0.2 (a split by row id "
                "that stays put when you rerun or add images), or give train --val PATH"
            )
        own = ", ".join(self.splits)
        return (
            f"no val rows: training needs some; every row has the source's own split ({own}), which "
            f"--val-fraction never changes: give train --val PATH (a validation set converted on its own)"
        )


def _grouped(title: str, meanings: dict[str, str]) -> list[str]:
    """One line per distinct meaning, naming the columns that share it."""
    by_meaning: dict[str, list[str]] = {}
    for column, meaning in meanings.items():
        by_meaning.setdefault(meaning, []).append(column)
    lines = []
    for meaning, columns in by_meaning.items():
        names = ", ".join(columns[:SHOWN]) + (f", … ({len(columns)} columns)" if len(columns) > SHOWN else "")
        lines.append(f"{title} {names}: {meaning}")
    return lines


@dataclass
class _Scan:
    """What the first pass learned: the rows to leave out, and the sizes and encodings of the rest."""

    bad: set[tuple[str, int]] = field(default_factory=set)
    skips: list[dict] = field(default_factory=list)
    sizes: set[Size] = field(default_factory=set)
    encodings: set[str] = field(default_factory=set)
    kept: int = 0
    first: str | None = None
    """The first skipped row and why, as an error would say it."""


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
    classes: Sequence[str] | None = None,
    absent: str | None = None,
    negative_list: str | None = None,
    image_root: str | None = None,
    image_size: int | Size | None = None,
    resize: str = "letterbox",
    encoding: str | None = None,
    strict: bool = False,
    report: str | None = None,
    shards: int | None = None,
    val_fraction: float | None = None,
) -> ConvertResult:
    """Convert an image folder + label file (`labels_csv`) or a Parquet dataset at SRC (a glob too)
    into shards at OUT.

    Every image is decoded as `mtl_ray.images` does (EXIF orientation, bit depth, alpha) and, with
    `image_size` (height, width), resized by `resize`. `encoding` None: JPEG when every source image
    is, else PNG. `val_fraction` puts that share of the rows without a split of their own into
    `val`, by a hash of the row id (`hashed_split`); a row with a split (from its `split` column or
    its file's name) never moves. `classes`, `absent` and `negative_list` read label lists and
    `image_root` finds path-only images, in Parquet sources (see `columns` and `sources.PathImages`).
    """
    if encoding is not None and encoding not in ENCODINGS:
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
        parquet_only = {"--classes": classes, "--absent": absent, "--negative-list": negative_list}
        for flag, value in (parquet_only | {"--image-root": image_root}).items():
            if value:
                raise UserError(f"{flag} is for a Parquet source; an image folder's label file has one column per task")
        source: FolderSource | ParquetSource = FolderSource(
            src, labels_csv, tasks=tasks, file_column=file_column, mapping=mapping
        )
    else:
        if file_column:
            raise UserError("--file-column needs an image folder with --labels-csv")
        source = ParquetSource(
            src,
            image_column=image_column,
            tasks=tasks,
            mapping=mapping,
            classes=classes,
            absent=absent,
            negative_list=negative_list,
            image_root=image_root,
        )
    output = _Output(image_size, resize, strict, val_fraction)
    return _convert(source, src, out, output, encoding=encoding, report=report, shards=shards)


def _convert(
    source: FolderSource | ParquetSource,
    src: str,
    out: str,
    output: _Output,
    *,
    encoding: str | None,
    report: str | None,
    shards: int | None,
) -> ConvertResult:
    """Both passes over `source` into OUT; on failure, remove the shards written and the OUT folder made."""
    made = _made_here(out)
    out_fs, out_root = storage.prepare_output(out)
    sink: ShardSink | None = None
    try:
        _check_no_shards(out_fs, out_root, out)
        scan = _scan(source, output.strict)
        report_path = report or out.rstrip("/") + "/" + REPORT_NAME
        if not scan.skips and not scan.kept:
            raise UserError(f"{src}: no rows to convert")
        if not scan.kept:
            _write_report(report_path, scan.skips)
            raise UserError(
                f"{src}: no readable images ({len(scan.skips)} rows skipped, listed in {report_path}; "
                f"the first: {scan.first})"
            )
        encoding = encoding or ("jpeg" if scan.encodings == {"jpeg"} else "png")
        fmt = ShardFormat(tasks=source.tasks, encoding=encoding, shape=_shape(scan.sizes, output.size, encoding, src))
        count = min(shards or default_shard_count(scan.kept), scan.kept)
        sink = ShardSink(out_fs, out_root, fmt, count, scan.kept)
        written_splits = _write(source, scan, sink, fmt, output)
        written = sink.close()
    except BaseException:
        if sink is not None:
            sink.discard()
        if made:
            _remove_if_empty(out)
        raise
    if scan.skips:
        _write_report(report_path, scan.skips)
    order = SPLITS + (UNASSIGNED,)
    return ConvertResult(
        out=out,
        rows=sum(written_splits.values()),
        shards=written,
        tasks=list(source.tasks),
        skipped=len(scan.skips),
        report=report_path if scan.skips else None,
        encoding=encoding,
        shape=list(fmt.shape) if fmt.shape else None,
        splits=dict(sorted(written_splits.items(), key=lambda kv: order.index(kv[0]))),
        split_files=source.split_files,
        mapping=source.mapping,
        left_out=source.ignored,
    )


def _skip(scan: _Scan, batch: Batch, i: int, reason: str, strict: bool) -> None:
    """Leave row i out: record it for the report, or with `strict` stop with an error naming it."""
    file = batch.image_file(i)
    said = f"{batch.place.at(batch.numbers[i])}: {f'image {file}: ' if file else ''}{reason}"
    if strict:
        raise UserError(f"{said} (--strict)")
    scan.first = scan.first or said
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
                if source.encoded:
                    scan.encodings.add(sniff_encoding(data))
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
    """Row i as RGB pixels (raw output) or encoded bytes, or the reason it cannot be decoded. A JPEG
    that stays at its size in JPEG output keeps its own bytes (decoded all the same, to skip a bad one)."""
    data = batch.images[i]
    try:
        image = source.decode(data, output.size, output.resize)
    except UnreadableImage as exc:
        return _Converted(None, str(exc))
    if encoding == "raw":
        return _Converted(image)
    if encoding == "jpeg" and output.size is None and source.encoded and sniff_encoding(data) == "jpeg":
        return _Converted(data)
    return _Converted(encode_image(image, encoding))


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
