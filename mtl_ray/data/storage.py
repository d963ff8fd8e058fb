"""Where shards live: local directories or `s3://bucket/prefix`, behind one pyarrow filesystem.

pyarrow's S3 filesystem ignores `AWS_ENDPOINT_URL`, so the endpoint of an S3-compatible server
(MinIO, moto, Ceph) is applied here explicitly. Credentials come from the usual AWS variables,
which pyarrow reads itself; they are never logged or put into messages. A PATH may end in a glob
(`data/train-*.parquet`, `s3://bucket/hub/**/*.parquet`): it is matched here against a listing of
the folder above it, since a shell does not expand `s3://` globs and may not expand quoted ones.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
from urllib.parse import urlparse

import pyarrow.fs as pafs

from mtl_ray.errors import UserError, first_line

PARQUET_SUFFIX = ".parquet"
GLOB_CHARS = "*?["


def is_s3(path: str) -> bool:
    return path.startswith("s3://")


def s3_filesystem() -> pafs.S3FileSystem:
    """An S3 filesystem honouring `AWS_ENDPOINT_URL` and `AWS_DEFAULT_REGION`."""
    kwargs: dict = {"region": os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        url = urlparse(endpoint)
        kwargs["endpoint_override"] = url.netloc or url.path
        kwargs["scheme"] = url.scheme or "https"
    return pafs.S3FileSystem(**kwargs)


def inner_path(path: str) -> str:
    """A user PATH as the path inside its filesystem (`resolve` without making the filesystem)."""
    if is_s3(path):
        rest = path[len("s3://") :].strip("/")
        if not rest:
            raise UserError(f"{path}: expected s3://bucket/prefix")
        return rest
    if "://" in path:
        raise UserError(f"{path}: unsupported scheme; expected a local path or s3://bucket/prefix")
    return os.path.abspath(path)


def absolute(path: str) -> str:
    """A user PATH that names the same place from any working directory: s3:// as given, a local
    path made absolute. Resolved once on the driver, it is what lineage and checkpoints record (a Tune
    trial runs in a directory of its own, where a relative path names nothing)."""
    return path if is_s3(path) else os.path.abspath(path)


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """Split a user PATH into a filesystem and the path inside it."""
    inner = inner_path(path)
    return (s3_filesystem() if is_s3(path) else pafs.LocalFileSystem()), inner


def split_glob(path: str) -> tuple[str, str | None]:
    """PATH cut before its first part holding a glob character: (the folder above, the pattern
    below it), or (PATH, None) when it has no glob. `*` stays within one folder, `**` spans any."""
    prefix = "s3://" if is_s3(path) else ""
    parts = path[len(prefix) :].split("/")
    for k, part in enumerate(parts):
        if any(c in part for c in GLOB_CHARS):
            base = "/".join(parts[:k]) or ("/" if path.startswith("/") else "" if prefix else ".")
            return prefix + base, "/".join(parts[k:])
    return path, None


def _matches(parts: list[str], pattern: list[str]) -> bool:
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_matches(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _matches(parts[1:], pattern[1:])


def _check_bucket(fs: pafs.FileSystem, path: str, shown: str) -> None:
    bucket = path.split("/", 1)[0]
    try:
        info = fs.get_file_info(bucket)
    except OSError as exc:
        raise UserError(f"{shown}: cannot reach S3 bucket {bucket!r}: {first_line(exc)}") from None
    if info.type == pafs.FileType.NotFound:
        raise UserError(f"{shown}: S3 bucket {bucket!r} does not exist")


def display(file: str, root: str, user_path: str) -> str:
    """How to name `file` (found under `root`, which the user called `user_path`) in messages."""
    if file == root:
        return user_path
    return user_path.rstrip("/") + "/" + posixpath.relpath(file, root)


def list_shards(path: str) -> tuple[pafs.FileSystem, list[str], list[str]]:
    """All Parquet files under PATH (any depth), or matching PATH's glob, sorted; also the other
    files found there.

    Returns (filesystem, parquet paths, ignored paths). A PATH that is a single `.parquet` file is
    accepted. Missing paths, empty directories and a non-Parquet file given directly are errors.
    Name files in messages with `display(file, inner_path(base), base)`, `base` = `split_glob(PATH)[0]`.
    """
    base, pattern = split_glob(path)
    fs, inner = resolve(base)
    if is_s3(base):
        _check_bucket(fs, inner, path)
    try:
        info = fs.get_file_info(inner)
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {first_line(exc)}") from None
    if info.type == pafs.FileType.NotFound:
        raise UserError(f"{base if pattern else path}: no such file or directory")
    if pattern is not None and info.type != pafs.FileType.Directory:
        raise UserError(f"{path}: {base} is not a directory (a glob matches files inside one)")
    if info.type == pafs.FileType.File:
        if not inner.endswith(PARQUET_SUFFIX):
            raise UserError(f"{path}: not a Parquet file (expected a directory of *.parquet shards or a .parquet file)")
        return fs, [inner], []
    try:
        entries = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    except OSError as exc:
        raise UserError(f"{path}: cannot list: {first_line(exc)}") from None
    files = [e.path for e in entries if e.type == pafs.FileType.File]
    if pattern is not None:
        files = [p for p in files if _matches(posixpath.relpath(p, inner).split("/"), pattern.split("/"))]
    shards = sorted(p for p in files if p.endswith(PARQUET_SUFFIX))
    ignored = sorted(p for p in files if not p.endswith(PARQUET_SUFFIX))
    if not shards:
        found = f"{len(ignored)} other files" if ignored else "no file matches" if pattern else "empty directory"
        raise UserError(f"{path}: no *.parquet shards found ({found})")
    return fs, shards, ignored


def prepare_output(path: str) -> tuple[pafs.FileSystem, str]:
    """Resolve an output PATH and make sure it can be written (the S3 bucket must already exist)."""
    fs, inner = resolve(path)
    if is_s3(path):
        _check_bucket(fs, inner, path)
    else:
        info = fs.get_file_info(inner)
        if info.type == pafs.FileType.File:
            raise UserError(f"{path}: exists and is a file; expected a directory")
        try:
            fs.create_dir(inner, recursive=True)
        except OSError as exc:  # a file where a parent directory should be, or no permission
            raise UserError(f"{path}: cannot create the directory ({exc.strerror or first_line(exc)})") from None
    return fs, inner
