"""Point-in-time training sets: ``labels/<model>/ds=D`` joined with the model's feature sets ->
``training_sets/<model>/ds=D``.

The label rows are the queries (the model's id columns, ``as_of``, ``label`` passed through) of
:func:`jobs.engines.join.join_features`: one engine pass per joined feature set, so every
feature comes from the one kernel at the row's ``as_of``, on whichever engine the config names
(local, Dask, Spark) — out of core on Dask and Spark. Each pass reads the ingest partitions of
its set's own source:

* ``known_at`` (the default training mode): the first partition through the day before the
  latest ``as_of`` (for a cut-off ``C``: ``first .. C-1``) — exactly what was ingested before;
* ``as_of``: ``first ..`` the label's own last input day (``labels.horizon_end_ds``), so late
  arrivals with ``event_ts < as_of`` count, as event-time semantics say.

The kernel's rule ``event_ts < as_of`` keeps every event at or after ``as_of`` out of the
features. Row order inside a partition follows the engine's output order; the content
fingerprint does not depend on it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import pandas as pd
import pyarrow as pa

from features.model import EntitySnapshots, Model
from jobs.config import Config
from jobs.engines.join import events_range, join_features, latest_as_of
from jobs.lake import (
    UNVALIDATED_INPUTS,
    Lake,
    LakeError,
    Manifest,
    Table,
    UnvalidatedPartitionError,
    inputs_fingerprint,
    unvalidated_inputs,
)
from jobs.schemas import feature_schema
from jobs.training.labels import horizon_end_ds, labels_schema, labels_table, resolve_model

TRAINING_SETS = "training_sets"
LABEL_TYPE = "int8"


def training_schema(model: Model) -> pa.Schema:
    """``model.training_table``'s schema: id columns, ``as_of``, ``label``, then ``model.feature_names``
    (counts int64 not null, every other feature float64)."""
    fields = list(labels_schema(model))
    for fs in model.feature_sets:
        fields += [f for f in feature_schema(fs) if f.name in fs.feature_names]
    return pa.schema(fields)


def training_set_table(lake: Lake, model: Model) -> Table:
    """``training_sets/<model>``: id columns, ``as_of``, ``label``, then the features in ``model.feature_names`` order."""
    return lake.table(model.training_table, training_schema(model))


def feature_sets_lineage(model: Model) -> list[dict]:
    """The joined sets, in join order: ``[{"name", "fingerprint"}, ...]``."""
    return [{"name": fs.name, "fingerprint": fs.fingerprint} for fs in model.feature_sets]


def build_training_set(
    cfg: Config,
    model: str | Model,
    ds: str | dt.date,
    *,
    validate: bool = True,
    allow_unvalidated: bool = False,
    **engine_options,
) -> Manifest:
    """Publish ``training_sets/<model>/ds=ds`` from ``labels/<model>/ds=ds`` (one row per label row).

    With ``validate`` the staged partition must pass the ``training_sets`` suite of the model
    before it is published (otherwise it is quarantined and ``DataQualityError`` raised).
    Raw days read that are not validated — by the joins, or by the labels (no suite validates the labels
    table: the raw days ``labels/<model>/ds=D`` was built from are checked instead) — are refused
    (``UnvalidatedPartitionError``) unless ``allow_unvalidated=True``; built from such days,
    ``producer.unvalidated_inputs`` names them.
    """
    m = resolve_model(cfg, model)
    lake = cfg.lake()
    ds = str(pd.Timestamp(str(ds)).date())
    labels = labels_table(lake, m)
    label_manifest = labels.manifest(ds)  # MissingPartitionError names the day
    if isinstance(m.queries, EntitySnapshots):
        hist = lake.table(m.queries.source.table)
        first = hist.first_ds()
        if first is None or first >= ds:
            raise ValueError(f"no {hist.name} partitions before cut-off {ds} in {lake.root}")
    through = label_manifest.producer.get("inputs_through") or horizon_end_ds(m, ds)
    query_files = labels.files(ds)
    as_of_max = latest_as_of(cfg, query_files)
    modes = {fs.name: fs.training_mode for fs in m.feature_sets}
    inputs = {f"{labels.name}/ds={ds}": label_manifest.content_fingerprint}
    for fs in m.feature_sets:
        rng = events_range(cfg, fs, modes[fs.name], as_of_max, through)
        if rng is not None:
            table = lake.table(fs.source.table)
            inputs[f"{table.name}/ds={rng[0]}..{rng[1]}"] = inputs_fingerprint(table, *rng)
    unvalidated = unvalidated_inputs(lake, inputs, skip=[labels.name])
    unvalidated += [u for u in unvalidated_inputs(lake, label_manifest.inputs) if u not in unvalidated]
    if unvalidated and not allow_unvalidated:
        table, _, _ = unvalidated[0].rpartition("/ds=")
        days = sorted({u.rpartition("/ds=")[2] for u in unvalidated if u.rpartition("/ds=")[0] == table})
        raise UnvalidatedPartitionError(table, days, "raw_events")
    frames = join_features(cfg, m, query_files, modes=modes, events_through=through, **engine_options)
    producer = {
        "job": "build_training_set",
        "engine": cfg.engine,
        "model": m.name,
        "feature_set": "+".join(fs.name for fs in m.feature_sets),
        "feature_sets": feature_sets_lineage(m),
        "feature_set_fingerprint": m.fingerprint,
        "mode": "+".join(modes[fs.name] for fs in m.feature_sets),
        "as_of": pd.Timestamp(ds, tz="UTC").isoformat(),
        "label_definition": label_manifest.producer.get("definition", ""),
        "horizon_days": label_manifest.producer.get("horizon_days"),
    }
    if unvalidated:
        producer[UNVALIDATED_INPUTS] = unvalidated
    table = training_set_table(lake, m)
    gate = None
    if validate:
        from jobs.quality.validate import gate_for

        gate = gate_for(cfg, "training_sets", model=m.name)
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
    model: str | Model,
    days: Iterable[str],
    *,
    validate: bool = True,
    allow_unvalidated: bool = False,
    **engine_options,
) -> list[Manifest]:
    """``build_training_set`` for each labels partition, in order."""
    return [
        build_training_set(cfg, model, d, validate=validate, allow_unvalidated=allow_unvalidated, **engine_options)
        for d in sorted(days)
    ]


def partitions_in(lake: Lake, model: Model, ds_from: str, ds_to: str) -> list[Manifest]:
    """Manifests of the training-set partitions for every labels partition in ``[ds_from, ds_to]``.

    The range is checked against the labels table: a labels partition without its training-set
    partition is an error naming it, never a silently smaller input; so is a partition built
    with other versions of the model's feature sets.
    """
    cutoffs = [d for d in labels_table(lake, model).partitions() if ds_from <= d <= ds_to]
    if not cutoffs:
        raise ValueError(f"no {model.labels_table} partitions in {ds_from}..{ds_to}; run `lockstep labels` first")
    table = training_set_table(lake, model)
    missing = [d for d in cutoffs if not table.exists(d)]
    if missing:
        raise LakeError(
            f"{table.name} has no partition for labels cut-off(s) {missing}; run `lockstep training-set` for them"
        )
    manifests = [table.manifest(d) for d in cutoffs]
    stale = [m.ds for m in manifests if m.producer.get("feature_set_fingerprint") != model.fingerprint]
    if stale:
        raise LakeError(
            f"{table.name} ds={stale} were built with other versions of the feature sets of {model.name} "
            f"(not {model.fingerprint}); rebuild them"
        )
    return manifests


def ranges_files(lake: Lake, model: Model, spec, roles=("train", "valid", "holdback")):
    """``(table, {role: manifests}, {role: Parquet files})`` of ``spec``'s cut-off ranges (a ``TrainSpec``:
    ``spec.train`` etc.), through :func:`partitions_in`. Only ``roles`` are read (the search: never the
    holdback)."""
    table = training_set_table(lake, model)
    parts = {role: partitions_in(lake, model, *getattr(spec, role)) for role in roles}
    return table, parts, {role: [f for m in ms for f in table.files(m.ds)] for role, ms in parts.items()}
