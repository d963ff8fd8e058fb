"""The shard format: what a Parquet file must hold for mtl-ray, and the reader/writer for it.

One image column (encoded PNG/JPEG bytes, the Hugging Face `struct<bytes, path>` layout, or raw
uint8 pixels as fixed-size binary), one bool/int8 label column per task with null meaning
"unknown", optional `id` and `split` columns, and the `mtl_ray` key-value metadata. See
docs/format.md for the reasoning. Every later stage reads shards through this module.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mtl_ray.data.images import Size, UnreadableImage, encode_image, fit, read_image
from mtl_ray.errors import UserError, first_line

METADATA_KEY = b"mtl_ray"
FORMAT_VERSION = 1
ENCODINGS = ("png", "jpeg", "raw")
SPLITS = ("train", "val", "test")
TRAIN_SPLIT = "train"
UNASSIGNED = "unassigned"
"""The split of rows whose `split` is null, or of shards without a `split` column: training rows."""
ID_COLUMN = "id"
SPLIT_COLUMN = "split"
DEFAULT_IMAGE_COLUMN = "image"
LABEL_TYPES = (pa.bool_(), pa.int8())

# Streaming sizes (docs/format.md): a row group is the unit a reader decodes at once; a shard is the
# unit one Ray Data read task streams. 1,024 rows ≈ 12 MiB of 64 px raw pixels per row group and
# 8,192 rows ≈ 100 MiB per shard.
ROW_GROUP_ROWS = 1024
SHARD_ROWS = 8192

_PNG_MAGIC = b"\x89PNG"
_JPEG_MAGIC = b"\xff\xd8"


@dataclass(frozen=True)
class ShardFormat:
    """The parts of a shard's schema that training needs: task list and image layout."""

    tasks: tuple[str, ...]
    encoding: str
    shape: tuple[int, int, int] | None = None
    image_column: str = DEFAULT_IMAGE_COLUMN

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise UserError(f"image encoding {self.encoding!r}: expected one of {', '.join(ENCODINGS)}")
        check_task_names(self.tasks, allow_none=True)
        if self.encoding == "raw" and self.shape is None:
            raise UserError("raw image encoding needs a shape [H, W, C]")

    def to_json(self) -> dict:
        return {
            "version": FORMAT_VERSION,
            "tasks": list(self.tasks),
            "image": {
                "column": self.image_column,
                "encoding": self.encoding,
                "shape": list(self.shape) if self.shape else None,
            },
        }

    def metadata(self) -> dict[bytes, bytes]:
        return {METADATA_KEY: json.dumps(self.to_json()).encode()}

    def schema(self) -> pa.Schema:
        """The Arrow schema mtl-ray writers use: id, split, image, then one bool column per task."""
        if self.encoding == "raw":
            image_type = pa.binary(int(np.prod(self.shape)))
        else:
            image_type = pa.binary()
        fields = [
            pa.field(ID_COLUMN, pa.string()),
            pa.field(SPLIT_COLUMN, pa.string()),
            pa.field(self.image_column, image_type),
        ]
        fields += [pa.field(t, pa.bool_()) for t in self.tasks]
        return pa.schema(fields, metadata=self.metadata())


def check_task_names(tasks: tuple[str, ...] | list[str], allow_none: bool = False) -> None:
    """Task names must be non-empty, unique and not collide with the reserved columns; a shard may
    have no task at all (`allow_none`: images to score), a dataset being made may not."""
    if not tasks and not allow_none:
        raise UserError("no tasks: expected at least one label column")
    seen: set[str] = set()
    for t in tasks:
        if not t or not isinstance(t, str):
            raise UserError(f"task name {t!r}: expected a non-empty string")
        if t in (ID_COLUMN, SPLIT_COLUMN):
            raise UserError(f"task name {t!r} is reserved for the {t} column")
        if t in seen:
            raise UserError(f"duplicate task name {t!r}")
        seen.add(t)


def _parse_metadata(raw: bytes, where: str) -> dict:
    try:
        meta = json.loads(raw)
    except ValueError:
        raise UserError(f"{where}: metadata key 'mtl_ray' is not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("version") != FORMAT_VERSION:
        raise UserError(
            f"{where}: metadata 'mtl_ray' version {meta.get('version') if isinstance(meta, dict) else None!r}: "
            f"expected {FORMAT_VERSION}"
        )
    tasks, image = meta.get("tasks"), meta.get("image")
    if not isinstance(tasks, list) or not isinstance(image, dict):
        raise UserError(f"{where}: metadata 'mtl_ray' needs 'tasks' (list) and 'image' (object)")
    return meta


def _image_kind(field: pa.Field) -> str:
    """'encoded', 'struct' (Hugging Face), or 'raw' for a supported image column type, else ''."""
    t = field.type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "encoded"
    if pa.types.is_fixed_size_binary(t):
        return "raw"
    if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0:
        inner = t.field(t.get_field_index("bytes")).type
        if pa.types.is_binary(inner) or pa.types.is_large_binary(inner):
            return "struct"
    return ""


def sniff_encoding(data: bytes) -> str:
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    return "png"


def read_format(
    schema: pa.Schema,
    where: str,
    image_column: str | None = None,
    sample: bytes | None = None,
    tasks: tuple[str, ...] | None = None,
) -> ShardFormat:
    """The ShardFormat of one shard, from its `mtl_ray` metadata or, failing that, from its columns.

    Without metadata the tasks are `tasks` when given (validate passes the columns whose values are
    labels), else every bool/int8 column except the reserved ones, and the encoding of an encoded
    column is sniffed from `sample` (one image's bytes) when given.
    """
    raw_meta = (schema.metadata or {}).get(METADATA_KEY)
    if raw_meta is not None:
        meta = _parse_metadata(raw_meta, where)
        image = meta["image"]
        column = image_column or image.get("column") or DEFAULT_IMAGE_COLUMN
        tasks = tuple(meta["tasks"])
        encoding = image.get("encoding")
        shape = tuple(image["shape"]) if image.get("shape") else None
    else:
        column = image_column or DEFAULT_IMAGE_COLUMN
        if tasks is None:
            tasks = tuple(
                f.name for f in schema if f.type in LABEL_TYPES and f.name not in (ID_COLUMN, SPLIT_COLUMN, column)
            )
        encoding, shape = None, None
    names = schema.names
    if column not in names:
        raise UserError(f"{where}: image column {column!r} missing (columns: {', '.join(names)})")
    if names.count(column) > 1:
        raise UserError(f"{where}: image column {column!r} appears more than once")
    kind = _image_kind(schema.field(column))
    if not kind:
        raise UserError(
            f"{where}: column {column!r} has type {schema.field(column).type}: expected binary (PNG/JPEG), "
            f"struct<bytes, path> or fixed_size_binary (raw pixels)"
        )
    if kind == "raw":
        width = schema.field(column).type.byte_width
        if shape is None:
            shape = _square_shape(width, where, column)
        if int(np.prod(shape)) != width:
            raise UserError(
                f"{where}: column {column!r} holds {width} bytes per image but metadata shape {list(shape)} "
                f"needs {int(np.prod(shape))}"
            )
        encoding = "raw"
    elif encoding in (None, "raw"):
        if encoding == "raw":
            raise UserError(
                f"{where}: metadata says raw pixels but column {column!r} has type {schema.field(column).type}"
            )
        encoding = sniff_encoding(sample) if sample else "png"
    check_task_names_in(where, tasks, allow_none=True)
    for t in tasks:
        if names.count(t) > 1:
            raise UserError(f"{where}: duplicate task column {t!r}")
        if t not in names:
            raise UserError(f"{where}: task column {t!r} named in metadata is missing")
        ftype = schema.field(t).type
        if ftype not in LABEL_TYPES:
            raise UserError(f"{where}: task column {t!r} has type {ftype}: expected bool or int8 (null = unknown)")
    return ShardFormat(tasks=tasks, encoding=encoding, shape=shape, image_column=column)


def check_task_names_in(where: str, tasks: tuple[str, ...], allow_none: bool = False) -> None:
    try:
        check_task_names(tasks, allow_none)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None


def _square_shape(width: int, where: str, column: str) -> tuple[int, int, int]:
    for channels in (3, 1):
        side = math.isqrt(width // channels)
        if side * side * channels == width:
            return (side, side, channels)
    raise UserError(
        f"{where}: raw column {column!r} of {width} bytes per image is not square RGB or gray; write 'mtl_ray' "
        f"metadata with its shape"
    )


def open_shard(fs: pafs.FileSystem, path: str, where: str) -> pq.ParquetFile:
    """Open one shard, turning 'not Parquet' and I/O failures into one-line user errors."""
    try:
        return pq.ParquetFile(fs.open_input_file(path))
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{where}: not a readable Parquet file ({first_line(exc)})") from None


def shard_format(
    pf: pq.ParquetFile, where: str, image_column: str | None = None, tasks: tuple[str, ...] | None = None
) -> ShardFormat:
    """read_format for an open shard, sniffing the image encoding from its first image if needed."""
    schema = pf.schema_arrow
    sample = None
    if METADATA_KEY not in (schema.metadata or {}) and pf.metadata.num_rows > 0:
        column = image_column or DEFAULT_IMAGE_COLUMN
        if column in schema.names and _image_kind(schema.field(column)) in ("encoded", "struct"):
            first = image_bytes(pf.read_row_group(0, columns=[column]).column(column).slice(0, 1))
            sample = first[0].as_py() if len(first) else None
    return read_format(schema, where, image_column, sample, tasks)


def split_members(split: str) -> tuple[str, ...]:
    """The split values whose rows make up `split`: training rows are those marked train or unassigned."""
    return (split, UNASSIGNED) if split == TRAIN_SPLIT else (split,)


def split_mask(column: pa.Array | pa.ChunkedArray, split: str) -> pa.ChunkedArray | pa.BooleanArray:
    """Which rows of a `split` column belong to `split` (a null split counts as training)."""
    return pc.fill_null(pc.equal(column, split), split == TRAIN_SPLIT)


# ---- decoding -------------------------------------------------------------------------------


def image_bytes(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The encoded-bytes array of an image column (unwrapping Hugging Face's struct<bytes, path>)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_struct(arr.type):
        arr = pc.struct_field(arr, "bytes")
    return arr


@dataclass(frozen=True)
class Decoded:
    """An image column decoded: pixels [N, H, W, 3] (zeros where `bad`), which rows were unreadable,
    and why, by index in the column."""

    images: np.ndarray
    bad: np.ndarray
    reasons: dict[int, str]

    @property
    def first(self) -> tuple[int, str] | None:
        """(index, reason) of the first unreadable row, or None."""
        return (min(self.reasons), self.reasons[min(self.reasons)]) if self.reasons else None


def decode_images(
    column: pa.Array | pa.ChunkedArray,
    fmt: ShardFormat,
    size: Size | None = None,
    *,
    resize: str = "letterbox",
    where: str = "",
    row_offset: int = 0,
) -> np.ndarray:
    """Decode an image column into uint8 [N, H, W, 3]; a null or unreadable image is a UserError naming
    `where` and its row (counted from `row_offset`). See `decode_column`."""
    decoded = decode_column(column, fmt, size, resize=resize)
    if decoded.first:
        row, reason = decoded.first
        raise UserError(f"{where}: row {row_offset + row}: {reason}")
    return decoded.images


def decode_column(
    column: pa.Array | pa.ChunkedArray, fmt: ShardFormat, size: Size | None = None, *, resize: str = "letterbox"
) -> Decoded:
    """Decode an image column, marking the rows that cannot be decoded instead of stopping at them.

    Raw pixels are a zero-copy view of the Arrow buffer (no per-row Python); PNG/JPEG go through
    `images.read_image` once per image. `size` (height, width) resizes by `resize`; without it all
    images must share a shape.
    """
    arr = image_bytes(column)
    bad = np.array(arr.is_null(), dtype=bool) if arr.null_count else np.zeros(len(arr), dtype=bool)
    reasons = {i: "image is null" for i in np.flatnonzero(bad).tolist()}
    if fmt.encoding == "raw":
        images = _raw_view(arr, fmt.shape)
        if size is not None and images.shape[1:3] != tuple(size):
            images = np.stack([fit(im, size, resize) for im in images]) if len(images) else _empty(size)
        if bad.any():
            images = images.copy()
            images[bad] = 0
        return Decoded(images, bad, reasons)
    out = None
    for i, value in enumerate(arr):
        if bad[i]:
            continue
        try:
            rgb = read_image(value.as_py(), size=size, resize=resize)
            if out is not None and rgb.shape != out.shape[1:]:
                raise UnreadableImage(
                    f"image is {rgb.shape[1]}x{rgb.shape[0]} but earlier rows are "
                    f"{out.shape[2]}x{out.shape[1]}; give a size to resize"
                )
        except UnreadableImage as exc:
            bad[i] = True
            reasons.setdefault(i, str(exc))
            continue
        if out is None:
            out = np.zeros((len(arr),) + rgb.shape, dtype=np.uint8)
        out[i] = rgb
    if out is None:
        out = _empty(size or (fmt.shape[:2] if fmt.shape else (0, 0)), len(arr))
    return Decoded(out, bad, reasons)


def _empty(size: Size, rows: int = 0) -> np.ndarray:
    return np.zeros((rows, *size, 3), dtype=np.uint8)


def _raw_view(arr: pa.Array, shape: tuple[int, int, int]) -> np.ndarray:
    width = arr.type.byte_width
    buf = arr.buffers()[1]
    flat = np.frombuffer(buf, dtype=np.uint8, count=len(arr) * width, offset=arr.offset * width)
    images = flat.reshape((len(arr),) + tuple(shape))
    if shape[2] == 1:
        images = np.repeat(images, 3, axis=3)
    return images


def labels_of(
    table: pa.Table | pa.RecordBatch, tasks: tuple[str, ...] | list[str], *, where: str = "", row_offset: int = 0
) -> np.ndarray:
    """Task labels as float32 [N, T]: 1.0, 0.0, or NaN for unknown. Values outside {0, 1} are errors."""
    out = np.empty((table.num_rows, len(tasks)), dtype=np.float32)
    for j, task in enumerate(tasks):
        col = table.column(task)
        if pa.types.is_integer(col.type):
            bad = pc.and_(pc.is_valid(col), pc.invert(pc.is_in(col, pa.array([0, 1], col.type))))
            if pc.any(bad).as_py():
                i = int(np.flatnonzero(np.asarray(pc.fill_null(bad, False)))[0])
                raise UserError(
                    f"{where}: row {row_offset + i}: task {task!r} has label {col[i].as_py()}: expected 0, 1 or null"
                )
        out[:, j] = np.asarray(pc.fill_null(col.cast(pa.float32()), np.nan))
    return out


# ---- writing --------------------------------------------------------------------------------


def encode_images(images: np.ndarray, fmt: ShardFormat) -> pa.Array:
    """uint8 [N, H, W, C] → the image column for `fmt` (raw: one zero-copy buffer; PNG/JPEG: Pillow)."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    if fmt.encoding == "raw":
        width = int(np.prod(fmt.shape))
        if images.shape[1:] != tuple(fmt.shape):
            raise ValueError(f"images have shape {images.shape[1:]}, format says {fmt.shape}")
        return pa.Array.from_buffers(pa.binary(width), len(images), [None, pa.py_buffer(images)])
    return pa.array([encode_image(im, fmt.encoding) for im in images], type=pa.binary())


def label_array(values: np.ndarray) -> pa.Array:
    """float [N] with NaN = unknown → nullable bool column."""
    unknown = np.isnan(values)
    return pa.array(np.nan_to_num(values) > 0.5, type=pa.bool_(), mask=unknown)


def make_table(
    fmt: ShardFormat,
    images: pa.Array,
    label_matrix: np.ndarray,
    ids: list[str] | pa.Array,
    splits: list[str] | pa.Array,
) -> pa.Table:
    """Assemble rows in the writer schema; `label_matrix` is float [N, T] with NaN = unknown."""
    columns = [pa.array(ids, pa.string()), pa.array(splits, pa.string()), images]
    columns += [label_array(label_matrix[:, j]) for j in range(len(fmt.tasks))]
    return pa.Table.from_arrays(columns, schema=fmt.schema())


class ShardWriter:
    """Writes one shard with the format's schema and metadata, in row groups of ROW_GROUP_ROWS."""

    def __init__(self, fs: pafs.FileSystem, path: str, fmt: ShardFormat):
        self.fmt = fmt
        self.rows = 0
        self._sink = fs.open_output_stream(path)
        self._writer = pq.ParquetWriter(
            self._sink, fmt.schema(), compression="zstd" if fmt.encoding == "raw" else "none"
        )

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        self.rows += table.num_rows

    def close(self) -> None:
        self._writer.close()
        self._sink.close()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def shard_name(index: int, count: int) -> str:
    return f"part-{index:05d}-of-{count:05d}.parquet"


def default_shard_count(rows: int) -> int:
    """Enough shards for SHARD_ROWS each, and a few for parallel reads on small data."""
    return max(1, math.ceil(rows / SHARD_ROWS), min(4, math.ceil(rows / ROW_GROUP_ROWS)))
