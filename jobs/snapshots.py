"""Daily feature snapshots: every entity as known at D+1 00:00 UTC -> ``feature_snapshots/<set>/ds=D``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa

from features.spec import FeatureSet, kernel_fingerprint
from jobs import engines
from jobs.config import Config
from jobs.engines.join import first_read
from jobs.lake import UNVALIDATED_INPUTS, Lake, Manifest, Table, day_range, inputs_fingerprint, inputs_fingerprints
from jobs.schemas import feature_schema

SNAPSHOT_MODE = "known_at"  # what a service running at the cut-off could have seen


def snapshot_table(lake: Lake, fs: FeatureSet) -> Table:
    return lake.table(f"feature_snapshots/{fs.name}", feature_schema(fs))


def cutoff(ds: str | dt.date) -> pd.Timestamp:
    """The snapshot of day D describes every entity as known at D+1 00:00 UTC."""
    return pd.Timestamp(str(ds), tz="UTC") + pd.Timedelta(days=1)


def feature_set_of(cfg: Config, feature_set: str | FeatureSet | None = None) -> FeatureSet:
    """The named feature set of ``cfg.repo()`` (a FeatureSet as is); None: the default model's first
    set, else the repo's first set by name."""
    if isinstance(feature_set, FeatureSet):
        return feature_set
    repo = cfg.repo()
    if feature_set is not None:
        return repo.feature_set(feature_set)
    if repo.models:
        return repo.default_model().feature_sets[0]
    if not repo.feature_sets:
        raise KeyError("the repo declares no feature set")
    return repo.feature_sets[sorted(repo.feature_sets)[0]]


def build_snapshot(
    cfg: Config,
    ds: str | dt.date,
    feature_set: str | FeatureSet | None = None,
    *,
    allow_unvalidated: bool = False,
    **engine_options,
) -> Manifest:
    """Compute and publish the snapshot partition ``ds`` of ``feature_set`` on ``cfg.engine``.

    Reads every ingest partition of the set's source table (``fs.source.table``) from the first
    one through ``ds`` (the lake fails loudly on a missing or corrupt day) and replaces the partition
    whole, so re-running a day — a backfill — is safe and gives the same content fingerprint.

    Raw days that are not validated are refused (``UnvalidatedPartitionError`` naming the table, the
    days and the override) unless ``allow_unvalidated=True`` (``lockstep snapshot --allow-unvalidated``,
    for exploration): then the snapshot's ``producer.unvalidated_inputs`` names them, and the lake never
    marks it validated.
    """
    fs = feature_set_of(cfg, feature_set)
    lake = cfg.lake()
    ds = str(pd.Timestamp(str(ds)).date())
    raw, first = _history(lake, fs, ds)
    unvalidated = raw.unvalidated(first, ds)
    if unvalidated and not allow_unvalidated:
        raw.require_validated(first, ds, dataset="raw_events")
    files = raw.files(first, ds)
    frames = engines.run(cfg, fs, files, engines.Snapshot(cutoff(ds)), SNAPSHOT_MODE, **engine_options)
    producer = _producer(cfg, fs, ds)
    if unvalidated:
        producer[UNVALIDATED_INPUTS] = [f"{raw.name}/ds={d}" for d in unvalidated]
    return snapshot_table(lake, fs).write_partition(
        ds,
        frames,
        producer=producer,
        inputs={f"{raw.name}/ds={first}..{ds}": inputs_fingerprint(raw, first, ds)},
    )


def _history(lake: Lake, fs: FeatureSet, ds: str) -> tuple[Table, str]:
    """The set's source table and the first partition the snapshot of ``ds`` reads: the table's first,
    or for a set with bounded windows the first that can hold an event inside one
    (``jobs.engines.join.first_read``); a clear error when nothing was landed by ``ds``."""
    if fs.source is None:
        raise ValueError(f"feature set {fs.name!r} declares no source: nothing to build a snapshot from")
    raw = lake.table(fs.source.table)
    first = raw.first_ds()
    if first is None or first > ds:
        raise ValueError(
            f"no raw_events partitions at or before ds={ds} in {raw.name} of {lake.root}; run the landing first"
        )
    return raw, _start(fs, first, ds)


def _start(fs: FeatureSet, first: str, ds: str) -> str:
    """The first partition the snapshot of ``ds`` reads, given the table's ``first``."""
    return first_read(fs, first, cutoff(ds))


def _producer(cfg: Config, fs: FeatureSet, ds: str) -> dict:
    return {
        "job": "build_snapshot",
        "engine": cfg.engine,
        "feature_set": fs.name,
        "feature_set_fingerprint": fs.fingerprint,
        "mode": SNAPSHOT_MODE,
        "as_of": cutoff(ds).isoformat(),
        "kernel_fingerprint": kernel_fingerprint(),
    }


def _range_producer(cfg: Config, fs: FeatureSet, ds: str, raw_name: str, unvalidated: list[str]) -> dict:
    producer = _producer(cfg, fs, ds)
    if unvalidated:
        producer[UNVALIDATED_INPUTS] = [f"{raw_name}/ds={d}" for d in unvalidated]
    return producer


def up_to_date(cfg: Config, ds: str, feature_set: str | FeatureSet | None = None) -> bool:
    """Whether the published snapshot of ``ds`` is validated and was built from exactly today's inputs:
    the same raw partitions (inputs fingerprint), feature set and kernel. Rebuilding it would give the
    same content fingerprint, so a backfill may skip it."""
    fs = feature_set_of(cfg, feature_set)
    lake = cfg.lake()
    table = snapshot_table(lake, fs)
    if not table.exists(ds) or not table.validated(ds):
        return False
    m = table.manifest(ds)
    try:
        raw, first = _history(lake, fs, ds)
    except ValueError:
        return False
    try:
        want = {f"{raw.name}/ds={first}..{ds}": inputs_fingerprint(raw, first, ds)}
    except Exception:  # noqa: BLE001 - a missing or unreadable raw day: not up to date, the build says why
        return False
    return (
        m.inputs == want
        and m.producer.get("feature_set_fingerprint") == fs.fingerprint
        and m.producer.get("kernel_fingerprint") == kernel_fingerprint()
    )


def missing_range(cfg: Config, ds: str, feature_set: str | FeatureSet | None = None, max_days: int = 90) -> list[str]:
    """The days a build of ``ds`` should cover: ``ds`` (unless ``up_to_date``) and the days right after it
    whose raw partition is published and validated and whose snapshot is not up to date, at most
    ``max_days`` in all. A daily run finds only its own day; the first run of a backfill over landed
    history finds the whole range."""
    fs = feature_set_of(cfg, feature_set)
    ds = str(pd.Timestamp(str(ds)).date())
    if up_to_date(cfg, ds, fs):
        return []
    raw = cfg.lake().table(fs.source.table)
    days = [ds]
    while len(days) < max_days:
        nxt = (dt.date.fromisoformat(days[-1]) + dt.timedelta(days=1)).isoformat()
        if not (raw.exists(nxt) and raw.validated(nxt)) or up_to_date(cfg, nxt, fs):
            break
        days.append(nxt)
    return days


def build_snapshot_backfill(
    cfg: Config,
    ds: str | dt.date,
    feature_set: str | None = None,
    max_days: int = 90,
    *,
    allow_unvalidated: bool = False,
    **engine_options,
) -> Manifest:
    """A daily build task's job: nothing if ``ds`` is up to date, one day as ``build_snapshot`` (the DAG
    validates it in its own task), else ``missing_range`` in one pass (``build_snapshot_range``, each day
    gated). Returns the manifest of ``ds``. Unvalidated raw days are refused as in ``build_snapshot``
    unless ``allow_unvalidated``."""
    fs = feature_set_of(cfg, feature_set)
    ds = str(pd.Timestamp(str(ds)).date())
    days = missing_range(cfg, ds, fs, max_days)
    if not days:
        return snapshot_table(cfg.lake(), fs).manifest(ds)
    if len(days) == 1:
        return build_snapshot(cfg, ds, fs, allow_unvalidated=allow_unvalidated, **engine_options)
    return build_snapshot_range(cfg, days[0], days[-1], fs, allow_unvalidated=allow_unvalidated, **engine_options)[0]


def build_snapshot_range(
    cfg: Config,
    ds_from: str | dt.date,
    ds_to: str | dt.date,
    feature_set: str | FeatureSet | None = None,
    *,
    validate: bool = True,
    progress: bool = False,
    allow_unvalidated: bool = False,
    **engine_options,
) -> list[Manifest]:
    """The snapshots of every day ``ds_from..ds_to`` from ONE engine pass over the raw history.

    The pass reads the raw partitions ``first..ds_to`` once (``first``: the first day's, see
    ``_history``) and queries, per bucket, every entity
    known at each day's cut-off (``engines.Snapshots``: the union of the single-day queries). Its
    output is spilled to scratch (Arrow IPC files) split by day, then each day is published in day order as
    its own partition — the rows, content fingerprint, producer and inputs fingerprint
    (``raw/ds=<first of ds>..<ds>``) a single-day ``build_snapshot`` writes. Bit-identical because the raw
    partition of day P only holds rows ingested on P (the raw suite's partition-time rule), so a
    later partition adds nothing visible at an earlier cut-off in ``known_at`` mode.

    ``validate``: each day's staged partition must pass the ``feature_snapshots`` suite before it is
    published (``gate_for``); a failing day is quarantined. The first day that fails (validation or
    write) stops the range: its error propagates with a note naming the day, the days before
    stay published and the days after it are not written. The driver holds one engine output frame (one bucket, all days) at a
    time, never the whole range.
    """
    from tqdm.auto import tqdm

    from jobs.spill import Spill

    fs = feature_set_of(cfg, feature_set)
    lake = cfg.lake()
    days = day_range(ds_from, ds_to)
    raw, first = _history(lake, fs, days[0])  # the pass reads from the first day's first partition
    table_first = raw.first_ds() if fs.horizon_days is not None else first
    starts = {d: _start(fs, table_first, d) for d in days}
    inputs: dict[str, str] = {}  # each day's inputs as its single-day build names them; every manifest verified
    for start in dict.fromkeys(starts.values()):
        inputs.update(inputs_fingerprints(raw, start, [d for d in days if starts[d] == start]))
    unvalidated = raw.unvalidated(first, days[-1])
    if unvalidated and not allow_unvalidated:  # as ``build_snapshot``: refused before any work
        raw.require_validated(first, days[-1], dataset="raw_events")
    files = raw.files(first, days[-1])
    gate = None
    if validate:
        from jobs.quality.validate import gate_for

        gate = gate_for(cfg, "feature_snapshots", feature_set=fs.name)
    table = snapshot_table(lake, fs)
    by_cutoff = {cutoff(d): d for d in days}
    queries = engines.Snapshots(tuple(by_cutoff))
    active = _active_entities(raw, fs, starts, first)
    with Spill(cfg, "snapshot_range") as spill:
        frames = engines.run(cfg, fs, files, queries, SNAPSHOT_MODE, **engine_options)
        for frame in frames:
            _spill_by_day(frame, fs, by_cutoff, active, spill, days)
            del frame

        manifests: list[Manifest] = []
        with tqdm(days, desc=f"publishing snapshots ({cfg.engine})", unit="day", disable=not progress) as bar:
            for k, d in enumerate(bar):
                try:
                    # No rows for a day: an empty partition, as a single-day build writes (the gate judges it).
                    data = spill.tables(d) if spill.has(d) else table.schema.empty_table()
                    manifests.append(
                        table.write_partition(
                            d,
                            data,
                            producer=_range_producer(
                                cfg, fs, d, raw.name, [u for u in unvalidated if starts[d] <= u <= d]
                            ),
                            inputs={f"{raw.name}/ds={starts[d]}..{d}": inputs[d]},
                            gate=gate,
                        )
                    )
                except Exception as exc:  # the error keeps its type (a DataQualityError stays one)
                    exc.add_note(_stopped_note(days, k))
                    raise
                spill.drop(d)  # this day is done: its spill goes now, not at the end
        return manifests


def build_snapshots(
    cfg: Config,
    days: Iterable[str],
    feature_set: str | None = None,
    progress: bool = True,
    *,
    allow_unvalidated: bool = False,
    **engine_options,
) -> list[Manifest]:
    """``build_snapshot`` for each day, in order."""
    from tqdm.auto import tqdm

    days = list(days)
    # closed on an error too, so the bar's line ends before the error is printed
    with tqdm(days, desc=f"snapshots ({cfg.engine})", unit="day", disable=not progress) as bar:
        return [build_snapshot(cfg, d, feature_set, allow_unvalidated=allow_unvalidated, **engine_options) for d in bar]


def _spill_by_day(
    frame: pd.DataFrame, fs: FeatureSet, by_cutoff: dict, active: dict[str, pd.Index], spill, days: list[str]
) -> None:
    """One engine output frame (rows of many cut-offs) spilled as one Arrow piece per day, each day's rows
    in the frame's order: converted to Arrow once and sorted by cut-off once (one ``take``), each day a
    zero-copy slice — the rows ``Table.write_partition`` gets, without a pandas copy per day."""
    if not len(frame):
        return
    codes, cuts = pd.factorize(frame[engines.AS_OF], sort=True)
    order = np.argsort(codes, kind="stable")  # stable: each day keeps the frame's row order
    ends = np.cumsum(np.bincount(codes, minlength=len(cuts)))
    entity = frame[fs.entity].to_numpy()[order] if active else None  # only to keep the active entities
    tbl = pa.Table.from_pandas(frame, preserve_index=False)
    if (codes[1:] < codes[:-1]).any():  # the local engine's output is already in cut-off order
        tbl = tbl.take(pa.array(order))
    for k, t in enumerate(cuts):
        d = by_cutoff.get(pd.Timestamp(t))
        if d is None:  # the engine returned a cut-off nobody asked for: never publish it
            raise RuntimeError(f"snapshot range {days[0]}..{days[-1]}: engine output as_of {t} is no cut-off")
        lo, hi = (int(ends[k - 1]) if k else 0), int(ends[k])
        rows = tbl.slice(lo, hi - lo)
        if d in active:  # the entities the single-day build of d knows: an event in its own days
            rows = rows.filter(pa.array(pd.Index(entity[lo:hi]).isin(active[d])))
        spill.add(d, rows)


def _active_entities(raw: Table, fs: FeatureSet, starts: dict[str, str], first: str) -> dict[str, pd.Index]:
    """``{day: the entities with an event in raw partitions starts[day]..day}`` for the days of a range
    whose single-day build reads fewer partitions than the range pass (bounded windows): the pass knows
    every entity since ``first``, the single build of a later day only those since its own start."""
    later = [d for d in starts if starts[d] > first]
    if not later:
        return {}
    per_day = {
        p: pd.unique(raw.read(p, columns=[fs.entity])[fs.entity].to_numpy()) for p in day_range(first, max(later))
    }
    out = {}
    for d in later:
        keys = [per_day[p] for p in day_range(starts[d], d)]
        out[d] = pd.Index(pd.unique(np.concatenate(keys)) if keys else [])
    return out


def _stopped_note(days: list[str], k: int) -> str:
    done = f"{days[0]}..{days[k - 1]} published" if k else "no day published"
    rest = f"{days[k + 1]}..{days[-1]} not published" if k + 1 < len(days) else "it was the last day"
    return f"snapshot range {days[0]}..{days[-1]} stopped at ds={days[k]}: {done}; {rest}"
