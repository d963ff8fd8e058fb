"""Which columns of a Parquet source become tasks, and what each value in them means (`Plan`).

- bool columns, and numbers whose values are all 0/1 or all 1/−1 (any integer or float type): one
  task each, read by the `LabelMap`, flags included;
- a two-class `ClassLabel` (the file's `huggingface` metadata, see `hub`): one task, −1 and null
  unknown (`ClassLabelValues`);
- a label list (`Sequence(ClassLabel)`, or a list of ids or names named with --tasks): one task per
  class (`--classes` picks some); a class the list leaves out is negative or unknown as `--absent`
  says, and negative when a `--negative-list` column names it (`LabelList`).
Without --tasks every column that fits is taken; the ones that look like labels but are not
(integers 0 to 9, a ClassLabel of 10 classes, a list without class names, 1/0/−1 with no word on
−1) are left out with the reason in `Plan.ignored`, so a user sees each decision once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa

from mtl_ray.data.convert import hub
from mtl_ray.data.convert.entries import Binary, ClassLabelValues, LabelList, Seen, order, scan, shown
from mtl_ray.data.convert.labels import LabelMap, Place
from mtl_ray.data.shards import DEFAULT_IMAGE_COLUMN, ID_COLUMN, SPLIT_COLUMN, check_task_names_in
from mtl_ray.errors import UserError

ABSENT = ("negative", "unknown")
"""What a class left out of a row's label list means (`--absent`)."""


def check_tasks(tasks: Sequence[str], columns: Sequence[str], place: Place) -> tuple[str, ...]:
    """Task columns named by the user: valid names, present in the source, not the image column."""
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


# ---- the plan ---------------------------------------------------------------------------------


@dataclass
class Plan:
    """The tasks of a Parquet source and how each is read from its columns."""

    entries: list[Binary | LabelList]
    ignored: dict[str, str]
    """Columns that look like labels but are left out, with the reason."""

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(t for entry in self.entries for t in entry.tasks)

    @property
    def columns(self) -> list[str]:
        """The source columns the labels are read from."""
        return list(dict.fromkeys(c for entry in self.entries for c in entry.columns))

    def labels(self, record: pa.RecordBatch, place: Place, numbers: Sequence[int]) -> np.ndarray:
        """Labels [N, T] of one record batch (1.0, 0.0, NaN = unknown); a bad value is a UserError naming its row."""
        if not self.entries:
            return np.zeros((record.num_rows, 0), dtype=np.float32)
        return np.concatenate([entry.parse(record, place, numbers) for entry in self.entries], axis=1)

    def mapping(self) -> dict[str, str]:
        """Column → what its values mean, for the summary."""
        return {entry.column: entry.describe() for entry in self.entries}

    def require_absent(self, place: Place) -> None:
        """Converting a label list needs its semantics said: an error naming the column when not."""
        for entry in self.entries:
            if isinstance(entry, LabelList) and entry.absent is None:
                raise UserError(
                    f"{place.file}: column {entry.column!r} is a label list ({len(entry.classes)} classes: "
                    f"{shown(entry.tasks)}): say what a class left out of a row's list means: --absent negative "
                    f"(the list names every class present) or --absent unknown (it names only verified classes)"
                )


def _kind(field_type: pa.DataType, feature: object) -> str:
    if hub.class_names(feature) is not None:
        return "ClassLabel"
    if hub.list_class_names(feature) is not None:
        return "list:ClassLabel"
    if pa.types.is_list(field_type) or pa.types.is_large_list(field_type):
        inner = field_type.value_type
        if pa.types.is_integer(inner):
            return "list:ids"
        if pa.types.is_string(inner) or pa.types.is_large_string(inner):
            return "list:names"
        return "list:other"
    if pa.types.is_boolean(field_type):
        return "bool"
    if pa.types.is_integer(field_type) or pa.types.is_floating(field_type):
        return "number"
    if pa.types.is_string(field_type) or pa.types.is_large_string(field_type):
        return "string"
    return "other"


def plan_columns(
    schema: pa.Schema,
    tables: Callable[[list[str]], Iterable[pa.Table]],
    *,
    place: Place,
    image_column: str,
    tasks: Sequence[str] | None = None,
    mapping: LabelMap | None = None,
    classes: Sequence[str] | None = None,
    absent: str | None = None,
    negative_list: str | None = None,
) -> Plan:
    """The plan for a source whose first file has `schema`; `tables(columns)` yields those columns
    of every file, read once here to see which values the label-like columns hold."""
    mapping = mapping or LabelMap()
    features = hub.features(schema)
    kinds = {f.name: _kind(f.type, features.get(f.name)) for f in schema}
    named = tasks is not None
    if negative_list is not None:
        _check_negative_list(negative_list, kinds, absent, tasks, place)
    if named:
        names = list(check_tasks(tasks, schema.names, place))
    else:
        reserved = {ID_COLUMN, SPLIT_COLUMN, image_column, negative_list}
        names = list(dict.fromkeys(f.name for f in schema if f.name not in reserved))
    types = {}
    for name in names:
        found = schema.get_all_field_indices(name)
        if len(found) > 1 and kinds[name] not in ("string", "other"):
            raise UserError(f"{place.file}: duplicate task name {name!r}: the column appears {len(found)} times")
        types[name] = schema.field(found[0]).type
    scalars = [n for n in names if kinds[n] == "number" or (named and kinds[n] == "string")]
    lists = [n for n in names if named and kinds[n] in ("list:ids", "list:names")]
    if negative_list is not None and kinds[negative_list] != "list:ClassLabel":
        lists.append(negative_list)
    seen = scan(tables(scalars + lists), scalars, lists) if scalars or lists else {}
    if negative_list in seen:  # a class that only the negatives name is a task too
        for name in lists:
            seen[name].values |= seen[negative_list].values
    entries: list[Binary | LabelList] = []
    ignored: dict[str, str] = {}
    for name in names:
        entry, why = _entry(name, types[name], kinds[name], features.get(name), seen, mapping, place, named)
        if entry is not None:
            entries.append(entry)
        elif why and named:
            raise UserError(f"{place.file}: column {name!r}: {why}")
        elif why:
            ignored[name] = why
    if not entries:
        left_out = "; ".join(f"{name}: {why}" for name, why in ignored.items())
        raise UserError(
            f"{place.file}: no label columns (bool, numbers 0/1 or 1/-1, a two-class ClassLabel, a label list)"
            + (f"; left out {left_out}" if left_out else "")
            + "; name them with --tasks"
        )
    if classes:
        entries = _pick_classes(entries, classes, place)
    lists_found = [k for k, e in enumerate(entries) if isinstance(e, LabelList)]
    if absent is not None and not lists_found:
        raise UserError(
            f"{place.file}: --absent says what a label list leaves out, but no column is one (a Sequence(ClassLabel), "
            f"or a list of ids or names named with --tasks)"
        )
    if negative_list is not None and len(lists_found) != 1:
        raise UserError(f"--negative-list {negative_list}: name the one list of present classes with --tasks")
    for k in lists_found:
        entries[k] = replace(entries[k], absent=absent, negatives=negative_list)
    plan = Plan(entries, ignored)
    _check_names(plan, place)
    return plan


def _check_negative_list(
    column: str, kinds: dict[str, str], absent: str | None, tasks: Sequence[str] | None, place: Place
) -> None:
    if column not in kinds:
        raise UserError(f"{place.file}: --negative-list column {column!r} not found (columns: {', '.join(kinds)})")
    if not kinds[column].startswith("list:"):
        raise UserError(f"{place.file}: --negative-list column {column!r} is not a list column")
    if absent != "unknown":
        raise UserError(
            "--negative-list needs --absent unknown: with --absent negative every class a list leaves out is "
            "negative already"
        )
    if tasks is not None and column in tasks:
        raise UserError(f"--negative-list column {column!r} is also named in --tasks; name only the present classes")


def _entry(
    name: str,
    field_type: pa.DataType,
    kind: str,
    feature: object,
    seen: dict[str, Seen],
    mapping: LabelMap,
    place: Place,
    named: bool,
) -> tuple[Binary | LabelList | None, str | None]:
    """The plan entry for one column, or None and why it is no task (no reason: not label-like at all)."""
    if kind == "bool":
        return Binary(name, field_type, mapping), None
    if kind == "ClassLabel":
        names = hub.class_names(feature)
        if len(names) != 2:
            return None, f"ClassLabel of {len(names)} classes ({shown(names)}): one class per row, not a yes/no label"
        return Binary(name, field_type, ClassLabelValues(name, names, mapping, place.file)), None
    if kind == "list:ClassLabel":
        names = hub.list_class_names(feature)
        ids = tuple(range(len(names)))
        return LabelList(name, "ClassLabel", ids, names, frozenset(ids)), None
    if kind in ("list:ids", "list:names"):
        what = kind.split(":")[1]
        if name not in seen:
            return None, f"a list of class {what} without ClassLabel names: name it with --tasks for one task per class"
        values = tuple(sorted(seen[name].values))
        tasks = tuple(f"{name}_{v}" for v in values) if what == "ids" else tuple(str(v) for v in values)
        return LabelList(name, what, values, tasks, frozenset(values)), None
    if kind == "list:other":
        return None, f"holds lists of {field_type.value_type}: a label list holds class ids or names"
    if kind == "number":
        found = seen[name]
        values = tuple(sorted(found.values, key=order))
        if not named and (found.more or any(mapping.parse(v) is None for v in values)):
            return None, f"{field_type} {found.describe()}: not a yes/no label"  # named: checked row by row
        if {0, -1} <= found.values and mapping.flag(-1) is None:
            return None, (
                "holds 1, 0 and -1, and nothing says what -1 means: give --missing -1 (unknown) or --negative -1"
                + ("" if named else " and name the column with --tasks")
            )
        return Binary(name, field_type, mapping, values), None
    if named:  # text or anything else: values are checked row by row against the mapping
        values = tuple(sorted(seen[name].values, key=order)) if name in seen else ()
        return Binary(name, field_type, mapping, values), None
    return None, None


def _pick_classes(entries: list[Binary | LabelList], classes: Sequence[str], place: Place) -> list[Binary | LabelList]:
    """Keep only the `--classes` (by name, or by id) of the label lists, in the order given."""
    lists = [e for e in entries if isinstance(e, LabelList)]
    if not lists:
        raise UserError(
            f"{place.file}: --classes picks classes of a label list column (a Sequence(ClassLabel), or a list of ids "
            f"or names named with --tasks); there is none"
        )
    picked: dict[str, list[int]] = {e.column: [] for e in lists}
    for wanted in classes:
        found = [
            (e.column, j)
            for e in lists
            for j, (task, value) in enumerate(zip(e.tasks, e.classes, strict=True))
            if wanted in (task, str(value))
        ]
        if not found:
            listed = "; ".join(f"{e.column}: {shown(e.tasks)}" for e in lists)
            raise UserError(f"--classes {wanted!r}: not a class of any label list ({listed})")
        for column, j in found:
            picked[column].append(j)
    out = []
    for e in entries:
        if isinstance(e, LabelList):
            keep = list(dict.fromkeys(picked[e.column]))
            if keep:
                out.append(replace(e, classes=tuple(e.classes[j] for j in keep), tasks=tuple(e.tasks[j] for j in keep)))
        else:
            out.append(e)
    return out


def _check_names(plan: Plan, place: Place) -> None:
    """Task names from class names must not collide with each other, other tasks or reserved columns."""
    owner: dict[str, Binary | LabelList] = {}
    for entry in plan.entries:
        for task in entry.tasks:
            if task in owner and isinstance(entry, LabelList):
                other = owner[task]
                hint = ""
                if isinstance(other, LabelList):
                    hint = f" (or, if {entry.column!r} lists verified negatives: --absent unknown --negative-list "
                    hint += f"{entry.column})"
                raise UserError(
                    f"{place.file}: class {task!r} of label list {entry.column!r} is also a task of column "
                    f"{other.column!r}; pick tasks with --tasks and --classes{hint}"
                )
            owner[task] = entry
    if DEFAULT_IMAGE_COLUMN in plan.tasks:
        raise UserError(
            f"{place.file}: a label list has a class named {DEFAULT_IMAGE_COLUMN!r}, the image column's name; pick "
            f"classes with --classes"
        )
    check_task_names_in(place.file, plan.tasks)
