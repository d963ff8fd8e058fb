"""Label values and label files: what a value in a label column or file means for a task.

1/0, 1/−1, true/false and yes/no are understood; empty, `?`, NaN and null mean unknown; users add
their own values (`LabelMap`). A Parquet column's own conventions (a ClassLabel's −1 = unknown, a
label list) are in `columns`. Label files are CSV with a header or JSON lines, one row per image.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mtl_ray.data import storage
from mtl_ray.data.convert.hub import split_of
from mtl_ray.data.shards import SPLITS
from mtl_ray.errors import UserError

POSITIVE = ("1", "true", "yes")
NEGATIVE = ("0", "-1", "false", "no")
MISSING = ("", "?", "nan")
JSON_SUFFIXES = (".jsonl", ".json")


@dataclass(frozen=True)
class Place:
    """A file of the source as the user names it, and what its rows are called there."""

    file: str
    unit: str  # "line" in a label file, "row" in a Parquet file

    def at(self, number: int) -> str:
        return f"{self.file}: {self.unit} {number}"


def label_key(value: object) -> str:
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
            return label_key(float(text))
        except ValueError:
            return text
    return repr(value)


class LabelMap:
    """Label values → 1.0 (positive), 0.0 (negative) or NaN (unknown); null is always unknown.

    User values extend the built-in ones and win over them (`missing=["-1"]` makes -1 unknown);
    `flag` tells which flag gave a value its meaning.
    """

    def __init__(self, positive: Sequence[str] = (), negative: Sequence[str] = (), missing: Sequence[str] = ()):
        classes = (
            ("positive", POSITIVE, positive, 1.0),
            ("negative", NEGATIVE, negative, 0.0),
            ("unknown", MISSING, missing, math.nan),
        )
        self._values: dict[str, float] = {label_key(v): value for _, builtin, _, value in classes for v in builtin}
        self._shown = {name: list(builtin) for name, builtin, _, _ in classes}
        self._flags: dict[str, str] = {}
        given: dict[str, str] = {}
        for name, _, extra, value in classes:
            flag = "--missing" if name == "unknown" else f"--{name}"
            for raw in extra:
                key = label_key(raw)
                if given.get(key, name) != name:
                    raise UserError(f"label value {raw!r} given as both {given[key]} and {name}")
                given[key] = name
                self._values[key] = value
                self._shown[name].append(str(raw))
                self._flags[key] = f"{flag} {raw}"

    def parse(self, value: object) -> float | None:
        """1.0, 0.0 or NaN; None when the value is outside the mapping."""
        if value is None:
            return math.nan
        return self._values.get(label_key(value))

    def flag(self, value: object) -> str | None:
        """The flag that gave `value` its meaning (`--negative -1`), None for a built-in or unmapped value."""
        return self._flags.get(label_key(value))

    def expected(self) -> str:
        parts = [
            f"{name} {', '.join(repr(v) if v else 'empty' for v in values)}" for name, values in self._shown.items()
        ]
        return (
            "; ".join(parts) + " (or null = unknown); add values with --positive/--negative/--missing, "
            "or pick label columns with --tasks"
        )


def parse_labels(
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


def parse_splits(
    values: Sequence[object], place: Place, numbers: Sequence[int], default: str | None = None
) -> list[str | None]:
    """Split values as train/val/test (the hub's names too: `validation` → val); empty ones get `default`."""
    out: list[str | None] = []
    for i, value in enumerate(values):
        text = "" if value is None else str(value).strip()
        split = split_of(text) if text else default
        if text and split is None:
            raise UserError(
                f"{place.at(numbers[i])}: split {value!r}: expected {', '.join(SPLITS)} (or validation) or empty"
            )
        out.append(split)
    return out


def text_of(value: object) -> str:
    return "" if value is None else str(value).strip()


def read_label_file(path: str) -> tuple[list[str], list[tuple[int, dict]]]:
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
