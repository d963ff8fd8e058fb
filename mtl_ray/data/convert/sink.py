"""Where `mtl-ray data convert` writes: rows dealt into shards of near-equal size (`ShardSink`)."""

from __future__ import annotations

import posixpath

import pyarrow as pa
import pyarrow.fs as pafs

from mtl_ray import progress
from mtl_ray.data.shards import ROW_GROUP_ROWS, ShardFormat, ShardWriter, shard_name


class ShardSink:
    """Deals rows, in order, into `count` shards of near-equal size, one ROW_GROUP_ROWS row group at a time.

    Sizes are planned from the rows the first pass found readable; if the second pass skips more,
    the last shards come out smaller or not at all, and the written ones are renamed to match.
    """

    def __init__(self, fs: pafs.FileSystem, root: str, fmt: ShardFormat, count: int, planned: int):
        self.fs, self.root, self.fmt, self.count = fs, root, fmt, count
        self._ends = [planned * (j + 1) // count for j in range(count)]
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._written = 0
        self._paths: list[str] = []
        self._writer: ShardWriter | None = None
        self._progress = progress.Counter("convert: rows written", planned)

    def add(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._pending_rows += table.num_rows
        self._drain(final=False)

    def discard(self) -> None:
        """Remove every shard written so far (a failed convert leaves none behind)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for path in self._paths:
            self.fs.delete_file(path)
        self._paths = []

    def close(self) -> int:
        """Flush what is left; returns the number of shards written."""
        self._drain(final=True)
        if self._writer is not None:
            self._writer.close()
        if len(self._paths) < self.count:
            for j, path in enumerate(self._paths):
                self.fs.move(path, posixpath.join(self.root, shard_name(j, len(self._paths))))
        return len(self._paths)

    def _drain(self, final: bool) -> None:
        while self._pending_rows:
            shard = len(self._paths) - (self._writer is not None)
            chunk = min(self._ends[shard] - self._written, ROW_GROUP_ROWS)
            if self._pending_rows < chunk and not final:
                return
            self._write(self._take(min(chunk, self._pending_rows)))
            if self._written == self._ends[shard]:
                self._writer.close()
                self._writer = None

    def _take(self, n: int) -> pa.Table:
        table = pa.concat_tables(self._pending)
        rest = table.slice(n)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows
        return table.slice(0, n)

    def _write(self, table: pa.Table) -> None:
        if self._writer is None:
            path = posixpath.join(self.root, shard_name(len(self._paths), self.count))
            self._writer = ShardWriter(self.fs, path, self.fmt)
            self._paths.append(path)
        self._writer.write(table)
        self._written += table.num_rows
        self._progress.advance(table.num_rows)
