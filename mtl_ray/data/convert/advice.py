"""What `mtl-ray data validate` says about Parquet from elsewhere (no `mtl_ray` metadata): how
`convert` would read it.

Shard readers take bool and int8 0/1 columns as they are, so such a file trains directly. Where
convert understands a convention they do not (a ClassLabel, 1/−1 or float labels, a label list,
images stored as paths), validate reports one problem with the `mtl-ray data convert` command to
run, instead of a row-by-row list of what convert would fix.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mtl_ray.data.convert.columns import plan_columns
from mtl_ray.data.convert.entries import LabelList
from mtl_ray.data.convert.labels import Place
from mtl_ray.data.shards import DEFAULT_IMAGE_COLUMN, open_shard
from mtl_ray.errors import UserError


@dataclass(frozen=True)
class Export:
    """How `convert` would read a Parquet source without mtl_ray metadata: the tasks shard readers
    can take as they are, warnings for the columns left out, or the one problem saying to convert."""

    tasks: tuple[str, ...]
    warnings: list[str]
    problem: str | None


def plan_export(
    path: str, fs: pafs.FileSystem, files: list[str], pf: pq.ParquetFile, name: str, image_column: str | None
) -> Export:
    column = image_column or DEFAULT_IMAGE_COLUMN

    def tables(columns: list[str]):
        for file in files:
            try:
                other = open_shard(fs, file, file)
            except UserError:
                continue  # reported on its own
            yield other.read(columns=[c for c in columns if c in other.schema_arrow.names])

    try:
        plan = plan_columns(pf.schema_arrow, tables, place=Place(name, "row"), image_column=column)
    except UserError as exc:
        return Export((), [], f"{exc} (to read it with mtl-ray data convert {path} OUT)")
    warnings = [f"column {c!r} is no task: {why}" for c, why in plan.ignored.items()]
    conventions: dict[str, list[str]] = {}
    for entry in plan.entries:
        if not entry.direct:
            conventions.setdefault(entry.convention(), []).append(entry.column)
    if _path_only_images(pf, column):
        conventions["images stored as file paths (bytes null)"] = [column]
    if not conventions:
        return Export(plan.tasks, warnings, None)
    found = "; ".join(f"{what}: {', '.join(columns)}" for what, columns in conventions.items())
    flags = [f"--image-column {image_column}"] if image_column else []
    flags.append("--tasks " + ",".join(entry.column for entry in plan.entries))
    if any(isinstance(entry, LabelList) for entry in plan.entries):
        flags.append("--absent negative|unknown")
    return Export(
        (),
        warnings,
        f"{path}: Parquet without mtl_ray metadata, in conventions convert reads ({found}); convert it first: "
        f"mtl-ray data convert {path} OUT {' '.join(flags)}",
    )


def _path_only_images(pf: pq.ParquetFile, column: str) -> bool:
    """Whether the first row group holds images as a path without bytes (`datasets`' unembedded files)."""
    if column not in pf.schema_arrow.names or not pf.num_row_groups:
        return False
    kind = pf.schema_arrow.field(column).type
    if not (pa.types.is_struct(kind) and kind.get_field_index("path") >= 0 and kind.get_field_index("bytes") >= 0):
        return False
    images = pf.read_row_group(0, columns=[column]).column(column).combine_chunks()
    no_bytes = pc.is_null(pc.struct_field(images, "bytes"))
    return bool(pc.any(pc.and_(no_bytes, pc.is_valid(pc.struct_field(images, "path")))).as_py())
