"""The one feature kernel: point-in-time aggregates for (entity, as_of) queries.

``compute`` is the only implementation of every feature; engines map it over
hash buckets and the serving path calls it for one request. Exactness rules
(DESIGN §1), which make all of them agree bit for bit:

* an event counts for query ``(e, t)`` and window ``w`` when
  ``t - w <= event_ts < t``; in ``known_at`` mode also ``ingested_at < t``;
* each window's aggregate is computed from that window's own rows, in
  ``(event_ts, event_id)`` order, by sequential accumulation (``np.bincount``
  with weights adds in array order; ``np.add.reduceat`` does not — its
  vectorised inner loop rounds differently depending on the slice's memory
  offset, so the same rows at another position could give another last bit);
* never by differencing prefix sums, so a truncated history (the online store)
  gives the same bits as the full one;
* duplicated ``event_id``s keep the earliest ``ingested_at``; a null source value
  counts in ``count`` but not in other aggregates; an aggregate over no values
  is the feature's declared default.

Timestamps are handled as int64 microseconds since the epoch, UTC.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.spec import MODES, Feature, FeatureSet

US_PER_DAY = 86_400_000_000
#: Upper bound on (query, event) pairs materialised at once; queries are processed
#: in chunks under it so memory stays bounded whatever the history length.
MAX_PAIRS = 4_000_000
#: (entity, microsecond offset) is packed into one int64 key below this bound; beyond it
#: (very long spans x many entities) dense ranks of the event times are used instead.
PACK_LIMIT = 2**62
AS_OF = "as_of"


def compute(events: pd.DataFrame, queries: pd.DataFrame, fs: FeatureSet, mode: str = "known_at") -> pd.DataFrame:
    """Features of ``fs`` for every query row, point in time.

    ``events`` needs ``fs.event_columns``; ``queries`` needs ``fs.entity`` and
    ``as_of``. Returns the query columns (``as_of`` as ``datetime64[us, UTC]``)
    followed by the features, in query order.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    _require(events, fs.event_columns, "events")
    _require(queries, (fs.entity, AS_OF), "queries")

    ev = EventIndex(events, fs)
    q_t = to_us(queries[AS_OF], f"queries.{AS_OF}")
    q_code = ev.codes_for(queries[fs.entity])
    values = _evaluate(ev, q_code, q_t, fs, mode)

    out = queries.reset_index(drop=True).copy()
    out[AS_OF] = from_us(q_t)
    feats = pd.DataFrame(values, columns=list(fs.feature_names))
    return pd.concat([out, feats], axis=1)


def index_events(events: pd.DataFrame, fs: FeatureSet) -> EventIndex:
    """The kernel's sorted, deduplicated view of ``events``, reusable across ``compute_indexed`` calls.

    ``compute(events, queries)`` is ``compute_indexed(index_events(events), ...)`` plus the
    frame around it; the serving path keeps one index per entity so a request costs only the
    evaluation (numpy over that entity's rows), not the index build.
    """
    _require(events, fs.event_columns, "events")
    return EventIndex(events, fs)


def compute_indexed(
    index: EventIndex, entity_ids, as_of_us, fs: FeatureSet, mode: str = "known_at"
) -> dict[str, np.ndarray]:
    """Feature arrays for queries given as entity ids and int64 microsecond times (see ``to_us``)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    q_t = np.asarray(as_of_us, dtype=np.int64)
    q_code = index.codes_for(np.asarray(entity_ids))
    return _evaluate(index, q_code, q_t, fs, mode)


def snapshot_queries(events: pd.DataFrame, fs: FeatureSet, as_of, mode: str = "known_at") -> pd.DataFrame:
    """Every entity with an event visible at ``as_of``, as one query each (sorted by entity)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    t = to_us(pd.Series([pd.Timestamp(as_of)]), AS_OF)[0]
    visible = to_us(events[fs.timestamp], fs.timestamp) < t
    if mode == "known_at":
        visible &= to_us(events[fs.ingested_at], fs.ingested_at) < t
    visible &= events[fs.entity].notna().to_numpy()
    ids = np.sort(pd.unique(events[fs.entity].to_numpy()[visible]))
    return pd.DataFrame({fs.entity: ids, AS_OF: from_us(np.full(len(ids), t, dtype=np.int64))})


def output_columns(fs: FeatureSet, query_columns=None, entity_type: str = "int64") -> list[tuple[str, str]]:
    """(name, Arrow type) of ``compute``'s output; extra query columns as ``(name, type)`` pairs."""
    cols = [(fs.entity, entity_type), (AS_OF, "timestamp[us, tz=UTC]")]
    cols += list(query_columns or [])
    cols += [(f.name, "int64" if f.is_integer else "double") for f in fs.features]
    return cols


# --------------------------------------------------------------------------- time


def to_us(values, what: str = "timestamp") -> np.ndarray:
    """int64 microseconds since the epoch, UTC. Naive timestamps are taken as UTC."""
    s = values if isinstance(values, pd.Series) else pd.Series(values)
    if not (isinstance(s.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(s.dtype)):
        s = pd.to_datetime(s, utc=True)
    if s.isna().any():
        raise ValueError(f"{what}: {int(s.isna().sum())} null timestamp(s); every event and query needs one")
    s = s.dt.tz_localize("UTC") if s.dt.tz is None else s.dt.tz_convert("UTC")
    raw = s.array.asi8
    unit = s.dt.unit
    if unit == "us":
        return raw.astype(np.int64, copy=False)
    if unit == "ns":
        return np.floor_divide(raw, 1000)  # truncate to Spark's microsecond precision
    if unit == "ms":
        return raw * 1000
    return raw * 1_000_000  # "s"


def from_us(us: np.ndarray) -> pd.Series:
    return pd.Series(pd.to_datetime(np.asarray(us, dtype=np.int64), unit="us", utc=True))


# --------------------------------------------------------------------------- events


class EventIndex:
    """Deduplicated events sorted by (entity, event_ts, event_id), with search keys."""

    def __init__(self, events: pd.DataFrame, fs: FeatureSet):
        keyless = events[fs.entity].isna().to_numpy()
        if keyless.any():  # an event without this set's key belongs to none of its entities
            events = events.loc[~keyless]
        eid = _key_array(events[fs.event_id], fs.event_id)
        ts = to_us(events[fs.timestamp], f"events.{fs.timestamp}")
        ing = to_us(events[fs.ingested_at], f"events.{fs.ingested_at}")
        by_id = np.argsort(eid, kind="stable")
        sorted_ids = eid[by_id]
        if (sorted_ids[1:] == sorted_ids[:-1]).any():
            keep = _dedup(events, fs, eid, ts, ing)
            events, eid, ts, ing = events.iloc[keep], eid[keep], ts[keep], ing[keep]
            by_id = np.argsort(eid, kind="stable")
        self._frame = events
        codes, self._entity_uniques = pd.factorize(events[fs.entity], use_na_sentinel=True)
        codes = codes.astype(np.int64)
        coord = self._time_coordinates(ts, len(self._entity_uniques))
        key = codes * self._stride + coord
        # Stable sort by (entity, time) of rows already in event_id order = (entity, event_ts, event_id).
        order = by_id[np.argsort(key[by_id], kind="stable")]
        self._order = order
        self.ts, self.ing, self.key = ts[order], ing[order], key[order]
        self._columns: dict = {}
        self._lookup: pd.Index | None = None

    def _time_coordinates(self, ts: np.ndarray, n_entities: int) -> np.ndarray:
        """Integer time coordinates such that (entity, coordinate) packs into one int64 key.

        Microsecond offsets when they fit (the common case), else dense ranks of the
        event times; both order every event and query time exactly as the timestamps do.
        """
        self._times = None
        if len(ts) == 0:
            self._tmin, self._stride = np.int64(0), np.int64(2)
            return ts
        self._tmin = ts.min()
        span = int(ts.max()) - int(self._tmin) + 2
        if (n_entities + 1) * span < PACK_LIMIT:
            self._stride = np.int64(span)
            return ts - self._tmin
        self._times = np.unique(ts)
        self._stride = np.int64(len(self._times) + 1)
        return np.searchsorted(self._times, ts)

    def coordinate(self, t_us: np.ndarray) -> np.ndarray:
        """Coordinate c(t) with: event coordinate >= c(t)  <=>  event_ts >= t."""
        if self._times is not None:
            return np.searchsorted(self._times, t_us, side="left")
        return np.clip(t_us - self._tmin, 0, self._stride - 1)

    def codes_for(self, entities) -> np.ndarray:
        """Entity code per query; -1 for an entity with no events."""
        values = entities.to_numpy() if isinstance(entities, pd.Series) else np.asarray(entities)
        if self._lookup is None:  # kept: its hash table is built once per index, not per call
            self._lookup = pd.Index(self._entity_uniques)
        if len(values) == 1:  # the serving path: one request
            try:
                code = self._lookup.get_loc(values[0])
            except (KeyError, TypeError):
                code = -1
            return np.array([code], dtype=np.int64)
        return self._lookup.get_indexer(pd.Index(values)).astype(np.int64)

    def bound(self, q_code: np.ndarray, t_us: np.ndarray | None) -> np.ndarray:
        """Index of the entity's first event with event_ts >= t (t None: its first event).

        Fastest with queries sorted by (entity, t): numpy's searchsorted then walks forward.
        """
        coord = 0 if t_us is None else self.coordinate(t_us)
        pos = np.searchsorted(self.key, q_code * self._stride + coord, side="left")
        return np.where(q_code < 0, 0, pos)

    def numeric(self, column: str) -> np.ndarray:
        got = self._columns.get((column, "num"))
        if got is None:
            s = self._frame[column]
            try:
                got = pd.to_numeric(s).to_numpy(dtype=np.float64, na_value=np.nan)[self._order]
            except (TypeError, ValueError) as exc:
                raise ValueError(f"events.{column}: not numeric ({s.dtype}): {exc}") from None
            self._columns[(column, "num")] = got
        return got

    def categorical(self, column: str) -> tuple[np.ndarray, int]:
        got = self._columns.get((column, "cat"))
        if got is None:
            codes, uniques = pd.factorize(self._frame[column], use_na_sentinel=True)
            got = (codes.astype(np.int64)[self._order], max(len(uniques), 1))
            self._columns[(column, "cat")] = got
        return got


def _key_array(s: pd.Series, what: str) -> np.ndarray:
    if s.isna().any():
        raise ValueError(f"events.{what}: {int(s.isna().sum())} null value(s)")
    if pd.api.types.is_integer_dtype(s.dtype):
        return s.to_numpy(dtype=np.int64)
    return pd.factorize(s, sort=True)[0].astype(np.int64)


def _dedup(events: pd.DataFrame, fs: FeatureSet, eid, ts, ing) -> np.ndarray:
    """Row positions to keep: per event_id the earliest ingested_at.

    Ties on ingested_at are broken by event_ts and then the source values (nulls
    last), so the choice does not depend on the input's row order (which differs per engine).
    """
    keys = []
    for col in reversed(fs.source_columns):
        codes, uniques = pd.factorize(events[col], sort=True, use_na_sentinel=True)
        keys.append(np.where(codes < 0, len(uniques), codes))  # nulls last: prefer a copy with values
    keys += [ts, ing, eid]
    order = np.lexsort(keys)
    first = np.r_[True, eid[order][1:] != eid[order][:-1]]
    return np.sort(order[first])


def _require(frame: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"{what} frame is missing column(s) {missing}; it has {list(frame.columns)}")


# --------------------------------------------------------------------------- evaluation


def _evaluate(ev: EventIndex, q_code, q_t, fs: FeatureSet, mode: str) -> dict[str, np.ndarray]:
    n = len(q_t)
    out = {f.name: np.empty(n, dtype=np.int64 if f.is_integer else np.float64) for f in fs.features}
    by_window: dict[int | None, list[Feature]] = {}
    for f in fs.features:
        if f.agg != "ratio":
            by_window.setdefault(f.window_us, []).append(f)
    # Work on queries sorted by (entity, as_of): searchsorted is fast on sorted needles.
    order = np.lexsort((q_t, q_code))
    code, t_all = q_code[order], q_t[order]
    hi = ev.bound(code, t_all)
    for w, feats in by_window.items():
        lo = ev.bound(code, None if w is None else t_all - w)
        lengths = hi - lo
        for qs, qe in _chunks(lengths, MAX_PAIRS):
            qi, ei = _pairs(lo[qs:qe], lengths[qs:qe])
            t = t_all[qs:qe]
            if mode == "known_at":
                keep = ev.ing[ei] < t[qi]
                qi, ei = qi[keep], ei[keep]
            rows = _WindowRows(ev, qi, ei, qe - qs)
            for f in feats:
                out[f.name][order[qs:qe]] = _aggregate(f, rows, t)
    for f in fs.features:
        if f.agg == "ratio":
            out[f.name] = _ratio(out[f.numerator], out[f.denominator], f.default)
    return out


def _chunks(lengths: np.ndarray, max_pairs: int):
    """Contiguous query ranges whose pairs stay under max_pairs (a single huge query stands alone)."""
    n = len(lengths)
    if n == 0:
        return
    csum = np.cumsum(lengths)
    start = 0
    while start < n:
        base = csum[start - 1] if start else 0
        end = int(np.searchsorted(csum, base + max_pairs, side="right"))
        end = max(end, start + 1)
        yield start, min(end, n)
        start = end


def _pairs(lo: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(query, event) index pairs for the ranges [lo, lo+len), in query then event order."""
    total = int(lengths.sum())
    qi = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    offsets = np.cumsum(lengths) - lengths
    ei = np.arange(total, dtype=np.int64) + np.repeat(lo - offsets, lengths)
    return qi, ei


class _WindowRows:
    """One window's (query, event) pairs, sorted by query then (event_ts, event_id),
    with the gathers that several features of the window share."""

    def __init__(self, ev: EventIndex, qi: np.ndarray, ei: np.ndarray, n: int):
        self.ev, self.qi, self.ei, self.n = ev, qi, ei, n
        self._cache: dict = {}

    def segments(self) -> tuple[np.ndarray, np.ndarray]:
        if "seg" not in self._cache:
            self._cache["seg"] = _segments(self.qi)
        return self._cache["seg"]

    def non_null(self, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query ids, values, per-query count) of the non-null values of ``column``."""
        key = ("num", column)
        if key not in self._cache:
            v = self.ev.numeric(column)[self.ei]
            nn = ~np.isnan(v)
            qn = self.qi[nn]
            self._cache[key] = (qn, v[nn], np.bincount(qn, minlength=self.n))
        return self._cache[key]


def _aggregate(f: Feature, rows: _WindowRows, t: np.ndarray) -> np.ndarray:
    """One feature over a window's rows; ``t`` are the queries' times."""
    n, qi, ei = rows.n, rows.qi, rows.ei
    if f.agg == "count":
        c = np.bincount(qi, minlength=n)
        return np.where(c > 0, c, int(f.default or 0)).astype(np.int64)
    if f.agg == "distinct_count":
        cnt = _distinct(rows, f.column)
        return np.where(cnt > 0, cnt, int(f.default or 0)).astype(np.int64)
    default = np.nan if f.default is None else float(f.default)
    if f.agg in ("days_since_last", "days_since_first"):
        res = np.full(n, default)
        if len(qi):
            starts, ends = rows.segments()
            pick = ends - 1 if f.agg == "days_since_last" else starts
            q = qi[pick]
            res[q] = (t[q] - rows.ev.ts[ei[pick]]).astype(np.float64) / US_PER_DAY
        return res
    qn, vn, cnt = rows.non_null(f.column)
    if f.agg in ("sum", "mean"):
        total = np.bincount(qn, weights=vn, minlength=n)  # sequential, in row order
        if f.agg == "mean":
            with np.errstate(invalid="ignore", divide="ignore"):
                total = total / cnt
        return np.where(cnt > 0, total, default)
    res = np.full(n, default)
    if len(qn):
        ufunc = np.minimum if f.agg == "min" else np.maximum
        starts = np.flatnonzero(np.r_[True, qn[1:] != qn[:-1]])
        res[qn[starts]] = ufunc.reduceat(vn, starts)  # min/max are exact in any order
    return res


def _distinct(rows: _WindowRows, column: str) -> np.ndarray:
    """Distinct non-null values of ``column`` per query."""
    codes, ncat = rows.ev.categorical(column)
    c = codes[rows.ei]
    if ncat <= 63 and len(c):
        # one bit per category, OR-ed per query, then counted
        bits = np.where(c >= 0, np.left_shift(np.uint64(1), np.maximum(c, 0).astype(np.uint64)), np.uint64(0))
        starts, _ = rows.segments()
        out = np.zeros(rows.n, dtype=np.int64)
        out[rows.qi[starts]] = np.bitwise_count(np.bitwise_or.reduceat(bits, starts))
        return out
    valid = c >= 0
    keys = np.sort(rows.qi[valid] * ncat + c[valid])
    first = np.r_[True, keys[1:] != keys[:-1]] if len(keys) else np.zeros(0, dtype=bool)
    return np.bincount(keys[first] // ncat, minlength=rows.n)


def _segments(sorted_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end positions of the runs of equal ids in a sorted array."""
    change = np.flatnonzero(sorted_ids[1:] != sorted_ids[:-1]) + 1
    starts = np.r_[0, change]
    ends = np.r_[change, len(sorted_ids)]
    return starts, ends


def _ratio(num: np.ndarray, den: np.ndarray, default) -> np.ndarray:
    num = num.astype(np.float64)
    den = den.astype(np.float64)
    ok = (den != 0) & ~np.isnan(den) & ~np.isnan(num)
    res = np.full(len(num), np.nan if default is None else float(default))
    np.divide(num, den, out=res, where=ok)
    return res
