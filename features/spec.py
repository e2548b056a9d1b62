"""Feature sets declared as data.

A :class:`FeatureSet` names the entity key, the event columns and a tuple of
:class:`Feature` declarations (aggregation x source column x window x default).
It is evaluated by :func:`features.kernel.compute` and nothing else, so the same
declaration yields the same numbers on every engine and on the serving path.

Feature sets are versioned by name (``customer_activity_v1``, then ``_v2``);
never edit a published one in place — its fingerprint changes and every table,
model and serving-log row that carries the old fingerprint is flagged as skew.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass, field

from features.source import DeclarationError, Source

#: Aggregations the kernel implements. ``count`` counts rows (a null source value
#: still counts); the others ignore null source values.
AGGREGATIONS = (
    "count",
    "sum",
    "mean",
    "min",
    "max",
    "distinct_count",
    "days_since_last",
    "days_since_first",
    "ratio",
)
MODES = ("known_at", "as_of")
_INTEGER_AGGS = ("count", "distinct_count")
_NEEDS_COLUMN = ("sum", "mean", "min", "max", "distinct_count")


@dataclass(frozen=True)
class Feature:
    """One aggregate over one window.

    ``window_days`` is the look-back in days (``None`` = all history): an event
    counts for a query at ``t`` when ``t - window <= event_ts < t``.
    ``default`` is the value of an aggregate over no values (DESIGN §1: 0 for
    counts and sums, null otherwise). ``ratio`` divides two other features of the
    same set (``numerator`` / ``denominator``); a zero or null denominator gives
    the default. ``tolerance`` is ``(absolute, relative)`` for skew comparisons
    (exact by default).
    """

    name: str
    agg: str
    column: str | None = None
    window_days: float | None = None
    default: float | None = None
    numerator: str | None = None
    denominator: str | None = None
    tolerance: tuple[float, float] = (0.0, 0.0)
    description: str = ""

    def __post_init__(self) -> None:
        if self.agg not in AGGREGATIONS:
            raise ValueError(f"feature {self.name!r}: unknown aggregation {self.agg!r}; expected one of {AGGREGATIONS}")
        if self.agg in _NEEDS_COLUMN and not self.column:
            raise ValueError(f"feature {self.name!r}: aggregation {self.agg!r} needs a source column")
        if self.agg == "ratio" and not (self.numerator and self.denominator):
            raise ValueError(f"feature {self.name!r}: a ratio needs a numerator and a denominator feature")
        if self.window_days is not None and not self.window_days > 0:
            raise ValueError(f"feature {self.name!r}: window_days must be > 0 or None, got {self.window_days!r}")

    @property
    def is_integer(self) -> bool:
        """Counts are int64 and never null; every other feature is float64."""
        return self.agg in _INTEGER_AGGS

    @property
    def window_us(self) -> int | None:
        if self.window_days is None:
            return None
        return round(self.window_days * 86_400_000_000)


def count(name: str, window_days: float | None, **kw) -> Feature:
    return Feature(name, "count", window_days=window_days, default=kw.pop("default", 0), **kw)


def agg(name: str, how: str, column: str, window_days: float | None, **kw) -> Feature:
    default = kw.pop("default", 0.0 if how == "sum" else (0 if how == "distinct_count" else None))
    return Feature(name, how, column=column, window_days=window_days, default=default, **kw)


def ratio(name: str, numerator: str, denominator: str, **kw) -> Feature:
    return Feature(name, "ratio", numerator=numerator, denominator=denominator, **kw)


@dataclass(frozen=True)
class FeatureSet:
    """A named, versioned collection of features over one event table."""

    name: str
    entity: str = ""
    features: tuple[Feature, ...] = ()
    #: The source the features aggregate (a :class:`features.source.Source`); its key named by
    #: ``key`` (default: its only key) is the set's entity, and its id and time columns are the
    #: set's. Sets without a source (kernel tests) name their columns themselves.
    source: Source | None = None
    key: str | None = None
    timestamp: str = "event_ts"
    ingested_at: str = "ingested_at"
    event_id: str = "event_id"
    #: Mode used to build training sets; serving and daily snapshots are ``known_at``.
    training_mode: str = "known_at"
    description: str = ""
    owner: str = ""
    _fingerprint: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.source is not None:
            self._bind_source()
        if not self.entity:
            raise ValueError(f"feature set {self.name!r}: needs an entity key (or a source= with one)")
        if not self.features:
            raise ValueError(f"feature set {self.name!r}: declares no features")
        names = [f.name for f in self.features]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"feature set {self.name!r}: duplicate feature names {dupes}")
        seen: set[str] = set()
        for f in self.features:
            if f.agg == "ratio":
                missing = [n for n in (f.numerator, f.denominator) if n not in seen]
                if missing:
                    raise ValueError(
                        f"feature set {self.name!r}: ratio {f.name!r} refers to {missing}, "
                        "which must be declared before it"
                    )
            seen.add(f.name)
        reserved = {self.entity, "as_of"}
        clash = reserved & seen
        if clash:
            raise ValueError(f"feature set {self.name!r}: feature names clash with key columns {sorted(clash)}")
        if self.training_mode not in MODES:
            raise ValueError(f"feature set {self.name!r}: training_mode must be one of {MODES}")

    def _bind_source(self) -> None:
        src = self.source
        keys = src.key_names
        key = self.key or (keys[0] if len(keys) == 1 else None)
        if key is None:
            raise DeclarationError(
                "feature set", self.name, "key", f"source {src.name!r} has keys {list(keys)}; name one with key="
            )
        if key not in keys:
            raise DeclarationError(
                "feature set", self.name, "key", f"{key!r} is not a key of source {src.name!r} (keys: {list(keys)})"
            )
        if self.entity and self.entity != key:
            raise DeclarationError(
                "feature set", self.name, "entity", f"{self.entity!r} differs from the source key {key!r}"
            )
        for f in self.features:
            if f.column and f.column not in src.value_names:
                raise DeclarationError(
                    "feature set",
                    self.name,
                    f"features.{f.name}.column",
                    f"unknown column {f.column!r}: source {src.name!r} has {list(src.value_names)}",
                )
            if f.agg in ("sum", "mean", "min", "max") and src.type_of(f.column) not in ("int64", "double"):
                raise DeclarationError(
                    "feature set",
                    self.name,
                    f"features.{f.name}.column",
                    f"{f.agg} needs a numeric column; {f.column!r} is {src.type_of(f.column)}",
                )
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "entity", key)
        object.__setattr__(self, "timestamp", src.event_time)
        object.__setattr__(self, "ingested_at", src.ingested_at)
        object.__setattr__(self, "event_id", src.event_id)

    @property
    def entity_type(self) -> str:
        """Arrow type of the entity key: the source's declaration (int64 without a source)."""
        return self.source.key(self.entity).type if self.source is not None else "int64"

    @property
    def source_columns(self) -> tuple[str, ...]:
        """Event columns the features read, beyond keys and timestamps."""
        cols = []
        for f in self.features:
            if f.column and f.column not in cols:
                cols.append(f.column)
        return tuple(cols)

    @property
    def event_columns(self) -> tuple[str, ...]:
        return (self.event_id, self.entity, self.timestamp, self.ingested_at, *self.source_columns)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def horizon_days(self) -> float | None:
        """How much history a query needs (None: all of it). The online store keeps this much."""
        windows = [f.window_days for f in self.features if f.agg != "ratio"]
        if any(w is None for w in windows):
            return None
        return max(windows) if windows else 0.0

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"feature set {self.name!r} has no feature {name!r}")

    def spec_dict(self) -> dict:
        d = asdict(self)
        d.pop("_fingerprint", None)
        d.pop("key", None)
        if self.source is None:
            d.pop("source", None)  # sets declared before sources keep their fingerprints' shape
        else:
            d["source"] = self.source.spec_dict()
        return d

    @property
    def fingerprint(self) -> str:
        """sha256 of the declared spec and the kernel's source (first 16 hex digits).

        A change to either — a window, a default, one line of the kernel — gives a
        new fingerprint, which every table, model and serving-log row carries.
        """
        if not self._fingerprint:
            kernel_src = kernel_source()
            h = hashlib.sha256()
            h.update(json.dumps(self.spec_dict(), sort_keys=True, default=str).encode())
            h.update(b"\0")
            h.update(kernel_src)
            object.__setattr__(self, "_fingerprint", f"{self.name}:{h.hexdigest()[:16]}")
        return self._fingerprint


def kernel_source() -> bytes:
    """The bytes of ``features/kernel.py`` as this process runs it.

    The file of the imported ``features.kernel`` module when it is loaded, else the one beside
    this module; read through the module's loader, so a package imported from a zip (the one
    the engines ship to their workers) reads the same. A worker that imported the kernel
    from somewhere else before a shipped package arrived reports the file it really runs.
    The module is looked up, not imported: the kernel imports this module.
    """
    kernel = sys.modules.get(f"{__package__}.kernel")
    if kernel is not None and getattr(kernel, "__file__", None):
        return kernel.__loader__.get_data(kernel.__file__)
    return __loader__.get_data(os.path.join(os.path.dirname(__file__), "kernel.py"))


def kernel_fingerprint() -> str:
    """sha256 of :func:`kernel_source` (first 16 hex digits): which kernel a process computes with."""
    return hashlib.sha256(kernel_source()).hexdigest()[:16]
