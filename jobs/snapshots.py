"""Daily feature snapshots: every entity as known at D+1 00:00 UTC -> ``feature_snapshots/<set>/ds=D``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import pandas as pd

from features.spec import FeatureSet
from jobs import engines
from jobs.config import Config
from jobs.lake import UNVALIDATED_INPUTS, Lake, Manifest, Table, inputs_fingerprint
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
    feature_set: str | None = None,
    *,
    allow_unvalidated: bool = True,
    **engine_options,
) -> Manifest:
    """Compute and publish the snapshot partition ``ds`` of ``feature_set`` on ``cfg.engine``.

    Reads every ingest partition of the set's source table (``fs.source.table``) from the first
    one through ``ds`` (the lake fails loudly on a missing or corrupt day) and replaces the partition
    whole, so re-running a day — a backfill — is safe and gives the same content fingerprint.

    ``allow_unvalidated=False`` (the ``lockstep snapshot`` default) refuses raw days that are not
    validated (``UnvalidatedPartitionError`` naming them). Built from unvalidated days, the snapshot's
    ``producer.unvalidated_inputs`` names them, and the lake never marks it validated.
    """
    fs = feature_set_of(cfg, feature_set)
    if fs.source is None:
        raise ValueError(f"feature set {fs.name!r} declares no source: nothing to build a snapshot from")
    lake = cfg.lake()
    raw = lake.table(fs.source.table)
    ds = str(pd.Timestamp(str(ds)).date())
    first = raw.first_ds()
    if first is None or first > ds:
        raise ValueError(
            f"no raw_events partitions at or before ds={ds} in {raw.name} of {lake.root}; run the landing first"
        )
    unvalidated = raw.unvalidated(first, ds)
    if unvalidated and not allow_unvalidated:
        raw.require_validated(first, ds, dataset="raw_events")
    files = raw.files(first, ds)
    frames = engines.run(cfg, fs, files, engines.Snapshot(cutoff(ds)), SNAPSHOT_MODE, **engine_options)
    producer = {
        "job": "build_snapshot",
        "engine": cfg.engine,
        "feature_set": fs.name,
        "feature_set_fingerprint": fs.fingerprint,
        "mode": SNAPSHOT_MODE,
        "as_of": cutoff(ds).isoformat(),
    }
    if unvalidated:
        producer[UNVALIDATED_INPUTS] = [f"{raw.name}/ds={d}" for d in unvalidated]
    return snapshot_table(lake, fs).write_partition(
        ds,
        frames,
        producer=producer,
        inputs={f"{raw.name}/ds={first}..{ds}": inputs_fingerprint(raw, first, ds)},
    )


def build_snapshots(
    cfg: Config,
    days: Iterable[str],
    feature_set: str | None = None,
    progress: bool = True,
    *,
    allow_unvalidated: bool = True,
    **engine_options,
) -> list[Manifest]:
    """``build_snapshot`` for each day, in order."""
    from tqdm.auto import tqdm

    days = list(days)
    # closed on an error too, so the bar's line ends before the error is printed
    with tqdm(days, desc=f"snapshots ({cfg.engine})", unit="day", disable=not progress) as bar:
        return [build_snapshot(cfg, d, feature_set, allow_unvalidated=allow_unvalidated, **engine_options) for d in bar]
