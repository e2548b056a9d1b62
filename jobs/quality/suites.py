"""The Great Expectations suites of ``expectations/``, derived from the declarations.

Each dataset's suite is bound to one declaration (``BOUND_TO``): raw_events to a source,
feature_snapshots to a feature set, training_sets / predictions / serving_logs to a model.
Source of truth: the JSON templates in ``expectations/`` (one GE 1.x suite per dataset) for the
generic, declaration-independent expectations (partition-time rules, manifest integrity, score
range...), and the declarations for everything else (``jobs.quality.derive``): a source's column
list and types, not-null keys, unique event id, key domain, value ranges, allowed values, means,
null shares and row counts; a feature table's schema (``features.kernel.output_columns``) and each
feature's range, null and monotonicity checks; a model's id columns and every joined set's feature
checks. Nothing is generated into the JSON files, so a new source, set, feature or model gets its
checks without editing them; the fully bound suite is rendered with every validation's Data Docs
and printed by ``lockstep validate DATASET --show-suite``.

Two extensions of GE's JSON, both resolved here:

- placeholders bound from the declarations when the suite is loaded: strings ``${source}``,
  ``${source_table}``, ``${event_id}``, ``${event_time}``, ``${ingested_at}`` (source),
  ``${entity}``, ``${feature_set}`` (feature set), ``${model}``, ``${query_id}``,
  ``${training_table}``, ``${predictions_table}`` (model); list items ``"${features}"``,
  ``"${event_content}"`` (the raw columns but the ingestion time), ``"${id_columns}"``,
  ``"${log_keys}"`` (expanded in place);
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

#: The row-count floor of a bounded feature set's snapshot, as a GE parameter expression.
BOUNDED_SNAPSHOT_ROWS_FLOOR = "previous_rows * 0.5"
DATASETS = ("raw_events", "feature_snapshots", "training_sets", "predictions", "serving_logs")
#: Which declaration each dataset's suite is derived from.
BOUND_TO = {
    "raw_events": "source",
    "feature_snapshots": "feature_set",
    "training_sets": "model",
    "predictions": "model",
    "serving_logs": "model",
}
_ID_NAMESPACE = uuid.UUID("6d1f3c2e-8a55-4d7b-9a51-6c0e3f1b2a77")


def expectations_dir() -> Path:
    """``$LOCKSTEP_EXPECTATIONS_DIR``, else ``expectations/`` at the repository root."""
    env = os.environ.get("LOCKSTEP_EXPECTATIONS_DIR", "").strip()
    return Path(env) if env else Path(__file__).resolve().parents[2] / "expectations"


@dataclass(frozen=True)
class Suite:
    """A dataset's suite bound to a declaration: GE expectation configs, parameters unresolved.

    ``source`` / ``feature_set`` / ``model`` name the declaration the suite was derived from
    (raw_events: a source; feature_snapshots: a feature set; the rest: a model, whose first joined
    set is ``feature_set``)."""

    dataset: str
    name: str
    table: str
    feature_set: str | None
    expectations: tuple[dict, ...]
    meta: dict = field(default_factory=dict)
    notes: str | None = None
    source: str | None = None
    model: str | None = None

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


def declarations_for(dataset: str, *, source=None, feature_set=None, model=None, repo=None):
    """``(source, feature_set, model)`` declarations a dataset's suite is bound to.

    Each argument is a declaration or its name (looked up in ``repo``, default
    ``features.repo.load()``). Defaults: raw_events -> the given set's or model's source, else the
    repo's first source by name; feature_snapshots -> the given set, else the model's (or the
    repo's default model's) first joined set; training_sets / predictions / serving_logs -> the
    given model, else the first model joining the given set, else the repo's default model.
    """
    if dataset not in DATASETS:
        raise SuiteError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    if repo is None:
        from features import repo as repo_mod

        repo = repo_mod.load()
    src = repo.source(source) if isinstance(source, str) else source
    fs = repo.feature_set(feature_set) if isinstance(feature_set, str) else feature_set
    mdl = repo.model(model) if isinstance(model, str) else model
    kind = BOUND_TO[dataset]
    if kind == "source":
        if src is None:
            src = fs.source if fs is not None else mdl.queries.source if mdl is not None else None
        if src is None:
            if not repo.sources:
                raise SuiteError("raw_events needs a source: the repo declares none")
            src = repo.sources[sorted(repo.sources)[0]]
        return src, None, None
    if kind == "feature_set":
        if fs is None:
            mdl = mdl or (repo.default_model() if repo.models else None)
            if mdl is not None:
                fs = mdl.feature_sets[0]
            elif repo.feature_sets:
                fs = repo.feature_sets[sorted(repo.feature_sets)[0]]
            else:
                raise SuiteError("feature_snapshots needs a feature set: the repo declares none")
        return fs.source, fs, None
    if mdl is None:
        users = repo.models_of(fs) if fs is not None else []
        mdl = users[0] if users else repo.default_model()
    return mdl.queries.source, mdl.feature_sets[0], mdl


def load_suite(dataset: str, feature_set=None, *, source=None, model=None, repo=None) -> Suite:
    """The suite of ``dataset``, derived from its declaration (see :func:`declarations_for`):
    the template ``expectations/<dataset>.json`` with its placeholders bound, plus the checks
    derived from the source, feature set or model (``jobs.quality.derive``)."""
    src, fs, mdl = declarations_for(dataset, source=source, feature_set=feature_set, model=model, repo=repo)
    try:
        return _load(dataset, src, fs, mdl)
    except TypeError:  # an unhashable declaration: no cache
        return _load.__wrapped__(dataset, src, fs, mdl)


def clear_cache() -> None:
    """Forget the suites loaded so far (``load_suite`` caches them): the next load reads the files again."""
    _load.cache_clear()


@lru_cache(maxsize=64)
def _load(dataset: str, src, fs, mdl) -> Suite:
    from jobs.quality import combine, derive

    raw = read_suite_file(dataset)
    if not isinstance(raw.get("expectations"), list):
        raise SuiteError(f"suite {dataset!r}: 'expectations' must be a list")
    meta = raw.get("meta") or {}
    lock = meta.get("lockstep") or {}
    binding = _binding(dataset, src, fs, mdl)
    expectations = [_bind(e, binding) for e in raw["expectations"]]
    rules = lock.get("derive") or {}
    if dataset == "raw_events":
        expectations += derive.source_expectations(src)
    elif mdl is not None:
        expectations += derive.model_expectations(dataset, mdl, rules)
    elif fs is not None and rules:
        expectations += derive.derived_expectations(fs, rules, derive.column_bounds(fs.source))
    owner = mdl if mdl is not None else fs if fs is not None else src
    name = f"{dataset}.{owner.name}"
    for i, e in enumerate(expectations):
        _check_expectation(name, i, e)
        combine.kind_of(e)  # raises SuiteError for a type that cannot be combined across batches
        e["id"] = str(uuid.uuid5(_ID_NAMESPACE, f"{name}|{i}|{json.dumps(e, sort_keys=True, default=str)}"))
    suite = Suite(
        dataset=dataset,
        name=name,
        table=_bind(lock.get("table", dataset), binding),
        feature_set=fs.name if fs is not None else None,
        expectations=tuple(expectations),
        meta=_bind(meta, binding),
        notes=_bind(raw.get("notes"), binding),
        source=src.name if src is not None else None,
        model=mdl.name if mdl is not None else None,
    )
    try:  # GE checks every expectation's kwargs (names, types) when it builds the suite
        suite.to_gx()
    except Exception as exc:  # noqa: BLE001 - pydantic and GE errors alike: the file is wrong
        raise SuiteError(f"suite {name!r} is not a valid GE suite: {exc}") from None
    return suite


def source_bounds(source=None) -> dict[str, tuple[float | None, float | None]]:
    """Literal value bounds a source declares per column (``Column.min/max``, ``Key.min``);
    derived feature ranges (means, mins, maxes, sums) inherit them. Default: the repo's first source."""
    from jobs.quality import derive

    if source is None or isinstance(source, str):
        source = declarations_for("raw_events", source=source)[0]
    return derive.column_bounds(source)


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


def _binding(dataset: str, src, fs, mdl) -> dict[str, Any]:
    from jobs.quality import derive

    out: dict[str, Any] = {}
    if src is not None:
        content = [c for c, _, _ in src.raw_columns() if c != src.ingested_at]
        out.update(
            {
                "${source}": src.name,
                "${source_table}": src.table,
                "${event_id}": src.event_id,
                "${event_time}": src.event_time,
                "${ingested_at}": src.ingested_at,
                "${event_content}": content,
            }
        )
    if fs is not None:
        out.update({"${entity}": fs.entity, "${feature_set}": fs.name, "${features}": list(fs.feature_names)})
        # a bounded set's snapshot lists only the entities seen within its longest window (README, "How much
        # history a read takes"): its row count may fall, by less than half in a day
        out["${snapshot_rows_floor}"] = "previous_rows" if fs.horizon_days is None else BOUNDED_SNAPSHOT_ROWS_FLOOR
    if mdl is not None:
        ids = [c for c, _ in mdl.id_columns]
        out.update(
            {
                "${model}": mdl.name,
                "${query_id}": mdl.query_id,
                "${id_columns}": ids,
                "${features}": list(mdl.feature_names),
                "${log_keys}": [c for c, _, _ in derive.log_keys(mdl)],
                "${training_table}": mdl.training_table,
                # entity snapshots ask at the cut-off instant; query rows anywhere in their day
                "${as_of_last}": "partition_start"
                if mdl.query_id in mdl.queries.source.key_names
                else "partition_last",
                "${predictions_table}": mdl.predictions_table,
                "${serving_log_table}": mdl.serving_log_table,
            }
        )
    return out


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
            if isinstance(item, str) and isinstance(binding.get(item), list):
                out.extend(binding[item])
            elif item in ("${features}", "${id_columns}", "${event_content}", "${log_keys}"):
                raise SuiteError(f"{item!r} needs a declaration that defines it (known: {sorted(binding) or 'none'})")
            else:
                out.append(_bind(item, binding))
        return out
    if isinstance(value, dict):
        if "$PARAMETER" in value:
            return {**value, "$PARAMETER": _bind(value["$PARAMETER"], binding)}
        return {k: _bind(v, binding) for k, v in value.items()}
    return value


def _check_expectation(suite: str, i: int, e: dict) -> None:
    where = f"suite {suite!r} expectation #{i} ({e.get('type')})"
    if not isinstance(e.get("type"), str) or not isinstance(e.get("kwargs"), dict):
        raise SuiteError(f"{where}: needs 'type' and 'kwargs'")
    if not (e.get("notes") or "").strip() or not (e.get("meta") or {}).get("risk"):
        raise SuiteError(f"{where}: every expectation needs 'notes' and meta.risk naming the risk it guards")
