"""Model registry with a lineage gate, on MLflow's model registry (mlflow-skinny).

* Tracking/registry URI: ``$LOCKSTEP_MLFLOW_TRACKING_URI``, else ``cfg.mlflow_tracking_uri`` when
  the config has one, else SQLite at ``<lake>/_registry/mlflow.db`` (artifacts in
  ``<lake>/_registry/artifacts``). Any MLflow URI works (``http://mlflow:5000``, PostgreSQL, ...).
* ``register`` refuses a model unless it carries its lineage (``REQUIRED``): code commit,
  feature-set fingerprint, training-set fingerprints, environment digest, parameters and
  metrics. Parameters, metrics and reports then pass an allowlist and the secret/PII
  detector (``jobs.models.metadata``) before anything is written.
* A new version gets the alias ``challenger``. ``promote`` moves ``champion`` to it only if it
  beats the champion on the SAME holdback range (same training-set partitions and content
  fingerprints — the ``holdback_key``); the champion's score there is its own holdback
  score or one recorded by ``record_holdback_eval``. Each promotion pushes the previous
  champion on a history, and ``rollback`` restores it in one call.
* The floor: a version registered with ``valid_auc_lift_over_baseline <= 0`` (``lockstep train``
  scored the linear baseline ``<name>_baseline`` on the same validation partitions and it did
  at least as well) is never promoted (``check_floor``).
* Flavors: ``lightgbm`` (``model/model.txt``, ``LoadedModel.booster``) and ``sgd_baseline``
  (``model/baseline.json``, ``LoadedModel.model``: ``jobs.models.flavors.BaselineModel``; see ``jobs.models.flavors``);
  tag ``flavor``; ``LoadedModel.predict`` scores either.
* ``prune`` keeps the champion, the challenger, the rollback target, the top-k versions by
  holdback AUC and every version a prediction table references; it deletes the rest
  (version, run and artifacts).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from features.model import DEFAULT_CANARY_STEPS
from jobs.models import flavors
from jobs.models import metadata as md
from jobs.models.flavors import FLAVORS

log = logging.getLogger(__name__)

TRACKING_ENV = "LOCKSTEP_MLFLOW_TRACKING_URI"
CHAMPION, CHALLENGER = "champion", "challenger"
REQUIRED = (
    "code_commit",
    "feature_set_fingerprint",
    "training_set_fingerprints",
    "environment_digest",
    "params",
    "metrics",
)
HISTORY_TAG = "lockstep.champion_history"
#: The canary stage of a challenger version: the share (0..1) of entities it serves
#: (``jobs.serving.canary``); set by ``lockstep canary``, read by the serving poll.
CANARY_TAG = "lockstep.canary_share"
#: A canary stopped by its guards (``jobs.serving.guards``): JSON of the guard(s), observed values,
#: thresholds, window and time, on the challenger version. While it is set the version serves no
#: canary (every service's challenger poll reads it); ``lockstep canary --reset-breach`` clears it.
CANARY_BREACH_TAG = "lockstep.canary_breach"
#: When the challenger's current canary stage began (ISO 8601 UTC), written with every share set.
CANARY_STAGE_AT_TAG = "lockstep.canary_stage_at"
#: The guards' last passing verdict on the canary arm (``jobs.serving.guards.GuardMonitor``): JSON
#: ``{share, at, n_canary, n_champion, pid}``; the ramp advances only on one at the current share taken
#: after the stage began (``jobs.serving.canary.advance_canary``).
CANARY_JUDGED_TAG = "lockstep.canary_judged"
#: The default ramp of a canary: the declaration's (``features.model.CanaryRamp``) is the one owner.
CANARY_RAMP = DEFAULT_CANARY_STEPS
#: metric recorded by ``lockstep train`` when a baseline was scored on the same validation range
BASELINE_LIFT = "valid_auc_lift_over_baseline"
_EVAL_TAG = "lockstep.holdback_eval."
_HIGHER_IS_BETTER = {"auc": True, "pr_auc": True, "log_loss": False, "ece": False}


class RegistryError(RuntimeError):
    """The registry cannot do what was asked (unknown model, no champion, ...)."""


class LineageError(ValueError):
    """Registration refused: lineage fields are missing or invalid (``.problems``: field -> why)."""

    def __init__(self, problems: dict[str, str]):
        self.problems = dict(problems)
        lines = "\n".join(f"  - {k}: {v}" for k, v in self.problems.items())
        super().__init__(f"model registration refused, lineage incomplete:\n{lines}")


class PromotionRefused(RuntimeError):
    """The challenger was not promoted (not better, or not comparable)."""


@dataclass
class Candidate:
    """A trained model and everything the lineage gate needs to know about it."""

    name: str
    model_text: str
    #: the joined feature sets' names, "+"-joined in join order (one name for a one-set model)
    feature_set: str
    feature_names: list[str]
    code_commit: str | None = None
    #: the model's fingerprint: the joined sets' fingerprints, "+"-joined (``Model.fingerprint``)
    feature_set_fingerprint: str | None = None
    #: the joined sets, in join order: ``[{"name": ..., "fingerprint": ...}]`` (empty: ``feature_set``
    #: names one set)
    feature_sets: list[dict] = field(default_factory=list)
    training_set_fingerprints: dict[str, str] = field(default_factory=dict)
    environment_digest: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    #: ``{"key": sha256, "range": [from, to], "partitions": {table/ds: fingerprint}}``
    holdback: dict = field(default_factory=dict)
    #: ``{"train": [from, to], "valid": [...], "holdback": [...]}`` (cut-off dates)
    ranges: dict = field(default_factory=dict)
    reports: dict = field(default_factory=dict)  # calibration tables, importance, histories
    #: what ``model_text`` is: ``lightgbm`` (a LightGBM model string, artifact ``model/model.txt``)
    #: or ``sgd_baseline`` (``jobs.models.flavors.BaselineModel`` JSON, ``model/baseline.json``)
    flavor: str = "lightgbm"
    #: the baseline this candidate was compared with on the validation range (``"<name> v<version>"``)
    baseline: str | None = None
    #: the declared model (``features.model.Model.name``) this version scores for; a baseline's is the
    #: model it is the floor of
    model: str | None = None


@dataclass
class ModelInfo:
    name: str
    version: int
    aliases: list[str]
    tags: dict[str, str]
    metrics: dict[str, float]
    run_id: str
    source: str

    @property
    def holdback_key(self) -> str:
        return self.tags.get("holdback_key", "")

    @property
    def flavor(self) -> str:
        return self.tags.get("flavor") or "lightgbm"  # versions registered before flavors were LightGBM

    def holdback_score(self, key: str, metric: str = "auc") -> float | None:
        """This version's ``metric`` on the holdback ``key`` (its own, or a recorded evaluation)."""
        if key == self.holdback_key and f"holdback_{metric}" in self.metrics:
            return self.metrics[f"holdback_{metric}"]
        raw = self.tags.get(_EVAL_TAG + key[:32])
        if raw:
            return json.loads(raw).get(metric)
        return None


@dataclass
class LoadedModel:
    info: ModelInfo
    booster: object  # lightgbm.Booster (flavor ``lightgbm``), else None
    lineage: dict
    model: object = None  # jobs.models.flavors.BaselineModel (flavor ``sgd_baseline``), else None

    @property
    def flavor(self) -> str:
        return self.info.flavor

    def predict(self, x, num_threads: int | None = None):
        """P(label = 1) per row of the float64 feature matrix ``x``, whatever the flavor. ``num_threads``:
        LightGBM's threads for this call (default: the model's); the scores do not depend on it."""
        if self.booster is None:
            return self.model.predict(x)
        return self.booster.predict(x) if num_threads is None else self.booster.predict(x, num_threads=num_threads)


def check_lineage(c: Candidate, repo=None) -> None:
    """Raise ``LineageError`` naming every missing or invalid lineage field. Feature-set fingerprints
    are checked against ``repo`` (a ``features.repo.Repo``; default ``features.repo.load()``)."""
    from features import repo as declarations

    problems: dict[str, str] = {}
    if c.flavor not in FLAVORS:
        problems["flavor"] = f"{c.flavor!r} is not one of {sorted(FLAVORS)}"
    if not c.code_commit:
        problems["code_commit"] = "missing (run from a git checkout or set LOCKSTEP_CODE_COMMIT)"
    elif not md.is_commit(c.code_commit):
        problems["code_commit"] = f"{c.code_commit!r} is not a full commit hash"
    known = (repo or declarations.load()).known_fingerprints()
    sets = c.feature_sets or [{"name": c.feature_set, "fingerprint": c.feature_set_fingerprint}]
    if not c.feature_set_fingerprint:
        problems["feature_set_fingerprint"] = "missing"
    elif c.feature_set_fingerprint != "+".join(str(s.get("fingerprint")) for s in sets):
        problems["feature_set_fingerprint"] = (
            f"{c.feature_set_fingerprint!r} is not the joined fingerprints of feature sets "
            f"{[s.get('name') for s in sets]}"
        )
    else:
        stale = [s for s in sets if known.get(s.get("fingerprint")) != s.get("name")]
        if stale:
            problems["feature_set_fingerprint"] = "; ".join(
                f"{s.get('fingerprint')!r} is not the current fingerprint of feature set {s.get('name')!r}"
                for s in stale
            )
    if not c.training_set_fingerprints:
        problems["training_set_fingerprints"] = "missing (which training-set partitions, with content fingerprints)"
    elif not all(isinstance(v, str) and len(v) == 64 for v in c.training_set_fingerprints.values()):
        problems["training_set_fingerprints"] = "every partition needs its 64-hex content fingerprint"
    if not c.environment_digest:
        problems["environment_digest"] = "missing (resolved package versions)"
    elif len(c.environment_digest) != 64:
        problems["environment_digest"] = "not a sha256 digest"
    if not c.params:
        problems["params"] = "missing"
    if not c.metrics:
        problems["metrics"] = "missing"
    else:
        _, bad = md.finite_metrics(c.metrics)
        if bad:
            problems["metrics"] = f"not finite numbers: {sorted(bad)}"
        elif "holdback_auc" not in c.metrics:
            problems["metrics"] = "no holdback_auc (the holdback range must be scored before registration)"
    if c.metrics and not c.holdback.get("key"):
        problems.setdefault("metrics", "holdback metrics without a holdback key (which range was scored)")
    if problems:
        raise LineageError(problems)


def utc_now() -> str:
    """Now, ISO 8601 UTC (the canary stage tags)."""
    import datetime as dt

    return dt.datetime.now(dt.UTC).isoformat()


def check_floor(info: ModelInfo) -> None:
    """Refuse (``PromotionRefused``) a version that did not beat its baseline on the validation range.

    ``lockstep train`` scores the registered baseline (``<name>_baseline``, trained on the same
    train range) on the candidate's own validation partitions and records ``baseline_valid_auc``
    and ``valid_auc_lift_over_baseline`` at registration; a lift <= 0 means the LightGBM model is
    no better than the linear floor. A version without these metrics was not compared with a
    baseline and is not held to it here.
    """
    lift = info.metrics.get(BASELINE_LIFT)
    if lift is None or lift > 0:
        return
    base = info.metrics.get("baseline_valid_auc", float("nan"))
    own = info.metrics.get("valid_auc", float("nan"))
    which = info.tags.get("lockstep.baseline", "its baseline")
    raise PromotionRefused(
        f"challenger v{info.version} does not beat {which} on the validation range "
        f"{json.loads(info.tags.get('ranges') or '{}').get('valid')}: valid AUC {own:.5f} vs baseline "
        f"{base:.5f} (lift {lift:+.5f}); a model below the linear floor is not promoted"
    )


def tracking_uri(cfg) -> str:
    """The MLflow tracking URI of this config (see the module docstring)."""
    uri = os.environ.get(TRACKING_ENV, "").strip() or getattr(cfg, "mlflow_tracking_uri", None)
    if uri:
        return uri
    lake = cfg.lake()
    if not lake.is_local:
        raise RegistryError(f"the lake {lake.root} is not local: set {TRACKING_ENV} to an MLflow tracking URI")
    root = Path(lake.root).resolve() / "_registry"
    return f"sqlite:///{root / 'mlflow.db'}"


class Registry:
    """Lockstep's view of an MLflow model registry."""

    def __init__(self, uri: str, artifact_root: str | None = None, repo=None):
        self.uri = uri
        self.artifact_root = artifact_root
        #: the declarations fingerprints are checked against (None: ``features.repo.load()``)
        self.repo = repo
        self._client = None

    @classmethod
    def from_config(cls, cfg) -> Registry:
        uri = tracking_uri(cfg)
        artifacts = None
        if uri.startswith("sqlite:///"):
            db = Path(uri[len("sqlite:///") :])
            artifacts = (db.parent / "artifacts").as_uri()
        return cls(uri, artifacts, repo=cfg.repo())

    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            if self.uri.startswith("sqlite:///"):
                Path(self.uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
            # Progress bars of artifact downloads would flood job logs.
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        return self._client

    # ---- registration ---------------------------------------------------------------------------
    def register(self, c: Candidate, alias: str | None = CHALLENGER) -> ModelInfo:
        """Gate, redact and register ``c`` as a new version (alias ``challenger`` by default)."""
        from mlflow.entities import Metric, Param

        check_lineage(c, self.repo)
        params, findings = md.sanitize("params", c.params, md.allow_param)
        raw_metrics, _ = md.finite_metrics(c.metrics)
        metrics_kept, more = md.sanitize("metrics", raw_metrics, md.allow_metric)
        findings += more
        reports, more = md.redact(c.reports, "reports")
        findings += more
        lineage = {
            "model": c.model or c.name,
            "code_commit": c.code_commit,
            "feature_set": c.feature_set,
            "feature_set_fingerprint": c.feature_set_fingerprint,
            "feature_sets": list(c.feature_sets),
            "feature_names": list(c.feature_names),
            "training_set_fingerprints": dict(sorted(c.training_set_fingerprints.items())),
            "environment_digest": c.environment_digest,
            "holdback": c.holdback,
            "ranges": c.ranges,
        }
        lineage, more = md.redact(lineage, "lineage")
        findings += more
        redactions = sorted({str(f) for f in findings})
        if redactions:
            log.warning("registry: redacted/dropped before writing: %s", "; ".join(redactions))
        tags = {
            "code_commit": c.code_commit,
            "feature_set": c.feature_set,
            "feature_set_fingerprint": c.feature_set_fingerprint,
            "environment_digest": c.environment_digest,
            "holdback_key": c.holdback.get("key", ""),
            "training_sets_digest": hashlib.sha256(md.dumps(lineage["training_set_fingerprints"]).encode()).hexdigest(),
            "ranges": md.dumps(c.ranges)[:4000],
            "lockstep.redactions": md.dumps(redactions)[:4000],
            "flavor": c.flavor,
        }
        if c.baseline:
            tags["lockstep.baseline"] = c.baseline
        client = self.client
        exp_id = self._experiment(c.name)
        run = client.create_run(exp_id, run_name=f"{c.name}-{time.strftime('%Y%m%dT%H%M%S')}", tags=tags)
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        client.log_batch(
            run_id,
            params=[Param(k, (v if isinstance(v, str) else md.dumps(v))[:6000]) for k, v in sorted(params.items())],
            metrics=[Metric(k, v, now, 0) for k, v in sorted(metrics_kept.items())],
        )
        with tempfile.TemporaryDirectory(prefix="lockstep-model-") as tmp:
            (Path(tmp) / FLAVORS[c.flavor]).write_text(c.model_text)
            client.log_artifact(run_id, str(Path(tmp) / FLAVORS[c.flavor]), "model")
            for name, payload in (
                ("lineage.json", lineage),
                ("reports.json", reports),
                ("environment.json", c.environment),
            ):
                (Path(tmp) / name).write_text(json.dumps(payload, indent=1, sort_keys=True, default=str))
                client.log_artifact(run_id, str(Path(tmp) / name), "meta")
        client.set_terminated(run_id)
        if not self._has_model(c.name):
            client.create_registered_model(c.name, tags={"feature_set": c.feature_set})
        mv = client.create_model_version(c.name, f"{run.info.artifact_uri}/model", run_id=run_id, tags=tags)
        if alias:
            client.set_registered_model_alias(c.name, alias, mv.version)
        return self.get(c.name, int(mv.version))

    def _experiment(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = f"{self.artifact_root.rstrip('/')}/{name}" if self.artifact_root else None
        return self.client.create_experiment(name, artifact_location=location)

    def _has_model(self, name: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
            return True
        except MlflowException:
            return False

    # ---- reading --------------------------------------------------------------------------------
    def versions(self, name: str) -> list[ModelInfo]:
        """Every version of ``name``, oldest first."""
        if not self._has_model(name):
            raise RegistryError(f"no registered model {name!r} at {self.uri}")
        mvs = self.client.search_model_versions(f"name = '{name}'")
        aliases = self._aliases(name)
        return sorted((self._info(mv, aliases) for mv in mvs), key=lambda m: m.version)

    def get(self, name: str, ref: int | str) -> ModelInfo:
        """A version by number or alias."""
        from mlflow.exceptions import MlflowException

        try:
            if isinstance(ref, str) and not ref.isdigit():
                mv = self.client.get_model_version_by_alias(name, ref)
            else:
                mv = self.client.get_model_version(name, str(ref))
        except MlflowException as exc:
            raise RegistryError(f"model {name!r} has no version or alias {ref!r}") from exc
        return self._info(mv, self._aliases(name))

    def alias(self, name: str, alias: str) -> ModelInfo | None:
        try:
            return self.get(name, alias)
        except RegistryError:
            return None

    def set_canary_share(self, name: str, share: float) -> ModelInfo:
        """Set the canary stage (``CANARY_TAG``) of the challenger: the share of entities it serves
        (0: shadow only). ``RegistryError`` without a challenger or outside 0..1."""
        share = float(share)
        if not 0.0 <= share <= 1.0:
            raise RegistryError(f"canary share must be within 0..1, got {share}")
        challenger = self.alias(name, CHALLENGER)
        if challenger is None:
            raise RegistryError(f"model {name!r} has no challenger: register one before a canary")
        breach = challenger.tags.get(CANARY_BREACH_TAG)
        if breach and share > 0:
            raise RegistryError(
                f"challenger v{challenger.version} of {name!r} was stopped by its canary guards ({breach}); "
                "clear the record first (lockstep canary --reset-breach)"
            )
        self.client.set_model_version_tag(name, str(challenger.version), CANARY_TAG, repr(share))
        self.client.set_model_version_tag(name, str(challenger.version), CANARY_STAGE_AT_TAG, utc_now())
        return self.get(name, challenger.version)

    def record_canary_judged(self, name: str, version: str | int, evidence: dict) -> None:
        """The guards judged ``version``'s canary arm and found no breach (``CANARY_JUDGED_TAG``)."""
        self.client.set_model_version_tag(name, str(version), CANARY_JUDGED_TAG, json.dumps(evidence, sort_keys=True))

    def record_canary_breach(self, name: str, version: str | int, evidence: dict) -> None:
        """Stop ``version``'s canary for every service: the evidence (``CANARY_BREACH_TAG``) and share 0."""
        self.client.set_model_version_tag(name, str(version), CANARY_BREACH_TAG, json.dumps(evidence, sort_keys=True))
        self.client.set_model_version_tag(name, str(version), CANARY_TAG, repr(0.0))
        self.client.set_model_version_tag(name, str(version), CANARY_STAGE_AT_TAG, utc_now())

    def reset_canary_breach(self, name: str) -> ModelInfo:
        """Clear the challenger's breach record (its share stays 0 until set again)."""
        challenger = self.alias(name, CHALLENGER)
        if challenger is None:
            raise RegistryError(f"model {name!r} has no challenger")
        if CANARY_BREACH_TAG in challenger.tags:
            self.client.delete_model_version_tag(name, str(challenger.version), CANARY_BREACH_TAG)
        return self.get(name, challenger.version)

    def load(self, name: str, ref: int | str = CHAMPION) -> LoadedModel:
        """The model (LightGBM booster, or the baseline for flavor ``sgd_baseline``) and lineage of a
        version (by number or alias)."""
        info = self.get(name, ref)
        flavor = info.flavor
        if flavor not in FLAVORS:
            raise RegistryError(f"model {name!r} v{info.version} has flavor {flavor!r}, unknown to this code")
        with tempfile.TemporaryDirectory(prefix="lockstep-load-") as tmp:
            text = Path(self.client.download_artifacts(info.run_id, f"model/{FLAVORS[flavor]}", tmp)).read_text()
            lineage = json.loads(
                Path(self.client.download_artifacts(info.run_id, "meta/lineage.json", tmp)).read_text()
            )
        booster, model = flavors.load(flavor, text)
        return LoadedModel(info, booster, lineage, model)

    def _aliases(self, name: str) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for alias, version in (self.client.get_registered_model(name).aliases or {}).items():
            out.setdefault(int(version), []).append(alias)
        return out

    def _info(self, mv, aliases: dict[int, list[str]]) -> ModelInfo:
        run = self.client.get_run(mv.run_id)
        return ModelInfo(
            mv.name,
            int(mv.version),
            sorted(aliases.get(int(mv.version), [])),
            dict(mv.tags or {}),
            dict(run.data.metrics),
            mv.run_id,
            mv.source,
        )

    # ---- champion / challenger ------------------------------------------------------------------
    def record_holdback_eval(self, name: str, version: int, key: str, metrics: dict) -> None:
        """Record ``version``'s metrics on holdback ``key`` (used to compare with a challenger)."""
        good, _ = md.finite_metrics({k: v for k, v in metrics.items() if k in _HIGHER_IS_BETTER or k == "rows"})
        self.client.set_model_version_tag(name, str(version), _EVAL_TAG + key[:32], json.dumps(good))

    def promote(self, name: str, metric: str = "auc", min_delta: float = 0.0) -> ModelInfo:
        """Make the challenger the champion if it beats the champion on the same holdback range."""
        if metric not in _HIGHER_IS_BETTER:
            raise ValueError(f"metric must be one of {sorted(_HIGHER_IS_BETTER)}")
        challenger = self.alias(name, CHALLENGER)
        if challenger is None:
            raise PromotionRefused(f"model {name!r} has no challenger to promote")
        check_floor(challenger)
        champion = self.alias(name, CHAMPION)
        if champion is not None:
            key = challenger.holdback_key
            new, old = challenger.holdback_score(key, metric), champion.holdback_score(key, metric)
            if new is None:
                raise PromotionRefused(f"challenger v{challenger.version} has no holdback_{metric}")
            if old is None:
                raise PromotionRefused(
                    f"champion v{champion.version} has no {metric} on the challenger's holdback range "
                    f"{challenger.tags.get('ranges', '')} (key {key[:12]}); it cannot be compared — score the "
                    "champion on that range first (`lockstep train` does when the champion's data precede it)"
                )
            better = new > old + min_delta if _HIGHER_IS_BETTER[metric] else new < old - min_delta
            if not better:
                raise PromotionRefused(
                    f"challenger v{challenger.version} does not beat champion v{champion.version} on the same "
                    f"holdback (key {key[:12]}): {metric} {new:.5f} vs {old:.5f} (min_delta {min_delta})"
                )
            self._push_history(name, champion.version)
        self.client.set_registered_model_alias(name, CHAMPION, str(challenger.version))
        self.client.delete_registered_model_alias(name, CHALLENGER)
        return self.get(name, challenger.version)

    def adopt(self, name: str, source_name: str, version: int, alias: str | None = CHAMPION) -> ModelInfo:
        """Register ``source_name`` v``version`` as a new version of ``name``: the same run, artifacts,
        lineage and metrics (tag ``lockstep.adopted_from`` says where from), with ``alias``."""
        src = self.get(source_name, version)
        if not self._has_model(name):
            self.client.create_registered_model(name, tags={"feature_set": src.tags.get("feature_set", "")})
        tags = {**src.tags, "lockstep.adopted_from": f"{source_name} v{src.version}"}
        mv = self.client.create_model_version(name, src.source, run_id=src.run_id, tags=tags)
        if alias:
            self.client.set_registered_model_alias(name, alias, mv.version)
        return self.get(name, int(mv.version))

    def baseline_as_first_champion(self, name: str) -> ModelInfo | None:
        """With NO champion yet and a challenger refused by the floor, the baseline it lost to is the
        better model: adopt it as ``name``'s first champion (so scoring and serving have a model).
        Returns None when there is a champion, no challenger, or the challenger was not below the floor.
        """
        if self.alias(name, CHAMPION) is not None:
            return None
        challenger = self.alias(name, CHALLENGER)
        if challenger is None or challenger.metrics.get(BASELINE_LIFT, 1.0) > 0:
            return None
        ref = challenger.tags.get("lockstep.baseline", "")
        base_name, _, version = ref.rpartition(" v")
        if not base_name or not version.isdigit():
            return None
        return self.adopt(name, base_name, int(version))

    def rollback(self, name: str) -> ModelInfo:
        """Restore the previous champion; the current one keeps no alias."""
        history = self._history(name)
        current = self.alias(name, CHAMPION)
        existing = {m.version for m in self.versions(name)}
        while history and history[-1] not in existing:
            history.pop()
        if not history:
            raise RegistryError(f"model {name!r} has no previous champion to roll back to")
        target = history.pop()
        self.client.set_registered_model_alias(name, CHAMPION, str(target))
        self.client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
        if current is not None:
            self.client.set_model_version_tag(name, str(current.version), "lockstep.rolled_back_from", "true")
        return self.get(name, target)

    def _history(self, name: str) -> list[int]:
        tags = self.client.get_registered_model(name).tags or {}
        return [int(v) for v in json.loads(tags.get(HISTORY_TAG, "[]"))]

    def _push_history(self, name: str, version: int) -> None:
        history = (self._history(name) + [int(version)])[-50:]
        self.client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))

    # ---- retention ------------------------------------------------------------------------------
    def prune(
        self,
        name: str,
        *,
        references: Iterable[tuple[str, int]],
        keep_top_k: int = 3,
        metric: str = "auc",
        dry_run: bool = False,
    ) -> dict:
        """Delete versions that are none of: champion, challenger, rollback target, top-k by
        holdback ``metric``, referenced by a prediction table (``references``: (name, version)).

        Returns ``{"kept": {version: [reasons]}, "deleted": [versions]}``.
        """
        if keep_top_k < 0:
            raise ValueError("keep_top_k must be >= 0")
        versions = self.versions(name)
        keep: dict[int, list[str]] = {}
        for m in versions:
            for a in m.aliases:
                keep.setdefault(m.version, []).append(a)
        history = self._history(name)
        if history:
            keep.setdefault(history[-1], []).append("rollback-target")
        sign = 1 if _HIGHER_IS_BETTER.get(metric, True) else -1
        scored = [m for m in versions if f"holdback_{metric}" in m.metrics]
        scored.sort(key=lambda m: (-sign * m.metrics[f"holdback_{metric}"], -m.version))
        for m in scored[:keep_top_k]:
            keep.setdefault(m.version, []).append(f"top-{keep_top_k}")
        for ref_name, ref_version in references:
            if ref_name == name:
                keep.setdefault(int(ref_version), []).append("referenced-by-predictions")
        deleted = []
        for m in versions:
            if m.version in keep:
                continue
            deleted.append(m.version)
            if not dry_run:
                self._delete(m)
        return {"kept": {v: sorted(set(r)) for v, r in sorted(keep.items())}, "deleted": deleted}

    def _delete(self, m: ModelInfo) -> None:
        run = self.client.get_run(m.run_id)
        self.client.delete_model_version(m.name, str(m.version))
        if self.client.search_model_versions(f"run_id = '{m.run_id}'"):
            return  # another version shares the run (``adopt``): its artifacts stay
        uri = run.info.artifact_uri
        parsed = urlparse(uri)
        if parsed.scheme in ("", "file"):
            shutil.rmtree(unquote(parsed.path), ignore_errors=True)
        else:
            from mlflow.store.artifact.artifact_repository_registry import (
                get_artifact_repository,
            )

            get_artifact_repository(uri).delete_artifacts()
        self.client.delete_run(m.run_id)
