"""Batch scoring: ``feature_snapshots/<set>/ds=D`` -> ``predictions/ds=D`` with the champion
(and, in shadow mode, the challenger), in bounded batches.

Each row: ``customer_id, score, model_name, model_version, role, feature_set_fingerprint,
scored_at``. ``role`` is ``champion`` or ``challenger``; both roles of a shadow run are in
one partition. ``scored_at`` is the snapshot's logical time — ``D+1 00:00 UTC``, the instant
the snapshot describes — not the wall clock, so re-scoring D with the same models gives the
same content fingerprint (idempotent backfills); a caller may pass another logical time
(e.g. Airflow's data-interval end). The partition's manifest names the models it used
(``producer.models``), which is what the registry's retention reads.

A model is refused (``FingerprintMismatchError``) unless its feature-set fingerprint equals
the one in the snapshot partition's manifest: the features it would read were computed by
different code or declarations than the ones it was trained on.
"""

from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import pandas as pd
import pyarrow as pa

from features import registry as feature_registry
from jobs.config import Config
from jobs.defaults import DEFAULT_MODEL
from jobs.lake import LakeError, Manifest, Table
from jobs.models.registry import CHALLENGER, CHAMPION, LoadedModel, Registry
from jobs.schemas import PREDICTIONS_SCHEMA, PREDICTIONS_TABLE, UTC_US
from jobs.snapshots import cutoff, snapshot_table

log = logging.getLogger(__name__)


class FingerprintMismatchError(ValueError):
    """The model was trained on another version of the feature set than the snapshot's."""


def predictions_table(lake) -> Table:
    return lake.table(PREDICTIONS_TABLE, PREDICTIONS_SCHEMA)


def scored_at_for(ds: str | dt.date) -> pd.Timestamp:
    """The logical scoring time of snapshot ``ds``: ``D+1 00:00 UTC``."""
    return cutoff(ds)


def score_snapshot(
    cfg: Config,
    ds: str | dt.date,
    model_name: str = DEFAULT_MODEL,
    *,
    shadow: bool = False,
    registry: Registry | None = None,
    batch_rows: int = 100_000,
    scored_at: pd.Timestamp | None = None,
    validate: bool = True,
) -> Manifest:
    """Score snapshot ``ds`` with the champion (and the challenger when ``shadow``) and publish
    ``predictions/ds=D``; with ``validate`` the partition passes the ``predictions`` suite first."""
    ds = str(pd.Timestamp(str(ds)).date())
    registry = registry or Registry.from_config(cfg)
    models: list[tuple[str, LoadedModel]] = [(CHAMPION, registry.load(model_name, CHAMPION))]
    if shadow:
        if registry.alias(model_name, CHALLENGER) is None:
            log.warning("scoring: shadow mode, but %s has no challenger; scoring the champion only", model_name)
        else:
            models.append((CHALLENGER, registry.load(model_name, CHALLENGER)))
    fs = feature_registry.get(models[0][1].lineage["feature_set"])
    lake = cfg.lake()
    snapshots = snapshot_table(lake, fs)
    manifest = snapshots.manifest(ds)
    snap_fp = manifest.producer.get("feature_set_fingerprint")
    for role, m in models:
        check_compatible(m, snap_fp, fs, f"{snapshots.name}/ds={ds}")
    features = list(fs.feature_names)
    when = pd.Timestamp(scored_at) if scored_at is not None else scored_at_for(ds)
    when = when.tz_localize("UTC") if when.tz is None else when.tz_convert("UTC")
    # Arrow batches straight into a float64 matrix (the one dtype contract).
    dataset = snapshots.dataset(ds)  # verifies the files against the manifest here
    batches = _matrices(dataset, fs.entity, features, batch_rows)
    rows = _rows(batches, models, snap_fp, when, manifest.rows)
    producer = {
        "job": "score_snapshot",
        "models": [
            {"name": m.info.name, "version": m.info.version, "role": role, "run_id": m.info.run_id}
            for role, m in models
        ],
        "feature_set": fs.name,
        "feature_set_fingerprint": snap_fp,
        "scored_at": when.isoformat(),
        "shadow": shadow,
    }
    gate = None
    if validate:
        from jobs.quality.validate import gate_for

        gate = gate_for(cfg, "predictions")
    return predictions_table(lake).write_partition(
        ds, rows, producer=producer, inputs={f"{snapshots.name}/ds={ds}": manifest.content_fingerprint}, gate=gate
    )


def check_compatible(model: LoadedModel, snapshot_fingerprint: str | None, fs, where: str) -> None:
    """Refuse a model whose feature-set fingerprint or feature list differs from the snapshot's."""
    fp = model.lineage.get("feature_set_fingerprint")
    if fp != snapshot_fingerprint:
        names = feature_registry.known_fingerprints()
        raise FingerprintMismatchError(
            f"model {model.info.name} v{model.info.version} was trained on features {fp} "
            f"({names.get(fp, 'unknown to this code')}), but {where} was built with {snapshot_fingerprint} "
            f"({names.get(snapshot_fingerprint, 'unknown to this code')}): rebuild the snapshot with the model's "
            "feature-set version, or train and promote a model on the current one"
        )
    if list(model.lineage.get("feature_names", [])) != list(fs.feature_names):
        raise FingerprintMismatchError(
            f"model {model.info.name} v{model.info.version} expects features "
            f"{model.lineage.get('feature_names')}, the snapshot has {list(fs.feature_names)}"
        )


def _matrices(dataset, entity: str, features: list[str], batch_rows: int):
    from jobs.training.sequence import to_matrix

    for batch in dataset.to_batches(columns=[entity, *features], batch_size=batch_rows):
        if batch.num_rows:
            tbl = pa.Table.from_batches([batch])
            yield tbl.column(entity), to_matrix(tbl, features, order="F")


def _rows(batches, models, fingerprint: str, when: pd.Timestamp, expected: int):
    seen = 0
    for ids, x in batches:
        n = len(x)
        seen += n
        for role, m in models:
            p = m.predict(x)  # LightGBM booster or the linear baseline (LoadedModel.flavor)
            bad = ~np.isfinite(p) | (p < 0) | (p > 1)
            if bad.any():
                raise LakeError(f"model {m.info.name} v{m.info.version}: {int(bad.sum())} score(s) outside [0, 1]")
            yield pa.table(
                [
                    ids.cast(pa.int64()),
                    pa.array(p, pa.float64()),
                    pa.repeat(pa.scalar(m.info.name, pa.string()), n),
                    pa.array(np.full(n, m.info.version, dtype=np.int64)),
                    pa.repeat(pa.scalar(role, pa.string()), n),
                    pa.repeat(pa.scalar(fingerprint, pa.string()), n),
                    pa.array(np.full(n, when.value // 1000, dtype=np.int64)).cast(UTC_US),
                ],
                schema=PREDICTIONS_SCHEMA,
            )
    if seen != expected:
        raise LakeError(f"read {seen} snapshot rows, its manifest lists {expected}")


def referenced_models(cfg: Config, sql_url: str | None = None) -> set[tuple[str, int]]:
    """(model name, version) pairs that published predictions still reference: every
    ``predictions`` partition's manifest, plus the SQL table when ``sql_url`` is given."""
    refs: set[tuple[str, int]] = set()
    table = predictions_table(cfg.lake())
    for ds in table.partitions():
        for m in table.manifest(ds).producer.get("models", []):
            refs.add((m["name"], int(m["version"])))
    if sql_url:
        from jobs.scoring.sql import referenced_models as sql_refs

        refs |= sql_refs(sql_url)
    return refs
