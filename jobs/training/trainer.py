"""The training job: training-set partitions -> LightGBM -> metrics -> lineage-gated registration.

Time split, by labels cut-off (all three ranges are lists of weekly training-set partitions):

* ``train``: the model is fit on these;
* ``valid``: later, out of time; early stopping (patience) watches its AUC;
* ``holdback``: later still; scored once, for the final candidate only — its metrics are
  what the registry compares champion and challenger on.

A label at cut-off ``C`` looks ``horizon`` days ahead, so a training row's label overlaps the
validation period unless ``valid_start - train_end >= embargo_days`` (default: the labels'
horizon, 90); the same gap is required before the holdback. Tests on short ranges pass 0.

The floor: when ``<model>_baseline`` (``jobs.training.baseline``, the incremental linear model)
was trained on the same train and valid ranges, it is scored on the candidate's validation and
holdback partitions; the lifts are recorded with the candidate and ``Registry.promote`` refuses
a candidate that does not beat the baseline on validation.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field

import pandas as pd

from features import registry as feature_registry
from jobs.config import Config
from jobs.labels import HORIZON_DAYS, LABEL
from jobs.registry import (
    CHAMPION,
    Candidate,
    ModelInfo,
    PromotionRefused,
    Registry,
    RegistryError,
)
from jobs.training import BACKENDS, CONSTRUCT
from jobs.training_set import ranges_files

log = logging.getLogger(__name__)
DEFAULT_MODEL = "repurchase_90d"


@dataclass(frozen=True)
class TrainSpec:
    """What to train on and how. Ranges are inclusive ``(from, to)`` cut-off dates."""

    train: tuple[str, str]
    valid: tuple[str, str]
    holdback: tuple[str, str]
    model_name: str = DEFAULT_MODEL
    feature_set: str = "customer_activity_v1"
    params: dict = field(default_factory=dict)
    num_boost_round: int = 500
    patience: int = 30
    backend: str = "streamed"  # streamed | memory | dask
    construct: str = "inline"  # inline | subprocess (streamed only)
    save_binary: bool = False
    embargo_days: int = HORIZON_DAYS

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.construct not in CONSTRUCT:
            raise ValueError(f"construct must be one of {CONSTRUCT}, got {self.construct!r}")
        for role in ("train", "valid", "holdback"):
            a, b = getattr(self, role)
            a, b = str(pd.Timestamp(str(a)).date()), str(pd.Timestamp(str(b)).date())
            if b < a:
                raise ValueError(f"{role} range {a}..{b} is empty")
            object.__setattr__(self, role, (a, b))
        gap = (pd.Timestamp(self.valid[0]) - pd.Timestamp(self.train[1])).days
        if gap <= 0:
            raise ValueError(f"valid range {self.valid} must start after the train range {self.train}")
        if gap < self.embargo_days:
            raise ValueError(f"valid starts {gap} days after the last training cut-off; labels look "
                             f"{self.embargo_days} days ahead (embargo_days), so training labels would overlap "
                             "the validation period")
        if self.holdback[0] <= self.valid[1]:
            raise ValueError(f"holdback range {self.holdback} must start after the valid range {self.valid}")


@dataclass
class TrainOutcome:
    candidate: Candidate
    result: object  # jobs.training.lgbm.TrainResult
    registered: ModelInfo | None
    champion_eval: dict | None  # the champion's metrics on this candidate's holdback, when computed
    notes: list[str] = field(default_factory=list)
    #: the baseline comparison (``candidate.reports["baseline"]``), when a baseline was scored
    baseline: dict | None = None


def train_model(cfg: Config, spec: TrainSpec, registry: Registry | None = None, *, register: bool = True,
                client=None, baseline: bool | None = None, extra_metrics: dict | None = None,
                extra_reports: dict | None = None) -> TrainOutcome:
    """Train on ``spec``'s ranges, score validation and holdback, register (gate) as challenger,
    and score the current champion on the same holdback so ``promote`` can compare.

    The floor (``baseline``): the incremental linear baseline ``<model>_baseline`` trained on the
    same train and valid ranges is scored on this candidate's validation (and holdback)
    partitions, and ``baseline_valid_auc`` / ``valid_auc_lift_over_baseline`` are recorded with
    the candidate, so ``Registry.promote`` refuses a candidate that does not beat it.
    ``None`` (default): use such a registered baseline when one exists (a note otherwise);
    ``True``: train and register one first when none exists (Dask); ``False``: no comparison.
    ``extra_metrics``/``extra_reports`` are recorded with the candidate (e.g. the parameter search
    that chose ``spec.params``: ``jobs.training.tune``)."""
    from jobs.training import metrics
    from jobs.training.lgbm import resolve_params, score_files, train_dask, train_local

    fs = feature_registry.get(spec.feature_set)
    lake = cfg.lake()
    table, parts, files = ranges_files(lake, fs, spec)
    features = list(fs.feature_names)
    params = resolve_params(spec.params)
    opts = cfg.storage_options or None

    if spec.backend == "dask":
        with _dask_client(cfg, client) as c:
            result = train_dask(c, files["train"], files["valid"], features, LABEL, params,
                                num_boost_round=spec.num_boost_round, patience=spec.patience, storage_options=opts)
    else:
        binary = None
        if spec.save_binary:
            binary = os.path.join(str(cfg.scratch("lgb")), "train.bin")
        result = train_local(files["train"], files["valid"], features, LABEL, params,
                             num_boost_round=spec.num_boost_round, patience=spec.patience, backend=spec.backend,
                             construct=spec.construct, binary_path=binary, storage_options=opts)
    best = result.best_iteration
    booster = result.booster

    # Validation (already used for early stopping) and the holdback, scored once, here.
    y_val, p_val = score_files(booster, files["valid"], features, LABEL, num_iteration=best, storage_options=opts)
    y_hold, p_hold = score_files(booster, files["holdback"], features, LABEL, num_iteration=best,
                                 storage_options=opts)
    valid, hold = metrics.summary(y_val, p_val), metrics.summary(y_hold, p_hold)
    flat = {"best_iteration": best, "train_rows": result.train_rows, "valid_rows": len(y_val)}
    for prefix, m in (("valid", valid), ("holdback", hold)):
        flat.update({f"{prefix}_{k}": v for k, v in m.items() if k != "calibration"})

    gain = booster.feature_importance("gain", iteration=best)
    candidate = Candidate(
        name=spec.model_name,
        model_text=booster.model_to_string(num_iteration=best),
        **lineage_fields(fs, table, parts, spec),
        params={**_jsonable(params), "num_boost_round": spec.num_boost_round, "patience": spec.patience,
                "backend": spec.backend, "construct": spec.construct, **label_params(parts, spec)},
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
        outcome.baseline = compare_with_baseline(cfg, spec, registry, candidate, files, features, outcome.notes,
                                                 train=bool(baseline), client=client, storage_options=opts)
    if not register:
        return outcome
    registry = registry or Registry.from_config(cfg)
    champion = registry.alias(spec.model_name, CHAMPION) if _has(registry, spec.model_name) else None
    outcome.registered = registry.register(candidate)
    if champion is not None:
        outcome.champion_eval = evaluate_on_holdback(registry, champion, spec, files["holdback"], features,
                                                     candidate.holdback["key"], outcome.notes, opts)
    return outcome


def compare_with_baseline(cfg: Config, spec: TrainSpec, registry: Registry, candidate: Candidate, files: dict,
                          features: list[str], notes: list[str], *, train: bool = False, client=None,
                          storage_options=None) -> dict | None:
    """Score ``<model>_baseline`` (same train/valid ranges) on the candidate's validation and holdback
    partitions; record baseline metrics and lifts in ``candidate`` (metrics, reports, ``baseline``)."""
    from jobs.training import baseline as bl
    from jobs.training import metrics

    fs = feature_registry.get(spec.feature_set)
    info = bl.find_baseline(registry, spec.model_name, spec, fs.fingerprint)
    if info is None and train:
        trained = bl.train_baseline(cfg, spec, registry, client=client)
        info = trained.registered
    if info is None:
        notes.append(f"no {bl.baseline_name(spec.model_name)} trained on train {list(spec.train)} / valid "
                     f"{list(spec.valid)}: the baseline floor was not applied (`lockstep baseline` trains one)")
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
        out[role] = {"baseline": {k: s[k] for k in ("auc", "pr_auc", "log_loss")}, "lightgbm": own,
                     "auc_lift": own["auc"] - s["auc"]}
        candidate.metrics.update({f"baseline_{role}_{k}": s[k] for k in ("auc", "pr_auc", "log_loss")})
        candidate.metrics[f"{role}_auc_lift_over_baseline"] = own["auc"] - s["auc"]
    lift = out["valid"]["auc_lift"]
    winner = "lightgbm" if lift > 0 else "baseline"
    out["winner"] = winner
    out["summary"] = (f"validation {list(spec.valid)}: LightGBM AUC {out['valid']['lightgbm']['auc']:.4f} vs "
                      f"baseline {info.name} v{info.version} AUC {out['valid']['baseline']['auc']:.4f}: "
                      f"{'LightGBM' if lift > 0 else 'the baseline'} wins by {abs(lift):.4f} AUC"
                      f"{'' if lift > 0 else ' (LightGBM will not be promoted)'}; holdback lift "
                      f"{out['holdback']['auc_lift']:+.4f}")
    candidate.reports["baseline"] = out
    candidate.baseline = f"{info.name} v{info.version}"
    return out


def evaluate_on_holdback(registry: Registry, champion: ModelInfo, spec: TrainSpec, holdback_files, features,
                         key: str, notes: list[str], storage_options=None) -> dict | None:
    """Score the champion on the challenger's holdback, if that is fair; record it in the registry."""
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
        notes.append(f"champion v{champion.version} was trained/validated on cut-offs up to "
                     f"{max(train_end, valid_end)}, too close to the holdback {spec.holdback}: it is not scored "
                     "there, so promotion cannot compare")
        return None
    loaded = registry.load(champion.name, champion.version)
    if loaded.lineage.get("feature_set_fingerprint") != feature_registry.get(spec.feature_set).fingerprint:
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


def lineage_fields(fs, table, parts: dict, spec: TrainSpec) -> dict:
    """The lineage a ``Candidate`` needs (the registry's gate checks it), for a model trained on the
    training-set partitions ``parts`` (role -> manifests) of ``table``: code commit, feature set and
    fingerprint, every partition's content fingerprint, environment, holdback key and the ranges."""
    from jobs.training import metadata

    env = metadata.environment()
    holdback_parts = {f"{table.name}/ds={m.ds}": m.content_fingerprint for m in parts["holdback"]}
    return {
        "feature_set": fs.name, "feature_names": list(fs.feature_names), "code_commit": metadata.code_commit(),
        "feature_set_fingerprint": fs.fingerprint,
        "training_set_fingerprints": {f"{table.name}/ds={m.ds}": m.content_fingerprint
                                      for ms in parts.values() for m in ms},
        "environment_digest": metadata.environment_digest(env), "environment": env,
        "holdback": {"key": holdback_key(holdback_parts), "range": list(spec.holdback), "partitions": holdback_parts},
        "ranges": {"train": list(spec.train), "valid": list(spec.valid), "holdback": list(spec.holdback)},
    }


def label_params(parts: dict, spec: TrainSpec) -> dict:
    """The label definition and embargo a model was trained under (recorded with its parameters)."""
    producer = parts["train"][0].producer
    return {"embargo_days": spec.embargo_days, "label_definition": producer.get("label_definition", ""),
            "horizon_days": producer.get("horizon_days")}


def parse_params(pairs) -> dict:
    """``--param KEY=VALUE`` arguments as a dict; a value is JSON when it parses (numbers, booleans)."""
    params = {}
    for kv in pairs:
        k, _, v = kv.partition("=")
        with contextlib.suppress(ValueError):
            v = json.loads(v)
        params[k] = v
    return params


def holdback_key(partitions: dict[str, str]) -> str:
    """One id for a holdback range: its partitions and their content fingerprints."""
    return hashlib.sha256(json.dumps(sorted(partitions.items())).encode()).hexdigest()


def _has(registry: Registry, name: str) -> bool:
    try:
        registry.versions(name)
        return True
    except RegistryError:
        return False


def _jsonable(params: dict) -> dict:
    return json.loads(json.dumps(params, default=str))


@contextlib.contextmanager
def _dask_client(cfg: Config, client=None):
    if client is not None:
        yield client
        return
    from distributed import Client, LocalCluster

    if cfg.dask_address:
        with Client(cfg.dask_address) as c:
            yield c
        return
    with LocalCluster(n_workers=cfg.dask_workers, threads_per_worker=cfg.dask_threads_per_worker,
                      memory_limit=cfg.dask_memory_limit, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as c:
        yield c


# ---- CLI ----------------------------------------------------------------------------------------
def add_parsers(subparsers) -> None:
    """``lockstep train ...`` and ``lockstep model list|promote|rollback|prune``."""
    s = subparsers.add_parser("train", help="train LightGBM from training-set partitions and register a challenger")
    for role in ("train", "valid", "holdback"):
        s.add_argument(f"--{role}", nargs=2, metavar=("FROM", "TO"), required=True,
                       help=f"{role} cut-off range (inclusive)")
    s.add_argument("--model", default=DEFAULT_MODEL)
    s.add_argument("--feature-set", default="customer_activity_v1")
    s.add_argument("--backend", choices=BACKENDS, default="streamed")
    s.add_argument("--construct", choices=CONSTRUCT, default="inline")
    s.add_argument("--save-binary", action="store_true", help="train from LightGBM's binary dataset file")
    s.add_argument("--rounds", type=int, default=500)
    s.add_argument("--patience", type=int, default=30)
    s.add_argument("--embargo-days", type=int, default=HORIZON_DAYS)
    s.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="a LightGBM parameter")
    s.add_argument("--promote", action="store_true", help="promote the new challenger if it wins")
    s.add_argument("--baseline", choices=("auto", "train", "off"), default="auto",
                   help="the linear floor: compare with <model>_baseline on the same ranges if registered (auto), "
                        "train one first if missing (train), or skip (off)")
    s.set_defaults(func=_cmd_train)

    m = subparsers.add_parser("model", help="registry: list versions, promote, rollback, prune")
    msub = m.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    for action, help_ in (("list", "versions, aliases and holdback metrics"),
                          ("promote", "challenger -> champion if it beats it on the same holdback"),
                          ("rollback", "restore the previous champion"),
                          ("prune", "retention: delete versions that are not kept")):
        a = msub.add_parser(action, help=help_)
        a.add_argument("name", nargs="?", default=DEFAULT_MODEL)
        if action == "promote":
            a.add_argument("--min-delta", type=float, default=0.0)
        if action == "prune":
            a.add_argument("--keep", type=int, default=3, help="top-k by holdback AUC to keep")
            a.add_argument("--sql-url", help="also keep models the published SQL table references")
            a.add_argument("--dry-run", action="store_true")
        a.set_defaults(func=_cmd_model)


def _cmd_train(args) -> int:
    from jobs.cli import _config

    cfg = _config(args)
    spec = TrainSpec(tuple(args.train), tuple(args.valid), tuple(args.holdback), model_name=args.model,
                     feature_set=args.feature_set, params=parse_params(args.param), num_boost_round=args.rounds,
                     patience=args.patience, backend=args.backend, construct=args.construct,
                     save_binary=args.save_binary, embargo_days=args.embargo_days)
    registry = Registry.from_config(cfg)
    out = train_model(cfg, spec, registry, baseline={"auto": None, "train": True, "off": False}[args.baseline])
    m = out.candidate.metrics
    print(f"trained {spec.model_name} on {m['train_rows']} rows ({spec.backend}), best iteration {m['best_iteration']}")
    print(f"  valid    AUC {m['valid_auc']:.4f}  PR-AUC {m['valid_pr_auc']:.4f}  log loss {m['valid_log_loss']:.4f}")
    print(f"  holdback AUC {m['holdback_auc']:.4f}  PR-AUC {m['holdback_pr_auc']:.4f}  "
          f"log loss {m['holdback_log_loss']:.4f}  ECE {m['holdback_ece']:.4f}")
    print(f"registered {spec.model_name} v{out.registered.version} as challenger in {registry.uri}")
    if out.baseline:
        print(f"  floor: {out.baseline['summary']}")
    if out.champion_eval:
        print(f"  champion on the same holdback: AUC {out.champion_eval['auc']:.4f}")
    for note in out.notes:
        print(f"  note: {note}")
    if args.promote:
        info = registry.promote(spec.model_name)
        print(f"promoted v{info.version} to champion")
    return 0


def _cmd_model(args) -> int:
    from jobs.cli import _config

    cfg = _config(args)
    registry = Registry.from_config(cfg)
    if args.model_command == "list":
        for v in registry.versions(args.name):
            print(f"v{v.version:<4} {','.join(v.aliases) or '-':<22} holdback AUC "
                  f"{v.metrics.get('holdback_auc', float('nan')):.4f}  commit {v.tags.get('code_commit', '')[:12]}  "
                  f"features {v.tags.get('feature_set_fingerprint', '')}")
    elif args.model_command == "promote":
        try:
            info = registry.promote(args.name, min_delta=args.min_delta)
        except PromotionRefused as exc:
            first = registry.baseline_as_first_champion(args.name)
            if first is None:
                raise
            print(f"{exc}\n{args.name}: no champion yet, so the baseline it lost to "
                  f"({first.tags.get('lockstep.adopted_from')}) is the champion, as v{first.version}")
            return 0
        print(f"{args.name}: v{info.version} is the champion")
    elif args.model_command == "rollback":
        info = registry.rollback(args.name)
        print(f"{args.name}: rolled back, v{info.version} is the champion")
    else:
        from jobs.scoring import referenced_models

        report = registry.prune(args.name, references=referenced_models(cfg, args.sql_url), keep_top_k=args.keep,
                                dry_run=args.dry_run)
        print(json.dumps(report, indent=1))
    return 0


__all__ = ["TrainOutcome", "TrainSpec", "compare_with_baseline", "evaluate_on_holdback", "holdback_key", "train_model"]
