"""The incremental linear baseline: out-of-core standardisation + SGD logistic regression on Dask.

The floor every LightGBM candidate must beat on the out-of-time validation range.

Pipeline (nothing is ever collected into one in-memory matrix):

* **Read**: the train range's training-set Parquet files as a Dask DataFrame, one partition per
  Parquet row group (``split_row_groups=True``), so a partition is bounded by the writer's row
  group size, not by the file. Features are cast to float64 (the package's dtype contract:
  nulls -> NaN).
* **Standardise**: ``dask_ml.preprocessing.StandardScaler().fit(frame)`` on the Dask frame. It
  reduces blockwise with ``nanmean``/``nanvar``, so the mean and variance are those of the
  non-null values of each feature over every training row. A constant feature gets scale 1
  (dask-ml's rule); a feature with no non-null value at all gets mean 0 / scale 1.
* **Impute (declared rule)**: after standardisation a null becomes 0.0 — i.e. the out-of-core
  training mean of that feature — and every feature that had at least one null in the
  training range gets a 0/1 missing indicator column (unscaled), appended after the
  features in feature order. The null counts come from one more out-of-core pass. Indicators
  are decided at training time and persisted: a feature with no training null gets no
  indicator, and its nulls at scoring time are still imputed with the mean.
* **Fit**: ``dask_ml.wrappers.Incremental(SGDClassifier(loss="log_loss", ...))``;
  ``Incremental.partial_fit`` calls ``SGDClassifier.partial_fit`` on the blocks one after the
  other (one pass = one epoch); ``epochs`` passes, each in a different block order drawn from
  one ``RandomState(seed)`` (so the run is deterministic for a seed). The block chain runs on
  the cluster; a worker holds one block and the (tiny) model at a time.
* **Persist**: :class:`BaselineModel` — the fitted scaler's ``mean_``/``var_``/``scale_``, the
  indicator list, ``coef_``/``intercept_`` — as JSON (no pickle). Python's ``json`` writes
  floats as their shortest round-trip ``repr``, so a loaded model holds the exact float64
  values. The scaler is rebuilt from them (:meth:`BaselineModel.scaler`) and the same
  :meth:`BaselineModel.design` code standardises, imputes and adds the indicators at
  training, validation and scoring time.
* **Predict**: ``expit(intercept + sum_j coef_j * x_j)`` accumulated column by column in a
  fixed order with elementwise NumPy operations — no BLAS dot product, whose summation order
  can depend on the batch size, memory layout and thread count — so a row's score does not
  depend on which batch, block or process it was scored in (bit-identical on one machine).

dask-ml 2025.1.0 with dask 2026.8 / scikit-learn 1.9 / pandas 3.1 (checked): ``Incremental``
and ``StandardScaler`` work unchanged. Two quirks are handled here rather than patched:
``StandardScaler.fit`` on a frame with unknown partition lengths leaves ``n_samples_seen_ =
nan`` (we record the row count from our own pass), and its ``transform`` of a NumPy array is in
place (``X -= mean_``), so :meth:`BaselineModel.design` always hands it a copy. dask's Parquet
reader emits pandas ``Pandas4Warning`` (``reset_index(inplace=True)``) — harmless, from dask.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from jobs.models.flavors import SGD_BASELINE as FLAVOR
from jobs.models.flavors import BaselineModel

log = logging.getLogger(__name__)

SUFFIX = "_baseline"
DEFAULT_EPOCHS = 5
DEFAULT_SEED = 0
#: SGDClassifier settings (loss is fixed). ``average`` (ASGD) makes the last epochs' noise matter
#: less. alpha 1e-3 (10x scikit-learn's default): on the CDNOW test ranges the validation AUC at
#: 1/5/20 epochs was 0.622/0.639/0.661 with 1e-4, 0.661/0.677/0.675 with 1e-3, 0.684/0.685/0.669
#: with 1e-2 (``optimal`` steps are 1/(alpha t): a small alpha takes large, noisy steps).
DEFAULT_SGD: dict = {"alpha": 1e-3, "penalty": "l2", "average": True, "learning_rate": "optimal", "tol": None}
_SGD_KEYS = frozenset(
    {
        "alpha",
        "penalty",
        "l1_ratio",
        "average",
        "learning_rate",
        "eta0",
        "power_t",
        "fit_intercept",
        "class_weight",
        "tol",
    }
)


def baseline_name(model_name: str) -> str:
    """The registry name of ``model_name``'s baseline."""
    return f"{model_name}{SUFFIX}"


# ---- Dask: reading, fitting, scoring ------------------------------------------------------------
def read_frame(
    files: Sequence[str],
    features: Sequence[str],
    label: str | None = None,
    *,
    storage_options: dict | None = None,
    split_row_groups=True,
):
    """``files`` as a Dask DataFrame of float64 ``features`` (+ ``label``), one partition per row group."""
    import dask.dataframe as dd

    if not files:
        raise ValueError("no training-set files to read")
    columns = [*features, *([label] if label else [])]
    ddf = dd.read_parquet(
        list(files), columns=columns, split_row_groups=split_row_groups, storage_options=storage_options or None
    )
    return ddf.astype({c: "float64" for c in columns})


def _design_block(block: np.ndarray, model: BaselineModel) -> np.ndarray:
    return model.design(block)


def _predict_block(block: np.ndarray, model: BaselineModel) -> np.ndarray:
    return model.predict(block)


@dataclass
class FitResult:
    model: BaselineModel
    estimator: object  # the fitted dask_ml.wrappers.Incremental
    scaler: object  # the dask_ml StandardScaler fitted on the Dask frame
    partitions: int
    rows: int
    seconds: dict[str, float] = field(default_factory=dict)
    coef_history: list[list[float]] = field(default_factory=list)  # after each epoch


def fit_baseline(
    ddf,
    features: Sequence[str],
    label: str,
    *,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = DEFAULT_SEED,
    sgd: dict | None = None,
) -> FitResult:
    """Scaler, null counts and ``epochs`` SGD passes over ``ddf``, all out of core (current scheduler)."""
    import dask
    from dask_ml.preprocessing import StandardScaler
    from dask_ml.wrappers import Incremental
    from sklearn.linear_model import SGDClassifier

    if epochs < 1:
        raise ValueError("epochs must be >= 1")
    features = list(features)
    sgd = {**DEFAULT_SGD, **(sgd or {})}
    bad = sorted(set(sgd) - _SGD_KEYS)
    if bad:
        raise ValueError(f"unsupported SGD settings {bad}; allowed: {sorted(_SGD_KEYS)}")
    seconds: dict[str, float] = {}

    t = time.perf_counter()
    fitted = StandardScaler().fit(ddf[features])  # on the Dask frame: blockwise nanmean / nanvar
    seconds["scaler"] = time.perf_counter() - t
    t = time.perf_counter()
    nulls, rows, positives = dask.compute(ddf[features].isna().sum(), ddf[label].size, ddf[label].sum())
    seconds["null_counts"] = time.perf_counter() - t
    rows = int(rows)
    if rows == 0:
        raise ValueError("the training range has no rows")
    if positives in (0, rows):
        raise ValueError(f"all {rows} training labels are {int(positives > 0)}: nothing to learn")

    mean, var, scale = (np.asarray(getattr(fitted, a), dtype=np.float64).copy() for a in ("mean_", "var_", "scale_"))
    empty = ~np.isfinite(mean)  # a feature without one non-null value
    if empty.any():
        log.warning(
            "baseline: features without a non-null training value (mean 0, scale 1): %s",
            [f for f, e in zip(features, empty) if e],
        )
        mean[empty], var[empty], scale[empty] = 0.0, 0.0, 1.0
        fitted.mean_, fitted.var_, fitted.scale_ = mean.copy(), var.copy(), scale.copy()
    fitted.n_samples_seen_ = rows  # dask-ml leaves nan when the partition lengths are unknown
    indicators = [f for f in features if int(nulls[f]) > 0]
    n_design = len(features) + len(indicators)
    prep = BaselineModel(features, mean, var, scale, indicators, np.zeros(n_design), 0.0, rows)

    arr = ddf[[*features, label]].to_dask_array()
    x = arr[:, : len(features)].map_blocks(_design_block, prep, dtype=np.float64, chunks=(arr.chunks[0], (n_design,)))
    y = arr[:, len(features)]
    est = Incremental(
        SGDClassifier(loss="log_loss", random_state=seed, shuffle=True, **sgd),
        shuffle_blocks=True,
        random_state=np.random.RandomState(seed),
    )
    history = []
    t = time.perf_counter()
    for _ in range(epochs):
        est.partial_fit(x, y, classes=np.array([0.0, 1.0]))  # one pass over every block
        history.append([float(v) for v in np.r_[est.coef_.ravel(), est.intercept_]])
    seconds["sgd"] = time.perf_counter() - t
    model = BaselineModel(
        features,
        mean,
        var,
        scale,
        indicators,
        est.coef_.ravel(),
        float(est.intercept_[0]),
        rows,
        {
            "epochs": epochs,
            "seed": seed,
            "sgd": {"loss": "log_loss", **sgd},
            "partitions": int(ddf.npartitions),
            "rows": rows,
        },
    )
    return FitResult(model, est, fitted, int(ddf.npartitions), rows, seconds, history)


def predict_frame(model: BaselineModel, ddf, label: str | None = None):
    """Scores of every row of ``ddf`` (row order of its partitions), computed on the cluster:
    ``(labels, scores)`` when ``label`` is given, else the scores."""
    import dask

    cols = [*model.features, *([label] if label else [])]
    arr = ddf[cols].to_dask_array()
    p = arr[:, : len(model.features)].map_blocks(_predict_block, model, dtype=np.float64, drop_axis=1)
    if not label:
        return p.compute()
    y, p = dask.compute(arr[:, len(model.features)], p)
    return np.asarray(y), np.asarray(p)


def score_files(
    model: BaselineModel,
    files: Sequence[str],
    label: str,
    *,
    batch_rows: int = 100_000,
    storage_options: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores) of every row of ``files`` in bounded local batches — the scoring-time path
    (no Dask), the same reader as LightGBM's ``score_files``."""
    from jobs.training.sequence import iter_matrices

    ys, ps = [], []
    for x, tbl in iter_matrices(
        files, model.features, batch_rows=batch_rows, extra=[label], storage_options=storage_options
    ):
        ps.append(model.predict(x))
        ys.append(tbl.column(label).to_numpy().astype(np.float64))
    if not ps:
        raise ValueError("no rows to score")
    return np.concatenate(ys), np.concatenate(ps)


# ---- the job ------------------------------------------------------------------------------------
@dataclass
class BaselineOutcome:
    candidate: object  # jobs.models.registry.Candidate
    model: BaselineModel
    fit: FitResult
    registered: object | None  # jobs.models.registry.ModelInfo
    #: training-time predictions, ``{"valid": (labels, scores), "holdback": (labels, scores)}``
    predictions: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def train_baseline(
    cfg,
    spec,
    registry=None,
    *,
    client=None,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = DEFAULT_SEED,
    sgd: dict | None = None,
    register: bool = True,
    split_row_groups=True,
) -> BaselineOutcome:
    """Fit the baseline on ``spec.train`` out of core, score ``spec.valid`` and ``spec.holdback``,
    and register it (lineage gate) as ``<spec.model_name>_baseline``, flavor ``sgd_baseline``."""
    import dask

    from jobs.models.registry import Candidate, Registry
    from jobs.training import metrics
    from jobs.training.cluster import dask_client
    from jobs.training.labels import LABEL
    from jobs.training.lineage import label_params, lineage_fields
    from jobs.training.spec import resolve_spec
    from jobs.training.training_set import ranges_files

    declared, spec = resolve_spec(cfg, spec)
    lake = cfg.lake()
    table, parts, files = ranges_files(lake, declared, spec)
    features = list(declared.feature_names)
    opts = cfg.storage_options or None

    with dask_client(cfg, client) as c, dask.config.set(scheduler=c):
        frames = {
            role: read_frame(files[role], features, LABEL, storage_options=opts, split_row_groups=split_row_groups)
            for role in files
        }
        fit = fit_baseline(frames["train"], features, LABEL, epochs=epochs, seed=seed, sgd=sgd)
        t = time.perf_counter()
        predictions = {role: predict_frame(fit.model, frames[role], LABEL) for role in ("valid", "holdback")}
        fit.seconds["score"] = time.perf_counter() - t
    model = fit.model
    valid, hold = (metrics.summary(*predictions[r]) for r in ("valid", "holdback"))
    flat = {"train_rows": fit.rows, "valid_rows": len(predictions["valid"][0])}
    for prefix, m in (("valid", valid), ("holdback", hold)):
        flat.update({f"{prefix}_{k}": v for k, v in m.items() if k != "calibration"})

    sgd_used = model.info["sgd"]
    candidate = Candidate(
        name=baseline_name(spec.model_name),
        model_text=model.to_json(),
        flavor=FLAVOR,
        **lineage_fields(declared, table, parts, spec),
        params={
            "model_flavor": FLAVOR,
            "epochs": epochs,
            "seed": seed,
            "partitions": fit.partitions,
            **{f"sgd_{k}": v for k, v in sgd_used.items()},
            "imputation": "standardise; null -> training mean; missing indicators",
            "missing_indicators": model.indicators,
            **label_params(parts, spec),
        },
        metrics=flat,
        reports={
            "calibration": {"valid": valid["calibration"], "holdback": hold["calibration"]},
            "coefficients": dict(
                zip([*features, *(f"{f}__missing" for f in model.indicators)], map(float, model.coef))
            ),
            "intercept": model.intercept,
            "scaler": {
                "mean": dict(zip(features, map(float, model.mean))),
                "scale": dict(zip(features, map(float, model.scale))),
            },
            "epoch_coefficients": fit.coef_history,
            "seconds": fit.seconds,
        },
    )
    outcome = BaselineOutcome(candidate, model, fit, None, predictions)
    if register:
        registry = registry or Registry.from_config(cfg)
        outcome.registered = registry.register(candidate)
    return outcome


def find_baseline(registry, model_name: str, spec, feature_set_fingerprint: str | None = None):
    """The newest registered baseline of ``model_name`` trained and validated on exactly
    ``spec``'s train and valid ranges and over the same feature-set versions (the model's
    ``feature_set_fingerprint``, when given), so it saw the same partitions; None when there is none."""
    from jobs.models.registry import RegistryError

    try:
        versions = registry.versions(baseline_name(model_name))
    except RegistryError:
        return None
    for info in reversed(versions):
        with contextlib.suppress(ValueError):
            ranges = json.loads(info.tags.get("ranges") or "{}")
            if (
                ranges.get("train") == list(spec.train)
                and ranges.get("valid") == list(spec.valid)
                and info.tags.get("flavor") == FLAVOR
                and feature_set_fingerprint in (None, info.tags.get("feature_set_fingerprint"))
            ):
                return info
    return None


__all__ = [
    "FLAVOR",
    "BaselineModel",
    "BaselineOutcome",
    "FitResult",
    "baseline_name",
    "find_baseline",
    "fit_baseline",
    "predict_frame",
    "read_frame",
    "score_files",
    "train_baseline",
]
