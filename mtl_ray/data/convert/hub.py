"""What a Hugging Face `datasets` export says about itself, beyond its Arrow types.

`Dataset.to_parquet` stores the features in the Parquet key-value metadata `huggingface`
(`{"info": {"features": {...}}}`): a `ClassLabel` column is plain int64 on disk, and only the
metadata gives its class names and the `datasets` convention that −1 is a missing label. A
`Sequence(ClassLabel)` column (`{"_type": "List"}`, `"Sequence"` before datasets 4) is a label
list. The hub names split files `data/{split}-00000-of-00001.parquet`; `datasets` finds splits by
the keywords in `SPLIT_KEYWORDS` in file and folder names, and so does `file_split`.
"""

from __future__ import annotations

import json
import posixpath
import re

import pyarrow as pa

HF_METADATA_KEY = b"huggingface"
MISSING_CLASS = -1
"""The class id `datasets` writes for a missing ClassLabel value."""
SPLIT_KEYWORDS = {
    "train": ("train", "training"),
    "val": ("validation", "valid", "dev", "val"),
    "test": ("test", "testing", "eval", "evaluation"),
}
"""mtl-ray's split for each of the keywords `datasets.data_files` recognises (its SPLIT_KEYWORDS)."""
_NON_WORD = re.compile(r"[-._ 0-9]+")
_LIST_TYPES = ("List", "Sequence", "LargeList")


def features(schema: pa.Schema) -> dict[str, dict]:
    """The `datasets` features of a Parquet file by column ({} without `huggingface` metadata)."""
    raw = (schema.metadata or {}).get(HF_METADATA_KEY)
    if raw is None:
        return {}
    try:
        found = json.loads(raw).get("info", {}).get("features", {})
    except (ValueError, AttributeError):
        return {}
    return found if isinstance(found, dict) else {}


def class_names(feature: object) -> tuple[str, ...] | None:
    """The names of a `ClassLabel` feature, else None."""
    if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" and isinstance(feature.get("names"), list):
        return tuple(str(name) for name in feature["names"])
    return None


def list_class_names(feature: object) -> tuple[str, ...] | None:
    """The class names of a `Sequence(ClassLabel)` / `List(ClassLabel)` feature, else None."""
    if isinstance(feature, dict) and feature.get("_type") in _LIST_TYPES:
        inner = feature.get("feature")
        if isinstance(inner, list) and len(inner) == 1:  # the `[ClassLabel(...)]` shorthand
            inner = inner[0]
        return class_names(inner)
    return None


def split_of(value: str) -> str | None:
    """mtl-ray's split for a split name or keyword (`validation` → `val`), else None."""
    text = value.strip().lower()
    return next((split for split, words in SPLIT_KEYWORDS.items() if text in words), None)


def file_split(relative: str) -> str | None:
    """The split a file's path below SRC names, as `datasets` reads it: a folder called by a split
    keyword (`train/`, `my-test/`) or a keyword between separators in the file name
    (`train-00000-of-00001.parquet`, `mnist_validation.parquet`). None when nothing names one."""
    *folders, name = relative.split("/")
    for part in [*folders, posixpath.splitext(name)[0]]:
        for word in _NON_WORD.split(part.lower()):
            split = split_of(word)
            if split:
                return split
    return None
