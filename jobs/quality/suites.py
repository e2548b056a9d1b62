"""The Great Expectations suites of ``expectations/``, bound to a feature set.

Source of truth: the JSON files in ``expectations/`` (one GE 1.x suite per dataset) for every
hand-written expectation, and the feature-set declaration (``features.registry``) for everything
that depends on the features: the schema of feature tables (``features.kernel.output_columns``)
and each feature's range, null and monotonicity checks (``jobs.quality.derive``). Nothing is
generated into the JSON files, so a new feature gets its checks without editing them; the fully
bound suite of a dataset is rendered with every validation's Data Docs (``expectations/<suite>.html``)
and printed by ``lockstep validate DATASET --show-suite``.

Two extensions of GE's JSON, both resolved here:

- ``${entity}``, ``${feature_set}`` in strings, and a ``"${features}"`` list item (the feature
  names, in order), bound from the feature set when the suite is loaded;
- ``{"$PARAMETER": "expr"}`` is GE's own suite parameter (``previous_rows * 0.2``), bound per
  partition by ``jobs.quality.validate`` (see each suite's ``meta.lockstep.parameters``).

Per-expectation ``meta`` keys read here: ``risk`` (what it guards), ``applies_to: "manifest"``
(checked against the partition manifest's producer fields, not the rows), and
``ignore_identical_rows_on`` (uniqueness that counts exact re-deliveries once).
"""

from __future__ import annotations

import copy
import json
import os
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from jobs.quality.errors import SuiteError

DATASETS = ("raw_events", "feature_snapshots", "training_sets", "predictions", "serving_logs")
DEFAULT_FEATURE_SET = "customer_activity_v1"
_ID_NAMESPACE = uuid.UUID("6d1f3c2e-8a55-4d7b-9a51-6c0e3f1b2a77")


def expectations_dir() -> Path:
    """``$LOCKSTEP_EXPECTATIONS_DIR``, else ``expectations/`` at the repository root."""
    env = os.environ.get("LOCKSTEP_EXPECTATIONS_DIR", "").strip()
    return Path(env) if env else Path(__file__).resolve().parents[2] / "expectations"


@dataclass(frozen=True)
class Suite:
    """A dataset's suite bound to a feature set: GE expectation configs, parameters unresolved."""

    dataset: str
    name: str
    table: str
    feature_set: str | None
    expectations: tuple[dict, ...]
    meta: dict = field(default_factory=dict)
    notes: str | None = None

    def to_json_dict(self) -> dict:
        """The bound suite in GE's JSON form (``gx.ExpectationSuite(**d)`` reads it back)."""
        return {
            "name": self.name,
            "expectations": copy.deepcopy(list(self.expectations)),
            "meta": copy.deepcopy(self.meta),
            "notes": self.notes,
        }

    def to_gx(self):
        """The suite as a ``great_expectations.ExpectationSuite``."""
        import great_expectations as gx

        return gx.ExpectationSuite(**self.to_json_dict())


def read_suite_file(dataset: str) -> dict:
    """The suite file of ``dataset`` as written (placeholders and parameters unresolved)."""
    if dataset not in DATASETS:
        raise SuiteError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    path = expectations_dir() / f"{dataset}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SuiteError(f"no suite file for {dataset!r} at {path}") from None
    except ValueError as exc:
        raise SuiteError(f"{path}: not valid JSON: {exc}") from None


def load_suite(dataset: str, feature_set: str | None = None) -> Suite:
    """The suite of ``dataset``; every dataset but raw_events is bound to a feature set
    (default ``customer_activity_v1``)."""
    if dataset != "raw_events":
        feature_set = feature_set or DEFAULT_FEATURE_SET
    else:
        feature_set = None
    return _load(dataset, feature_set)


def clear_cache() -> None:
    """Forget the suites loaded so far (``load_suite`` caches them): the next load reads the files again."""
    _load.cache_clear()


@lru_cache(maxsize=64)
def _load(dataset: str, feature_set: str | None) -> Suite:
    from jobs.quality import combine, derive

    raw = read_suite_file(dataset)
    if not isinstance(raw.get("expectations"), list):
        raise SuiteError(f"suite {dataset!r}: 'expectations' must be a list")
    meta = raw.get("meta") or {}
    lock = meta.get("lockstep") or {}
    fs = None
    if feature_set is not None:
        from features import registry

        fs = registry.get(feature_set)
    binding = _binding(fs)
    expectations = [_bind(e, binding) for e in raw["expectations"]]
    if fs is not None and lock.get("derive"):
        expectations += derive.derived_expectations(fs, lock["derive"], source_bounds())
    name = dataset if fs is None else f"{dataset}.{fs.name}"
    for i, e in enumerate(expectations):
        _check_expectation(name, i, e)
        combine.kind_of(e)  # raises SuiteError for a type that cannot be combined across batches
        e["id"] = str(uuid.uuid5(_ID_NAMESPACE, f"{name}|{i}|{json.dumps(e, sort_keys=True, default=str)}"))
    table = _bind(lock.get("table", dataset), binding)
    suite = Suite(
        dataset=dataset,
        name=name,
        table=table,
        feature_set=feature_set,
        expectations=tuple(expectations),
        meta=meta,
        notes=raw.get("notes"),
    )
    try:  # GE checks every expectation's kwargs (names, types) when it builds the suite
        suite.to_gx()
    except Exception as exc:  # noqa: BLE001 - pydantic and GE errors alike: the file is wrong
        raise SuiteError(f"suite {name!r} is not a valid GE suite: {exc}") from None
    return suite


def source_bounds() -> dict[str, tuple[float | None, float | None]]:
    """Literal value bounds the raw_events suite declares per column (``expect_column_values_to_be_between``);
    derived feature ranges (means, mins, maxes, sums) inherit them."""
    out: dict[str, tuple[float | None, float | None]] = {}
    for e in read_suite_file("raw_events")["expectations"]:
        kw = e.get("kwargs", {})
        if e.get("type") != "expect_column_values_to_be_between" or kw.get("mostly") is not None:
            continue
        lo, hi = kw.get("min_value"), kw.get("max_value")
        if any(isinstance(v, dict) for v in (lo, hi)) or not all(
            v is None or isinstance(v, (int, float)) for v in (lo, hi)
        ):
            continue
        old_lo, old_hi = out.get(kw["column"], (None, None))
        out[kw["column"]] = (_tighter(old_lo, lo, max), _tighter(old_hi, hi, min))
    return out


def resolve(expectation: dict, params: dict[str, Any]) -> tuple[dict, list[str]]:
    """A copy of ``expectation`` with its ``$PARAMETER`` kwargs bound from ``params``, and the
    names of the parameters that were missing (the expectation cannot be evaluated without them)."""
    out = copy.deepcopy(expectation)
    missing: list[str] = []
    for key, value in list(out.get("kwargs", {}).items()):
        if isinstance(value, dict) and "$PARAMETER" in value:
            expr = str(value["$PARAMETER"])
            try:
                out["kwargs"][key] = _evaluate(expr, params)
            except KeyError as exc:
                missing.append(str(exc.args[0]))
    return out, missing


def parameter_names(expression: str) -> list[str]:
    """The variable names an expression such as ``previous_rows * 0.2`` refers to."""
    import re

    return [t for t in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", expression) if t not in ("trunc", "round", "abs")]


def _evaluate(expr: str, params: dict[str, Any]) -> Any:
    names = parameter_names(expr)
    for n in names:
        if n not in params or params[n] is None:
            raise KeyError(n)
    if expr.strip() in params:  # a plain name: keep the value's type (a Timestamp, a list)
        return params[expr.strip()]
    from great_expectations.core.suite_parameters import parse_suite_parameter

    return parse_suite_parameter(expr, {n: params[n] for n in names})


def _binding(fs) -> dict[str, Any]:
    if fs is None:
        return {}
    return {"${entity}": fs.entity, "${feature_set}": fs.name, "${features}": list(fs.feature_names)}


def _bind(value: Any, binding: dict[str, Any]) -> Any:
    if isinstance(value, str):
        if "${" not in value:
            return value
        for key, sub in binding.items():
            if isinstance(sub, str):
                value = value.replace(key, sub)
        if "${" in value:
            raise SuiteError(f"unbound placeholder in {value!r} (known: {sorted(binding) or 'none'})")
        return value
    if isinstance(value, list):
        out = []
        for item in value:
            if item == "${features}":
                if "${features}" not in binding:
                    raise SuiteError("'${features}' needs a feature set")
                out.extend(binding["${features}"])
            else:
                out.append(_bind(item, binding))
        return out
    if isinstance(value, dict):
        if "$PARAMETER" in value:
            return dict(value)
        return {k: _bind(v, binding) for k, v in value.items()}
    return value


def _check_expectation(suite: str, i: int, e: dict) -> None:
    where = f"suite {suite!r} expectation #{i} ({e.get('type')})"
    if not isinstance(e.get("type"), str) or not isinstance(e.get("kwargs"), dict):
        raise SuiteError(f"{where}: needs 'type' and 'kwargs'")
    if not (e.get("notes") or "").strip() or not (e.get("meta") or {}).get("risk"):
        raise SuiteError(f"{where}: every expectation needs 'notes' and meta.risk naming the risk it guards")


def _tighter(old, new, pick):
    if new is None:
        return old
    return new if old is None else pick(old, new)
