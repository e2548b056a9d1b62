"""A tiny lake of the string-keyed test project (``string_repo/late_order.py``): orders of three
shops and four couriers over 2024-01-02..2024-01-05, each placed a day and a bit ahead (due 30 h
after it is placed), landing 5 minutes after it is placed. Shared by the scoring and serving tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from jobs.config import Config
from jobs.schemas import raw_schema, to_raw

REPO_DIR = str(Path(__file__).with_name("string_repo"))
FIRST, LAST = "2024-01-02", "2024-01-05"


def config(root) -> Config:
    return Config(lake_root=str(root), repo_package=REPO_DIR)


def make_orders(n: int = 160, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    start = pd.Timestamp(FIRST, tz="UTC").value // 1000
    span = 4 * 86_400_000_000 - 10 * 60_000_000  # every order lands by the end of LAST
    placed = np.sort(start + rng.integers(0, span, n))
    late = np.round(rng.gamma(1.5, 8.0, n), 1)
    late[rng.random(n) < 0.15] = np.nan
    frame = pd.DataFrame(
        {
            "order_id": [f"o-{i:04d}" for i in range(n)],
            "shop": rng.choice(["s1", "s2", "s3"], n, p=[0.5, 0.3, 0.2]),
            "courier": rng.choice(["c1", "c2", "c3", "c4"], n),
            "event_ts": pd.to_datetime(placed, unit="us", utc=True),
            "ingested_at": pd.to_datetime(placed + 5 * 60_000_000, unit="us", utc=True),
            "due_ts": pd.to_datetime(placed + 30 * 3_600_000_000, unit="us", utc=True),
            "minutes_late": late,
            "status": np.where(rng.random(n) < 0.1, "cancelled", "done"),
        }
    )
    for c in ("event_ts", "ingested_at", "due_ts"):
        frame[c] = frame[c].astype("datetime64[us, UTC]")
    return frame


def make_ratings(n: int = 40, seed: int = 4) -> pd.DataFrame:
    """Ratings of shops s1 and s2 only (s3 is never rated), a few every day, landing 1 minute later."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp(FIRST, tz="UTC").value // 1000
    day_us = 86_400_000_000
    placed = np.sort(start + np.arange(n) % 4 * day_us + rng.integers(0, day_us - 120_000_000, n))
    frame = pd.DataFrame(
        {
            "rating_id": [f"r-{i:03d}" for i in range(n)],
            "shop": rng.choice(["s1", "s2"], n),
            "event_ts": pd.to_datetime(placed, unit="us", utc=True),
            "ingested_at": pd.to_datetime(placed + 60_000_000, unit="us", utc=True),
            "stars": rng.integers(1, 6, n).astype(float),
        }
    )
    for c in ("event_ts", "ingested_at"):
        frame[c] = frame[c].astype("datetime64[us, UTC]")
    return frame.sort_values("event_ts", ignore_index=True)


def _land(cfg, name: str, frame: pd.DataFrame) -> None:
    src = cfg.repo().source(name)
    table = cfg.lake().table(src.table, raw_schema(src))
    day = frame[src.ingested_at].dt.strftime("%Y-%m-%d")
    for ds in pd.date_range(FIRST, LAST).strftime("%Y-%m-%d"):
        table.write_partition(ds, to_raw(src, frame[day == ds]), producer={"job": "test"})


def write_lake(root, orders: pd.DataFrame | None = None) -> tuple[Config, pd.DataFrame]:
    """The orders landed in ``raw_events/orders`` and the ratings in ``raw_events/shop_ratings``
    (``make_ratings``), one partition per ingest day."""
    cfg = config(root)
    orders = make_orders() if orders is None else orders
    _land(cfg, "orders", orders)
    _land(cfg, "shop_ratings", make_ratings())
    return cfg, orders
