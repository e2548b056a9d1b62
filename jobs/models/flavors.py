"""The model flavors the registry stores and loads, and the models they hold.

* ``lightgbm``: a LightGBM model string (artifact ``model/model.txt``), loaded as a ``lightgbm.Booster``;
* ``sgd_baseline``: :class:`BaselineModel` as JSON (artifact ``model/baseline.json``): the persisted
  scaler, imputation rule and logistic-regression weights of the incremental linear baseline that
  ``jobs.training.baseline`` fits. Scoring it needs only NumPy and SciPy (and dask-ml's
  ``StandardScaler`` for the standardisation), not the training stage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

LIGHTGBM = "lightgbm"
SGD_BASELINE = "sgd_baseline"
#: model flavor -> artifact file name under ``model/``
FLAVORS = {LIGHTGBM: "model.txt", SGD_BASELINE: "baseline.json"}
FORMAT = "lockstep.sgd_baseline/1"


def load(flavor: str, text: str) -> tuple[object, object]:
    """``(booster, model)`` of an artifact's text: a ``lightgbm.Booster`` and None for ``lightgbm``,
    None and a :class:`BaselineModel` for ``sgd_baseline``."""
    if flavor == LIGHTGBM:
        import lightgbm as lgb

        return lgb.Booster(model_str=text), None
    if flavor == SGD_BASELINE:
        return None, BaselineModel.from_json(text)
    raise ValueError(f"unknown model flavor {flavor!r}; known: {sorted(FLAVORS)}")


@dataclass
class BaselineModel:
    """Scaler parameters, imputation rule and logistic-regression weights; JSON-serialisable."""

    features: list[str]
    mean: np.ndarray  # StandardScaler.mean_  (nanmean over the training rows)
    var: np.ndarray  # StandardScaler.var_   (nanvar)
    scale: np.ndarray  # StandardScaler.scale_ (sqrt(var), 1 where var == 0)
    indicators: list[str]  # features with a missing-indicator column, in feature order
    coef: np.ndarray  # len(features) + len(indicators)
    intercept: float
    n_samples_seen: int = 0
    info: dict = field(default_factory=dict)  # epochs, seed, SGD settings, partitions (informational)

    def __post_init__(self) -> None:
        self.features = list(self.features)
        self.indicators = list(self.indicators)
        for name in ("mean", "var", "scale", "coef"):
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.float64).reshape(-1))
        self.intercept = float(self.intercept)
        n = len(self.features)
        if not (len(self.mean) == len(self.var) == len(self.scale) == n):
            raise ValueError("scaler parameters must have one value per feature")
        unknown = [f for f in self.indicators if f not in self.features]
        if unknown:
            raise ValueError(f"missing indicators for unknown features {unknown}")
        if len(self.coef) != n + len(self.indicators):
            raise ValueError(f"{len(self.coef)} coefficients for {n} features + {len(self.indicators)} indicators")
        self._ind = np.array([self.features.index(f) for f in self.indicators], dtype=np.intp)

    # -- preprocessing: the persisted scaler, then the declared imputation --
    def scaler(self):
        """The fitted ``dask_ml.preprocessing.StandardScaler``, rebuilt from the persisted values."""
        from dask_ml.preprocessing import StandardScaler

        return scaler_from(self.mean, self.var, self.scale, self.n_samples_seen, StandardScaler)

    def design(self, x) -> np.ndarray:
        """Raw float64 feature rows (``features`` order, NaN = null) -> the SGD design matrix."""
        x = np.array(x, dtype=np.float64, order="C", copy=True)  # the scaler transforms in place
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise ValueError(f"expected a (rows, {len(self.features)}) matrix, got {x.shape}")
        missing = np.isnan(x)
        z = self.scaler().transform(x)
        z[missing] = 0.0  # the training mean, in standardised units
        return np.concatenate([z, missing[:, self._ind].astype(np.float64)], axis=1)

    def decision_function(self, x) -> np.ndarray:
        z = self.design(x)
        out = np.full(len(z), self.intercept, dtype=np.float64)
        for j in range(z.shape[1]):  # fixed summation order: independent of batch and layout
            out += z[:, j] * self.coef[j]
        return out

    def predict(self, x) -> np.ndarray:
        """P(label = 1) per row of ``x`` (a float matrix or a DataFrame with the feature columns)."""
        from scipy.special import expit

        if hasattr(x, "columns"):
            x = x[self.features].to_numpy(dtype=np.float64, na_value=np.nan)
        return expit(self.decision_function(x))

    # -- serialisation --
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "features": self.features,
            "indicators": self.indicators,
            "scaler": {
                "mean": self.mean.tolist(),
                "var": self.var.tolist(),
                "scale": self.scale.tolist(),
                "n_samples_seen": int(self.n_samples_seen),
            },
            "imputation": "standardise, then null -> 0.0 (the training mean); 0/1 indicator per listed feature",
            "coef": self.coef.tolist(),
            "intercept": self.intercept,
            "info": self.info,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict) -> BaselineModel:
        if d.get("format") != FORMAT:
            raise ValueError(f"not a baseline model document (format {d.get('format')!r}, want {FORMAT!r})")
        s = d["scaler"]
        return cls(
            d["features"],
            s["mean"],
            s["var"],
            s["scale"],
            d["indicators"],
            d["coef"],
            d["intercept"],
            int(s.get("n_samples_seen", 0)),
            dict(d.get("info", {})),
        )

    @classmethod
    def from_json(cls, text: str) -> BaselineModel:
        return cls.from_dict(json.loads(text))


def scaler_from(mean, var, scale, n_samples_seen, cls=None):
    """A fitted StandardScaler holding exactly these parameters."""
    if cls is None:
        from dask_ml.preprocessing import StandardScaler as cls
    s = cls()
    s.mean_, s.var_, s.scale_ = (np.asarray(v, dtype=np.float64).copy() for v in (mean, var, scale))
    s.n_samples_seen_ = int(n_samples_seen)
    s.n_features_in_ = len(s.mean_)
    return s
