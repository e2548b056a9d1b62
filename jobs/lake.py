"""The lake: daily-partitioned Parquet tables on any fsspec filesystem.

A table is `<root>/<name>/ds=YYYY-MM-DD/` holding `part-<writeid>-<nnnnn>.parquet` files and a
`_manifest.json`. Only files listed in the manifest belong to the partition, and a partition
without a manifest does not exist. Readers verify every file against its manifest.

Replacing a validated day never exposes, or loses to, an unvalidated version. A published version
is *validated* once it carries a marker ``_validated-<writeid>.json`` (``Table.mark_validated``, or a
write whose gate passed). A write of a day whose published version is validated is *staged*: its files
and its manifest, as ``_candidate.json``, sit next to the published version, which readers keep getting
(``read``, ``dataset``, ``files``, ``manifest``, ``exists``, ``partitions`` only ever read
``_manifest.json``). ``Table.promote`` swaps a candidate in (one rename; the replaced files are removed
after it) and ``Table.reject`` quarantines it, leaving the published version as it was. A newer write
replaces a pending candidate. A day without a validated version (a first write, a table nothing
validates, a lake written before markers existed) is published at once, as it always was.

A write may pass a *gate* (e.g. a data-quality suite) that sees the staged files before the
manifest is published; a partition the gate rejects, a rejected candidate, or a published one taken
back with ``Table.quarantine``, moves to ``<root>/_quarantine/<table>/ds=<ds>/<writeid>/`` with its
(would-be) manifest and the reason, where no reader of the table sees it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

MANIFEST = "_manifest.json"
#: The manifest of a staged write waiting for validation (never read by readers of the table).
CANDIDATE = "_candidate.json"
QUARANTINE = "_quarantine"
QUARANTINE_REASON = "_reason.json"

_DS = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TABLE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)*$")
_PART = re.compile(r"^part-(?P<wid>[0-9A-Za-z]+)-(?P<seq>\d{5,})\.parquet$")
_TMP = re.compile(r"^_(?:manifest|candidate|validated-[0-9A-Za-z]+)\.json\.tmp-(?P<wid>[0-9A-Za-z]+)$")
_MARK = re.compile(r"^_validated-(?P<wid>[0-9A-Za-z]+)\.json$")
_HASH_KEYS = ("lockstep-rows-k1", "lockstep-rows-k2")  # hash_pandas_object wants 16 chars
# hash_key only affects string columns, so the second row hash also gets a constant salt column
# in front: that changes how column hashes are combined, making the two sums independent.
_HASH_SALT = np.uint64(0x9E3779B97F4A7C15)
# Integers and booleans hash through pandas' masked dtypes, so nulls never turn them into floats.
_HASH_TYPES = {
    pa.int8(): pd.Int8Dtype(),
    pa.int16(): pd.Int16Dtype(),
    pa.int32(): pd.Int32Dtype(),
    pa.int64(): pd.Int64Dtype(),
    pa.uint8(): pd.UInt8Dtype(),
    pa.uint16(): pd.UInt16Dtype(),
    pa.uint32(): pd.UInt32Dtype(),
    pa.uint64(): pd.UInt64Dtype(),
    pa.bool_(): pd.BooleanDtype(),
}
_BLOCK = 8 << 20
#: The lake key that signs manifests: the key itself, or a file holding it (``Lake(key=...)`` wins).
KEY_ENV, KEY_FILE_ENV = "LOCKSTEP_LAKE_KEY", "LOCKSTEP_LAKE_KEY_FILE"
_SIG_PREFIX = "hmac-sha256:"


class LakeError(Exception):
    """Anything wrong with reading or writing the lake."""


class MissingPartitionError(LakeError):
    """Some days of a requested range have no published partition."""

    def __init__(self, table: str, missing: list[str]):
        self.table, self.missing = table, list(missing)
        super().__init__(f"table {table!r} has no published partition for ds {_runs(self.missing)}")

    def __reduce__(self):  # keep picklable (dask ships exceptions between processes)
        return (type(self), (self.table, self.missing))


class CorruptPartitionError(LakeError):
    """A published partition's files do not match its manifest."""

    def __init__(self, table: str, ds: str, file: str, problem: str):
        self.table, self.ds, self.file, self.problem = table, ds, file, problem
        super().__init__(f"table {table!r} ds={ds}: file {file}: {problem}")

    def __reduce__(self):
        return (type(self), (self.table, self.ds, self.file, self.problem))


class UnvalidatedPartitionError(LakeError):
    """Days of a range a reader requires validated have no validated published version."""

    def __init__(self, table: str, days: list[str], dataset: str | None = None, override: str | None = None):
        self.table, self.days, self.dataset, self.override = table, list(days), dataset, override
        rng = _runs(self.days)
        cmd = f"lockstep validate {dataset or '<dataset>'} --table {table} --ds {self.days[0]}"
        if len(self.days) > 1:
            cmd += f" --to {self.days[-1]}"
        override = override or (
            "to build from it anyway for exploration pass --allow-unvalidated (allow_unvalidated=True): the "
            "output is then marked as built from unvalidated input"
        )
        super().__init__(f"table {table!r} ds={rng}: not validated (run `{cmd}`); {override}")

    def __reduce__(self):
        return (type(self), (self.table, self.days, self.dataset, self.override))


#: The producer key naming the inputs an output was built from without their validation (the override).
UNVALIDATED_INPUTS = "unvalidated_inputs"


@dataclass
class Manifest:
    """What a published partition holds, who produced it and from which inputs."""

    table: str
    ds: str
    rows: int
    schema: list[dict[str, Any]]  # [{name, type, nullable}]
    files: list[dict[str, Any]]  # [{name, rows, bytes, sha256}]
    content_fingerprint: str
    producer: dict[str, Any]
    inputs: dict[str, str] = field(default_factory=dict)  # "table/ds=..." -> content fingerprint
    created_at: str = ""
    #: ``hmac-sha256:<hex>`` of ``canonical()`` under the lake key; "" in a lake without a key.
    signature: str = ""

    def to_json(self) -> str:
        """The manifest as JSON text."""
        return json.dumps(asdict(self), indent=2)

    def canonical(self) -> bytes:
        """What the signature covers: every field but the signature, as sorted, compact JSON."""
        data = asdict(self)
        del data["signature"]
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse a manifest; unknown keys are ignored, missing ones raise LakeError (a manifest
        written before signing existed has no ``signature``: it reads as unsigned)."""
        try:
            data = json.loads(text)
            return cls(**{f.name: data[f.name] for f in fields(cls) if f.name != "signature" or f.name in data})
        except (ValueError, KeyError, TypeError) as exc:
            raise LakeError(f"invalid manifest: {exc!r}") from exc


def sign(manifest: Manifest, key: bytes) -> str:
    """The signature of ``manifest`` under the lake ``key``."""
    return _SIG_PREFIX + hmac.new(key, manifest.canonical(), hashlib.sha256).hexdigest()


def lake_key_from_env() -> bytes | None:
    """The lake key from ``LOCKSTEP_LAKE_KEY`` (the key) or ``LOCKSTEP_LAKE_KEY_FILE`` (a file holding
    it, surrounding whitespace stripped); None if neither is set. LakeError for an unreadable or empty
    key file: a configured key that cannot be loaded must not silently turn signing off."""
    key = os.environ.get(KEY_ENV, "").strip()
    if key:
        return key.encode()
    path = os.environ.get(KEY_FILE_ENV, "").strip()
    if not path:
        return None
    try:
        with open(path, "rb") as fh:
            data = fh.read().strip()
    except OSError as exc:
        raise LakeError(f"{KEY_FILE_ENV}={path}: cannot read the lake key: {exc}") from None
    if not data:
        raise LakeError(f"{KEY_FILE_ENV}={path}: the lake key file is empty")
    return data


class Lake:
    """A lake rooted at a local path or any fsspec URL."""

    def __init__(
        self,
        root: str,
        storage_options: dict | None = None,
        verify_checksums: bool = True,
        verify_content: bool = True,
        key: bytes | str | None = None,
    ):
        """`verify_checksums`: readers check every file's sha256 against the manifest. `verify_content`:
        readers also recompute the rows' content fingerprint (see ``Table.read``). `key`: the lake key
        that signs every manifest written and is required of every manifest read; None takes it from
        ``LOCKSTEP_LAKE_KEY`` / ``LOCKSTEP_LAKE_KEY_FILE`` (unset: an unsigned lake)."""
        self.root = str(root)
        self.storage_options = dict(storage_options or {})
        self.verify_checksums = verify_checksums
        self.verify_content = verify_content
        if key is None:
            key = lake_key_from_env()
        self.key = key.encode() if isinstance(key, str) else (key or None)
        self.fs, self._root = fsspec.core.url_to_fs(self.root, **self.storage_options)
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def __repr__(self) -> str:
        return f"Lake({self.root!r})"

    @property
    def fs_root(self) -> str:
        """The lake's root as a path of its filesystem ``fs`` (no protocol): what ``fs.glob`` returns under."""
        return self._root

    def path(self, *parts: str) -> str:
        """URL of a location in the lake (a plain absolute path for a local lake)."""
        for part in parts:
            if not part or any(seg in ("", ".", "..") for seg in str(part).split("/")):
                raise LakeError(f"bad path component {part!r}")
        return self._url("/".join([self._root.rstrip("/"), *map(str, parts)]))

    def table(self, name: str, schema: pa.Schema | None = None) -> Table:
        """The table `name`; with a schema, every write is selected and cast to it."""
        if not _TABLE.match(name):
            raise LakeError(f"bad table name {name!r}")
        return Table(self, name, schema)

    def _url(self, path: str) -> str:
        return path if self.is_local else self.fs.unstrip_protocol(path)

    def _arrow_fs(self) -> pafs.FileSystem:
        # Arrow's native local filesystem is much faster than going through the fsspec handler.
        if self.is_local:
            return pafs.LocalFileSystem()
        return pafs.PyFileSystem(pafs.FSSpecHandler(self.fs))


class Table:
    """One table of the lake: a set of daily partitions."""

    def __init__(self, lake: Lake, name: str, schema: pa.Schema | None = None):
        self.lake, self.name = lake, name
        self.schema = None if schema is None else normalise_schema(schema)
        self.fs = lake.fs
        self._dir = f"{lake._root.rstrip('/')}/{name}"

    def __repr__(self) -> str:
        return f"Table({self.lake.root!r}, {self.name!r})"

    # ---- partitions -------------------------------------------------------------------------
    def partition_path(self, ds: str | dt.date) -> str:
        """URL of the directory of partition `ds`."""
        return self.lake._url(self._pdir(check_ds(ds)))

    def partitions(self) -> list[str]:
        """Published ds values, sorted: directories holding a valid manifest."""
        # One listing of the table's directory, then one manifest read per partition directory: a glob
        # of ``ds=*/manifest.json`` walks every partition directory's files (and scratch dirs) instead.
        try:
            entries = self.fs.ls(self._dir, detail=False)
        except FileNotFoundError:
            return []
        out = []
        for path in entries:
            name = path.rstrip("/").rsplit("/", 1)[-1]
            ds = name[len("ds=") :]
            if name.startswith("ds=") and _DS.match(ds) and self.exists(ds):
                out.append(ds)
        return sorted(out)

    def exists(self, ds: str | dt.date) -> bool:
        """Whether partition `ds` is published (has a valid manifest)."""
        try:
            self.manifest(ds)
            return True
        except LakeError:
            return False

    def manifest(self, ds: str | dt.date) -> Manifest:
        """The manifest of partition `ds`; MissingPartitionError if it is not published."""
        ds = check_ds(ds)
        path = f"{self._pdir(ds)}/{MANIFEST}"
        try:
            raw = self.fs.cat_file(path)
        except FileNotFoundError:
            raise MissingPartitionError(self.name, [ds]) from None
        try:
            m = Manifest.from_json(raw)
        except LakeError as exc:
            raise CorruptPartitionError(self.name, ds, self.lake._url(path), str(exc)) from None
        if (m.table, m.ds) != (self.name, ds):
            raise CorruptPartitionError(self.name, ds, self.lake._url(path), f"manifest is for {m.table!r} ds={m.ds}")
        self._check_signature(m, ds, path)
        return m

    def _check_signature(self, m: Manifest, ds: str, path: str) -> None:
        key = self.lake.key
        if key is None:
            return
        if not m.signature:
            raise CorruptPartitionError(
                self.name,
                ds,
                self.lake._url(path),
                "manifest is not signed, and this lake requires the lake key's signature",
            )
        if not hmac.compare_digest(m.signature, sign(m, key)):
            raise CorruptPartitionError(
                self.name,
                ds,
                self.lake._url(path),
                "manifest signature does not match the lake key (the manifest was edited, or signed with another key)",
            )

    def first_ds(self) -> str | None:
        """The earliest published ds, or None if there is none."""
        parts = self.partitions()
        return parts[0] if parts else None

    def last_ds(self) -> str | None:
        """The latest published ds, or None if there is none."""
        parts = self.partitions()
        return parts[-1] if parts else None

    # ---- writing ----------------------------------------------------------------------------
    def write_partition(
        self,
        ds: str | dt.date,
        data: Any,
        *,
        producer: dict,
        inputs: dict | None = None,
        rows_per_file: int = 1_000_000,
        gate: Callable[[StagedPartition], Any] | None = None,
    ) -> Manifest:
        """Write and atomically publish partition `ds`, replacing any previous version whole.

        `data` is a pandas DataFrame, a pyarrow Table/RecordBatch, or an iterable of them that is
        streamed chunk by chunk (a new part file every `rows_per_file` rows). Chunks are cast to
        the table schema, or to the first chunk's schema; timestamps are stored as us, UTC.

        `gate(staged)` is called once the data files are written, before the manifest is
        published. If it raises, the staged files and the would-be manifest move to
        `staged.quarantine_path` (the previous version, if any, stays published) and the
        exception propagates with a `quarantine_path` attribute. A version published through a
        gate that passed is validated.

        Without a gate, when the published version of `ds` is validated, the write is staged as
        the day's candidate (`pending(ds)`) instead: readers keep the validated version until
        `promote` (or `reject`). Otherwise it is published at once. Returns the written manifest.
        """
        ds = check_ds(ds)
        if rows_per_file < 1:
            raise ValueError("rows_per_file must be >= 1")
        producer, inputs = dict(producer), dict(inputs or {})
        try:  # fail before writing gigabytes, not at the manifest
            json.dumps([producer, inputs])
        except TypeError as exc:
            raise LakeError(f"producer/inputs must be JSON-serialisable: {exc}") from None
        pdir = self._pdir(ds)
        self.fs.makedirs(pdir, exist_ok=True)
        wid = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ") + uuid.uuid4().hex[:8]
        writer = _PartWriter(self.lake, pdir, wid, rows_per_file)
        schema, rows, sum1, sum2 = self.schema, 0, 0, 0
        try:
            for chunk in _chunks(data):
                tbl = _to_arrow(chunk, self.name, ds)
                if schema is None:
                    schema = normalise_schema(tbl.schema)
                tbl = _conform(tbl, schema, self.name, ds)
                if tbl.num_rows == 0:
                    continue
                h1, h2 = row_hash_sums(tbl)
                sum1, sum2 = (sum1 + h1) % 2**64, (sum2 + h2) % 2**64
                rows += tbl.num_rows
                writer.write(tbl, schema)
            if schema is None:
                raise LakeError(
                    f"table {self.name!r} ds={ds}: no data and no schema; "
                    "give the table a schema to publish an empty partition"
                )
            files = writer.finish(schema)
        except BaseException:
            writer.abort()
            raise
        fingerprint = _fingerprint(_schema_string(schema), rows, sum1, sum2)
        manifest = Manifest(
            table=self.name,
            ds=ds,
            rows=rows,
            schema=_render_schema(schema),
            files=files,
            content_fingerprint=fingerprint,
            producer=producer,
            inputs=inputs,
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        )
        if self.lake.key is not None:
            manifest.signature = sign(manifest, self.lake.key)
        try:
            current = self.manifest(ds)
        except LakeError:
            current = None
        names = {f["name"] for f in files}
        previous = set() if current is None else {f["name"] for f in current.files}
        if gate is not None:
            self._run_gate(gate, StagedPartition(self, ds, wid, manifest, current))
            self._mark(pdir, wid, manifest)  # before the manifest points at it: never a stale verdict
            self._publish(pdir, wid, manifest)
            self._cleanup(pdir, wid, names | {_marker(wid)}, previous)
        elif current is not None and self._is_validated(pdir, current):
            self._install(pdir, wid, CANDIDATE, manifest)
            cur = write_id(current)
            self._cleanup(pdir, wid, names | previous | {CANDIDATE, _marker(cur)}, set())
        else:
            self._publish(pdir, wid, manifest)
            self._cleanup(pdir, wid, names, previous)
        return manifest

    def _publish(self, pdir: str, wid: str, manifest: Manifest) -> None:
        self._install(pdir, wid, MANIFEST, manifest)

    def _install(self, pdir: str, wid: str, name: str, manifest: Manifest | dict) -> None:
        """Write `name` in `pdir` atomically: a temp file, then a rename over the old one."""
        tmp, final = f"{pdir}/{name}.tmp-{wid}", f"{pdir}/{name}"
        payload = (manifest.to_json() if isinstance(manifest, Manifest) else json.dumps(manifest, indent=2)).encode()
        if self.lake.is_local:
            # fsync data entries, then the manifest, then rename: after a power cut the manifest
            # never points at files that did not make it to disk.
            _fsync_dir(pdir)
            with open(tmp, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
            _fsync_dir(pdir)
        else:
            self.fs.pipe_file(tmp, payload)
            self.fs.mv(tmp, final)
            self.fs.invalidate_cache(pdir)

    def _cleanup(self, pdir: str, wid: str, keep: set[str], previous: set[str]) -> None:
        # Remove the replaced version and leftovers of crashed writes that started before this
        # one (files, validation markers, a candidate left pending); newer write ids may belong to
        # a write still in progress, so they stay.
        self.fs.invalidate_cache(pdir)
        for path in self.fs.ls(pdir, detail=False):
            name = path.rstrip("/").rsplit("/", 1)[-1]
            if name == MANIFEST or name in keep:
                continue
            m = _PART.match(name) or _TMP.match(name) or _MARK.match(name)
            if name == CANDIDATE:
                try:
                    cand = self._read_candidate(pdir)
                    m = None if cand is None else {"wid": write_id(cand)}
                except LakeError:  # installed by a rename, so never half-written: nothing to keep
                    m = {"wid": ""}
            if name in previous or (m and m["wid"] < wid):
                try:
                    self.fs.rm_file(path)
                except FileNotFoundError:
                    pass

    # ---- gates and quarantine ---------------------------------------------------------------
    def _run_gate(self, gate: Callable[[StagedPartition], Any], staged: StagedPartition) -> None:
        try:
            gate(staged)
        except Exception as exc:
            try:
                path = self._quarantine_files(
                    staged.ds,
                    staged.write_id,
                    [f["name"] for f in staged.manifest.files],
                    staged.manifest.to_json().encode(),
                    str(exc) or type(exc).__name__,
                    "gate",
                    getattr(exc, "quarantine_attachments", None),
                )
            except Exception as qexc:  # noqa: BLE001 - the gate's verdict matters more than the move
                exc.add_note(f"quarantining the staged files failed too: {qexc!r}")
                raise exc from None
            _attach_quarantine(exc, path)
            raise
        except BaseException:  # interrupted: nothing to keep, nothing published
            for f in staged.manifest.files:
                with contextlib.suppress(OSError):
                    self.fs.rm_file(f"{self._pdir(staged.ds)}/{f['name']}")
            raise

    def quarantine(self, ds: str | dt.date, reason: str, attachments: dict[str, Any] | None = None) -> str:
        """Take published partition `ds` out of the table into the quarantine; returns its URL.

        The manifest moves first, so readers stop seeing the partition at once; then the data
        files follow. `attachments` ({file name: JSON-able or bytes}) are written next to them.
        A partition whose manifest is unreadable is quarantined with every part file found.
        """
        ds = check_ds(ds)
        pdir = self._pdir(ds)
        try:
            names = [f["name"] for f in self.manifest(ds).files]
        except CorruptPartitionError:
            if not self.fs.exists(f"{pdir}/{MANIFEST}"):
                raise
            self.fs.invalidate_cache(pdir)
            names = sorted(
                p.rstrip("/").rsplit("/", 1)[-1]
                for p in self.fs.ls(pdir, detail=False)
                if _PART.match(p.rstrip("/").rsplit("/", 1)[-1])
            )
        wids = sorted({m["wid"] for m in map(_PART.match, names) if m})
        wid = wids[-1] if wids else uuid.uuid4().hex
        return self._quarantine_files(ds, wid, names, MANIFEST, reason, "published", attachments)

    # ---- candidates and validation markers ---------------------------------------------------
    def validated(self, ds: str | dt.date) -> bool:
        """Whether the published version of `ds` is validated (so a re-write of `ds` is staged)."""
        try:
            current = self.manifest(ds)
        except LakeError:
            return False
        return self._is_validated(self._pdir(check_ds(ds)), current)

    def unvalidated(self, ds_from: str | dt.date, ds_to: str | dt.date | None = None) -> list[str]:
        """The days of the range whose published version is not validated (MissingPartitionError for
        days without one, CorruptPartitionError for a day whose manifest is unreadable or mis-signed)."""
        out, missing = [], []
        for ds in day_range(ds_from, ds_to):
            try:
                current = self.manifest(ds)
            except MissingPartitionError:  # a corrupt or mis-signed manifest is raised, not called missing
                missing.append(ds)
                continue
            if not self._is_validated(self._pdir(ds), current):
                out.append(ds)
        if missing:
            raise MissingPartitionError(self.name, missing)
        return out

    def require_validated(
        self,
        ds_from: str | dt.date,
        ds_to: str | dt.date | None = None,
        *,
        dataset: str | None = None,
        override: str | None = None,
    ) -> None:
        """UnvalidatedPartitionError naming the days of the range that are not validated (``dataset``:
        the ``lockstep validate`` dataset the hint names; ``override``: how to proceed anyway, if not
        the default ``--allow-unvalidated`` text)."""
        bad = self.unvalidated(ds_from, ds_to)
        if bad:
            raise UnvalidatedPartitionError(self.name, bad, dataset, override)

    def mark_validated(self, ds: str | dt.date, manifest: Manifest) -> None:
        """Record that the published version `manifest` of `ds` passed validation; LakeError if `ds`
        has been re-published since (the verdict would be about other content)."""
        ds = check_ds(ds)
        current = self.manifest(ds)
        if current != manifest:
            raise LakeError(f"table {self.name!r} ds={ds}: the published version changed while it was validated")
        wid = write_id(current)
        self._mark(self._pdir(ds), wid, current)

    def pending(self, ds: str | dt.date) -> StagedPartition | None:
        """The candidate of `ds` staged over its validated version and not yet promoted or rejected."""
        ds = check_ds(ds)
        cand = self._read_candidate(self._pdir(ds))
        if cand is None:
            return None
        try:
            current = self.manifest(ds)
        except LakeError:
            current = None
        return StagedPartition(self, ds, write_id(cand), cand, current)

    def promote(self, ds: str | dt.date, write: str) -> Manifest:
        """Publish the pending candidate of `ds` written by write `write`, validated: one rename swaps
        it in, then the replaced version's files are removed. LakeError if it is no longer pending."""
        ds = check_ds(ds)
        pdir = self._pdir(ds)
        cand = self._pending_write(ds, write)
        if cand.producer.get(UNVALIDATED_INPUTS):
            raise LakeError(
                f"table {self.name!r} ds={ds}: candidate {write} was built from unvalidated input "
                f"{cand.producer[UNVALIDATED_INPUTS]}; it does not replace the validated version"
            )
        try:
            previous = {f["name"] for f in self.manifest(ds).files}
        except LakeError:
            previous = set()
        self._mark(pdir, write, cand)
        if self.lake.is_local:
            os.replace(f"{pdir}/{CANDIDATE}", f"{pdir}/{MANIFEST}")
            _fsync_dir(pdir)
        else:
            self.fs.mv(f"{pdir}/{CANDIDATE}", f"{pdir}/{MANIFEST}")
            self.fs.invalidate_cache(pdir)
        self._cleanup(pdir, write, {f["name"] for f in cand.files} | {_marker(write)}, previous)
        return cand

    def reject(self, ds: str | dt.date, write: str, reason: str, attachments: dict[str, Any] | None = None) -> str:
        """Quarantine the pending candidate of `ds` written by `write`; the published version is not
        touched. Returns the quarantine URL; LakeError if it is no longer pending."""
        ds = check_ds(ds)
        cand = self._pending_write(ds, write)
        names = [f["name"] for f in cand.files]
        return self._quarantine_files(ds, write, names, CANDIDATE, reason, "candidate", attachments)

    def _pending_write(self, ds: str, write: str) -> Manifest:
        cand = self._read_candidate(self._pdir(ds))
        if cand is None or write_id(cand) != write:
            now = "none" if cand is None else f"write {write_id(cand)}"
            raise LakeError(f"table {self.name!r} ds={ds}: write {write} is not the pending candidate ({now} is)")
        return cand

    def _read_candidate(self, pdir: str) -> Manifest | None:
        path = f"{pdir}/{CANDIDATE}"
        try:
            raw = self.fs.cat_file(path)
        except FileNotFoundError:
            return None
        ds = pdir.rsplit("ds=", 1)[-1]
        try:
            m = Manifest.from_json(raw)
        except LakeError as exc:
            raise CorruptPartitionError(self.name, ds, self.lake._url(path), str(exc)) from None
        self._check_signature(m, ds, path)
        return m

    def _mark(self, pdir: str, wid: str, manifest: Manifest) -> None:
        if manifest.producer.get(UNVALIDATED_INPUTS):
            return  # built from unvalidated input (the override): never taken as good, whatever its checks say
        stamp = {
            "write_id": wid,
            "content_fingerprint": manifest.content_fingerprint,
            "validated_at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        }
        self._install(pdir, wid, _marker(wid), stamp)

    def _is_validated(self, pdir: str, manifest: Manifest) -> bool:
        try:
            stamp = json.loads(self.fs.cat_file(f"{pdir}/{_marker(write_id(manifest))}"))
        except (FileNotFoundError, ValueError):
            return False
        return isinstance(stamp, dict) and stamp.get("content_fingerprint") == manifest.content_fingerprint

    def quarantined(self, ds: str | dt.date) -> list[str]:
        """URLs of the quarantined versions of partition `ds`, oldest write first."""
        qdir = self._qdir(check_ds(ds))
        if not self.fs.exists(qdir):
            return []
        self.fs.invalidate_cache(qdir)
        return sorted(self.lake._url(p.rstrip("/")) for p in self.fs.ls(qdir, detail=False))

    def quarantine_path(self, ds: str | dt.date, write_id: str) -> str:
        """URL of the quarantine directory of write `write_id` of partition `ds`."""
        return self.lake._url(f"{self._qdir(check_ds(ds))}/{write_id}")

    def _quarantine_files(
        self,
        ds: str,
        wid: str,
        names: list[str],
        manifest: bytes | str,
        reason: str,
        source: str,
        attachments: dict[str, Any] | None,
    ) -> str:
        for name in attachments or {}:
            if "/" in name or name in (MANIFEST, QUARANTINE_REASON) or _PART.match(name):
                raise LakeError(f"bad quarantine attachment name {name!r}")
        pdir, qdir = self._pdir(ds), f"{self._qdir(ds)}/{wid}"
        if self.fs.exists(qdir):  # the same write quarantined again (re-published, failed again)
            qdir = f"{qdir}-{uuid.uuid4().hex[:8]}"
        self.fs.makedirs(qdir, exist_ok=True)
        if isinstance(manifest, str):  # published or a candidate: unlist it first (a rename on a local lake)
            self.fs.mv(f"{pdir}/{manifest}", f"{qdir}/{MANIFEST}")
            with contextlib.suppress(FileNotFoundError):  # its verdict goes with it
                self.fs.mv(f"{pdir}/{_marker(wid)}", f"{qdir}/{_marker(wid)}")
        else:
            self.fs.pipe_file(f"{qdir}/{MANIFEST}", manifest)
        moved, missing = [], []
        for name in names:
            try:
                self.fs.mv(f"{pdir}/{name}", f"{qdir}/{name}")
                moved.append(name)
            except FileNotFoundError:
                missing.append(name)
        self.fs.invalidate_cache(pdir)
        info = {
            "table": self.name,
            "ds": ds,
            "write_id": wid,
            "source": source,
            "reason": reason,
            "files": moved,
            "missing_files": missing,
            "quarantined_at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        }
        self.fs.pipe_file(f"{qdir}/{QUARANTINE_REASON}", json.dumps(info, indent=2).encode())
        for name, payload in (attachments or {}).items():
            if not isinstance(payload, bytes):
                payload = json.dumps(payload, indent=2, default=str).encode()
            self.fs.pipe_file(f"{qdir}/{name}", payload)
        return self.lake._url(qdir)

    def _qdir(self, ds: str) -> str:
        return f"{self.lake._root.rstrip('/')}/{QUARANTINE}/{self.name}/ds={ds}"

    # ---- reading ----------------------------------------------------------------------------
    # Every reader verifies each file against the manifest (present, size, sha256, footer rows) at
    # the call. With ``Lake.verify_content`` it also recomputes the content fingerprint of the rows
    # (the order-free row-hash sums the writer recorded), so a file rewritten together with its
    # manifest's size and sha256 is still caught: ``files`` and ``dataset`` hand their files to code
    # that reads them itself (the engines, validation), so they re-read and hash every file at the
    # call; ``read`` and ``iter_batches`` hash the rows as they read them, and ``iter_batches``
    # raises after the last batch of a bad partition, before the consumer's loop can finish.
    def files(self, ds_from: str | dt.date, ds_to: str | dt.date | None = None) -> list[str]:
        """Verified data file URLs of every partition in the inclusive daily range."""
        return [self.lake._url(p) for p in self._verified_paths(ds_from, ds_to)]

    def dataset(self, ds_from: str | dt.date, ds_to: str | dt.date | None = None) -> pads.Dataset:
        """A pyarrow dataset over the verified files of the range."""
        paths = self._verified_paths(ds_from, ds_to)
        return pads.dataset(paths, format="parquet", filesystem=self.lake._arrow_fs(), schema=self.schema)

    def read(
        self, ds_from: str | dt.date, ds_to: str | dt.date | None = None, columns: list[str] | None = None
    ) -> pd.DataFrame:
        """The rows of the range as one DataFrame (empty, with the schema, if there are none).

        With ``verify_content`` every column is read (the fingerprint covers whole rows) and hashed;
        CorruptPartitionError ("content fingerprint") if a partition's rows are not the manifest's."""
        if not self.lake.verify_content:
            return self.dataset(ds_from, ds_to).to_table(columns=columns).to_pandas()
        schema, parts = self._partition_datasets(ds_from, ds_to)
        tables = []
        for m, sub in parts:
            tbl = sub.to_table()
            check = _ContentCheck(self, m, schema)
            check.add(tbl)
            check.done()
            tables.append(tbl)
        whole = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        return pads.dataset(whole).to_table(columns=columns).to_pandas()

    def iter_batches(
        self,
        ds_from: str | dt.date,
        ds_to: str | dt.date | None = None,
        columns: list[str] | None = None,
        batch_size: int = 262_144,
    ) -> Iterator[pd.DataFrame]:
        """The rows of the range as DataFrames of at most `batch_size` rows.

        Verification of the files happens at the call, not at the first iteration. With
        ``verify_content`` the rows are hashed as they stream: after the last batch of a partition
        whose rows are not its manifest's, the iterator raises CorruptPartitionError instead of
        going on, so a consumer that publishes only once the iteration is over publishes nothing.
        """
        if not self.lake.verify_content:
            return _frames(self.dataset(ds_from, ds_to), columns, batch_size)
        schema, parts = self._partition_datasets(ds_from, ds_to)
        return self._checked_frames(schema, parts, columns, batch_size)

    def _checked_frames(self, schema, parts, columns, batch_size) -> Iterator[pd.DataFrame]:
        empty = True
        for m, sub in parts:
            check = _ContentCheck(self, m, schema)
            for batch in sub.to_batches(batch_size=batch_size):
                check.add(batch)
                if batch.num_rows:
                    empty = False
                    yield (batch if columns is None else batch.select(columns)).to_pandas()
            check.done()
        if empty:
            yield parts[-1][1].to_table(columns=columns).to_pandas()

    def _partition_datasets(self, ds_from, ds_to) -> tuple[pa.Schema, list[tuple[Manifest, pads.Dataset]]]:
        """The range's partitions, files verified (not their content), each as a dataset in the schema
        ``dataset`` would read the whole range in."""
        verified = self._verified(ds_from, ds_to, content=False)
        afs = self.lake._arrow_fs()
        paths = [p for _, ps in verified for p in ps]
        schema = pads.dataset(paths, format="parquet", filesystem=afs, schema=self.schema).schema
        return schema, [(m, pads.dataset(ps, format="parquet", filesystem=afs, schema=schema)) for m, ps in verified]

    def _verified_paths(self, ds_from, ds_to) -> list[str]:
        return [p for _, ps in self._verified(ds_from, ds_to) for p in ps]

    def _verified(self, ds_from, ds_to, content: bool | None = None) -> list[tuple[Manifest, list[str]]]:
        manifests, missing = [], []
        for ds in day_range(ds_from, ds_to):
            try:
                manifests.append(self.manifest(ds))
            except MissingPartitionError:
                missing.append(ds)
        if missing:
            raise MissingPartitionError(self.name, missing)
        return [(m, self._verify(m, content)) for m in manifests]

    def _verify(self, m: Manifest, content: bool | None = None) -> list[str]:
        """Check `m`'s files (present, size, sha256, footer rows) and, if `content` (default: the lake's
        ``verify_content``), re-read them and recompute the content fingerprint. Returns their paths."""
        pdir = self._pdir(m.ds)
        self.fs.invalidate_cache(pdir)
        sizes = {e["name"].rstrip("/").rsplit("/", 1)[-1]: e["size"] for e in self.fs.ls(pdir, detail=True)}
        if sum(f["rows"] for f in m.files) != m.rows:
            raise CorruptPartitionError(
                self.name,
                m.ds,
                self.lake._url(f"{pdir}/{MANIFEST}"),
                "file row counts do not add up to the manifest's rows",
            )
        paths = []
        for f in m.files:
            path = f"{pdir}/{f['name']}"

            def bad(problem: str, path=path) -> CorruptPartitionError:
                return CorruptPartitionError(self.name, m.ds, self.lake._url(path), problem)

            if f["name"] not in sizes:
                raise bad("file is missing")
            if sizes[f["name"]] != f["bytes"]:
                raise bad(f"size is {sizes[f['name']]} bytes, manifest says {f['bytes']}")
            if self.lake.verify_checksums:
                digest = _sha256(self.fs, path)
                if digest != f["sha256"]:
                    raise bad(f"sha256 is {digest}, manifest says {f['sha256']}")
            try:
                with self.fs.open(path, "rb") as fh:
                    n = pq.ParquetFile(fh).metadata.num_rows
            except (OSError, ValueError, pa.ArrowException) as exc:  # not what was written
                raise bad(f"unreadable Parquet footer: {exc}") from None
            if n != f["rows"]:
                raise bad(f"Parquet footer has {n} rows, manifest says {f['rows']}")
            paths.append(path)
        if self.lake.verify_content if content is None else content:
            self._verify_content(m, paths)
        return paths

    def _verify_content(self, m: Manifest, paths: list[str]) -> None:
        """Re-read `paths` (the files of `m`, each in its own schema) and check the content fingerprint."""
        check = None
        for path in paths:
            with self.fs.open(path, "rb") as fh:
                pf = pq.ParquetFile(fh)
                if check is None:
                    check = _ContentCheck(self, m, pf.schema_arrow, own=True)
                for batch in pf.iter_batches(batch_size=262_144):
                    check.add(batch)
        if check is not None:
            check.done()

    def _pdir(self, ds: str) -> str:
        return f"{self._dir}/ds={ds}"


class StagedPartition:
    """A written but unpublished partition: what a write's gate sees, or a pending candidate."""

    def __init__(self, table: Table, ds: str, write_id: str, manifest: Manifest, current: Manifest | None):
        self.table, self.ds, self.write_id = table, ds, write_id
        self.manifest = manifest  # the manifest that will be published if the gate passes
        self.current = current  # the published version being replaced, if any

    def __repr__(self) -> str:
        return f"StagedPartition({self.table.name!r}, ds={self.ds}, write_id={self.write_id!r})"

    @property
    def files(self) -> list[str]:
        """URLs of the staged data files."""
        pdir = self.table._pdir(self.ds)
        return [self.table.lake._url(f"{pdir}/{f['name']}") for f in self.manifest.files]

    def verify(self) -> list[str]:
        """The staged files checked against the staged manifest (sizes, checksums, footers), as
        ``Table.read`` checks a published partition: CorruptPartitionError naming the bad file."""
        return [self.table.lake._url(p) for p in self.table._verify(self.manifest)]

    @property
    def quarantine_path(self) -> str:
        """Where the staged files go if the gate rejects them (or a pending candidate is rejected)."""
        return self.table.quarantine_path(self.ds, self.write_id)

    def dataset(self) -> pads.Dataset:
        """A pyarrow dataset over the staged files, in their own (written) schema."""
        pdir = self.table._pdir(self.ds)
        return pads.dataset(
            [f"{pdir}/{f['name']}" for f in self.manifest.files],
            format="parquet",
            filesystem=self.table.lake._arrow_fs(),
        )

    def iter_batches(self, columns: list[str] | None = None, batch_size: int = 262_144) -> Iterator[pd.DataFrame]:
        """The staged rows as DataFrames of at most `batch_size` rows (one empty frame if none)."""
        yield from _frames(self.dataset(), columns, batch_size)


class _HashingSink:
    """A write-only file wrapper that counts and sha256-hashes what goes through it."""

    def __init__(self, raw):
        self.raw, self.bytes, self.sha = raw, 0, hashlib.sha256()
        self.closed = False

    def write(self, data) -> int:
        self.sha.update(data)
        self.bytes += len(data)
        return self.raw.write(data)

    def tell(self) -> int:
        return self.bytes

    def flush(self) -> None:
        self.raw.flush()

    def writable(self) -> bool:
        return True

    def close(self) -> None:  # pyarrow closes its sink; the real close happens in _PartWriter
        self.closed = True


class _PartWriter:
    """Streams Arrow tables into rolling part files of one write."""

    def __init__(self, lake: Lake, pdir: str, wid: str, rows_per_file: int):
        self.lake, self.pdir, self.wid, self.rows_per_file = lake, pdir, wid, rows_per_file
        self.files: list[dict] = []
        self._opened: list[str] = []
        self._raw = self._sink = self._pw = None
        self._rows = 0

    def write(self, tbl: pa.Table, schema: pa.Schema) -> None:
        offset = 0
        while offset < tbl.num_rows:
            if self._pw is None:
                self._open(schema)
            take = min(self.rows_per_file - self._rows, tbl.num_rows - offset)
            self._pw.write_table(tbl.slice(offset, take))
            offset += take
            self._rows += take
            if self._rows >= self.rows_per_file:
                self._close()

    def finish(self, schema: pa.Schema) -> list[dict]:
        if self._pw is None and not self.files:
            self._open(schema)  # an empty partition still carries its schema in one empty file
        if self._pw is not None:
            self._close()
        return self.files

    def abort(self) -> None:
        # Best effort: a failed write leaves nothing behind (a killed one is cleaned up later).
        with contextlib.suppress(OSError, ValueError, pa.ArrowException):
            if self._pw is not None:
                self._pw.close()
            if self._raw is not None:
                self._raw.close()
        for path in self._opened:
            with contextlib.suppress(OSError):
                self.lake.fs.rm_file(path)

    def _open(self, schema: pa.Schema) -> None:
        name = f"part-{self.wid}-{len(self.files):05d}.parquet"
        path = f"{self.pdir}/{name}"
        self._opened.append(path)
        # The file outlives this call (closed in _close/abort), so no context manager here.
        self._raw = (
            open(path, "wb")
            if self.lake.is_local  # noqa: SIM115
            else self.lake.fs.open(path, "wb")
        )
        self._sink = _HashingSink(self._raw)
        strings = [f.name for f in schema if pa.types.is_string(f.type)]
        self._pw = pq.ParquetWriter(
            self._sink, schema, compression="zstd", use_dictionary=strings or False, coerce_timestamps="us"
        )
        self._name, self._rows = name, 0

    def _close(self) -> None:
        self._pw.close()
        self._raw.flush()
        if self.lake.is_local:
            os.fsync(self._raw.fileno())
        self._raw.close()
        self.files.append(
            {"name": self._name, "rows": self._rows, "bytes": self._sink.bytes, "sha256": self._sink.sha.hexdigest()}
        )
        self._raw = self._sink = self._pw = None


# ---- helpers ------------------------------------------------------------------------------------
def _frames(dataset: pads.Dataset, columns, batch_size: int) -> Iterator[pd.DataFrame]:
    """A dataset's rows as DataFrames of at most ``batch_size`` rows; one empty (typed) frame if none."""
    empty = True
    for batch in dataset.to_batches(columns=columns, batch_size=batch_size):
        if batch.num_rows:
            empty = False
            yield batch.to_pandas()
    if empty:
        yield dataset.to_table(columns=columns).to_pandas()


def write_id(manifest: Manifest) -> str:
    """The id of the write that produced `manifest` (every file of one write carries it)."""
    for f in manifest.files:
        m = _PART.match(f["name"])
        if m:
            return m["wid"]
    raise LakeError(f"table {manifest.table!r} ds={manifest.ds}: manifest lists no part file")


def _marker(wid: str) -> str:
    return f"_validated-{wid}.json"


def check_ds(ds: str | dt.date) -> str:
    """``ds`` as a ``YYYY-MM-DD`` string (a ``date`` or such a string); ``LakeError`` otherwise."""
    if isinstance(ds, dt.date) and not isinstance(ds, dt.datetime):
        return ds.isoformat()
    if isinstance(ds, str) and _DS.match(ds):
        try:
            dt.date.fromisoformat(ds)
            return ds
        except ValueError:
            pass
    raise LakeError(f"ds must be a YYYY-MM-DD date, got {ds!r}")


def day_range(ds_from: str | dt.date, ds_to: str | dt.date | None = None) -> list[str]:
    """Every day of the inclusive range ``ds_from..ds_to`` as ``YYYY-MM-DD`` (``ds_to`` None: one day).

    The one owner of day ranges: ``LakeError`` for a malformed day or a range that ends before it starts.
    """
    start = dt.date.fromisoformat(check_ds(ds_from))
    end = start if ds_to is None else dt.date.fromisoformat(check_ds(ds_to))
    if end < start:
        raise LakeError(f"empty ds range {start}..{end}")
    return [(start + dt.timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]


def inputs_fingerprint(table: Table, ds_from: str, ds_to: str) -> str:
    """One fingerprint for a range of partitions of ``table``: their content fingerprints, in order
    (what a job records as the input it read)."""
    return inputs_fingerprints(table, ds_from, [ds_to])[check_ds(ds_to)]


def inputs_fingerprints(table: Table, ds_from: str, ends: Iterable[str]) -> dict[str, str]:
    """``{end: inputs_fingerprint(table, ds_from, end)}`` for several ends, reading each manifest once."""
    wanted = {check_ds(e) for e in ends}
    if not wanted:
        return {}
    h, out = hashlib.sha256(), {}
    for ds in day_range(ds_from, max(wanted)):
        h.update(f"{ds}={table.manifest(ds).content_fingerprint};".encode())
        if ds in wanted:
            out[ds] = h.copy().hexdigest()
    missing = sorted(wanted - set(out))
    if missing:
        raise LakeError(f"{table.name}: range end(s) {missing} before the range start {ds_from}")
    return out


def parse_input_key(key: str) -> tuple[str, str, str] | None:
    """``(table, first ds, last ds)`` of a manifest input key ``table/ds=A`` or ``table/ds=A..B``;
    None for a key of another form."""
    table, sep, days = key.rpartition("/ds=")
    if not sep or not table:
        return None
    lo, _, hi = days.partition("..")
    try:
        return table, check_ds(lo), check_ds(hi or lo)
    except LakeError:
        return None


def unvalidated_inputs(lake: Lake, keys: Iterable[str], *, skip: Iterable[str] = ()) -> list[str]:
    """``table/ds=D`` of every day named by the input ``keys`` whose published version is not validated
    (tables in ``skip`` — tables no suite validates — are left out)."""
    out, skip = [], set(skip)
    for key in keys:
        parsed = parse_input_key(key)
        if parsed is None or parsed[0] in skip or parsed[2] < parsed[1]:
            continue
        name, lo, hi = parsed
        out += [f"{name}/ds={d}" for d in lake.table(name).unvalidated(lo, hi)]
    return out


def _runs(days: list[str]) -> str:
    """'a, c..e' for sorted days a, c, d, e."""
    runs: list[list[dt.date]] = []
    for d in map(dt.date.fromisoformat, days):
        if runs and (d - runs[-1][1]).days == 1:
            runs[-1][1] = d
        else:
            runs.append([d, d])
    return ", ".join(a.isoformat() if a == b else f"{a}..{b}" for a, b in runs)


def _chunks(data: Any) -> Iterator[Any]:
    # A DataFrame is itself iterable (over column names), so test the single-chunk types first.
    if isinstance(data, (pd.DataFrame, pa.Table, pa.RecordBatch)):
        yield data
    elif isinstance(data, Iterable) and not isinstance(data, (str, bytes)):
        yield from data
    else:
        raise LakeError(
            f"cannot write {type(data).__name__}: expected a DataFrame, an Arrow Table or an iterable of them"
        )


def _to_arrow(chunk: Any, table: str, ds: str) -> pa.Table:
    names = list(chunk.columns) if isinstance(chunk, pd.DataFrame) else getattr(chunk, "column_names", [])
    twice = sorted({str(n) for n in names if names.count(n) > 1})
    if twice:
        raise LakeError(f"table {table!r} ds={ds}: column(s) {twice} appear more than once in the data")
    if isinstance(chunk, pd.DataFrame):
        return pa.Table.from_pandas(chunk, preserve_index=False)
    if isinstance(chunk, pa.RecordBatch):
        return pa.Table.from_batches([chunk])
    if isinstance(chunk, pa.Table):
        return chunk
    raise LakeError(f"table {table!r} ds={ds}: cannot write a chunk of type {type(chunk).__name__}")


def _normalise_type(t: pa.DataType) -> pa.DataType:
    if pa.types.is_timestamp(t):
        return pa.timestamp("us", tz="UTC")  # naive timestamps are taken as UTC
    if pa.types.is_large_string(t) or (
        pa.types.is_dictionary(t) and (pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type))
    ):
        return pa.string()
    return t


def normalise_schema(schema: pa.Schema) -> pa.Schema:
    """The stored form of a schema: timestamps us/UTC, plain strings, no pandas metadata."""
    return pa.schema([pa.field(f.name, _normalise_type(f.type), f.nullable) for f in schema])


def _conform(tbl: pa.Table, schema: pa.Schema, table: str, ds: str) -> pa.Table:
    arrays = []
    for f in schema:
        if f.name not in tbl.column_names:
            raise LakeError(
                f"table {table!r} ds={ds}: column {f.name!r} is missing from the data (has {tbl.column_names})"
            )
        col = tbl.column(f.name)
        try:
            col = col.cast(f.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise LakeError(
                f"table {table!r} ds={ds}: column {f.name!r} cannot be cast from {col.type} to {f.type}: {exc}"
            ) from None
        if not f.nullable and col.null_count:
            raise LakeError(
                f"table {table!r} ds={ds}: column {f.name!r} is not nullable but has {col.null_count} nulls"
            )
        arrays.append(col)
    return pa.Table.from_arrays(arrays, schema=schema)


def row_hash_sums(tbl: pa.Table) -> tuple[int, int]:
    """Two independent order-free sums (mod 2**64) of per-row hashes of the stored rows."""
    # Hash the pandas view of the *stored* Arrow table, so the result depends only on what is
    # written, never on whether the chunk arrived as pandas or Arrow.
    df = tbl.to_pandas(types_mapper=_HASH_TYPES.get)
    h1 = pd.util.hash_pandas_object(df, index=False, hash_key=_HASH_KEYS[0]).to_numpy()
    df.insert(0, "__lockstep_salt__", np.full(len(df), _HASH_SALT), allow_duplicates=True)
    h2 = pd.util.hash_pandas_object(df, index=False, hash_key=_HASH_KEYS[1]).to_numpy()
    return int(h1.sum(dtype=np.uint64)), int(h2.sum(dtype=np.uint64))


def _fingerprint(schema: str, rows: int, sum1: int, sum2: int) -> str:
    """A partition's content fingerprint: its schema, row count and the two row-hash sums."""
    return hashlib.sha256(f"{schema}|{rows}|{sum1:016x}|{sum2:016x}".encode()).hexdigest()


class _ContentCheck:
    """The row-hash sums of what a reader reads of one partition, checked against its manifest.

    `schema` is the schema the rows are read in. When it is not the one the partition was written in
    (a reader's schema, or a range whose first partition drifted), the rows hashed would be a cast
    view, not the stored rows, so ``done`` re-reads the files in their own schema instead.
    """

    def __init__(self, table: Table, m: Manifest, schema: pa.Schema, own: bool = False):
        self.table, self.m = table, m
        self.schema = _schema_string(normalise_schema(schema))
        # `own`: the rows come in the files' own schema, so a different one is part of the mismatch
        self.inline = own or json.loads(self.schema) == m.schema
        self.rows, self.sum1, self.sum2 = 0, 0, 0

    def add(self, rows: pa.Table | pa.RecordBatch) -> None:
        if not self.inline or not rows.num_rows:
            return
        tbl = pa.Table.from_batches([rows]) if isinstance(rows, pa.RecordBatch) else rows
        h1, h2 = row_hash_sums(tbl)
        self.sum1, self.sum2 = (self.sum1 + h1) % 2**64, (self.sum2 + h2) % 2**64
        self.rows += rows.num_rows

    def done(self) -> None:
        t, m = self.table, self.m
        if not self.inline:
            t._verify_content(m, [f"{t._pdir(m.ds)}/{f['name']}" for f in m.files])
            return
        got = _fingerprint(self.schema, self.rows, self.sum1, self.sum2)
        if got != m.content_fingerprint:
            names = ", ".join(f["name"] for f in m.files)
            raise CorruptPartitionError(
                t.name,
                m.ds,
                t.lake._url(f"{t._pdir(m.ds)}/{MANIFEST}"),
                f"content fingerprint of the rows read is {got}, manifest says {m.content_fingerprint}: "
                f"the {self.rows} rows of {names} are not the rows the manifest was written for",
            )


def _render_schema(schema: pa.Schema) -> list[dict[str, Any]]:
    return [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema]


def _schema_string(schema: pa.Schema) -> str:
    return json.dumps(_render_schema(schema), sort_keys=True)


def _sha256(fs, path: str) -> str:
    sha = hashlib.sha256()
    with fs.open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            sha.update(block)
    return sha.hexdigest()


def _attach_quarantine(exc: BaseException, path: str) -> None:
    """Tell the caller where a rejected partition went: an attribute, and a note in tracebacks
    unless the exception type already reports `quarantine_path` itself."""
    reports_it = "quarantine_path" in dir(type(exc))
    exc.quarantine_path = path
    if not reports_it:
        exc.add_note(f"the partition was quarantined at {path}")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
