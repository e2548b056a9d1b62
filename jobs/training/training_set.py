"""Point-in-time training sets: ``labels/ds=C`` joined with a feature set -> ``training_sets/<set>/ds=C``.

The label rows are the engine's queries (``customer_id``, ``as_of = C``, ``label`` passed
through), so every feature comes from the one kernel at the cut-off instant, on whichever
engine the config names (local, Dask, Spark) — out of core on Dask and Spark. The events read
are the ``raw_events`` ingest partitions:

* ``known_at`` (the default training mode): ``first .. C-1`` — exactly what was ingested
  before the cut-off; later partitions cannot matter;
* ``as_of``: ``first .. C + horizon - 1 + grace`` (the label's own input range), so late
  arrivals with ``event_ts < C`` count, as event-time semantics say.

The kernel's rule ``event_ts < as_of`` keeps every event at or after ``C`` out of the features.
Row order inside a partition follows the engine's output order; the content fingerprint
does not depend on it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import pandas as pd

from features import registry
from features.spec import FeatureSet
from jobs import engines
from jobs.config import Config
from jobs.lake import Lake, LakeError, Manifest, Table, inputs_fingerprint
from jobs.schemas import RAW_EVENTS_TABLE, feature_schema
from jobs.training.labels import LABEL, horizon_end_ds, labels_table

TRAINING_SETS = "training_sets"
LABEL_TYPE = "int8"


def training_set_table(lake: Lake, fs: FeatureSet) -> Table:
    """``training_sets/<fs.name>``: keys, ``label``, then the features in ``fs.feature_names`` order."""
    return lake.table(f"{TRAINING_SETS}/{fs.name}", feature_schema(fs, [(LABEL, LABEL_TYPE)]))


def build_training_set(
    cfg: Config,
    ds: str | dt.date,
    feature_set: str = "customer_activity_v1",
    *,
    validate: bool = True,
    **engine_options,
) -> Manifest:
    """Publish ``training_sets/<set>/ds=ds`` from ``labels/ds=ds`` (one row per label row).

    With ``validate`` the staged partition must pass the ``training_sets`` suite before it is
    published (otherwise it is quarantined and ``DataQualityError`` raised).
    """
    fs = registry.get(feature_set)
    lake = cfg.lake()
    ds = str(pd.Timestamp(str(ds)).date())
    labels = labels_table(lake)
    label_manifest = labels.manifest(ds)  # MissingPartitionError names the day
    raw = lake.table(RAW_EVENTS_TABLE)
    first = raw.first_ds()
    if first is None or first >= ds:
        raise ValueError(f"no raw_events partitions before cut-off {ds} in {lake.root}")
    mode = fs.training_mode
    if mode == "known_at":
        last = (pd.Timestamp(ds) - pd.Timedelta(days=1)).strftime("%Y-%m-%d")
    else:
        prod = label_manifest.producer
        last = horizon_end_ds(ds, int(prod["horizon_days"]), int(prod.get("grace_days", 0)))
    events_files = raw.files(first, last)
    frames = engines.run(cfg, fs, events_files, labels.files(ds), mode, **engine_options)
    producer = {
        "job": "build_training_set",
        "engine": cfg.engine,
        "feature_set": fs.name,
        "feature_set_fingerprint": fs.fingerprint,
        "mode": mode,
        "as_of": pd.Timestamp(ds, tz="UTC").isoformat(),
        "label_definition": label_manifest.producer.get("definition", ""),
        "horizon_days": label_manifest.producer.get("horizon_days"),
    }
    inputs = {
        f"{labels.name}/ds={ds}": label_manifest.content_fingerprint,
        f"{RAW_EVENTS_TABLE}/ds={first}..{last}": inputs_fingerprint(raw, first, last),
    }
    table = training_set_table(lake, fs)
    gate = None
    if validate:
        from jobs.quality.validate import gate_for

        gate = gate_for(cfg, "training_sets", feature_set=fs.name)
    return table.write_partition(
        ds, _checked(frames, label_manifest.rows, table.name, ds), producer=producer, inputs=inputs, gate=gate
    )


def _checked(frames, expected: int, name: str, ds: str):
    """Pass frames through; raise (so nothing is published) unless they hold one row per label row."""
    rows = 0
    for frame in frames:
        rows += len(frame)
        yield frame
    if rows != expected:
        raise LakeError(f"{name} ds={ds}: the engine returned {rows} rows for {expected} label rows")


def build_training_sets(
    cfg: Config,
    days: Iterable[str],
    feature_set: str = "customer_activity_v1",
    *,
    validate: bool = True,
    **engine_options,
) -> list[Manifest]:
    """``build_training_set`` for each cut-off, in order."""
    return [build_training_set(cfg, d, feature_set, validate=validate, **engine_options) for d in sorted(days)]


def partitions_in(lake: Lake, fs: FeatureSet, ds_from: str, ds_to: str) -> list[Manifest]:
    """Manifests of the training-set partitions for every labels cut-off in ``[ds_from, ds_to]``.

    Cut-offs are weekly, so the range is checked against the labels table: a labels partition
    without its training-set partition is an error naming it, never a silently smaller input.
    """
    cutoffs = [d for d in labels_table(lake).partitions() if ds_from <= d <= ds_to]
    if not cutoffs:
        raise ValueError(f"no labels partitions in {ds_from}..{ds_to}; run `lockstep labels` first")
    table = training_set_table(lake, fs)
    missing = [d for d in cutoffs if not table.exists(d)]
    if missing:
        raise LakeError(
            f"{table.name} has no partition for labels cut-off(s) {missing}; run `lockstep training-set` for them"
        )
    manifests = [table.manifest(d) for d in cutoffs]
    stale = [m.ds for m in manifests if m.producer.get("feature_set_fingerprint") != fs.fingerprint]
    if stale:
        raise LakeError(
            f"{table.name} ds={stale} were built with another version of {fs.name} (not {fs.fingerprint}); rebuild them"
        )
    return manifests


def ranges_files(lake: Lake, fs: FeatureSet, spec, roles=("train", "valid", "holdback")):
    """``(table, {role: manifests}, {role: Parquet files})`` of ``spec``'s cut-off ranges (a ``TrainSpec``:
    ``spec.train`` etc.), through :func:`partitions_in`. Only ``roles`` are read (the search: never the
    holdback)."""
    table = training_set_table(lake, fs)
    parts = {role: partitions_in(lake, fs, *getattr(spec, role)) for role in roles}
    return table, parts, {role: [f for m in ms for f in table.files(m.ds)] for role, ms in parts.items()}
