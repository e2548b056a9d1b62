"""Expectations derived from a feature set's declaration, so a new feature is checked without
anyone writing its checks.

Rules (``derive`` section of a suite's ``meta.lockstep``):

``schema`` (``{"query_columns": [[name, arrow type], ...]}``)
    the table's columns in order and each one's Arrow type, from ``features.kernel.output_columns``.
``features.types``
    each feature column's Arrow type only (for tables whose other columns the suite lists itself).
``features.ranges``
    - ``count`` / ``distinct_count``: >= 0 (their integer type comes with the schema);
    - ``sum`` over a column whose raw bounds (``raw_events`` suite) are >= 0: >= 0;
    - ``mean`` / ``min`` / ``max``: within the source column's declared raw bounds;
    - ``days_since_*``: in [0, window] (>= 0 without a window);
    - ``ratio`` of two non-negative features: >= 0, and <= 1 when it divides a count or a
      non-negative sum by the same aggregate over a window at least as long;
    - monotone windows: the same count / non-negative sum over a longer window is never smaller;
      ``days_since_first >= days_since_last`` over the same window.
    All of these hold exactly in float arithmetic (rounding is monotone), so no tolerance.
``features.not_null``
    features with a non-null default (counts, sums) are never null; lifetime ``days_since_*`` are
    never null either, since every row's entity has at least one visible event.
"""

from __future__ import annotations

import itertools
from typing import Any

_INF = float("inf")


def derived_expectations(fs, derive: dict, source_bounds: dict[str, tuple[Any, Any]]) -> list[dict]:
    """GE expectation configs for feature set ``fs`` under the ``derive`` rules of a suite."""
    from features.kernel import output_columns

    out: list[dict] = []
    schema = derive.get("schema")
    feats = derive.get("features") or {}
    if schema is not None:
        query_cols = [tuple(c) for c in schema.get("query_columns", [])]
        cols = output_columns(fs, query_cols)
        out.append(
            _exp(
                "expect_table_columns_to_match_ordered_list",
                {"column_list": [c for c, _ in cols]},
                f"Schema drift: the columns of a {fs.name} table, in order, as the kernel "
                "writes them (features.kernel.output_columns).",
                "schema drift",
                fs,
            )
        )
        out += [
            _exp(
                "expect_column_values_to_be_of_type",
                {"column": c, "type_": t},
                f"Schema drift: {c} is {t} as the kernel writes it.",
                "schema drift",
                fs,
            )
            for c, t in cols
        ]
    elif feats.get("types"):
        integer = {f.name for f in fs.features if f.is_integer}
        out += [
            _exp(
                "expect_column_values_to_be_of_type",
                {"column": f.name, "type_": "int64" if f.name in integer else "double"},
                f"Schema drift: feature {f.name} keeps the kernel's type.",
                "schema drift",
                fs,
            )
            for f in fs.features
        ]
    if feats.get("ranges"):
        out += _ranges(fs, source_bounds)
    if feats.get("not_null"):
        out += _not_null(fs)
    return out


def bounds(fs, source_bounds: dict[str, tuple[Any, Any]]) -> dict[str, tuple[float, float]]:
    """The physical range ``(lo, hi)`` of each feature (``-inf``/``inf`` where unknown)."""
    out: dict[str, tuple[float, float]] = {}
    for f in fs.features:
        lo, hi = -_INF, _INF
        src_lo, src_hi = _src(source_bounds, f.column)
        if f.agg in ("count", "distinct_count"):
            lo = 0
        elif f.agg == "sum":
            if src_lo >= 0:
                lo = 0
        elif f.agg in ("mean", "min", "max"):
            lo, hi = src_lo, src_hi
        elif f.agg in ("days_since_last", "days_since_first"):
            lo, hi = 0, (_INF if f.window_days is None else f.window_days)
        elif f.agg == "ratio":
            (nlo, _), (dlo, _) = out[f.numerator], out[f.denominator]
            if nlo >= 0 and dlo >= 0:
                lo = 0
                if _dominates(fs.feature(f.denominator), fs.feature(f.numerator), source_bounds):
                    hi = 1
        out[f.name] = (lo, hi)
    return out


def _ranges(fs, source_bounds) -> list[dict]:
    out = []
    feature_bounds = bounds(fs, source_bounds)
    for f in fs.features:
        lo, hi = feature_bounds[f.name]
        if lo == -_INF and hi == _INF:
            continue
        kw: dict[str, Any] = {"column": f.name}
        if lo != -_INF:
            kw["min_value"] = lo
        if hi != _INF:
            kw["max_value"] = hi
        out.append(
            _exp(
                "expect_column_values_to_be_between",
                kw,
                f"Feature outside its physical range: {f.name} ({_describe(f)}) is within [{_fmt(lo)}, {_fmt(hi)}].",
                "feature outside its physical range",
                fs,
                f,
            )
        )
    by_key: dict[tuple, list] = {}
    for f in fs.features:
        if f.agg == "count" or (f.agg == "sum" and _src(source_bounds, f.column)[0] >= 0):
            by_key.setdefault((f.agg, f.column), []).append(f)
    for group in by_key.values():
        group = sorted(group, key=lambda g: _INF if g.window_days is None else g.window_days)
        for short, long in itertools.pairwise(group):
            if short.window_days == long.window_days:
                continue
            out.append(
                _exp(
                    "expect_column_pair_values_a_to_be_greater_than_b",
                    {"column_A": long.name, "column_B": short.name, "or_equal": True},
                    f"Window logic: {long.name} covers {short.name}'s window and more, so it is "
                    "never smaller (a broken window boundary or a prefix-sum shortcut breaks this).",
                    "feature outside its physical range",
                    fs,
                    long,
                )
            )
    firsts = {f.window_days: f for f in fs.features if f.agg == "days_since_first"}
    for last in (f for f in fs.features if f.agg == "days_since_last"):
        if last.window_days in firsts:
            first = firsts[last.window_days]
            out.append(
                _exp(
                    "expect_column_pair_values_a_to_be_greater_than_b",
                    {"column_A": first.name, "column_B": last.name, "or_equal": True},
                    f"Feature logic: the first event ({first.name}) is never more recent than the last ({last.name}).",
                    "feature outside its physical range",
                    fs,
                    first,
                )
            )
    return out


def _not_null(fs) -> list[dict]:
    out = []
    for f in fs.features:
        lifetime_recency = f.agg in ("days_since_last", "days_since_first") and f.window_days is None
        if f.default is None and not lifetime_recency:
            continue
        why = (
            f"its default is {f.default!r}"
            if f.default is not None
            else "every row's entity has at least one visible event"
        )
        out.append(
            _exp(
                "expect_column_values_to_not_be_null",
                {"column": f.name},
                f"Null-rate spike: {f.name} is never null ({why}); a null means the kernel or a join lost the value.",
                "null-rate spike",
                fs,
                f,
            )
        )
    return out


def _dominates(den, num, source_bounds) -> bool:
    """Whether ``den`` >= ``num`` always: the same count, or sum of a non-negative column, over a
    window at least as long."""
    if den.agg != num.agg or den.column != num.column:
        return False
    if den.agg not in ("count", "sum") or (den.agg == "sum" and _src(source_bounds, den.column)[0] < 0):
        return False
    if den.window_days is None:
        return True
    return num.window_days is not None and num.window_days <= den.window_days


def _src(source_bounds, column) -> tuple[float, float]:
    lo, hi = source_bounds.get(column, (None, None)) if column else (None, None)
    return (-_INF if lo is None else lo), (_INF if hi is None else hi)


def _describe(f) -> str:
    window = "all history" if f.window_days is None else f"{f.window_days:g}-day window"
    if f.agg == "ratio":
        return f"ratio {f.numerator} / {f.denominator}"
    return f"{f.agg}{'(' + f.column + ')' if f.column else ''} over {window}"


def _fmt(v) -> str:
    return "inf" if v == _INF else "-inf" if v == -_INF else f"{v:g}"


def _exp(type_: str, kwargs: dict, notes: str, risk: str, fs, feature=None) -> dict:
    meta: dict[str, Any] = {"risk": risk, "derived_from": f"features.registry: {fs.name}"}
    if feature is not None:
        meta["derived_from"] += f".{feature.name} ({_describe(feature)})"
    return {"type": type_, "kwargs": kwargs, "notes": notes, "meta": meta}
