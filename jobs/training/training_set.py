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

Many cut-offs at once: :func:`build_training_set_range` runs ONE ``join_features`` for the label
rows of all of them and publishes each cut-off as its own partition, equal to its single build.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from features.model import EntitySnapshots, Model
from jobs.config import Config
from jobs.engines.join import as_of_bounds, events_range, join_features
from jobs.lake import (
    UNVALIDATED_INPUTS,
    Lake,
    LakeError,
    Manifest,
    Table,
    UnvalidatedPartitionError,
    inputs_fingerprints,
    parse_input_key,
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
    (plan,) = _plan(cfg, m, [ds])
    ((inputs, unvalidated),) = _lineage(lake, m, [plan])
    _refuse_unvalidated(unvalidated, allow_unvalidated)
    modes = _training_modes(m)
    frames = join_features(cfg, m, plan.files, modes=modes, events_through=plan.through, **engine_options)
    table = training_set_table(lake, m)
    gate = None
    if validate:
        from jobs.quality.validate import gate_for

        gate = gate_for(cfg, "training_sets", model=m.name)
    return table.write_partition(
        ds,
        _checked(frames, plan.labels.rows, table.name, ds),
        producer=_producer(cfg, m, modes, plan, unvalidated),
        inputs=inputs,
        gate=gate,
    )


@dataclass(frozen=True)
class _Cutoff:
    """What the training set of one labels cut-off reads: its labels, and per joined set's source the
    ingest partitions ``(table, first, last)`` (keyed by the input name the manifest records)."""

    ds: str
    labels: Manifest
    files: list[str]
    through: str
    reads: dict[str, tuple[str, str, str]]


def _training_modes(m: Model) -> dict[str, str]:
    return {fs.name: fs.training_mode for fs in m.feature_sets}


def _plan(cfg: Config, m: Model, days: list[str]) -> list[_Cutoff]:
    """The reads of each cut-off of ``days`` (a missing labels partition: ``MissingPartitionError`` naming it)."""
    lake = cfg.lake()
    labels = labels_table(lake, m)
    modes = _training_modes(m)
    firsts: dict[str, str | None] = {}  # each source table listed once, however many cut-offs

    def first_of(name: str) -> str | None:
        if name not in firsts:
            firsts[name] = lake.table(name).first_ds()
        return firsts[name]

    out = []
    for ds in days:
        label_manifest = labels.manifest(ds)  # MissingPartitionError names the day
        if isinstance(m.queries, EntitySnapshots):
            hist = lake.table(m.queries.source.table)
            first = first_of(hist.name)
            if first is None or first >= ds:
                raise ValueError(f"no {hist.name} partitions before cut-off {ds} in {lake.root}")
        through = label_manifest.producer.get("inputs_through") or horizon_end_ds(m, ds)
        query_files = labels.files(ds)
        as_of_min, as_of_max = as_of_bounds(cfg, query_files)
        reads = {}
        for fs in m.feature_sets:
            if fs.source is None:
                continue
            name = lake.table(fs.source.table).name
            rng = events_range(cfg, fs, modes[fs.name], as_of_max, through, first=first_of(name), as_of_min=as_of_min)
            if rng is not None:
                reads[f"{name}/ds={rng[0]}..{rng[1]}"] = (name, *rng)
        out.append(_Cutoff(ds, label_manifest, query_files, through, reads))
    return out


def _lineage(lake: Lake, m: Model, plans: list[_Cutoff]) -> list[tuple[dict, list[str]]]:
    """Per cut-off: the manifest's ``inputs`` (labels partition, then each source range read) and the raw
    days read that are not validated (``table/ds=D``). Each source's manifests are read once for all
    cut-offs (``inputs_fingerprints``)."""
    labels = labels_table(lake, m)
    # no suite validates the labels table: the raw days each labels partition was built from are checked
    # instead (its manifest's input ranges), with the same one read per (table, first day) as the joins' ranges
    label_reads = {
        p.ds: [r for r in map(parse_input_key, p.labels.inputs) if r is not None and r[2] >= r[1]] for p in plans
    }
    ends: dict[tuple[str, str], set[str]] = {}
    for p in plans:
        for name, lo, hi in p.reads.values():
            ends.setdefault((name, lo), set()).add(hi)
    fingerprints = {k: inputs_fingerprints(lake.table(k[0]), k[1], his) for k, his in ends.items()}
    checked = {k: set(his) for k, his in ends.items()}
    for name, lo, hi in (r for rs in label_reads.values() for r in rs):
        checked.setdefault((name, lo), set()).add(hi)
    not_validated = {k: lake.table(k[0]).unvalidated(k[1], max(his)) for k, his in checked.items()}
    out = []
    for p in plans:
        inputs = {f"{labels.name}/ds={p.ds}": p.labels.content_fingerprint}
        unvalidated: list[str] = []
        for key, (name, lo, hi) in p.reads.items():
            inputs[key] = fingerprints[(name, lo)][hi]
            unvalidated += [f"{name}/ds={d}" for d in not_validated[(name, lo)] if d <= hi]
        for name, lo, hi in label_reads[p.ds]:
            days = (f"{name}/ds={d}" for d in not_validated[(name, lo)] if d <= hi)
            unvalidated += [u for u in days if u not in unvalidated]
        out.append((inputs, unvalidated))
    return out


def _refuse_unvalidated(unvalidated: list[str], allow_unvalidated: bool) -> None:
    if unvalidated and not allow_unvalidated:
        table, _, _ = unvalidated[0].rpartition("/ds=")
        days = sorted({u.rpartition("/ds=")[2] for u in unvalidated if u.rpartition("/ds=")[0] == table})
        raise UnvalidatedPartitionError(table, days, "raw_events")


def _producer(cfg: Config, m: Model, modes: dict[str, str], plan: _Cutoff, unvalidated: list[str]) -> dict:
    producer = {
        "job": "build_training_set",
        "engine": cfg.engine,
        "model": m.name,
        "feature_set": "+".join(fs.name for fs in m.feature_sets),
        "feature_sets": feature_sets_lineage(m),
        "feature_set_fingerprint": m.fingerprint,
        "mode": "+".join(modes[fs.name] for fs in m.feature_sets),
        "as_of": pd.Timestamp(plan.ds, tz="UTC").isoformat(),
        "label_definition": plan.labels.producer.get("definition", ""),
        "horizon_days": plan.labels.producer.get("horizon_days"),
    }
    if unvalidated:
        producer[UNVALIDATED_INPUTS] = unvalidated
    return producer


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
    """``build_training_set`` for each labels partition, in order (one run of the engine passes per cut-off;
    ``build_training_set_range`` does them all in one)."""
    return [
        build_training_set(cfg, model, d, validate=validate, allow_unvalidated=allow_unvalidated, **engine_options)
        for d in sorted(days)
    ]


#: The pass-through column that tells, in a range pass's output, which cut-off a row is a query of.
CUTOFF_TAG = "__lockstep_cutoff__"


def build_training_set_range(
    cfg: Config,
    model: str | Model,
    cutoffs: Iterable[str | dt.date],
    *,
    validate: bool = True,
    allow_unvalidated: bool = False,
    progress: bool = False,
    **engine_options,
) -> list[Manifest]:
    """The training sets of every labels cut-off in ``cutoffs`` from ONE ``join_features`` run (one engine
    pass per joined set for all cut-offs), each published as its own partition, in cut-off order.

    The queries are the label rows of every cut-off, each tagged with its cut-off (``CUTOFF_TAG``, passed
    through the kernel, dropped before writing); each set's pass reads its source through the latest
    cut-off's bound. In ``known_at`` mode that adds nothing to an earlier cut-off's rows: a raw partition
    only holds rows ingested that day (the raw suite's partition-time rule), so a later partition is
    invisible at an earlier ``as_of``, and duplicates keep their earliest copy. A set trained in ``as_of``
    mode reads its source through each label's own last input day, so then every cut-off gets its own
    pass (a loop of single builds, still stopping at the first failure).

    The output is spilled to scratch split by cut-off (``jobs.spill.Spill``), then each cut-off is
    published with the rows, content fingerprint, producer and inputs a ``build_training_set`` of it
    writes; with ``validate`` through the ``training_sets`` gate (a failing one is quarantined). Before
    any engine work every cut-off's labels and inputs are checked (a missing partition, an unvalidated
    raw day with ``allow_unvalidated=False``: nothing is published). The first cut-off that fails
    stops the range: its error (a ``DataQualityError`` stays one) carries a note naming it; the
    cut-offs before it stay published, the ones after it are not written.
    """
    from tqdm.auto import tqdm

    from jobs.spill import Spill

    m = resolve_model(cfg, model)
    lake = cfg.lake()
    days = sorted({str(pd.Timestamp(str(c)).date()) for c in cutoffs})
    if not days:
        return []
    plans = _plan(cfg, m, days)
    lineage = _lineage(lake, m, plans)
    for _, unvalidated in lineage:
        _refuse_unvalidated(unvalidated, allow_unvalidated)
    modes = _training_modes(m)
    one_pass = all(mode == "known_at" for mode in modes.values())
    groups = [list(range(len(plans)))] if one_pass else [[k] for k in range(len(plans))]
    table = training_set_table(lake, m)
    gate = None
    if validate:
        from jobs.quality.validate import gate_for

        gate = gate_for(cfg, "training_sets", model=m.name)
    manifests: list[Manifest] = []
    with tqdm(total=len(days), desc=f"training sets ({cfg.engine})", unit="cut-off", disable=not progress) as bar:
        for group in groups:
            with Spill(cfg, "training_set_range") as spill:
                try:
                    _spill_pass(cfg, m, [plans[k] for k in group], modes, spill, engine_options)
                except Exception as exc:
                    exc.add_note(_stopped_note(m, days, group[0], engine=True))
                    raise
                for k in group:
                    plan, (inputs, unvalidated) = plans[k], lineage[k]
                    try:
                        data = spill.tables(plan.ds) if spill.has(plan.ds) else table.schema.empty_table()
                        manifests.append(
                            table.write_partition(
                                plan.ds,
                                _checked(data, plan.labels.rows, table.name, plan.ds),
                                producer=_producer(cfg, m, modes, plan, unvalidated),
                                inputs=inputs,
                                gate=gate,
                            )
                        )
                    except Exception as exc:  # the error keeps its type (a DataQualityError stays one)
                        exc.add_note(_stopped_note(m, days, k))
                        raise
                    spill.drop(plan.ds)
                    bar.update()
    return manifests


def _spill_pass(cfg: Config, m: Model, plans: list[_Cutoff], modes: dict[str, str], spill, engine_options) -> None:
    """One ``join_features`` run over the tagged label rows of ``plans``; its output spilled per cut-off."""
    import pyarrow.parquet as pq

    queries = []
    for k, plan in enumerate(plans):
        for n, src in enumerate(plan.files):
            url, path = (
                f"{spill.url}/queries/c{k:05d}-{n:05d}.parquet",
                f"{spill.root}/queries/c{k:05d}-{n:05d}.parquet",
            )
            spill.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            rfs, rpath = _url_fs(cfg, src)
            with rfs.open(rpath, "rb") as f:
                rows = pq.read_table(f)
            rows = rows.append_column(CUTOFF_TAG, pa.array(np.full(rows.num_rows, k, dtype=np.int32)))
            with spill.fs.open(path, "wb") as f:
                pq.write_table(rows, f)
            queries.append(url)
    through = max(p.through for p in plans)  # read only by as_of-mode sets, whose range is one cut-off
    by_tag = {k: p.ds for k, p in enumerate(plans)}
    for frame in join_features(cfg, m, queries, modes=modes, events_through=through, **engine_options):
        if not len(frame):
            continue
        for k, rows in frame.groupby(CUTOFF_TAG, sort=True):
            ds = by_tag.get(int(k))
            if ds is None:  # a row of no cut-off asked for: never publish it
                raise RuntimeError(f"{m.training_table}: engine output {CUTOFF_TAG}={k} is no cut-off of the range")
            spill.add(ds, rows.drop(columns=CUTOFF_TAG))
        del frame


def _url_fs(cfg: Config, url: str):
    import fsspec

    return fsspec.core.url_to_fs(url, **(getattr(cfg, "storage_options", None) or {}))


def _stopped_note(m: Model, days: list[str], k: int, engine: bool = False) -> str:
    """Where a range stopped: the cut-offs published before ``days[k]`` and the ones not published."""
    span = f"training-set range of {m.name} ({len(days)} cut-offs {days[0]}..{days[-1]})"
    done = f"{k} cut-off(s) {days[0]}..{days[k - 1]} published" if k else "no cut-off published"
    if engine:
        return f"{span}: the engine pass failed; {done}; {len(days) - k} cut-off(s) {days[k]}..{days[-1]} not published"
    rest = (
        f"{len(days) - k - 1} cut-off(s) {days[k + 1]}..{days[-1]} not published"
        if k + 1 < len(days)
        else "it was the last"
    )
    return f"{span} stopped at ds={days[k]}: {done}; {rest}"


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
