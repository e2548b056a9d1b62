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

    ev = _EventIndex(events, fs)
    q_t = to_us(queries[AS_OF], f"queries.{AS_OF}")
    q_code = ev.codes_for(queries[fs.entity])
    values = _evaluate(ev, q_code, q_t, fs, mode)

    out = queries.reset_index(drop=True).copy()
    out[AS_OF] = from_us(q_t)
    feats = pd.DataFrame(values, columns=list(fs.feature_names))
    return pd.concat([out, feats], axis=1)


def snapshot_queries(events: pd.DataFrame, fs: FeatureSet, as_of, mode: str = "known_at") -> pd.DataFrame:
    """Every entity with an event visible at ``as_of``, as one query each (sorted by entity)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    t = to_us(pd.Series([pd.Timestamp(as_of)]), AS_OF)[0]
    visible = to_us(events[fs.timestamp], fs.timestamp) < t
    if mode == "known_at":
        visible &= to_us(events[fs.ingested_at], fs.ingested_at) < t
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

class _EventIndex:
    """Deduplicated events sorted by (entity, event_ts, event_id), with search keys."""

    def __init__(self, events: pd.DataFrame, fs: FeatureSet):
        self.fs = fs
        eid = _key_array(events[fs.event_id], fs.event_id)
        ts = to_us(events[fs.timestamp], f"events.{fs.timestamp}")
        ing = to_us(events[fs.ingested_at], f"events.{fs.ingested_at}")
        keep = _dedup(events, fs, eid, ts, ing)
        self._frame = events.iloc[keep] if keep is not None else events
        if keep is not None:
            eid, ts, ing = eid[keep], ts[keep], ing[keep]
        self._entity_codes, self._entity_uniques = pd.factorize(self._frame[fs.entity], use_na_sentinel=True)
        if (self._entity_codes < 0).any():
            raise ValueError(f"events.{fs.entity}: null entity keys")
        order = np.lexsort((eid, ts, self._entity_codes))
        self.ts, self.ing = ts[order], ing[order]
        self._order = order
        self.code = self._entity_codes[order].astype(np.int64)
        # Dense ranks of event times make (entity, time) one sortable int64 key.
        self.times = np.unique(self.ts)
        self._stride = np.int64(len(self.times) + 1)
        self.key = self.code * self._stride + np.searchsorted(self.times, self.ts)
        self._columns: dict[tuple[str, str], np.ndarray] = {}

    def codes_for(self, entities: pd.Series) -> np.ndarray:
        """Entity code per query; -1 for an entity with no events."""
        idx = pd.Index(self._entity_uniques)
        return idx.get_indexer(pd.Index(entities.to_numpy())).astype(np.int64)

    def bound(self, q_code: np.ndarray, t_us: np.ndarray) -> np.ndarray:
        """Index of the entity's first event with event_ts >= t (its events < t end there)."""
        rank = np.searchsorted(self.times, t_us, side="left")
        pos = np.searchsorted(self.key, q_code * self._stride + rank, side="left")
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
            got = codes.astype(np.int64)[self._order]
            self._columns[(column, "cat")] = got
            self._columns[(column, "ncat")] = np.int64(max(len(uniques), 1))
        return got, int(self._columns[(column, "ncat")])


def _key_array(s: pd.Series, what: str) -> np.ndarray:
    if s.isna().any():
        raise ValueError(f"events.{what}: {int(s.isna().sum())} null value(s)")
    if pd.api.types.is_integer_dtype(s.dtype):
        return s.to_numpy(dtype=np.int64)
    return pd.factorize(s, sort=True)[0].astype(np.int64)


def _dedup(events: pd.DataFrame, fs: FeatureSet, eid, ts, ing) -> np.ndarray | None:
    """Row positions to keep: per event_id the earliest ingested_at (None when no duplicates).

    Ties on ingested_at are broken by event_ts and then the source values (nulls
    last), so the choice does not depend on the input's row order (which differs per engine).
    """
    if len(eid) == 0 or len(pd.unique(eid)) == len(eid):
        return None
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

def _evaluate(ev: _EventIndex, q_code, q_t, fs: FeatureSet, mode: str) -> dict[str, np.ndarray]:
    n = len(q_t)
    base = [f for f in fs.features if f.agg != "ratio"]
    out = {f.name: np.empty(n, dtype=np.int64 if f.is_integer else np.float64) for f in fs.features}
    windows = {f.window_us for f in base}
    widest = None if None in windows else max(windows, default=0)
    hi = ev.bound(q_code, q_t)
    lo = np.where(q_code < 0, 0, np.searchsorted(ev.key, q_code * ev._stride, side="left")) if widest is None \
        else ev.bound(q_code, q_t - widest)
    lengths = hi - lo

    for qs, qe in _chunks(lengths, MAX_PAIRS):
        qi, ei = _pairs(lo[qs:qe], lengths[qs:qe])
        t = q_t[qs:qe]
        if mode == "known_at":
            keep = ev.ing[ei] < t[qi]
            qi, ei = qi[keep], ei[keep]
        for w in windows:
            if w is None:
                qw, ew = qi, ei
            else:
                m = ev.ts[ei] >= t[qi] - w
                qw, ew = qi[m], ei[m]
            for f in base:
                if f.window_us == w:
                    out[f.name][qs:qe] = _aggregate(f, ev, qw, ew, t, qe - qs)
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


def _aggregate(f: Feature, ev: _EventIndex, qi, ei, t, n: int) -> np.ndarray:
    """One feature over (query, event) pairs sorted by query then (event_ts, event_id)."""
    if f.agg == "count":
        c = np.bincount(qi, minlength=n)
        return np.where(c > 0, c, int(f.default or 0)).astype(np.int64)
    if f.agg == "distinct_count":
        codes, ncat = ev.categorical(f.column)
        c = codes[ei]
        valid = c >= 0
        uniq = np.unique(qi[valid] * ncat + c[valid])
        cnt = np.bincount(uniq // ncat, minlength=n)
        return np.where(cnt > 0, cnt, int(f.default or 0)).astype(np.int64)
    if f.agg in ("days_since_last", "days_since_first"):
        res = np.full(n, np.nan if f.default is None else float(f.default))
        if len(qi):
            starts, ends = _segments(qi)
            pick = ends - 1 if f.agg == "days_since_last" else starts
            q = qi[pick]
            res[q] = (t[q] - ev.ts[ei[pick]]).astype(np.float64) / US_PER_DAY
        return res

    v = ev.numeric(f.column)[ei]
    nn = ~np.isnan(v)
    qn, vn = qi[nn], v[nn]
    cnt = np.bincount(qn, minlength=n)
    default = np.nan if f.default is None else float(f.default)
    if f.agg in ("sum", "mean"):
        total = np.bincount(qn, weights=vn, minlength=n)  # sequential, in row order
        if f.agg == "mean":
            with np.errstate(invalid="ignore", divide="ignore"):
                total = total / cnt
        return np.where(cnt > 0, total, default)
    res = np.full(n, default)
    if len(qn):
        ufunc = np.minimum if f.agg == "min" else np.maximum
        starts, _ = _segments(qn)
        res[qn[starts]] = ufunc.reduceat(vn, starts)  # min/max are exact in any order
    return res


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
