"""The training job: training-set partitions -> LightGBM -> metrics -> lineage-gated registration.

Time split, by labels cut-off (all three ranges are lists of weekly training-set partitions):

* ``train``: the model is fit on these;
* ``valid``: later, out of time; early stopping (patience) watches its AUC;
* ``holdback``: later still; scored once, for the final candidate only — its metrics are
  what the registry compares champion and challenger on.

A label at cut-off ``C`` looks ``horizon`` days ahead, so a training row's label overlaps the
validation period unless ``valid_start - train_end >= embargo_days`` (default: the model's label
horizon, ``labels.embargo_days``); the same gap is required before the holdback. Tests on short
ranges pass 0.

The model (``TrainSpec.model_name``, default the repo's ``default_model()``) names everything:
the features (``model.feature_names``, all its joined sets), the training-set table, and the
registered model's name.

The floor: when ``<model>_baseline`` (``jobs.training.baseline``, the incremental linear model)
was trained on the same train and valid ranges, it is scored on the candidate's validation and
holdback partitions; the lifts are recorded with the candidate and ``Registry.promote`` refuses
a candidate that does not beat the baseline on validation.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

import pandas as pd

from jobs.config import Config
from jobs.models.registry import (
    CHAMPION,
    Candidate,
    ModelInfo,
    Registry,
    RegistryError,
)
from jobs.training.cluster import dask_client
from jobs.training.labels import LABEL
from jobs.training.lineage import label_params, lineage_fields
from jobs.training.spec import TrainSpec, resolve_spec
from jobs.training.training_set import ranges_files

log = logging.getLogger(__name__)


@dataclass
class TrainOutcome:
    candidate: Candidate
    result: object  # jobs.training.lgbm.TrainResult
    registered: ModelInfo | None
    champion_eval: dict | None  # the champion's metrics on this candidate's holdback, when computed
    notes: list[str] = field(default_factory=list)
    #: the baseline comparison (``candidate.reports["baseline"]``), when a baseline was scored
    baseline: dict | None = None


def train_model(
    cfg: Config,
    spec: TrainSpec,
    registry: Registry | None = None,
    *,
    register: bool = True,
    client=None,
    baseline: bool | None = None,
    extra_metrics: dict | None = None,
    extra_reports: dict | None = None,
) -> TrainOutcome:
    """Train on ``spec``'s ranges, score validation and holdback, register (gate) as challenger,
    and score the current champion on the same holdback so ``promote`` can compare.

    The floor (``baseline``): the incremental linear baseline ``<model>_baseline`` trained on the
    same train and valid ranges is scored on this candidate's validation (and holdback)
    partitions, and ``baseline_valid_auc`` / ``valid_auc_lift_over_baseline`` are recorded with
    the candidate, so ``Registry.promote`` refuses a candidate that does not beat it.
    ``None`` (default): use such a registered baseline when one exists (a note otherwise);
    ``True``: train and register one first when none exists (Dask); ``False``: no comparison.
    ``extra_metrics``/``extra_reports`` are recorded with the candidate (e.g. the parameter search
    that chose ``spec.params``: ``jobs.training.search``)."""
    from jobs.training import metrics
    from jobs.training.lgbm import resolve_params, score_files, train_dask, train_local

    model, spec = resolve_spec(cfg, spec)
    lake = cfg.lake()
    table, parts, files = ranges_files(lake, model, spec)
    features = list(model.feature_names)
    params = resolve_params(spec.params)
    opts = cfg.storage_options or None

    if spec.backend == "dask":
        with dask_client(cfg, client) as c:
            result = train_dask(
                c,
                files["train"],
                files["valid"],
                features,
                LABEL,
                params,
                num_boost_round=spec.num_boost_round,
                patience=spec.patience,
                storage_options=opts,
            )
    else:
        binary = None
        if spec.save_binary:
            binary = os.path.join(str(cfg.scratch("lgb")), "train.bin")
        result = train_local(
            files["train"],
            files["valid"],
            features,
            LABEL,
            params,
            num_boost_round=spec.num_boost_round,
            patience=spec.patience,
            backend=spec.backend,
            construct=spec.construct,
            binary_path=binary,
            storage_options=opts,
        )
    best = result.best_iteration
    booster = result.booster

    # Validation (already used for early stopping) and the holdback, scored once, here.
    y_val, p_val = score_files(booster, files["valid"], features, LABEL, num_iteration=best, storage_options=opts)
    y_hold, p_hold = score_files(booster, files["holdback"], features, LABEL, num_iteration=best, storage_options=opts)
    valid, hold = metrics.summary(y_val, p_val), metrics.summary(y_hold, p_hold)
    flat = {"best_iteration": best, "train_rows": result.train_rows, "valid_rows": len(y_val)}
    for prefix, m in (("valid", valid), ("holdback", hold)):
        flat.update({f"{prefix}_{k}": v for k, v in m.items() if k != "calibration"})

    gain = booster.feature_importance("gain", iteration=best)
    candidate = Candidate(
        name=spec.model_name,
        model_text=booster.model_to_string(num_iteration=best),
        **lineage_fields(model, table, parts, spec),
        params={
            **_jsonable(params),
            "num_boost_round": spec.num_boost_round,
            "patience": spec.patience,
            "backend": spec.backend,
            "construct": spec.construct,
            **label_params(parts, spec),
        },
        metrics=flat,
        reports={
            "calibration": {"valid": valid["calibration"], "holdback": hold["calibration"]},
            "feature_importance_gain": dict(sorted(zip(features, map(float, gain)), key=lambda kv: -kv[1])),
            "validation_history": result.history,
            "seconds": result.seconds,
        },
    )
    candidate.metrics.update(extra_metrics or {})
    candidate.reports.update(extra_reports or {})
    outcome = TrainOutcome(candidate, result, None, None)
    if baseline is not False and (register or registry is not None or baseline):
        registry = registry or Registry.from_config(cfg)
        outcome.baseline = compare_with_baseline(
            cfg,
            spec,
            registry,
            candidate,
            files,
            features,
            outcome.notes,
            train=bool(baseline),
            client=client,
            storage_options=opts,
        )
    if not register:
        return outcome
    registry = registry or Registry.from_config(cfg)
    champion = registry.alias(spec.model_name, CHAMPION) if _has(registry, spec.model_name) else None
    outcome.registered = registry.register(candidate)
    if champion is not None:
        outcome.champion_eval = evaluate_on_holdback(
            registry,
            champion,
            spec,
            files["holdback"],
            features,
            candidate.holdback["key"],
            outcome.notes,
            opts,
            fingerprint=model.fingerprint,
        )
    return outcome


def compare_with_baseline(
    cfg: Config,
    spec: TrainSpec,
    registry: Registry,
    candidate: Candidate,
    files: dict,
    features: list[str],
    notes: list[str],
    *,
    train: bool = False,
    client=None,
    storage_options=None,
) -> dict | None:
    """Score ``<model>_baseline`` (same train/valid ranges) on the candidate's validation and holdback
    partitions; record baseline metrics and lifts in ``candidate`` (metrics, reports, ``baseline``)."""
    from jobs.training import baseline as bl
    from jobs.training import metrics

    model, spec = resolve_spec(cfg, spec)
    info = bl.find_baseline(registry, spec.model_name, spec, model.fingerprint)
    if info is None and train:
        trained = bl.train_baseline(cfg, spec, registry, client=client)
        info = trained.registered
    if info is None:
        notes.append(
            f"no {bl.baseline_name(spec.model_name)} trained on train {list(spec.train)} / valid "
            f"{list(spec.valid)}: the baseline floor was not applied (`lockstep baseline` trains one)"
        )
        return None
    loaded = registry.load(info.name, info.version)
    if loaded.model is None or list(loaded.model.features) != list(features):
        notes.append(f"{info.name} v{info.version} is not a baseline over these features: floor not applied")
        return None
    out = {"name": info.name, "version": info.version, "metric": "auc"}
    for role in ("valid", "holdback"):
        y, p = bl.score_files(loaded.model, files[role], LABEL, storage_options=storage_options)
        s = {k: v for k, v in metrics.summary(y, p).items() if k != "calibration"}
        own = {k: candidate.metrics[f"{role}_{k}"] for k in ("auc", "pr_auc", "log_loss")}
        out[role] = {
            "baseline": {k: s[k] for k in ("auc", "pr_auc", "log_loss")},
            "lightgbm": own,
            "auc_lift": own["auc"] - s["auc"],
        }
        candidate.metrics.update({f"baseline_{role}_{k}": s[k] for k in ("auc", "pr_auc", "log_loss")})
        candidate.metrics[f"{role}_auc_lift_over_baseline"] = own["auc"] - s["auc"]
    lift = out["valid"]["auc_lift"]
    winner = "lightgbm" if lift > 0 else "baseline"
    out["winner"] = winner
    out["summary"] = (
        f"validation {list(spec.valid)}: LightGBM AUC {out['valid']['lightgbm']['auc']:.4f} vs "
        f"baseline {info.name} v{info.version} AUC {out['valid']['baseline']['auc']:.4f}: "
        f"{'LightGBM' if lift > 0 else 'the baseline'} wins by {abs(lift):.4f} AUC"
        f"{'' if lift > 0 else ' (LightGBM will not be promoted)'}; holdback lift "
        f"{out['holdback']['auc_lift']:+.4f}"
    )
    candidate.reports["baseline"] = out
    candidate.baseline = f"{info.name} v{info.version}"
    return out


def evaluate_on_holdback(
    registry: Registry,
    champion: ModelInfo,
    spec: TrainSpec,
    holdback_files,
    features,
    key: str,
    notes: list[str],
    storage_options=None,
    *,
    fingerprint: str,
) -> dict | None:
    """Score the champion on the challenger's holdback, if that is fair; record it in the registry.
    ``fingerprint``: the model's current one (``model.fingerprint``); another version is not comparable."""
    from jobs.training import metrics
    from jobs.training.lgbm import score_files

    if champion.holdback_key == key:
        return None  # its own holdback: already scored
    ranges = json.loads(champion.tags.get("ranges") or "{}")
    train_end = (ranges.get("train") or [None, None])[1]
    valid_end = (ranges.get("valid") or [None, None])[1]
    if not train_end or not valid_end:
        notes.append(f"champion v{champion.version} records no train/valid ranges: not comparable")
        return None
    gap = (pd.Timestamp(spec.holdback[0]) - pd.Timestamp(train_end)).days
    if max(train_end, valid_end) >= spec.holdback[0] or gap < spec.embargo_days:
        notes.append(
            f"champion v{champion.version} was trained/validated on cut-offs up to "
            f"{max(train_end, valid_end)}, too close to the holdback {spec.holdback}: it is not scored "
            "there, so promotion cannot compare"
        )
        return None
    loaded = registry.load(champion.name, champion.version)
    if loaded.lineage.get("feature_set_fingerprint") != fingerprint:
        notes.append(f"champion v{champion.version} uses another feature-set version: not comparable")
        return None
    if loaded.booster is None:
        from jobs.training.baseline import score_files as score_baseline

        y, p = score_baseline(loaded.model, holdback_files, LABEL, storage_options=storage_options)
    else:
        y, p = score_files(loaded.booster, holdback_files, features, LABEL, storage_options=storage_options)
    summary = {k: v for k, v in metrics.summary(y, p).items() if k != "calibration"}
    registry.record_holdback_eval(champion.name, champion.version, key, summary)
    return summary


def _has(registry: Registry, name: str) -> bool:
    try:
        registry.versions(name)
        return True
    except RegistryError:
        return False


def _jsonable(params: dict) -> dict:
    return json.loads(json.dumps(params, default=str))


__all__ = [
    "TrainOutcome",
    "TrainSpec",
    "compare_with_baseline",
    "evaluate_on_holdback",
    "resolve_spec",
    "train_model",
]
