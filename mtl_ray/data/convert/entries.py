"""The entries of a column plan (`columns.Plan`): how one label column's values become labels.

`Binary` is one task from one column of yes/no values, read by a `LabelMap` or, for a two-class
`ClassLabel`, by `ClassLabelValues`; `LabelList` is one task per class of a list column. `scan`
collects the distinct values the plan decides by.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mtl_ray.data.convert import hub
from mtl_ray.data.convert.labels import LabelMap, Place, parse_labels
from mtl_ray.errors import UserError

SCAN_VALUES = 16
"""Distinct values kept per scalar column while scanning: enough to tell yes/no labels from others."""
SHOWN = 6
"""Names listed in a summary line before "…"."""
_WORD = {1.0: "positive", 0.0: "negative"}


def shown(values: Iterable[object]) -> str:
    values = list(values)
    return ", ".join(str(v) for v in values[:SHOWN]) + (f", … ({len(values)} in all)" if len(values) > SHOWN else "")


def _word(value: float | None) -> str:
    return "unknown" if value is None or math.isnan(value) else _WORD[value]


# ---- scanning ---------------------------------------------------------------------------------


@dataclass
class Seen:
    """The distinct non-null values of one column across the source: all of them for a list's
    elements, up to SCAN_VALUES for a scalar column (`more` when there were others, `low`/`high` then
    bound them)."""

    values: set = field(default_factory=set)
    more: bool = False
    low: object = None
    high: object = None

    def add(self, values: list, bounded: bool) -> None:
        values = [v for v in values if v is not None and v == v]  # v != v: NaN, unknown like null
        if not values:
            return
        numeric = all(isinstance(v, (int, float)) for v in values)
        if numeric:
            self.low = min(values) if self.low is None else min(self.low, *values)
            self.high = max(values) if self.high is None else max(self.high, *values)
        self.values.update(values)
        if bounded and len(self.values) > SCAN_VALUES:
            self.more = True
            self.values = set(sorted(self.values, key=str)[:SCAN_VALUES])

    def describe(self) -> str:
        if self.more and self.low is not None:
            return f"values {self.low} to {self.high}"
        return "values " + shown(sorted(self.values, key=lambda v: (isinstance(v, str), v)))


def order(value: object) -> tuple:
    return (0, -value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def scan(tables: Iterable[pa.Table], scalars: Sequence[str], lists: Sequence[str]) -> dict[str, Seen]:
    """Distinct values of `scalars` and distinct elements of `lists`, over every table (one per file)."""
    seen = {name: Seen() for name in [*scalars, *lists]}
    for table in tables:
        for name in scalars:
            if name in table.column_names:
                seen[name].add(pc.unique(table.column(name)).to_pylist(), bounded=True)
        for name in lists:
            if name in table.column_names:
                seen[name].add(pc.unique(pc.list_flatten(table.column(name))).to_pylist(), bounded=False)
    return seen


# ---- one task from one column -----------------------------------------------------------------


class ClassLabelValues:
    """A two-class ClassLabel column's class ids as labels: one class positive, the other negative,
    −1 (`datasets`' missing label) and null unknown.

    The positive class is the one a flag names (`--positive yes`, by name or id), else the one whose
    name reads as positive ("yes", "true") against one that reads as negative, else class 1. A flag
    that gives −1 a meaning, or calls a class named "yes" negative, contradicts the metadata: an error.
    """

    def __init__(self, column: str, names: tuple[str, ...], mapping: LabelMap, where: str):
        self.names = names
        contradicts = f"{where}: column {column!r} is ClassLabel[{', '.join(names)}] in the file's huggingface metadata"
        flag = mapping.flag(hub.MISSING_CLASS)
        if flag and not math.isnan(mapping.parse(hub.MISSING_CLASS)):
            raise UserError(
                f"{contradicts}, where -1 means unknown (the datasets convention for a missing label); "
                f"{flag} says otherwise: drop {flag}"
            )
        own = [LabelMap().parse(name) for name in names]
        given: dict[int, tuple[str, float]] = {}
        for k, name in enumerate(names):
            for value in (k, name):
                flag = mapping.flag(value)
                if flag is None:
                    continue
                meaning = mapping.parse(value)
                if k in given and not _same(given[k][1], meaning):
                    raise UserError(
                        f"{where}: column {column!r}: {given[k][0]} and {flag} both name class {k} ({name!r})"
                    )
                if own[k] in _WORD and meaning in _WORD and own[k] != meaning:
                    raise UserError(f"{contradicts}, where class {k} is named {name!r}; {flag} contradicts it")
                given[k] = (flag, meaning)
        known = {k: m for k, (_, m) in given.items() if not math.isnan(m)}
        if not known:
            positive = 0 if own == [1.0, 0.0] else 1
        else:
            k, meaning = next(iter(known.items()))
            positive = k if meaning == 1.0 else 1 - k
        self.meaning = {positive: 1.0, 1 - positive: 0.0} | {k: m for k, (_, m) in given.items()}

    def parse(self, value: object) -> float | None:
        if value is None or value == hub.MISSING_CLASS:
            return math.nan
        return self.meaning.get(value) if isinstance(value, int) else None

    def expected(self) -> str:
        return (
            f"class ids 0 ({self.names[0]!r}) or 1 ({self.names[1]!r}) of the column's ClassLabel, or -1/null (unknown)"
        )

    def describe(self) -> str:
        classes = ", ".join(
            f"{k} {self.names[k]!r} → {_word(self.meaning[k])}" for k in sorted(self.meaning, key=lambda k: -k)
        )
        return f"ClassLabel[{', '.join(self.names)}] in the file's huggingface metadata: {classes}, -1 → unknown"


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


@dataclass(frozen=True)
class Binary:
    """One task from one column of yes/no values (bool, 0/1, 1/−1, names) or a two-class ClassLabel."""

    column: str
    type: pa.DataType
    values: LabelMap | ClassLabelValues
    seen: tuple = ()

    @property
    def tasks(self) -> tuple[str, ...]:
        return (self.column,)

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.column,)

    @property
    def direct(self) -> bool:
        """Whether shard readers take the column as it is: bool, or int8 holding only 0 and 1."""
        if isinstance(self.values, ClassLabelValues):
            return False
        return self.type == pa.bool_() or (self.type == pa.int8() and set(self.seen) <= {0, 1})

    def convention(self) -> str:
        """What `convert` understands here that shard readers do not (for `validate`)."""
        if isinstance(self.values, ClassLabelValues):
            return "ClassLabel"
        if self.type == pa.int8():
            return "1/-1 labels"
        return f"{self.type} labels"

    def parse(self, record: pa.RecordBatch, place: Place, numbers: Sequence[int]) -> np.ndarray:
        return parse_labels([record.column(self.column).to_pylist()], self.tasks, self.values, place, numbers)

    def describe(self) -> str:
        if isinstance(self.values, ClassLabelValues):
            return self.values.describe()
        if self.type == pa.bool_():
            return "true → positive, false → negative, null → unknown"
        meanings = [f"{v} → {_word(self.values.parse(v))}" for v in sorted(self.seen, key=order)]
        return ", ".join([*meanings, "null → unknown"])


# ---- one task per class of a label list -------------------------------------------------------


@dataclass(frozen=True)
class LabelList:
    """A column holding, per row, the list of classes present: one task per class in `classes`.

    A listed class is positive; one in the `negatives` column's list is negative; any other is
    negative (`absent="negative"`: the list is exhaustive, as COCO-style multi-label data) or unknown
    (`"unknown"`: only verified classes are listed, as OpenImages). A null list knows nothing.
    """

    column: str
    kind: str
    """"ClassLabel" (ids with names in the metadata), "ids" or "names"."""
    classes: tuple
    """The stored values (class ids or names), one per task."""
    tasks: tuple[str, ...]
    universe: frozenset
    absent: str | None = None
    negatives: str | None = None
    direct = False

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.column,) + ((self.negatives,) if self.negatives else ())

    def convention(self) -> str:
        return "a label list"

    def parse(self, record: pa.RecordBatch, place: Place, numbers: Sequence[int]) -> np.ndarray:
        index = {value: j for j, value in enumerate(self.classes)}
        listed = record.column(self.column).to_pylist()
        negatives = record.column(self.negatives).to_pylist() if self.negatives else [None] * len(listed)
        out = np.full((len(listed), len(self.classes)), np.nan, dtype=np.float32)
        for i, (present, absent) in enumerate(zip(listed, negatives, strict=True)):
            if present is not None and self.absent == "negative":
                out[i] = 0.0
            for column, values, meaning in ((self.column, present, 1.0), (self.negatives, absent, 0.0)):
                for value in values or ():
                    if value not in self.universe:
                        raise UserError(
                            f"{place.at(numbers[i])}: column {column!r}: {value!r} is not one of the "
                            f"{len(self.universe)} classes the list may hold"
                        )
                    j = index.get(value)
                    if j is None:
                        continue
                    if meaning == 0.0 and out[i, j] == 1.0:
                        raise UserError(
                            f"{place.at(numbers[i])}: class {self.tasks[j]!r} is listed in both {self.column!r} "
                            f"and {self.negatives!r}"
                        )
                    out[i, j] = meaning
        return out

    def describe(self) -> str:
        kind = "ClassLabel" if self.kind == "ClassLabel" else f"class {self.kind}"
        rest = {"negative": "negative (--absent negative)", "unknown": "unknown (--absent unknown)"}.get(
            self.absent or "", "to be said with --absent negative|unknown"
        )
        negatives = f", listed in {self.negatives!r} → negative" if self.negatives else ""
        return (
            f"a label list of {kind}, one task per class ({shown(self.tasks)}): listed → positive{negatives}, "
            f"not listed → {rest}, null list → unknown"
        )
