"""What `mtl-ray data convert` reads: an image folder with one label-file row per image, or any
Parquet dataset (Hugging Face exports included), each as batches of parsed rows (`Batch`).

A Parquet source's tasks come from its column plan (`columns.Plan`); its splits from a `split`
column, else from its file names as the hub writes them (`hub.file_split`); its images from the
image column's bytes, or from the file its `path` names when `bytes` is null (`PathImages`).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mtl_ray.data import storage
from mtl_ray.data.convert import hub
from mtl_ray.data.convert.columns import check_tasks, plan_columns
from mtl_ray.data.convert.labels import LabelMap, Place, parse_labels, parse_splits, read_label_file, text_of
from mtl_ray.data.images import Size, fit, image_size, read_image
from mtl_ray.data.shards import (
    DEFAULT_IMAGE_COLUMN,
    ID_COLUMN,
    METADATA_KEY,
    SPLIT_COLUMN,
    ShardFormat,
    decode_column,
    image_bytes,
    open_shard,
    read_format,
)
from mtl_ray.errors import UserError

FILE_COLUMNS = ("file", "filename", "image", "path")
BATCH_ROWS = 256
NOT_FOUND = "file not found"


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


def read_file(fs: pafs.FileSystem, path: str) -> tuple[bytes | None, str | None]:
    """A file's bytes, or None and why not (NOT_FOUND when it does not exist)."""
    try:
        with fs.open_input_file(path) as f:
            return f.read(), None
    except FileNotFoundError:
        return None, NOT_FOUND
    except OSError as exc:
        return None, "cannot read file" + (" (a directory)" if "directory" in str(exc) else "")


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
        self.mapping: dict[str, str] = {}
        self.ignored: dict[str, str] = {}
        self.split_files: dict[str, str] = {}

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

    encoded = True
    """Images arrive as encoded files (PNG, JPEG, ...), not raw pixels."""

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
        return read_file(self.fs, posixpath.join(self.root, name))


class PathImages:
    """The images a Parquet source holds as file paths only (`bytes` null, `path` set: what
    `datasets.Dataset.to_parquet` writes for images opened from files, which it does not embed).

    An absolute or `s3://` path is read as it is; a relative one under `image_root` when given,
    else from the working directory, else from the Parquet file's folder (where `datasets` users
    usually keep the files). A file found nowhere is an unreadable row: skipped and reported.
    """

    def __init__(self, image_root: str | None):
        self.image_root = image_root
        self._filesystems: dict[bool, pafs.FileSystem] = {}

    def _at(self, location: str) -> tuple[pafs.FileSystem, str]:
        s3 = storage.is_s3(location)
        if s3 not in self._filesystems:
            self._filesystems[s3] = storage.resolve(location)[0]
        return self._filesystems[s3], storage.inner_path(location)

    def read(self, path: str, fs: pafs.FileSystem, folder: str) -> tuple[bytes | None, str | None]:
        """The image file `path` names, for a Parquet file in `folder` of `fs`; or None and why not."""
        if storage.is_s3(path) or os.path.isabs(path):
            places, where = [self._at(path)], ""
        elif self.image_root:
            places, where = [self._at(posixpath.join(self.image_root, path))], f" under --image-root {self.image_root}"
        else:
            places = [self._at(path), (fs, posixpath.join(folder, path))]
            where = " in the working directory or beside the Parquet file; give --image-root DIR"
        for at in places:
            data, problem = read_file(*at)
            if problem != NOT_FOUND:
                return data, problem
        return None, f"image has no bytes and its file {path!r} was not found{where}"


class ParquetSource:
    """Every Parquet file under (or matching) SRC, read in record batches; images as encoded bytes,
    HF structs (path-only ones read from their files) or raw pixels; labels by the column plan.
    `split_files` maps the files whose name gives their rows' split (`hub.file_split`) to it."""

    def __init__(
        self,
        src: str,
        *,
        image_column: str | None,
        tasks: Sequence[str] | None,
        mapping: LabelMap,
        classes: Sequence[str] | None = None,
        absent: str | None = None,
        negative_list: str | None = None,
        image_root: str | None = None,
    ):
        self.src = src
        self.column = image_column or DEFAULT_IMAGE_COLUMN
        self.fs, self.paths = _parquet_files(src)
        self.base = storage.split_glob(src)[0]
        self.root = storage.inner_path(self.base)
        place = self._place(self.paths[0])
        schema = self._open(self.paths[0]).schema_arrow
        self.plan = plan_columns(
            schema,
            self._tables,
            place=place,
            image_column=self.column,
            tasks=tasks,
            mapping=mapping,
            classes=classes,
            absent=absent,
            negative_list=negative_list,
        )
        self.plan.require_absent(place)
        self.tasks = self.plan.tasks
        self.mapping = self.plan.mapping()
        self.ignored = self.plan.ignored
        self.layout = self._layout(schema, place)
        self.images = PathImages(image_root)
        self.split_files = {name: split for name in map(self._relative, self.paths) if (split := hub.file_split(name))}

    def _relative(self, path: str) -> str:
        return posixpath.relpath(path, self.root) if path != self.root else posixpath.basename(path)

    def _place(self, path: str) -> Place:
        return Place(storage.display(path, self.root, self.base), "row")

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

    def _tables(self, columns: list[str]) -> Iterator[pa.Table]:
        for path in self.paths:
            pf = self._open(path)
            yield pf.read(columns=[c for c in columns if c in pf.schema_arrow.names])

    def _layout(self, schema: pa.Schema, place: Place) -> ShardFormat:
        """The image layout as format.read_format sees the source's image column (raw pixels need a shape).

        A source without mtl_ray metadata is judged on its image column and the chosen tasks only, so
        label columns of any type are accepted here and checked value by value later.
        """
        if METADATA_KEY not in (schema.metadata or {}):
            schema = pa.schema([schema.field(self.column)] + [pa.field(t, pa.bool_()) for t in self.tasks])
        return read_format(schema, place.file, self.column)

    @property
    def encoded(self) -> bool:
        return self.layout.encoding != "raw"

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
        for column in self.plan.columns:
            if column not in names:
                raise UserError(
                    f"{place.file}: task column {column!r} missing (found in {self._place(self.paths[0]).file})"
                )
        extra = [c for c in (ID_COLUMN, SPLIT_COLUMN) if c in names]
        source_name = self._relative(path)
        file_split = self.split_files.get(source_name)
        offset = 0
        for record in pf.iter_batches(batch_size=BATCH_ROWS, columns=[self.column, *self.plan.columns, *extra]):
            numbers = list(range(offset, offset + record.num_rows))
            offset += record.num_rows
            ids = record.column(ID_COLUMN).to_pylist() if ID_COLUMN in extra else [None] * len(numbers)
            splits = record.column(SPLIT_COLUMN).to_pylist() if SPLIT_COLUMN in extra else [None] * len(numbers)
            images, problems, files = self._images(record.column(self.column), path)
            yield Batch(
                place,
                numbers,
                [text_of(v) or f"{source_name}:{n}" for v, n in zip(ids, numbers, strict=True)],
                parse_splits(splits, place, numbers, default=file_split),
                self.plan.labels(record, place, numbers),
                images,
                problems,
                files,
            )

    def _images(self, column: pa.Array, path: str) -> tuple[list[bytes | None], list[str | None], list[str | None]]:
        """Image bytes, problems and (for path-only images) the file named, row by row."""
        images = image_bytes(column).to_pylist()
        problems: list[str | None] = [None if data else "image is null or empty" for data in images]
        kind = column.type
        if not (pa.types.is_struct(kind) and kind.get_field_index("path") >= 0):
            return images, problems, []
        paths = pc.struct_field(column, "path").to_pylist()
        todo = [i for i, (data, file) in enumerate(zip(images, paths, strict=True)) if not data and file]
        if not todo:
            return images, problems, []
        folder = posixpath.dirname(path)
        for i in todo:
            images[i], problems[i] = self.images.read(paths[i], self.fs, folder)
        wanted = set(todo)
        return images, problems, [paths[i] if i in wanted else None for i in range(len(images))]


def _parquet_files(src: str) -> tuple[pafs.FileSystem, list[str]]:
    try:
        fs, paths, _ = storage.list_shards(src)
    except UserError as exc:
        fs, inner = storage.resolve(src)
        if not storage.is_s3(src) and fs.get_file_info(inner).type == pafs.FileType.Directory:
            raise UserError(f"{exc}; an image folder needs its label file: --labels-csv F") from None
        raise
    return fs, paths
