"""Batch scoring of a model's queries of day D -> ``<model.predictions_table>/ds=D`` with the champion
(and, in shadow mode, the challenger), in bounded batches.

The queries of day D depend on the model's declaration (``features.model``):

* :class:`~features.model.EntitySnapshots`: every entity of the first joined set's snapshot
  ``feature_snapshots/<set>/ds=D`` (every entity known at D+1 00:00 UTC); the other joined sets'
  vectors come from their own snapshot partitions ds=D (an entity absent from one has no event
  of that set's source: the declared defaults, what the kernel gives it). One join reads the
  snapshot as it is, streamed in batches.
* :class:`~features.model.QueryRows`: the rows of the query source whose ``as_of`` falls on day
  D+1 (ingested through D), scored with the features as known at D+1 00:00 UTC — the
  point-in-time join of every joined set (``jobs.engines.join.join_features``).

Each row: the model's id columns (``model.id_columns``), then ``score, model_name,
model_version, role, feature_set_fingerprint, scored_at`` (``jobs.schemas.predictions_schema``).
``role`` is ``champion`` or ``challenger``; both roles of a shadow run are in one partition.
``scored_at`` is the logical time — ``D+1 00:00 UTC``, the instant the features describe — not the
wall clock, so re-scoring D with the same models gives the same content fingerprint (idempotent
backfills); a caller may pass another logical time (e.g. Airflow's data-interval end). The
partition's manifest names the models it used (``producer.models``), which is what the
registry's retention reads.

A model version is refused (``FingerprintMismatchError``) unless its lineage fingerprint equals
the model's (``model.fingerprint``) and the fingerprints the features were built with: the
features it would read were computed by different code or declarations than the ones it was
trained on.
"""

from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import pandas as pd
import pyarrow as pa

from features.model import EntitySnapshots
from jobs.config import Config
from jobs.lake import (
    UNVALIDATED_INPUTS,
    LakeError,
    Manifest,
    Table,
    UnvalidatedPartitionError,
    inputs_fingerprint,
    unvalidated_inputs,
)
from jobs.models.registry import CHALLENGER, CHAMPION, LoadedModel, Registry
from jobs.schemas import UTC_US, predictions_schema
from jobs.snapshots import cutoff, snapshot_table

log = logging.getLogger(__name__)


class FingerprintMismatchError(ValueError):
    """The model was trained on another version of the feature sets than the features scored."""


def predictions_table(lake, model=None) -> Table:
    """The lake table of ``model``'s predictions (a :class:`features.model.Model`; default: the default
    repo's default model)."""
    if model is None:
        from features.repo import load

        model = load().default_model()
    return lake.table(model.predictions_table, predictions_schema(model))


def scored_at_for(ds: str | dt.date) -> pd.Timestamp:
    """The logical scoring time of day ``ds``: ``D+1 00:00 UTC``."""
    return cutoff(ds)


def score_snapshot(
    cfg: Config,
    ds: str | dt.date,
    model: str | None = None,
    *,
    shadow: bool = False,
    registry: Registry | None = None,
    batch_rows: int = 100_000,
    scored_at: pd.Timestamp | None = None,
    validate: bool = True,
    registered: str | None = None,
    allow_unvalidated: bool = False,
    **engine_options,
) -> Manifest:
    """Score the queries of day ``ds`` of declared model ``model`` (default: the repo's default model)
    with its registered champion (and the challenger when ``shadow``) and publish
    ``<model.predictions_table>/ds=D``; with ``validate`` the partition passes the ``predictions``
    suite first. ``engine_options`` go to the engines (query-row models only).

    The registered model is the one named like the declaration unless ``registered`` names another;
    ``model`` may also be a registered name that no model declares (a model's baseline, say): its
    champion's lineage (``model``, else ``feature_set``) then says which declaration it scores for.

    Input partitions (the snapshots of ``ds``, or the query-row model's raw days) that are not validated
    are refused (``UnvalidatedPartitionError``) unless ``allow_unvalidated=True`` (exploration). Scored
    from unvalidated input, the partition's ``producer.unvalidated_inputs`` names it.
    """
    ds = str(pd.Timestamp(str(ds)).date())
    repo = cfg.repo()
    registry = registry or Registry.from_config(cfg)
    if not model or model in repo.models:
        decl = repo.model(model) if model else repo.default_model()
        name = registered or decl.name
        champion = registry.load(name, CHAMPION)
    else:  # a registered name of its own (e.g. a model's baseline): its lineage names the declaration
        name = model
        champion = registry.load(name, CHAMPION)
        decl = declaration_of(repo, champion.lineage, name)
    models: list[tuple[str, LoadedModel]] = [(CHAMPION, champion)]
    if shadow:
        if registry.alias(name, CHALLENGER) is None:
            log.warning("scoring: shadow mode, but %s has no challenger; scoring the champion only", name)
        else:
            models.append((CHALLENGER, registry.load(name, CHALLENGER)))
    lake = cfg.lake()
    when = pd.Timestamp(scored_at) if scored_at is not None else scored_at_for(ds)
    when = when.tz_localize("UTC") if when.tz is None else when.tz_convert("UTC")
    if isinstance(decl.queries, EntitySnapshots):
        built_with, inputs, batches, matrix, expected = _snapshot_batches(lake, decl, ds, batch_rows)
    else:
        built_with, inputs, batches, matrix, expected = _query_batches(cfg, decl, ds, batch_rows, engine_options)
    unvalidated = unvalidated_inputs(lake, inputs)
    if unvalidated and not allow_unvalidated:
        table, _, day = unvalidated[0].rpartition("/ds=")
        kind = "feature_snapshots" if isinstance(decl.queries, EntitySnapshots) else "raw_events"
        days = [u.rpartition("/ds=")[2] for u in unvalidated if u.rpartition("/ds=")[0] == table]
        raise UnvalidatedPartitionError(table, days, kind)
    for _, m in models:
        check_compatible(m, built_with, decl, ", ".join(inputs) or f"the queries of ds={ds}")
    rows = _rows(
        decl, _scored(batches, matrix, models, len(decl.feature_names), batch_rows), models, built_with, when, expected
    )
    producer = {
        "job": "score_snapshot",
        "model": decl.name,
        "models": [
            {"name": m.info.name, "version": m.info.version, "role": role, "run_id": m.info.run_id}
            for role, m in models
        ],
        "feature_set": "+".join(fs.name for fs in decl.feature_sets),
        "feature_sets": [fs.name for fs in decl.feature_sets],
        "feature_set_fingerprint": built_with,
        "scored_at": when.isoformat(),
        "shadow": shadow,
    }
    if unvalidated:
        producer[UNVALIDATED_INPUTS] = unvalidated
    gate = None
    if validate:
        from jobs.quality.validate import gate_for

        gate = gate_for(cfg, "predictions", model=decl.name)
    return predictions_table(lake, decl).write_partition(ds, rows, producer=producer, inputs=inputs, gate=gate)


def declaration_of(repo, lineage: dict, name: str):
    """The declared model a registered version scores for: its lineage's ``model`` or, else, the one
    model joining exactly its ``feature_set`` (``+``-joined names)."""
    if lineage.get("model") in repo.models:
        return repo.model(lineage["model"])
    sets = lineage.get("feature_sets") or str(lineage.get("feature_set", "")).split("+")
    found = [m for m in repo.models.values() if [fs.name for fs in m.feature_sets] == list(sets)]
    if len(found) != 1:
        raise KeyError(
            f"registered model {name!r} is no declared model, and its lineage names model "
            f"{lineage.get('model')!r} / feature sets {sets}: {len(found)} declared models match "
            f"(declared: {sorted(repo.models)})"
        )
    return found[0]


def check_compatible(model: LoadedModel, built_with: str | None, decl, where: str) -> None:
    """Refuse a model version whose fingerprint or feature list differs from the declared model's
    and from the fingerprint(s) the features to score were built with (``built_with``)."""
    fp = model.lineage.get("feature_set_fingerprint")
    names = _known_fingerprints(decl)

    def named(f):
        return names.get(f) or ("+".join(names.get(p, "unknown to this code") for p in str(f).split("+")))

    if fp != built_with or fp != decl.fingerprint:
        raise FingerprintMismatchError(
            f"model {model.info.name} v{model.info.version} was trained on features {fp} ({named(fp)}), but "
            f"{where} was built with {built_with} ({named(built_with)}) and model {decl.name!r} declares "
            f"{decl.fingerprint}: rebuild the features with the model's feature-set versions, or train and "
            "promote a model on the current ones"
        )
    if list(model.lineage.get("feature_names", [])) != list(decl.feature_names):
        raise FingerprintMismatchError(
            f"model {model.info.name} v{model.info.version} expects features "
            f"{model.lineage.get('feature_names')}, model {decl.name!r} joins {list(decl.feature_names)}"
        )


def _known_fingerprints(decl) -> dict[str, str]:
    out = {fs.fingerprint: fs.name for fs in decl.feature_sets}
    out[decl.fingerprint] = "+".join(fs.name for fs in decl.feature_sets)
    return out


# ----------------------------------------------------------------------------- entity snapshots


def _snapshot_batches(lake, decl, ds: str, batch_rows: int):
    """(fingerprint built with, inputs, batches of (ids table, Arrow table of the first set's features),
    the matrix of one batch: ``matrix(tbl, out)``, rows expected)."""
    first, *others = decl.joins
    tables = [snapshot_table(lake, j.feature_set) for j in decl.joins]
    manifests = [t.manifest(ds) for t in tables]
    built_with = "+".join(str(m.producer.get("feature_set_fingerprint")) for m in manifests)
    inputs = {f"{t.name}/ds={ds}": m.content_fingerprint for t, m in zip(tables, manifests)}
    key = decl.id_columns[0][0]
    fs0 = first.feature_set
    names = list(fs0.feature_names)
    dataset = tables[0].dataset(ds)  # verifies the files against the manifest here
    lookups = [_Lookup(j.feature_set, tables[i + 1].read(ds)) for i, j in enumerate(others)]

    def batches():
        for batch in dataset.to_batches(columns=[fs0.entity, *names], batch_size=batch_rows):
            if batch.num_rows:
                tbl = pa.Table.from_batches([batch])
                yield pa.table({key: tbl.column(fs0.entity)}), tbl

    def matrix(tbl: pa.Table, out: np.ndarray) -> np.ndarray:
        """The first set's columns, then each other set's looked-up vectors, one column-major matrix in ``out``."""
        from jobs.training.sequence import to_matrix

        n, k = tbl.num_rows, len(decl.feature_names)
        x = out[: n * k].reshape((n, k), order="F")
        to_matrix(tbl, names, order="F", out=out)  # the first len(names) columns of x
        j, ids = len(names), tbl.column(fs0.entity).to_numpy()
        for lookup in lookups:
            j = lookup.fill(x, j, ids)
        return x

    return built_with, inputs, batches(), matrix, manifests[0].rows


class _Lookup:
    """One other joined set's snapshot, indexed once by entity for the scoring workers to look up."""

    def __init__(self, fs, frame: pd.DataFrame):
        self.index = pd.Index(frame[fs.entity].to_numpy())
        self.index.get_indexer(self.index[:0])  # build the hash table here, not racing in the workers
        self.columns = [
            (
                frame[f.name].to_numpy(dtype=np.float64, na_value=np.nan),
                np.nan if f.default is None else float(f.default),
            )
            for f in fs.features
        ]

    def fill(self, x: np.ndarray, j: int, ids: np.ndarray) -> int:
        """Write the vectors of ``ids`` into columns ``j..`` of ``x`` (declared defaults for an entity
        absent from the snapshot); returns the next column."""
        pos = self.index.get_indexer(ids)
        found = pos >= 0
        for col, default in self.columns:
            x[:, j] = np.where(found, col[np.maximum(pos, 0)] if len(col) else default, default)
            j += 1
        return j


# ----------------------------------------------------------------------------- query rows


def query_rows_of_day(cfg: Config, decl, ds: str) -> pd.DataFrame:
    """The queries of day ``ds`` of a query-row model: the query source's rows ingested in
    D+1-``lead_days`` .. D whose ``as_of`` (``time + offset_hours``) falls on day D+1, one per query id (the last ingested),
    as the model's id columns plus ``as_of`` = D+1 00:00 UTC (the features as known then)."""
    q = decl.queries
    src = q.source
    ids = [c for c, _ in decl.id_columns]
    raw = cfg.lake().table(src.table)
    first = raw.first_ds()
    when = scored_at_for(ds)
    if first is None or first > ds:
        frame = pd.DataFrame({c: pd.Series([], dtype="int64" if t == "int64" else object) for c, t in decl.id_columns})
        frame["as_of"] = pd.Series([], dtype="datetime64[us, UTC]")
        return frame
    cols = list(dict.fromkeys([*ids, q.time, src.ingested_at]))
    lo = _query_days_from(decl, first, ds)
    rows = raw.read(lo, ds, columns=cols) if lo <= ds else raw.read(ds, ds, columns=cols).iloc[0:0]
    as_of = rows[q.time] + pd.Timedelta(microseconds=q.offset_us)
    day = as_of.dt.tz_convert("UTC").dt.floor("D")
    rows = rows[(day == when).to_numpy()]
    rows = rows.sort_values(src.ingested_at, kind="stable").drop_duplicates(decl.query_id, keep="last")
    out = rows[ids].sort_values(ids, ignore_index=True)
    out["as_of"] = pd.Series(when, index=out.index).astype("datetime64[us, UTC]")
    return out


def _query_days_from(decl, first: str, ds: str) -> str:
    """The first ingest partition of the query source holding a query of day D+1: a query row of
    D+1 lands from D+1 - ``lead_days`` on (what has landed by D is what is scored)."""
    return max(first, (pd.Timestamp(ds) + pd.Timedelta(days=1 - decl.queries.lead_days)).strftime("%Y-%m-%d"))


def _query_batches(cfg: Config, decl, ds: str, batch_rows: int, engine_options: dict):
    from jobs.engines.join import join_features

    queries = query_rows_of_day(cfg, decl, ds)
    ids = [c for c, _ in decl.id_columns]
    names = list(decl.feature_names)
    src = decl.queries.source
    raw = cfg.lake().table(src.table)
    first = raw.first_ds()
    lo = _query_days_from(decl, first, ds) if first else None
    inputs = {f"{src.table}/ds={lo}..{ds}": inputs_fingerprint(raw, lo, ds)} if first and lo <= ds else {}

    def batches():
        for frame in join_features(cfg, decl, queries, **engine_options):
            for start in range(0, len(frame), batch_rows):
                part = frame.iloc[start : start + batch_rows]
                tbl = pa.Table.from_pandas(part[[*ids, *names]], preserve_index=False)
                yield tbl.select(ids), tbl

    def matrix(tbl: pa.Table, out: np.ndarray) -> np.ndarray:
        from jobs.training.sequence import to_matrix

        return to_matrix(tbl, names, order="F", out=out)

    return decl.fingerprint, inputs, batches(), matrix, len(queries)


# ----------------------------------------------------------------------------- rows


def _scored(batches, matrix, models, n_features: int, batch_rows: int):
    """``(ids, [scores of each model])`` per batch, in order: ``lgbm.pipelined`` workers each fill a batch
    into a float64 buffer of their own (reused from batch to batch) and predict it with ONE LightGBM
    thread, while this thread reads the next batches and writes the ones before (the same bits as one
    multi-threaded predict: rows are independent; README, Benchmarks)."""
    from jobs.training.lgbm import WorkerBuffers, pipelined

    buffers = WorkerBuffers()

    def job(item):
        ids, tbl = item
        x = matrix(tbl, buffers.get(max(batch_rows, tbl.num_rows) * n_features))
        scores = []
        for _, m in models:
            p = m.predict(x, num_threads=1)  # LightGBM booster or the linear baseline (LoadedModel.flavor)
            bad = ~np.isfinite(p) | (p < 0) | (p > 1)
            if bad.any():
                raise LakeError(f"model {m.info.name} v{m.info.version}: {int(bad.sum())} score(s) outside [0, 1]")
            scores.append(p)
        return ids, scores

    return pipelined(job, batches, name="score")


def _rows(decl, scored, models, fingerprint: str, when: pd.Timestamp, expected: int):
    schema = predictions_schema(decl)
    n_ids = len(decl.id_columns)
    seen = 0
    for ids, scores in scored:
        n = ids.num_rows
        seen += n
        for (role, m), p in zip(models, scores):
            yield pa.table(
                [
                    *(ids.column(i).cast(schema.field(i).type) for i in range(n_ids)),
                    pa.array(p, pa.float64()),
                    pa.repeat(pa.scalar(m.info.name, pa.string()), n),
                    pa.array(np.full(n, m.info.version, dtype=np.int64)),
                    pa.repeat(pa.scalar(role, pa.string()), n),
                    pa.repeat(pa.scalar(fingerprint, pa.string()), n),
                    pa.array(np.full(n, when.value // 1000, dtype=np.int64)).cast(UTC_US),
                ],
                schema=schema,
            )
    if seen != expected:
        raise LakeError(f"read {seen} query rows, expected {expected}")


def referenced_models(cfg: Config, sql_url: str | None = None, model: str | None = None) -> set[tuple[str, int]]:
    """(model name, version) pairs that published predictions still reference: every partition's
    manifest of the predictions table of ``model`` (default: of every declared model), plus its SQL
    table when ``sql_url`` is given."""
    repo = cfg.repo()
    decls = [repo.model(model)] if model else list(repo.models.values())
    refs: set[tuple[str, int]] = set()
    lake = cfg.lake()
    for decl in decls:
        table = predictions_table(lake, decl)
        for ds in table.partitions():
            for m in table.manifest(ds).producer.get("models", []):
                refs.add((m["name"], int(m["version"])))
        if sql_url:
            from jobs.scoring.sql import referenced_models as sql_refs

            refs |= sql_refs(sql_url, decl)
    return refs
