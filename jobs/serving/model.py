"""What the service and the skew job need from a model, and where models come from.

:class:`Model` is the minimal protocol (``predict(features_frame) -> scores``, ``name``,
``version``, ``feature_set_fingerprint``, ``feature_names``). :class:`ModelSource` gives the
champion and loads a model by (name, version) — for re-scoring logged rows with the exact
version that served them. :class:`RegistrySource` adapts ``jobs.models.registry`` when it is
installed (MLflow-backed, LightGBM boosters); :class:`StaticSource` holds models in memory (tests, benchmarks).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd


@runtime_checkable
class Model(Protocol):
    name: str
    version: str
    feature_set_fingerprint: str
    feature_names: tuple[str, ...]

    def predict(self, features: pd.DataFrame) -> np.ndarray: ...


class ModelSource(Protocol):
    def champion(self) -> Model: ...

    def champion_version(self) -> str | None:
        """The version the champion alias names now (None: no champion), without loading it: what
        the service polls to follow promotions and rollbacks (``jobs.serving.swap``)."""
        ...

    def challenger_version(self) -> str | None:
        """The version the challenger alias names now (None: none): followed for shadow and canary
        serving (``jobs.serving.shadow``)."""
        ...

    def load(self, name: str, version: str) -> Model: ...

    def training_features(self, model: Model) -> pd.DataFrame | None:
        """The features the model was trained on (drift reference), or None if unknown."""
        ...

    def training_window(self, model: Model) -> tuple[str, str] | None:
        """``(first, last)`` day of the data the model was trained on (its train range), or None if unknown."""
        ...


def scores_of(model: Model, names: list[str], rows: list[dict]) -> list[float]:
    """The scores of many feature vectors in ONE model call (a float64 matrix, nulls as NaN): the
    service's batch and canary calls, and both shadow scorers' (``jobs.serving.shadow``)."""
    x = np.array([[np.nan if v[n] is None else v[n] for n in names] for v in rows], dtype=np.float64)
    x = x.reshape(len(rows), len(names))
    matrix = getattr(model, "predict_matrix", None)
    scores = matrix(x) if matrix is not None else model.predict(pd.DataFrame(x, columns=names))
    return [float(v) for v in np.asarray(scores)]


class StaticSource:
    """Models held in memory; the first one given is the champion unless named; a challenger only
    when named (``challenger=(name, version)``)."""

    def __init__(
        self,
        *models: Model,
        champion: tuple[str, str] | None = None,
        training: dict[tuple[str, str], pd.DataFrame] | None = None,
        windows: dict[tuple[str, str], tuple[str, str]] | None = None,
        challenger: tuple[str, str] | None = None,
    ):
        self._models = {(m.name, str(m.version)): m for m in models}
        self._champion = champion or ((models[0].name, str(models[0].version)) if models else None)
        self._challenger = challenger
        self.canary_share = 0.0  # the challenger's canary stage (tests set it)
        self._training = dict(training or {})
        self._windows = dict(windows or {})

    def champion(self) -> Model:
        if self._champion is None:
            raise LookupError("no champion model")
        return self._models[self._champion]

    def champion_version(self) -> str | None:
        return None if self._champion is None else self._champion[1]

    def challenger_version(self) -> str | None:
        return self.challenger_stage()[0]

    def challenger_stage(self) -> tuple[str | None, float]:
        """(challenger version, canary share): ``canary_share`` set on the source (0 by default)."""
        return (None, 0.0) if self._challenger is None else (str(self._challenger[1]), self.canary_share)

    def record_canary_breach(self, version: str, evidence: dict) -> None:
        """In memory only (no registry): the share drops to 0 and the evidence is kept."""
        self.canary_share, self.breach = 0.0, (str(version), evidence)

    def load(self, name: str, version: str) -> Model:
        try:
            return self._models[(name, str(version))]
        except KeyError:
            raise LookupError(f"no model {name!r} version {version!r}") from None

    def training_features(self, model: Model) -> pd.DataFrame | None:
        return self._training.get((model.name, str(model.version)))

    def training_window(self, model: Model) -> tuple[str, str] | None:
        return self._windows.get((model.name, str(model.version)))


class LinearModel:
    """A logistic model over the features (nulls as 0): a deterministic stand-in for tests and benches."""

    def __init__(
        self, name: str, version: str, feature_set_fingerprint: str, feature_names, weights=None, bias: float = 0.0
    ):
        self.name, self.version = name, str(version)
        self.feature_set_fingerprint = feature_set_fingerprint
        self.feature_names = tuple(feature_names)
        w = np.asarray(weights if weights is not None else np.linspace(-0.05, 0.05, len(self.feature_names)))
        self.weights, self.bias = w.astype(np.float64), float(bias)

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        return self.predict_matrix(features[list(self.feature_names)].to_numpy(dtype=np.float64, na_value=0.0))

    def predict_matrix(self, x: np.ndarray) -> np.ndarray:
        """Scores of a float64 matrix whose columns are ``feature_names`` (NaN = null)."""
        x = np.nan_to_num(np.asarray(x, dtype=np.float64))
        z = np.full(len(x), self.bias)
        for j, w in enumerate(self.weights):  # fixed order: a row's score does not depend on the batch
            z = z + x[:, j] * w
        return 1.0 / (1.0 + np.exp(-z))


class BoosterModel:
    """A registry version (``jobs.models.registry.LoadedModel``: LightGBM booster or linear baseline + lineage)
    as a serving Model."""

    def __init__(self, loaded):
        self.loaded = loaded
        self.name = loaded.info.name
        self.version = str(loaded.info.version)
        self.feature_set_fingerprint = loaded.lineage.get("feature_set_fingerprint", "")
        self.feature_names = tuple(loaded.lineage.get("feature_names") or ())

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        # The scoring job's dtype contract: one float64 matrix, nulls as NaN.
        return self.predict_matrix(features[list(self.feature_names)].to_numpy(dtype=np.float64, na_value=np.nan))

    def predict_matrix(self, x: np.ndarray) -> np.ndarray:
        """Scores of a float64 matrix whose columns are ``feature_names`` (NaN = null).

        LightGBM on one thread: for the service's one-row calls OpenMP's thread start costs more
        than the trees (and a second thread would compete with the event loop for the 2 cores).
        Other flavors (the dask-ml linear baseline) predict through the registry's ``LoadedModel``."""
        if self.loaded.booster is None:
            return self.loaded.predict(x)
        return self.loaded.booster.predict(x, num_threads=1)


class RegistrySource:
    """Adapter over ``jobs.models.registry.Registry`` (MLflow): champion alias, load by name/version.
    ``model_name`` is the registered name (default: the repo's default model's).

    Drift reference: the feature columns of the training-set partitions in the champion's lineage
    (``training_set_fingerprints``, restricted to the ``train`` range when recorded), at most
    ``max_training_rows`` rows.
    """

    def __init__(self, cfg, model_name: str | None = None, max_training_rows: int = 500_000):
        from jobs.models.registry import (
            Registry,  # ImportError when the registry is not installed
        )

        self.cfg = cfg
        self.registry = Registry.from_config(cfg)
        if model_name is None:
            model_name = cfg.repo().default_model().name
        self.model_name, self.max_training_rows = model_name, max_training_rows
        self._cache: dict[tuple[str, str], BoosterModel] = {}

    def champion(self) -> Model:
        from jobs.models.registry import CHAMPION

        m = BoosterModel(self.registry.load(self.model_name, CHAMPION))
        self._cache[(m.name, m.version)] = m
        return m

    def champion_version(self) -> str | None:
        from jobs.models.registry import CHAMPION

        info = self.registry.alias(self.model_name, CHAMPION)  # the alias only: no artifact is read
        return None if info is None else str(info.version)

    def challenger_version(self) -> str | None:
        return self.challenger_stage()[0]

    def challenger_stage(self) -> tuple[str | None, float]:
        """(the version the challenger alias names, its canary share: the version's ``CANARY_TAG``,
        0 when unset) in ONE read of the alias, so a share never belongs to another version."""
        from jobs.models.registry import CANARY_BREACH_TAG, CANARY_TAG, CHALLENGER

        info = self.registry.alias(self.model_name, CHALLENGER)
        if info is None:
            return None, 0.0
        if info.tags.get(CANARY_BREACH_TAG):  # stopped by its guards: no canary until reset
            return str(info.version), 0.0
        return str(info.version), float(info.tags.get(CANARY_TAG) or 0.0)

    def record_canary_breach(self, version: str, evidence: dict) -> None:
        """Persist a guard breach on the challenger version (``Registry.record_canary_breach``)."""
        self.registry.record_canary_breach(self.model_name, version, evidence)

    def record_canary_judged(self, version: str, evidence: dict) -> None:
        """Persist a passing guard verdict on the challenger version (``Registry.record_canary_judged``)."""
        self.registry.record_canary_judged(self.model_name, version, evidence)

    def load(self, name: str, version: str) -> Model:
        key = (name, str(version))
        if key not in self._cache:
            self._cache[key] = BoosterModel(self.registry.load(name, int(version)))
        return self._cache[key]

    def training_window(self, model: Model) -> tuple[str, str] | None:
        """The lineage's ``train`` range of cut-offs."""
        lineage = getattr(model, "loaded", None) and model.loaded.lineage
        train = (lineage or {}).get("ranges", {}).get("train")
        return (str(train[0]), str(train[1])) if train else None

    def training_features(self, model: Model) -> pd.DataFrame | None:
        lineage = getattr(model, "loaded", None) and model.loaded.lineage
        if not lineage:
            return None
        parts = lineage.get("training_set_fingerprints") or {}
        train = (lineage.get("ranges") or {}).get("train")
        lake = self.cfg.lake()
        frames, rows = [], 0
        for key in sorted(parts):
            table, _, ds = key.rpartition("/ds=")
            if train and not (str(train[0]) <= ds <= str(train[1])):
                continue
            frame = lake.table(table).read(ds, columns=list(model.feature_names))
            frames.append(frame)
            rows += len(frame)
            if rows >= self.max_training_rows:
                break
        return pd.concat(frames, ignore_index=True) if frames else None
