"""What `mtl-ray data convert` reads: an image folder with one label-file row per image, or any
Parquet dataset (Hugging Face exports included), each as batches of parsed rows (`Batch`)."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mtl_ray.data import storage
from mtl_ray.data.convert.labels import LabelMap, Place, parse_labels, parse_splits, read_label_file, text_of
from mtl_ray.data.images import Size, fit, image_size, read_image
from mtl_ray.data.shards import (
    DEFAULT_IMAGE_COLUMN,
    ID_COLUMN,
    METADATA_KEY,
    SPLIT_COLUMN,
    ShardFormat,
    check_task_names_in,
    decode_column,
    image_bytes,
    open_shard,
    read_format,
)
from mtl_ray.errors import UserError

FILE_COLUMNS = ("file", "filename", "image", "path")
BATCH_ROWS = 256


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


def check_tasks(tasks: Sequence[str], columns: Sequence[str], place: Place) -> tuple[str, ...]:
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
        header, rows = read_label_file(labels_file)
        if not rows:
            raise UserError(f"{labels_file}: no rows after the header")
        file_column = self._file_column(header, file_column)
        default = [c for c in header if c not in (file_column, ID_COLUMN, SPLIT_COLUMN)]
        self.tasks = check_tasks(tasks or default, header, self.place)
        self.numbers = [n for n, _ in rows]
        self.files = [text_of(row.get(file_column)) or None for _, row in rows]
        self.labels = parse_labels(
            [[row.get(t) for _, row in rows] for t in self.tasks], self.tasks, mapping, self.place, self.numbers
        )
        self.splits = parse_splits([row.get(SPLIT_COLUMN) for _, row in rows], self.place, self.numbers)
        self.ids = [text_of(row.get(ID_COLUMN)) or name or "" for (_, row), name in zip(rows, self.files, strict=True)]

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
        self.tasks = check_tasks(tasks, schema.names, place)
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
                [text_of(v) or f"{source_name}:{n}" for v, n in zip(ids, numbers, strict=True)],
                parse_splits(splits, place, numbers),
                parse_labels(
                    [record.column(t).to_pylist() for t in self.tasks], self.tasks, self.mapping, place, numbers
                ),
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
