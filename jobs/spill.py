"""Engine output of a range build, spilled to scratch split by partition, then read back one partition at a time.

A range build (``jobs.snapshots.build_snapshot_range``, ``jobs.training.training_set.build_training_set_range``)
runs ONE engine pass for many partitions; its output arrives bucket by bucket, each bucket holding rows of
every partition. ``Spill`` writes each piece as an uncompressed Arrow IPC file under a fresh
``cfg.scratch(name)`` directory, so the driver holds one engine output frame at a time, never the range;
``tables(key)`` streams a partition's pieces back for ``Table.write_partition``; ``drop(key)`` frees them once
published; closing removes the directory (also on an error).
"""

from __future__ import annotations

from collections.abc import Iterator

import fsspec
import pandas as pd
import pyarrow as pa


class Spill:
    """Arrow IPC pieces per key under a scratch directory of ``cfg`` (a context manager)."""

    def __init__(self, cfg, name: str) -> None:
        opts = getattr(cfg, "storage_options", None) or {}
        self.url = str(cfg.scratch(name)).rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **opts)
        self._parts: dict[str, list[str]] = {}
        self._n = 0

    def __enter__(self) -> Spill:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(self, key: str, rows: pd.DataFrame | pa.Table) -> None:
        """Spill ``rows`` (a frame or an Arrow table) as one more piece of ``key``."""
        tbl = rows if isinstance(rows, pa.Table) else pa.Table.from_pandas(rows, preserve_index=False)
        path = f"{self.root}/ds={key}/part-{self._n:05d}.arrow"
        self._n += 1
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with self.fs.open(path, "wb") as f, pa.ipc.new_file(f, tbl.schema) as w:  # uncompressed: cheap
            w.write_table(tbl)
        self._parts.setdefault(key, []).append(path)

    def has(self, key: str) -> bool:
        return bool(self._parts.get(key))

    def tables(self, key: str) -> Iterator[pa.Table]:
        """The pieces of ``key``, in the order they were added, one at a time."""
        for path in self._parts.get(key, []):
            with self.fs.open(path, "rb") as f:
                yield pa.ipc.open_file(f).read_all()

    def frames(self, key: str) -> Iterator[pd.DataFrame]:
        for tbl in self.tables(key):
            yield tbl.to_pandas()

    def drop(self, key: str) -> None:
        """Remove the pieces of ``key`` (its partition is published: its spill goes now, not at the end)."""
        for path in self._parts.pop(key, []):
            self.fs.rm_file(path)

    def close(self) -> None:
        try:
            if self.fs.exists(self.root):
                self.fs.rm(self.root, recursive=True)
        except OSError:  # cleanup must not hide the run's own error
            pass
