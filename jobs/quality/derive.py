"""Expectations derived from the declarations, so a new source, feature set, feature or model is
checked without anyone writing its checks.

``source_expectations(source)`` (raw_events)
    the raw table's columns in order and their Arrow types (``Source.raw_columns``); not null for
    every non-nullable column; a unique event id (exact re-deliveries counted once); no event id
    that an earlier partition holds for another event (``jobs.quality.history``); keys >=
    ``Key.min``, keys in ``Key.allowed``; ``Column.min/max`` (between), ``allowed`` (in set, ``mostly``
    1 - ``max_unknown_share``), ``mean`` (column mean
    between), ``not_null_share`` (not null, mostly), ``null_when`` (null where the condition holds,
    not null where it does not), ``unique``; row count >= ``min_rows`` and >=
    ``min_share_of_previous`` x the previous partition's rows, and <= ``max_rows_vs_recent`` x the
    median rows of the last ``recent_days`` non-empty published days; at most ``max_duplicate_share``
    of the rows share their content with another row of the day (a day delivered twice).
``model_expectations(dataset, model, rules)`` (training_sets, predictions, serving_logs)
    the model's id column types, and every joined set's feature checks under ``rules``.

Feature-set rules follow.

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


def column_bounds(source) -> dict[str, tuple[float | None, float | None]]:
    """Literal bounds a source declares per column: ``Column.min/max`` and ``Key.min``."""
    out: dict[str, tuple[float | None, float | None]] = {}
    if source is None:
        return out
    for c in source.columns:
        if c.min is not None or c.max is not None:
            out[c.name] = (c.min, c.max)
    for k in source.keys:
        if k.min is not None:
            out[k.name] = (k.min, None)
    return out


def source_expectations(src) -> list[dict]:
    """GE expectation configs derived from a :class:`features.source.Source` (raw_events)."""
    cols = src.raw_columns()
    where = f"source {src.name}"
    out = [
        _sexp(
            "expect_table_columns_to_match_ordered_list",
            {"column_list": [c for c, _, _ in cols]},
            f"Schema drift: the columns of {src.table}, in order, as {where} declares them; a renamed, "
            "missing or extra column would silently become nulls or be ignored downstream.",
            "schema drift",
            src,
        )
    ]
    out += [
        _sexp(
            "expect_column_values_to_be_of_type",
            {"column": c, "type_": t},
            f"{'Wrong timestamp unit or time zone' if t.startswith('timestamp') else 'Schema drift'}: "
            f"{c} is {t} as {where} declares it.",
            "wrong timestamp unit or time zone" if t.startswith("timestamp") else "schema drift",
            src,
            c,
        )
        for c, t, _ in cols
    ]
    out.append(
        _sexp(
            "expect_table_row_count_to_be_between",
            {"min_value": src.min_rows},
            f"Empty partition: every ingest day has at least {src.min_rows} row(s) (min_rows of {where}); "
            "fewer is a broken export.",
            "empty partition",
            src,
        )
    )
    if src.min_share_of_previous:
        out.append(
            _sexp(
                "expect_table_row_count_to_be_between",
                {"min_value": {"$PARAMETER": f"previous_rows * {src.min_share_of_previous:g}"}},
                f"Row-count collapse: fewer than {src.min_share_of_previous:g} x the previous day's rows "
                f"(min_share_of_previous of {where}) means a partial export.",
                "row-count collapse",
                src,
            )
        )
    if src.max_rows_vs_recent is not None:
        out.append(
            _sexp(
                "expect_table_row_count_to_be_between",
                {"max_value": {"$PARAMETER": f"recent_median_rows * {src.max_rows_vs_recent:g}"}},
                f"Row-count surge: more than {src.max_rows_vs_recent:g} x the median rows of the last "
                f"{src.recent_days} non-empty published days (max_rows_vs_recent, recent_days of {where}) is a day "
                "delivered twice or an export of the wrong range; every count and sum downstream would grow.",
                "row-count surge",
                src,
                earlier_partitions="recent_median_rows",
                recent_days=src.recent_days,
            )
        )
    if src.max_duplicate_share is not None:
        content = [c for c, _, _ in cols if c not in (src.event_id, src.ingested_at)]
        out.append(
            _sexp(
                "expect_compound_columns_to_be_unique",
                {"column_list": content, "mostly": round(1 - src.max_duplicate_share, 12)},
                f"A day delivered twice under new ids: at most {src.max_duplicate_share:g} of the day's rows may share "
                f"their content (keys, event time, values) with another row (max_duplicate_share of {where}); "
                "identical events are legitimate, but a re-sent file gives every row a twin with a new id.",
                "duplicate delivery",
                src,
            )
        )
    out += [
        _sexp(
            "expect_column_values_to_not_be_null",
            {"column": c},
            f"Key nulls: {c} is declared non-nullable; an event without it is lost to every feature "
            "(or cannot be de-duplicated).",
            "key nulls",
            src,
            c,
        )
        for c, _, nullable in cols
        if not nullable
    ]
    out.append(
        _sexp(
            "expect_column_values_to_be_unique",
            {"column": src.event_id},
            f"Duplicate keys: two different events sharing an {src.event_id} make the kernel drop one of them. "
            "Re-deliveries (same id, same content, later ingestion) are legitimate and counted once.",
            "duplicate keys",
            src,
            src.event_id,
            ignore_identical_rows_on=[c for c, _, _ in cols if c != src.ingested_at],
        )
    )
    content = [c for c, _, _ in cols if c not in (src.event_id, src.ingested_at)]
    out.append(
        _sexp(
            "expect_column_values_to_not_be_in_set",
            {"column": src.event_id, "value_set": {"$PARAMETER": "event_ids_reused"}},
            f"Unstable event ids: an {src.event_id} that an EARLIER partition holds for another event (another "
            "entity, time or value) is a renumbered export (row or line numbers as ids); the kernel would keep the "
            "older event and silently drop this one. The same id with the same content is a re-delivery, allowed.",
            "unstable event ids",
            src,
            src.event_id,
            earlier_partitions="event_ids_reused",
            content=content,
        )
    )
    for k in src.keys:
        if k.min is not None:
            out.append(
                _sexp(
                    "expect_column_values_to_be_between",
                    {"column": k.name, "min_value": k.min},
                    f"Sentinel keys: {k.name} below {k.min} (Key.min) is a placeholder from another system "
                    "(0, -1), not an entity; its events would become one fake entity's features.",
                    "key outside its domain",
                    src,
                    k.name,
                )
            )
        if k.allowed is not None:
            out.append(
                _sexp(
                    "expect_column_values_to_be_in_set",
                    {"column": k.name, "value_set": list(k.allowed)},
                    f"Unknown key: {k.name} is one of {list(k.allowed)} (Key.allowed); another value is an entity "
                    "the source does not cover (a code system changed upstream, or another feed mixed in).",
                    "key outside its domain",
                    src,
                    k.name,
                )
            )
    for c in src.columns:
        if c.min is not None or c.max is not None:
            kw: dict[str, Any] = {"column": c.name}
            if c.min is not None:
                kw["min_value"] = c.min
            if c.max is not None:
                kw["max_value"] = c.max
            out.append(
                _sexp(
                    "expect_column_values_to_be_between",
                    kw,
                    f"Negative or absurd values: {c.name} is within [{_fmt(c.min, '-inf')}, {_fmt(c.max, 'inf')}] "
                    "(Column.min/max); outside is a refund leaking in, an overflow or a unit change.",
                    "negative or absurd amounts",
                    src,
                    c.name,
                )
            )
        if c.allowed is not None:
            kw = {"column": c.name, "value_set": list(c.allowed)}
            tolerated = ""
            if c.max_unknown_share:
                kw["mostly"] = round(1 - c.max_unknown_share, 12)
                tolerated = f" At most {c.max_unknown_share:g} of the rows may hold a new one (max_unknown_share)."
            out.append(
                _sexp(
                    "expect_column_values_to_be_in_set",
                    kw,
                    f"Unknown category: {c.name} is one of the {len(c.allowed)} known values (Column.allowed); "
                    f"a new value is an upstream change no feature expects.{tolerated}",
                    "unknown category",
                    src,
                    c.name,
                )
            )
        if c.mean is not None:
            out.append(
                _sexp(
                    "expect_column_mean_to_be_between",
                    {"column": c.name, "min_value": c.mean[0], "max_value": c.mean[1]},
                    f"Unit change: the partition mean of {c.name} is within {list(c.mean)} (Column.mean); a "
                    "unit change (cents for dollars) moves it by orders of magnitude.",
                    "negative or absurd amounts",
                    src,
                    c.name,
                )
            )
        if c.null_when is not None:
            cond = {"condition_parser": "pandas"}
            out += [
                _sexp(
                    "expect_column_values_to_be_null",
                    {"column": c.name, "row_condition": c.null_when, **cond},
                    f"Values nobody measured: {c.name} is null where {c.null_when} (Column.null_when).",
                    "values where none can exist",
                    src,
                    c.name,
                ),
                _sexp(
                    "expect_column_values_to_not_be_null",
                    {"column": c.name, "row_condition": f"not ({c.null_when})", **cond},
                    f"Dropped values: {c.name} is not null unless {c.null_when} (Column.null_when); a null "
                    "elsewhere is a feed that lost the value.",
                    "null-rate spike",
                    src,
                    c.name,
                ),
            ]
        share = c.not_null_share if c.not_null_share is not None else (None if c.nullable else 1.0)
        if share is not None and c.nullable:
            out.append(
                _sexp(
                    "expect_column_values_to_not_be_null",
                    {"column": c.name, "mostly": share},
                    f"Null-rate spike: at least {share:g} of {c.name} is not null (Column.not_null_share).",
                    "null-rate spike",
                    src,
                    c.name,
                )
            )
        if c.unique:
            out.append(
                _sexp(
                    "expect_column_values_to_be_unique",
                    {"column": c.name},
                    f"Duplicate keys: {c.name} is declared unique (Column.unique).",
                    "duplicate keys",
                    src,
                    c.name,
                )
            )
    return out


def model_expectations(dataset: str, model, rules: dict) -> list[dict]:
    """GE expectation configs derived from a :class:`features.model.Model` for its tables."""
    from features.model import EntitySnapshots

    out: list[dict] = []
    sets = model.feature_sets
    if dataset == "training_sets":
        query_cols = [tuple(c) for c in (rules.get("schema") or {}).get("query_columns", [])]
        cols = [*model.id_columns, ("as_of", "timestamp[us, tz=UTC]"), *query_cols]
        for fs in sets:
            cols += [(f.name, "int64" if f.is_integer else "double") for f in fs.features]
        out.append(
            _mexp(
                "expect_table_columns_to_match_ordered_list",
                {"column_list": [c for c, _ in cols]},
                f"Schema drift: the columns of {model.training_table}, in order: the model's id columns, as_of, "
                "the label, then every joined set's features in join order.",
                "schema drift",
                model,
            )
        )
        out += [
            _mexp(
                "expect_column_values_to_be_of_type",
                {"column": c, "type_": t},
                f"Schema drift: {c} is {t}.",
                "schema drift",
                model,
            )
            for c, t in cols
        ]
    elif dataset == "predictions":
        out += [
            _mexp(
                "expect_column_values_to_be_of_type",
                {"column": c, "type_": t},
                f"Schema drift: the id column {c} keeps the declared key type {t} (joins and SQL lookups "
                "silently mismatch otherwise).",
                "schema drift",
                model,
            )
            for c, t in model.id_columns
        ]
    elif dataset == "serving_logs":
        for col, query_col, type_ in log_keys(model):
            out.append(
                _mexp(
                    "expect_column_values_to_be_of_type",
                    {"column": col, "type_": type_},
                    f"Schema drift: the logged key {col} (query column {query_col}) keeps its declared type {type_}, "
                    "so offline recomputation finds the entity.",
                    "schema drift",
                    model,
                )
            )
            if not dict((n, nullable) for n, _, nullable in model.queries.source.raw_columns()).get(query_col, False):
                out.append(
                    _mexp(
                        "expect_column_values_to_not_be_null",
                        {"column": col},
                        f"Key nulls: every request names its {query_col} (declared non-nullable).",
                        "key nulls",
                        model,
                    )
                )
    feats = dict(rules.get("features") or {})
    if dataset == "training_sets":
        feats.pop("types", None)  # the schema above types them
    for fs in sets:
        first = isinstance(model.queries, EntitySnapshots) and fs.entity == model.queries.key_name
        sub = {"features": {**feats, "not_null": bool(feats.get("not_null"))}, "lifetime_not_null": first}
        if any(sub["features"].values()):
            out += derived_expectations(fs, sub, column_bounds(fs.source))
    return out


def log_keys(model) -> list[tuple[str, str, str]]:
    """``(log column, query column, Arrow type)`` of the keys a serving-log row of ``model`` carries:
    ``entity_id`` for a model with one query key, else each query key under its own name (the rule of
    ``jobs.serving.log.log_keys``, which a test keeps equal)."""
    keys = list(model.query_keys)
    if len(keys) == 1:
        return [("entity_id", keys[0][0], keys[0][1])]
    return [(name, name, type_) for name, type_ in keys]


def derived_expectations(fs, derive: dict, source_bounds: dict[str, tuple[Any, Any]]) -> list[dict]:
    """GE expectation configs for feature set ``fs`` under the ``derive`` rules of a suite."""
    from features.kernel import output_columns

    out: list[dict] = []
    schema = derive.get("schema")
    feats = derive.get("features") or {}
    if schema is not None:
        query_cols = [tuple(c) for c in schema.get("query_columns", [])]
        cols = output_columns(fs, query_cols, fs.entity_type)
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
        out += _not_null(fs, derive.get("lifetime_not_null", True))
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


def _not_null(fs, lifetime: bool = True) -> list[dict]:
    out = []
    for f in fs.features:
        lifetime_recency = lifetime and f.agg in ("days_since_last", "days_since_first") and f.window_days is None
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


def _fmt(v, none: str = "") -> str:
    if v is None:
        return none
    return "inf" if v == _INF else "-inf" if v == -_INF else f"{v:g}"


def _exp(type_: str, kwargs: dict, notes: str, risk: str, fs, feature=None) -> dict:
    meta: dict[str, Any] = {"risk": risk, "derived_from": f"feature set {fs.name}"}
    if feature is not None:
        meta["derived_from"] += f".{feature.name} ({_describe(feature)})"
    return {"type": type_, "kwargs": kwargs, "notes": notes, "meta": meta}


def _sexp(type_: str, kwargs: dict, notes: str, risk: str, src, column=None, **meta_extra) -> dict:
    meta: dict[str, Any] = {"risk": risk, "derived_from": f"source {src.name}" + (f".{column}" if column else "")}
    meta.update(meta_extra)
    return {"type": type_, "kwargs": kwargs, "notes": notes, "meta": meta}


def _mexp(type_: str, kwargs: dict, notes: str, risk: str, model) -> dict:
    return {
        "type": type_,
        "kwargs": kwargs,
        "notes": notes,
        "meta": {"risk": risk, "derived_from": f"model {model.name}"},
    }
