"""Synthetic CDNOW-shaped events (the ``cdnow_purchases`` raw table) at any scale, streamed day by day: the benches' data.

The generator writes the same schema as the CDNOW ingest (``jobs.schemas.raw_schema`` of the ``cdnow_purchases`` source)
with the awkward properties real event streams have, each at a chosen rate:

- activity per entity is heavy-tailed: every entity gets a lognormal weight
  (sigma ``ENTITY_SIGMA``; the top 1% of entities hold about 20% of the events);
- ``event_ts`` is uniform within its day at microsecond precision, except that
  ``tie_rate`` of the events share their exact ``event_ts`` with another event of
  the same entity (downstream ties are broken by ``event_id``);
- ``amount`` = ``n_items`` x a lognormal price, rounded to cents, always positive,
  null for ``null_rate`` of the events; ``n_items`` >= 1, Zipf-distributed;
- ``category`` is one of the first ``n_categories`` (at most 4) price bands the CDNOW source
  allows, in ``CATEGORIES`` order (``standard``, ``budget``, ``premium``, ``free``: CDNOW's own
  order of frequency) with Zipf-like probabilities (``standard`` the most frequent), so generated
  partitions pass the source's declared checks;
- on time, ``ingested_at`` is the end of the event's day (23:59:59.999999 UTC,
  like CDNOW); ``late_rate`` of the events arrive late, ``ingested_at`` = event_ts
  + a uniform lag of 1 to ``max_late_days`` days;
- ``dup_rate`` of the events are delivered twice: the copy has the same
  ``event_id`` and content and an ``ingested_at`` 1 us to 1 day after the
  original's (so an on-time event's copy lands in the next day's partition).

``event_id`` runs 1..``events`` over the event days in order, unique except for
the intended duplicates. Event days are ``start`` .. ``start + days - 1``; the ingest
partitions continue for ``max_late_days`` more days when ``late_rate > 0`` and one
more when ``dup_rate > 0``, so every requested event lands somewhere, and every
ingest day of that range is emitted (empty if nothing arrived).

Output is a function of the parameters and ``seed`` only, not of ``chunk_rows``:
random draws happen in fixed blocks of ``BLOCK_ROWS`` events, each with its own
seed derived from ``(seed, day, block)``. Memory holds one chunk of output, one
block, the per-entity weights (8 bytes per entity) and the rows waiting for a
later ingest day (about (late_rate + dup_rate) x events per day x max_late_days).
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import fsspec
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from features.projects.cdnow.purchases import CDNOW_PURCHASES
from jobs.schemas import raw_schema, to_raw

RAW_SCHEMA = raw_schema(CDNOW_PURCHASES)


def to_raw_events(frame: pd.DataFrame):
    """A generated frame as an Arrow table of the ``cdnow_purchases`` raw schema."""
    return to_raw(CDNOW_PURCHASES, frame)


BLOCK_ROWS = 1 << 16
ENTITY_SIGMA = 1.5
CATEGORY_EXPONENT = 1.2
#: The categories drawn: the CDNOW source's allowed price bands, most frequent first.
CATEGORIES: tuple[str, ...] = tuple(
    sorted(CDNOW_PURCHASES.column("category").allowed, key=("standard", "budget", "premium", "free").index)
)
ITEMS_ZIPF_A = 2.5
MAX_ITEMS = 99
PRICE_MEDIAN = 13.0
PRICE_SIGMA = 0.45
DAY_US = 86_400_000_000
_EPOCH = dt.date(1970, 1, 1)


@dataclass(frozen=True)
class GeneratorParams:
    """Everything the generated rows depend on (``chunk_rows`` is not part of it)."""

    entities: int
    events: int
    days: int
    start: str = "2024-01-01"
    seed: int = 0
    null_rate: float = 0.02
    dup_rate: float = 0.01
    late_rate: float = 0.03
    max_late_days: int = 5
    tie_rate: float = 0.05
    n_categories: int = len(CATEGORIES)

    def __post_init__(self) -> None:
        if self.entities < 1 or self.days < 1 or self.events < 0 or self.n_categories < 1:
            raise ValueError("entities, days and n_categories must be >= 1 and events >= 0")
        if self.n_categories > len(CATEGORIES):
            raise ValueError(f"n_categories must be <= {len(CATEGORIES)} (the CDNOW price bands {list(CATEGORIES)})")
        for name in ("null_rate", "dup_rate", "late_rate", "tie_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value!r}")
        if self.late_rate > 0 and self.max_late_days < 1:
            raise ValueError("max_late_days must be >= 1 when late_rate > 0")
        if self.seed < 0:
            raise ValueError("seed must be >= 0")
        dt.date.fromisoformat(self.start)

    @property
    def start_date(self) -> dt.date:
        return dt.date.fromisoformat(self.start)

    @property
    def ingest_days(self) -> int:
        """Number of ingest partitions: the event days plus the late/duplicate tail."""
        tail = (self.max_late_days if self.late_rate > 0 else 0) + (1 if self.dup_rate > 0 else 0)
        return self.days + tail

    def ds(self, day: int) -> str:
        return (self.start_date + dt.timedelta(days=day)).isoformat()


def _frame(event_id, customer_id, event_ts, ingested_at, n_items, amount, category) -> pd.DataFrame:
    def utc(us: np.ndarray) -> pd.Series:
        return pd.Series(us.astype("datetime64[us]")).dt.tz_localize("UTC")

    return pd.DataFrame(
        {
            "event_id": event_id,
            "customer_id": customer_id,
            "event_ts": utc(event_ts),
            "ingested_at": utc(ingested_at),
            "n_items": n_items,
            "amount": amount,
            "category": pd.array(category, dtype="str"),
        }
    )


def _empty_frame() -> pd.DataFrame:
    i8 = np.empty(0, dtype=np.int64)
    return _frame(i8, i8, i8, i8, i8, np.empty(0, dtype=np.float64), np.empty(0, dtype=object))


class _Model:
    """The per-run state: entity weights, category probabilities, events per day."""

    def __init__(self, p: GeneratorParams):
        rng = np.random.default_rng(np.random.SeedSequence(p.seed, spawn_key=(0,)))
        weights = rng.lognormal(0.0, ENTITY_SIGMA, p.entities)
        self.entity_cdf = np.cumsum(weights)
        self.entity_cdf /= self.entity_cdf[-1]
        del weights
        self.per_day = rng.multinomial(p.events, np.full(p.days, 1.0 / p.days))
        self.day_offset = np.concatenate([[0], np.cumsum(self.per_day)])
        cat_w = 1.0 / np.arange(1, p.n_categories + 1) ** CATEGORY_EXPONENT
        self.category_cdf = np.cumsum(cat_w) / cat_w.sum()
        self.labels = np.array(CATEGORIES[: p.n_categories], dtype=object)
        self.start_us = (p.start_date - _EPOCH).days * DAY_US


def _block(p: GeneratorParams, m: _Model, day: int, block: int, n: int) -> tuple[pd.DataFrame, np.ndarray]:
    """``n`` events of event day ``day`` (plus their duplicate copies) and each row's ingest day index."""
    rng = np.random.default_rng(np.random.SeedSequence(p.seed, spawn_key=(1, day, block)))
    first_id = m.day_offset[day] + block * BLOCK_ROWS + 1
    event_id = np.arange(first_id, first_id + n, dtype=np.int64)
    entity = np.minimum(np.searchsorted(m.entity_cdf, rng.random(n), side="right"), p.entities - 1)
    customer_id = entity.astype(np.int64) + 1
    day_start = m.start_us + day * DAY_US
    event_ts = day_start + rng.integers(0, DAY_US, n, dtype=np.int64)
    # A tie pair: the target takes over the source's entity and instant, so both
    # rows tie; n_pairs ~ Binomial(n/2, tie_rate) makes ~tie_rate of rows tied.
    n_pairs = int(rng.binomial(n // 2, p.tie_rate)) if n >= 2 else 0
    if n_pairs:
        idx = rng.choice(n, 2 * n_pairs, replace=False)
        target, source = idx[:n_pairs], idx[n_pairs:]
        customer_id[target] = customer_id[source]
        event_ts[target] = event_ts[source]
    n_items = np.minimum(rng.zipf(ITEMS_ZIPF_A, n), MAX_ITEMS).astype(np.int64)
    price = rng.lognormal(np.log(PRICE_MEDIAN), PRICE_SIGMA, n)
    amount = np.maximum(np.round(n_items * price, 2), 0.01)
    amount[rng.random(n) < p.null_rate] = np.nan
    codes = np.minimum(np.searchsorted(m.category_cdf, rng.random(n), side="right"), p.n_categories - 1)
    ingested_at = np.full(n, day_start + DAY_US - 1, dtype=np.int64)
    late = rng.random(n) < p.late_rate
    n_late = int(late.sum())
    if n_late:
        lag = rng.integers(DAY_US, p.max_late_days * DAY_US + 1, n_late, dtype=np.int64)
        ingested_at[late] = event_ts[late] + lag
    dup = np.flatnonzero(rng.random(n) < p.dup_rate)
    rows = np.concatenate([np.arange(n), dup])
    ingested_at = np.concatenate([ingested_at, ingested_at[dup] + rng.integers(1, DAY_US + 1, len(dup))])
    frame = _frame(
        event_id[rows],
        customer_id[rows],
        event_ts[rows],
        ingested_at,
        n_items[rows],
        amount[rows],
        m.labels[codes[rows]],
    )
    return frame, (ingested_at - m.start_us) // DAY_US


class _Chunker:
    """Collects frames and hands them out in pieces of at most ``chunk_rows`` rows."""

    def __init__(self, chunk_rows: int):
        self.chunk_rows = chunk_rows
        self.frames: list[pd.DataFrame] = []
        self.rows = 0
        self.emitted = False

    def add(self, frame: pd.DataFrame) -> Iterator[pd.DataFrame]:
        if len(frame):
            self.frames.append(frame)
            self.rows += len(frame)
        if self.rows >= self.chunk_rows:
            yield from self._drain(keep_tail=True)

    def flush(self) -> Iterator[pd.DataFrame]:
        yield from self._drain(keep_tail=False)
        if not self.emitted:
            self.emitted = True
            yield _empty_frame()

    def _drain(self, keep_tail: bool) -> Iterator[pd.DataFrame]:
        if not self.frames:
            return
        whole = pd.concat(self.frames, ignore_index=True) if len(self.frames) > 1 else self.frames[0]
        self.frames, self.rows = [], 0
        cut = len(whole) - len(whole) % self.chunk_rows if keep_tail else len(whole)
        for lo in range(0, cut, self.chunk_rows):
            self.emitted = True
            yield whole.iloc[lo : min(lo + self.chunk_rows, cut)].reset_index(drop=True)
        if cut < len(whole):
            self.frames, self.rows = [whole.iloc[cut:].reset_index(drop=True)], len(whole) - cut


def iter_event_days(
    *,
    entities: int,
    events: int,
    days: int,
    start: str = "2024-01-01",
    seed: int = 0,
    null_rate: float = 0.02,
    dup_rate: float = 0.01,
    late_rate: float = 0.03,
    max_late_days: int = 5,
    tie_rate: float = 0.05,
    n_categories: int = len(CATEGORIES),
    chunk_rows: int = 500_000,
    progress: bool | None = None,
) -> Iterator[tuple[str, pd.DataFrame]]:
    """Yield ``(ingest_ds, frame)`` in ingest-day order, frames of at most ``chunk_rows``
    rows in the ``cdnow_purchases`` raw columns; every ingest day yields at least one (maybe
    empty) frame. ``progress``: tqdm bar (None = only on a terminal)."""
    p = GeneratorParams(
        entities, events, days, start, seed, null_rate, dup_rate, late_rate, max_late_days, tie_rate, n_categories
    )
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be >= 1")
    m = _Model(p)
    pending: dict[int, list[pd.DataFrame]] = {}
    disable = None if progress is None else not progress
    with tqdm(total=events, unit="ev", unit_scale=True, desc="generate", disable=disable) as bar:
        for day in range(p.ingest_days):
            ds = p.ds(day)
            chunker = _Chunker(chunk_rows)
            for frame in pending.pop(day, []):
                for out in chunker.add(frame):
                    yield ds, out
            n_day = int(m.per_day[day]) if day < days else 0
            for block, lo in enumerate(range(0, n_day, BLOCK_ROWS)):
                n = min(BLOCK_ROWS, n_day - lo)
                frame, ingest_day = _block(p, m, day, block, n)
                for later in np.unique(ingest_day[ingest_day > day]):
                    pending.setdefault(int(later), []).append(frame[ingest_day == later].reset_index(drop=True))
                for out in chunker.add(frame[ingest_day == day].reset_index(drop=True)):
                    yield ds, out
                bar.update(n)
            for out in chunker.flush():
                yield ds, out


def _params(kw: dict) -> dict:
    return asdict(GeneratorParams(**{k: v for k, v in kw.items() if k not in ("chunk_rows", "progress")}))


def generate_events(
    lake,
    *,
    entities: int,
    events: int,
    days: int,
    start: str = "2024-01-01",
    seed: int = 0,
    null_rate: float = 0.02,
    dup_rate: float = 0.01,
    late_rate: float = 0.03,
    max_late_days: int = 5,
    tie_rate: float = 0.05,
    n_categories: int = len(CATEGORIES),
    chunk_rows: int = 500_000,
    progress: bool | None = None,
    table: str = CDNOW_PURCHASES.table,
) -> list:
    """Write generated events to ``table`` (default ``raw_events/cdnow_purchases``), one partition per
    ingest day, each streamed chunk by chunk. Returns the manifests in ``ds`` order."""
    kw = {
        "entities": entities,
        "events": events,
        "days": days,
        "start": start,
        "seed": seed,
        "null_rate": null_rate,
        "dup_rate": dup_rate,
        "late_rate": late_rate,
        "max_late_days": max_late_days,
        "tie_rate": tie_rate,
        "n_categories": n_categories,
        "chunk_rows": chunk_rows,
        "progress": progress,
    }
    producer = {"job": "generate_events", "params": _params(kw)}
    target = lake.table(table, RAW_SCHEMA)
    manifests = []
    for ds, group in itertools.groupby(iter_event_days(**kw), key=lambda item: item[0]):
        chunks = (to_raw_events(frame) for _, frame in group)
        manifests.append(target.write_partition(ds, chunks, producer=producer, inputs=None))
    return manifests


def write_parquet_files(
    out_dir,
    *,
    entities: int,
    events: int,
    days: int,
    chunk_rows: int = 500_000,
    storage_options: dict | None = None,
    **params,
) -> list[str]:
    """Write generated events as plain Parquet, ``<out_dir>/ds=YYYY-MM-DD/part-00000.parquet``
    (one file per ingest day, one row group per chunk; ``out_dir`` a path or fsspec URL).
    ``params`` are those of :func:`iter_event_days`. Returns the file paths in ``ds`` order."""
    fs, root = fsspec.core.url_to_fs(os.fspath(out_dir), **(storage_options or {}))
    paths = []
    it = iter_event_days(entities=entities, events=events, days=days, chunk_rows=chunk_rows, **params)
    for ds, group in itertools.groupby(it, key=lambda item: item[0]):
        path = f"{root.rstrip('/')}/ds={ds}/part-00000.parquet"
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with (
            fs.open(path, "wb") as f,
            pq.ParquetWriter(f, RAW_SCHEMA, use_dictionary=["category"], compression="zstd") as writer,
        ):
            for _, frame in group:
                writer.write_table(to_raw_events(frame))
        paths.append(fs.unstrip_protocol(path) if "://" in os.fspath(out_dir) else path)
    return paths
