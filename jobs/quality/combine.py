"""Evaluate a suite over a partition streamed in bounded batches, combining correctly.

Every expectation is evaluated by one of these kinds, so its verdict over the batches is the
verdict over the whole partition:

``map``       row-by-row GE expectations (not null, between, in set, pair comparisons...): GE
              validates each batch; element, unexpected and missing counts add up, and ``mostly``
              is applied to the totals.
``unique``    uniqueness (one or several columns): key hashes of every batch, see ``keys``.
``rows``      row counts: the sum over batches.
``schema``    columns and types: the stored Arrow schema of the partition's Parquet files
              (types are Arrow type names: ``int64``, ``double``, ``string``,
              ``timestamp[us, tz=UTC]``), not pandas dtypes.
``agg``       column min/max/mean/sum and non-null proportion: running aggregates.
``manifest``  expectations with ``meta.applies_to == "manifest"``: validated by GE on a one-row
              frame of the partition manifest's producer fields.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from jobs.quality.errors import SuiteError
from jobs.quality.keys import DEFAULT_MAX_IN_MEMORY, KeyTracker, key_values

SCHEMA_TYPES = frozenset(
    {
        "expect_table_columns_to_match_ordered_list",
        "expect_table_columns_to_match_set",
        "expect_column_to_exist",
        "expect_table_column_count_to_equal",
        "expect_column_values_to_be_of_type",
        "expect_column_values_to_be_in_type_list",
    }
)
ROW_TYPES = frozenset({"expect_table_row_count_to_be_between", "expect_table_row_count_to_equal"})
UNIQUE_TYPES = frozenset({"expect_column_values_to_be_unique", "expect_compound_columns_to_be_unique"})
AGG_TYPES = frozenset(
    {
        "expect_column_min_to_be_between",
        "expect_column_max_to_be_between",
        "expect_column_mean_to_be_between",
        "expect_column_sum_to_be_between",
        "expect_column_proportion_of_non_null_values_to_be_between",
    }
)
NOT_NULL = "expect_column_values_to_not_be_null"
_map_types: dict[str, bool] = {}


def kind_of(expectation: dict) -> str:
    """How an expectation is evaluated across batches; SuiteError if it cannot be."""
    t = expectation["type"]
    if (expectation.get("meta") or {}).get("applies_to") == "manifest":
        return "manifest"
    for kind, types in (("schema", SCHEMA_TYPES), ("rows", ROW_TYPES), ("unique", UNIQUE_TYPES), ("agg", AGG_TYPES)):
        if t in types:
            return kind
    if t not in _map_types:
        from great_expectations.expectations.expectation import (
            ColumnMapExpectation,
            ColumnPairMapExpectation,
            MulticolumnMapExpectation,
        )
        from great_expectations.expectations.registry import get_expectation_impl

        try:
            impl = get_expectation_impl(t)
        except Exception:  # noqa: BLE001 - GE raises its own error types for an unknown name
            raise SuiteError(f"unknown expectation type {t!r}") from None
        _map_types[t] = issubclass(impl, (ColumnMapExpectation, ColumnPairMapExpectation, MulticolumnMapExpectation))
    if not _map_types[t]:
        raise SuiteError(
            f"expectation type {t!r} is a table-level aggregate that is not combined "
            "across batches; supported ones: "
            f"{', '.join(sorted(SCHEMA_TYPES | ROW_TYPES | UNIQUE_TYPES | AGG_TYPES))}"
        )
    return "map"


def columns_of(kwargs: dict) -> list[str]:
    """The columns an expectation reads."""
    cols = [kwargs[k] for k in ("column", "column_A", "column_B") if k in kwargs]
    if not cols and "column_list" in kwargs:
        cols = list(kwargs["column_list"])
    return cols


@dataclass
class Outcome:
    """One expectation's verdict over a whole partition."""

    id: str
    type: str
    kwargs: dict
    notes: str
    meta: dict
    success: bool = True
    observed: Any = None
    element_count: int | None = None
    unexpected_count: int | None = None
    missing_count: int | None = None
    sample: list = field(default_factory=list)
    error: str | None = None
    details: dict = field(default_factory=dict)
    skipped: str | None = None

    @property
    def risk(self) -> str:
        return self.meta.get("risk", "")

    def headline(self) -> str:
        """``type(key kwargs)`` for messages."""
        shown = {k: v for k, v in self.kwargs.items() if k not in ("batch_id", "result_format")}
        args = ", ".join(f"{k}={_short(v)}" for k, v in shown.items())
        return f"{self.type}({args})"

    def summary(self) -> str:
        """What went wrong, in one line."""
        if self.skipped:
            return f"not evaluated: {self.skipped}"
        if self.error:
            return f"could not be evaluated: {self.error}"
        parts = []
        if self.unexpected_count is not None and self.element_count is not None:
            parts.append(f"{self.unexpected_count} of {self.element_count} rows unexpected")
        elif self.observed is not None:
            parts.append(f"observed {_short(self.observed, 200)}")
        for k in ("missing", "unexpected", "mismatched"):
            if self.details.get(k):
                parts.append(f"{k} columns {_short(self.details[k], 200)}")
        if self.sample:
            parts.append("e.g. " + ", ".join(_short(v, 60) for v in self.sample[:5]))
        if self.details.get("history"):  # what a check against earlier partitions found
            parts.append(" | ".join(str(c) for c in self.details["history"][:3]))
        return "; ".join(parts) or "failed"

    def to_json_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=_json_default))

    def to_gx(self):
        """This outcome as a GE ``ExpectationValidationResult`` (for Data Docs)."""
        from great_expectations.core.expectation_validation_result import (
            ExpectationValidationResult,
        )
        from great_expectations.expectations.expectation_configuration import (
            ExpectationConfiguration,
        )

        d = self.to_json_dict()
        result: dict[str, Any] = {}
        if self.element_count is not None:
            n, u, m = self.element_count, self.unexpected_count or 0, self.missing_count or 0
            result.update(
                element_count=n,
                unexpected_count=u,
                missing_count=m,
                unexpected_percent=100.0 * u / n if n else None,
                missing_percent=100.0 * m / n if n else None,
                unexpected_percent_total=100.0 * u / n if n else None,
                unexpected_percent_nonmissing=100.0 * u / (n - m) if n - m else None,
                partial_unexpected_list=d["sample"],
            )
        if self.observed is not None or self.element_count is None:
            result["observed_value"] = d["observed"]
        if self.type in (
            "expect_table_columns_to_match_ordered_list",
            "expect_table_columns_to_match_set",
        ) and not isinstance(result.get("observed_value"), list):
            result["observed_value"] = []  # GE's page renderer lists these columns
        if self.details:
            result["details"] = d["details"]
        exc = None
        if self.error or self.skipped:
            exc = {
                "raised_exception": True,
                "exception_message": self.error or f"not evaluated: {self.skipped}",
                "exception_traceback": "",
            }
        config = ExpectationConfiguration(
            type=self.type, kwargs=d["kwargs"], meta=d["meta"], notes=self.notes, id=self.id
        )
        return ExpectationValidationResult(
            success=self.success, expectation_config=config, result=result, exception_info=exc
        )


class Evaluation:
    """Accumulates one suite's verdicts over the batches of one partition."""

    def __init__(
        self,
        expectations: list[dict],
        schema: pa.Schema,
        *,
        manifest: dict | None = None,
        skipped: dict[str, str] | None = None,
        sample_size: int = 10,
        max_keys_in_memory: int = DEFAULT_MAX_IN_MEMORY,
        spill_dir: str | None = None,
    ):
        self.schema = schema
        self.manifest = manifest
        self.sample_size = sample_size
        self.rows = 0
        self.batches = 0
        self.outcomes: list[Outcome] = []
        self._map: dict[str, Outcome] = {}
        self._agg: dict[str, dict] = {}
        self._unique: dict[str, KeyTracker] = {}
        self._rows: list[Outcome] = []
        self._manifest: list[Outcome] = []
        names = set(schema.names)
        skipped = skipped or {}
        for e in expectations:
            o = Outcome(
                id=e["id"],
                type=e["type"],
                kwargs=dict(e["kwargs"]),
                notes=e.get("notes") or "",
                meta=dict(e.get("meta") or {}),
            )
            self.outcomes.append(o)
            if e["id"] in skipped:
                o.skipped = skipped[e["id"]]
                continue
            kind = kind_of(e)
            if kind == "schema":
                self._check_schema(o)
                continue
            if kind == "rows":
                self._rows.append(o)
                continue
            if kind == "manifest":
                self._manifest.append(o)
                continue
            absent = [c for c in columns_of(o.kwargs) if c not in names]
            if absent:
                o.success, o.error = False, f"column(s) {absent} not in the partition"
                continue
            if kind == "map":
                o.element_count = o.unexpected_count = o.missing_count = 0
                self._map[o.id] = o
            elif kind == "unique":
                cols = columns_of(o.kwargs)
                exact = len(cols) == 1 and pa.types.is_integer(schema.field(cols[0]).type)
                identical = o.meta.get("ignore_identical_rows_on")
                identical = [c for c in identical if c in names] if identical else None
                self._unique[o.id] = KeyTracker(cols, identical, max_keys_in_memory, spill_dir, exact)
                o.element_count = 0
            else:
                self._agg[o.id] = {"outcome": o, "n": 0, "nonnull": 0, "min": None, "max": None, "sums": []}
        self._gx_suite = _gx_suite("lockstep_batch", self._map.values()) if self._map else None

    def add(self, df: pd.DataFrame) -> None:
        """Fold one batch in."""
        from jobs.quality import gx

        self.rows += len(df)
        self.batches += 1
        if self._gx_suite is not None and self._map:
            results = gx.validate_frame(self._gx_suite, df, self.sample_size)
            for oid, o in list(self._map.items()):
                r = results.get(oid)
                err = "no result" if r is None else gx.exception_message(r)
                if err:
                    o.success, o.error = False, err
                    del self._map[oid]  # one error is enough; do not repeat it per batch
                    self._rebuild_gx_suite()
                    continue
                res = r.result
                o.element_count += int(res.get("element_count") or 0)
                o.unexpected_count += int(res.get("unexpected_count") or 0)
                o.missing_count += int(res.get("missing_count") or 0)
                if o.type != NOT_NULL:
                    _extend(o.sample, res.get("partial_unexpected_list") or [], self.sample_size)
        for oid, tracker in self._unique.items():
            tracker.add(df)
        for acc in self._agg.values():
            self._add_agg(acc, df)

    def finish(self, reread: Callable[[], Iterator[pd.DataFrame]] | None = None) -> list[Outcome]:
        """The outcomes, in suite order. `reread` gives the batches again (for duplicate samples)."""
        for o in self._map.values():
            mostly = o.kwargs.get("mostly")
            base = o.element_count - (0 if o.type == NOT_NULL else o.missing_count)
            if mostly is None:
                o.success = o.unexpected_count == 0
            else:
                o.success = base == 0 or (base - o.unexpected_count) / base >= float(mostly)
            if o.type == NOT_NULL:
                o.missing_count = None
        for oid, tracker in self._unique.items():
            o = next(x for x in self.outcomes if x.id == oid)
            rows = tracker.rows
            n, dups = tracker.duplicates()
            o.element_count, o.unexpected_count = rows, n
            mostly = o.kwargs.get("mostly")  # e.g. identical events allowed up to a share
            o.success = n == 0 if mostly is None else rows == 0 or (rows - n) / rows >= float(mostly)
            if n:
                o.sample = key_values(tracker, dups, self.sample_size, _columns_reread(reread, tracker))
                o.details["duplicated_keys"] = len(dups)
        for acc in self._agg.values():
            self._finish_agg(acc)
        for o in self._rows:
            o.observed = self.rows
            if o.type == "expect_table_row_count_to_equal":
                o.success = self.rows == o.kwargs.get("value")
            else:
                o.success = _within(self.rows, o.kwargs)
        for o in self._manifest:
            self._check_manifest(o)
        return self.outcomes

    # ---- kinds ----------------------------------------------------------------------------
    def _rebuild_gx_suite(self) -> None:
        self._gx_suite = _gx_suite("lockstep_batch", self._map.values()) if self._map else None

    def _check_schema(self, o: Outcome) -> None:
        kw, names = o.kwargs, list(self.schema.names)
        types = {f.name: str(f.type) for f in self.schema}
        if o.type == "expect_table_columns_to_match_ordered_list":
            want = list(kw["column_list"])
            o.observed = names
            o.success = names == want
            o.details = {
                "missing": [c for c in want if c not in names],
                "unexpected": [c for c in names if c not in want],
            }
            if not o.success and not (o.details["missing"] or o.details["unexpected"]):
                o.details["mismatched"] = [
                    f"{i}: expected {w}, found {f}" for i, (w, f) in enumerate(zip(want, names)) if w != f
                ]
        elif o.type == "expect_table_columns_to_match_set":
            want = set(kw["column_set"])
            o.observed = names
            o.details = {"missing": sorted(want - set(names)), "unexpected": sorted(set(names) - want)}
            o.success = not o.details["missing"] and (not kw.get("exact_match", True) or not o.details["unexpected"])
        elif o.type == "expect_column_to_exist":
            o.observed = kw["column"] in names
            o.success = bool(o.observed)
        elif o.type == "expect_table_column_count_to_equal":
            o.observed = len(names)
            o.success = len(names) == kw["value"]
        else:
            col = kw["column"]
            allowed = [kw["type_"]] if "type_" in kw else list(kw["type_list"])
            o.observed = types.get(col)
            if o.observed is None:
                o.success, o.error = False, f"column {col!r} not in the partition"
            else:
                o.success = o.observed in allowed
        if not o.success:
            o.element_count = None

    def _add_agg(self, acc: dict, df: pd.DataFrame) -> None:
        o = acc["outcome"]
        if o.error:
            return
        s = df[o.kwargs["column"]]
        acc["n"] += len(s)
        values = s[s.notna()]
        acc["nonnull"] += len(values)
        if o.type == "expect_column_proportion_of_non_null_values_to_be_between" or not len(values):
            return
        try:
            if o.type in ("expect_column_min_to_be_between", "expect_column_max_to_be_between"):
                lo, hi = values.min(), values.max()
                acc["min"] = lo if acc["min"] is None else min(acc["min"], lo)
                acc["max"] = hi if acc["max"] is None else max(acc["max"], hi)
            else:
                acc["sums"].append(_sum(pd.to_numeric(values, errors="raise").astype("float64")))
        except (TypeError, ValueError) as exc:
            o.success, o.error = False, f"cannot aggregate column {o.kwargs['column']!r}: {exc}"

    def _finish_agg(self, acc: dict) -> None:
        o = acc["outcome"]
        if o.error:
            return
        t = o.type
        if t == "expect_column_proportion_of_non_null_values_to_be_between":
            o.observed = acc["nonnull"] / acc["n"] if acc["n"] else None
        elif t == "expect_column_min_to_be_between":
            o.observed = acc["min"]
        elif t == "expect_column_max_to_be_between":
            o.observed = acc["max"]
        elif t == "expect_column_sum_to_be_between":
            o.observed = _sum(acc["sums"])
        else:
            o.observed = _sum(acc["sums"]) / acc["nonnull"] if acc["nonnull"] else None
        if o.observed is None:
            o.success, o.error = False, "no non-null values to aggregate"
        else:
            o.success = _within(o.observed, o.kwargs)
        o.details["non_null_values"] = acc["nonnull"]

    def _check_manifest(self, o: Outcome) -> None:
        from jobs.quality import gx

        fields = manifest_fields(self.manifest)
        cols = columns_of(o.kwargs)
        absent = [c for c in cols if c not in fields]
        if absent:
            o.success, o.error = False, f"the partition manifest's producer has no {absent}"
            return
        frame = pd.DataFrame([{c: fields[c] for c in cols}])
        r = gx.validate_frame(_gx_suite("lockstep_manifest", [o]), frame, self.sample_size)[o.id]
        err = gx.exception_message(r)
        if err:
            o.success, o.error = False, err
            return
        o.success = bool(r.success)
        o.observed = fields[cols[0]] if len(cols) == 1 else {c: fields[c] for c in cols}
        o.element_count = int(r.result.get("element_count") or 1)
        o.unexpected_count = int(r.result.get("unexpected_count") or 0)
        o.sample = list(r.result.get("partial_unexpected_list") or [])


def evaluate(
    expectations: list[dict],
    batches,
    schema: pa.Schema,
    *,
    manifest: dict | None = None,
    skipped: dict[str, str] | None = None,
    reread=None,
    sample_size: int = 10,
    max_keys_in_memory: int = DEFAULT_MAX_IN_MEMORY,
    spill_dir: str | None = None,
) -> tuple[list[Outcome], int, int]:
    """(outcomes, rows, batches) of resolved `expectations` over `batches`."""
    ev = Evaluation(
        expectations,
        schema,
        manifest=manifest,
        skipped=skipped,
        sample_size=sample_size,
        max_keys_in_memory=max_keys_in_memory,
        spill_dir=spill_dir,
    )
    try:
        for df in batches:
            ev.add(df)
        return ev.finish(reread), ev.rows, ev.batches
    finally:
        for tracker in ev._unique.values():
            tracker.close()


def manifest_fields(manifest: dict | None) -> dict[str, Any]:
    """The fields a manifest-level expectation can name: the producer's keys, then the manifest's
    own scalar fields (``table``, ``ds``, ``rows``, ``content_fingerprint``, ``created_at``)."""
    if not manifest:
        return {}
    out = {
        k: v if isinstance(v, (str, int, float, bool)) or v is None else json.dumps(v, default=str)
        for k, v in (manifest.get("producer") or {}).items()
    }
    for k in ("table", "ds", "rows", "content_fingerprint", "created_at"):
        if k in manifest and k not in out:
            out[k] = manifest[k]
    return out


def _gx_suite(name: str, outcomes):
    import great_expectations as gx

    return gx.ExpectationSuite(
        name=name, expectations=[{"type": o.type, "kwargs": o.kwargs, "id": o.id} for o in outcomes]
    )


def _columns_reread(reread, tracker):
    if reread is None:
        return None
    return lambda: (df[tracker.columns] for df in reread())


def _sum(values) -> float:
    """An exactly rounded sum (batch sums then add up like one sum); inf/nan propagate."""
    try:
        return math.fsum(values)
    except (ValueError, OverflowError):  # inf - inf, or an overflow: no exact answer exists
        with np.errstate(invalid="ignore", over="ignore"):
            return float(np.sum(np.asarray(values, dtype="float64")))


def _within(value, kw: dict) -> bool:
    lo, hi = kw.get("min_value"), kw.get("max_value")
    try:
        if lo is not None and (value < lo or (kw.get("strict_min") and value == lo)):
            return False
        if hi is not None and (value > hi or (kw.get("strict_max") and value == hi)):
            return False
    except TypeError:
        return False
    return not (isinstance(value, float) and math.isnan(value))


def _extend(sample: list, values: list, limit: int) -> None:
    """Add distinct offending values, up to `limit` (five copies of one bad value say less)."""
    for v in values:
        if len(sample) >= limit:
            return
        try:
            seen = v in sample
        except (TypeError, ValueError):
            seen = False
        if not seen:
            sample.append(v)


def _json_default(v):
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (set, frozenset, tuple)):
        return list(v)
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return str(v)


def _short(v, limit: int = 80) -> str:
    if isinstance(v, float) and (math.isinf(v) or math.isnan(v)):
        text = repr(v)
    elif isinstance(v, pd.Timestamp):
        text = v.isoformat()
    else:
        text = json.dumps(v, default=_json_default) if isinstance(v, (list, dict)) else str(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."
