"""Suite parameters of a raw partition that need the table's EARLIER partitions (issue 15).

``recent_median_rows``: the median rows of the last ``recent_days`` non-empty published partitions
(from their manifests), the base of the row-count ceiling.

``event_ids_reused``: the event ids of the partition that an earlier published partition already
holds for a DIFFERENT event (another entity, time or value). A renumbered export (ids that are row
or line numbers) gives ids that belonged to other events; the kernel's dedup would keep the older
copy and drop the new event without a word. A re-delivery (the same id with the same content on a
later day) is not in it: that is a harmless duplicate. Content is every raw column but the
ingestion time (``${event_content}``), hashed as ``jobs.quality.keys.row_hashes`` does.

Cost: the id column of every earlier partition (one Parquet column read per day, cached per
process by content fingerprint, so ``lockstep validate --ds A --to B`` reads each day once), matched
against this partition's ids in ONE hashed lookup over all earlier days (not one sorted ``isin`` per
day: validating a year day by day was quadratic in sorts), then the content of the matching rows of
the days that share an id with this one.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from jobs.lake import LakeError
from jobs.quality.keys import row_hashes

log = logging.getLogger(__name__)

#: Meta key of an expectation whose parameter is computed here: the parameter's name.
EARLIER = "earlier_partitions"
#: Ids of earlier partitions held in memory across validations (8 bytes each for int64 ids).
MAX_CACHED_IDS = 20_000_000
_ids_cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
_SHOWN = 5


def parameters(expectations, table, ds: str, dataset) -> tuple[dict, dict[str, list[str]]]:
    """The parameters of the ``expectations`` bound to earlier partitions (``meta.earlier_partitions``
    names the parameter, ``meta.content`` the content columns), and per parameter the lines that
    explain the first few offending values."""
    params, details = {}, {}
    earlier: list[str] | None = None  # the published days before ds, listed once for every parameter
    for e in expectations:
        meta = e.get("meta") or {}
        name = meta.get(EARLIER)
        if name and earlier is None:
            earlier = [d for d in table.partitions() if d < ds]
        if name == "event_ids_reused":
            column, content = e["kwargs"]["column"], list(meta["content"])
            ids, lines = reused_event_ids(table, ds, dataset, column, content, earlier=earlier)
            params[name], details[name] = ids, list(lines.values())
        elif name == "recent_median_rows":
            params[name], days = recent_median_rows(table, ds, int(meta.get("recent_days", 7)), earlier=earlier)
            if days:
                details[name] = [f"median of the rows of {', '.join(days)}: {params[name]:g}"]
        elif name:
            raise ValueError(f"unknown earlier-partition parameter {name!r}")
    return params, details


def recent_median_rows(table, ds: str, n: int, earlier: list[str] | None = None) -> tuple[float | None, list[str]]:
    """(the median rows of the last ``n`` non-empty published partitions before ``ds`` — from their
    manifests —, those days); (None, []) without any (the ceiling is not evaluated). ``earlier``: the
    published days before ``ds`` when the caller has listed them."""
    days, rows = [], []
    for day in reversed(earlier if earlier is not None else [d for d in table.partitions() if d < ds]):
        try:
            m = table.manifest(day)
        except LakeError:
            continue
        if m.rows:
            days.append(day)
            rows.append(m.rows)
        if len(days) == n:
            break
    if not rows:
        return None, []
    return float(np.median(rows)), sorted(days)


def reused_event_ids(
    table, ds: str, dataset, event_id: str, content: list[str], earlier: list[str] | None = None
) -> tuple[list | None, dict]:
    """(ids of ``dataset`` — the version of ``ds`` being validated — that an earlier partition of
    ``table`` holds with other content, {id: "first seen on ds=E as {...}; on ds=D as {...}"} for
    the first few). ``None`` when the version lacks the id or a content column (not evaluated).
    ``earlier``: the published days before ``ds`` when the caller has listed them."""
    content = [c for c in content if c != event_id]
    if not {event_id, *content} <= set(dataset.schema.names):  # schema drift: the schema checks say so
        return None, {}
    ids, hashes = [], []
    for batch in dataset.to_batches(columns=[event_id, *content]):
        frame = batch.to_pandas()
        ids.append(frame[event_id].to_numpy())
        hashes.append(row_hashes(frame, content))
    if not ids or not sum(len(i) for i in ids):
        return [], {}
    here_ids, here_hash = np.concatenate(ids), np.concatenate(hashes)
    days = earlier if earlier is not None else [d for d in table.partitions() if d < ds]
    chunks, owners = [], []  # every earlier day's ids, and the index (in days) of the day holding each
    for n, day in enumerate(days):
        try:
            chunk = _ids_of(table, day, event_id)
        except LakeError as exc:  # that day's own validation reports it; this check cannot use it
            log.warning("event-id history: skipping %s ds=%s: %s", table.name, day, exc)
            continue
        chunks.append(chunk)
        owners.append(np.full(len(chunk), n, dtype=np.int32))
    if not chunks:
        return [], {}
    before, owner = pd.Series(np.concatenate(chunks)), np.concatenate(owners)
    found = before.isin(pd.unique(here_ids)).to_numpy()  # one hash table of this partition's ids
    here = pd.Series(here_ids)
    conflicts: dict = {}  # id -> earlier ds (the first one)
    for n in np.unique(owner[found]):  # the days sharing an id with this one, in order
        day = days[n]
        shared = pd.unique(before[found & (owner == n)].to_numpy())
        hit = here.isin(shared).to_numpy()
        rows = table.read(day, columns=[event_id, *content])
        rows = rows[rows[event_id].isin(shared)]
        theirs = dict(zip(rows[event_id].tolist(), row_hashes(rows, content).tolist(), strict=True))
        for i, h in zip(here_ids[hit].tolist(), here_hash[hit].tolist(), strict=True):
            if i in theirs and theirs[i] != h and i not in conflicts:
                conflicts[i] = day
    if not conflicts:
        return [], {}
    ordered = sorted(conflicts)  # ids of one column: all int or all str
    shown = ordered[:_SHOWN]
    here = dataset.to_table(columns=[event_id, *content], filter=pc.field(event_id).isin(shown)).to_pandas()
    details = {}
    for i in shown:
        day = conflicts[i]
        before = table.read(day, columns=[event_id, *content])
        details[str(i)] = (
            f"{event_id} {i} is on ds={day} as {_row(before, event_id, i, content)} "
            f"and on ds={ds} as {_row(here, event_id, i, content)}"
        )
    return ordered, details


def _ids_of(table, day: str, event_id: str) -> np.ndarray:
    key = (table.lake.root, table.name, day, table.manifest(day).content_fingerprint, event_id)
    if key in _ids_cache:
        _ids_cache.move_to_end(key)
        return _ids_cache[key]
    ids = table.read(day, columns=[event_id])[event_id].to_numpy()
    _ids_cache[key] = ids
    while sum(len(v) for v in _ids_cache.values()) > MAX_CACHED_IDS and len(_ids_cache) > 1:
        _ids_cache.popitem(last=False)
    return ids


def _row(frame: pd.DataFrame, event_id: str, value, content: list[str]) -> str:
    rows = frame[frame[event_id] == value]
    if not len(rows):
        return "?"
    row = rows.iloc[0]
    shown = {c: (v.isoformat() if isinstance(v, pd.Timestamp) else v) for c, v in row[content].items() if c != event_id}
    return "{" + ", ".join(f"{c}={v}" for c, v in shown.items()) + "}"
