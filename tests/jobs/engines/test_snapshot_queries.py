"""``engines.snapshot_queries`` of several cut-offs (one pass) == the kernel's query table of each
cut-off, concatenated in cut-off order: same rows, same order, same dtypes, both modes, int and
string keys, keyless events, late ingestion and cut-offs before any event."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features import kernel
from features.registry import get
from features.source import Column, FileLander, Key, Source, hours
from features.spec import FeatureSet, count
from jobs import engines
from jobs.engines import Snapshot, Snapshots
from jobs.schemas import to_raw

FS = get("customer_activity_v1")
MODES = ("known_at", "as_of")
SHOPS = Source(
    name="shop_orders",
    keys=(Key("shop", "string"),),
    columns=(Column("minutes_late", "double", min=0),),
    lander=FileLander("csv", "orders/{ds}.csv"),
    event_id="order_id",
    event_id_type="string",
)
SHOP_FS = FeatureSet(name="shop_load_v1", source=SHOPS, features=(count("orders_6h", hours(6)),))


def shop_events(n=3_000, seed=3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    shops = np.array([f"shop-{i:03d}" for i in range(60)] + ["café", "日本", "a b", ""], dtype=object)
    us = pd.Timestamp("2024-03-01", tz="UTC").value // 1000 + rng.integers(0, 4 * 86_400_000_000, n)
    late = rng.integers(0, 600_000_000, n)
    df = pd.DataFrame(
        {
            "order_id": [f"o{i:06d}" for i in range(n)],
            "shop": rng.choice(shops, n),
            "event_ts": pd.to_datetime(us, unit="us", utc=True),
            "ingested_at": pd.to_datetime(us + late, unit="us", utc=True),
            "minutes_late": np.round(rng.exponential(7.0, n), 3),
        }
    )
    return to_raw(SHOPS, df).to_pandas()


def cdnow_events(n=5_000, seed=7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    us = pd.Timestamp("2024-01-01", tz="UTC").value // 1000 + rng.integers(0, 10 * 86_400_000_000, n)
    late = np.where(rng.random(n) < 0.2, rng.integers(0, 3 * 86_400_000_000, n), 0)  # some land days later
    return pd.DataFrame(
        {
            "customer_id": rng.integers(0, 400, n).astype(np.int64),
            "event_id": np.arange(n, dtype=np.int64),
            "event_ts": pd.to_datetime(us, unit="us", utc=True),
            "ingested_at": pd.to_datetime(us + late, unit="us", utc=True),
            "amount": rng.exponential(20.0, n),
            "n_items": rng.integers(1, 4, n).astype(np.int64),
            "category": rng.choice(np.array(["a", "b", "c"], dtype=object), n),
        }
    )


def want(events, fs, cutoffs, mode) -> pd.DataFrame:
    return pd.concat([kernel.snapshot_queries(events, fs, t, mode) for t in cutoffs], ignore_index=True)


# the first cut-off is before every event, and two fall inside one day's late arrivals
CUTOFFS = tuple(pd.Timestamp(t, tz="UTC") for t in ("2023-12-31", "2024-01-02", "2024-01-05 13:00", "2024-01-06"))


@pytest.mark.parametrize("mode", MODES)
def test_several_cutoffs_int_keys_equal_the_kernel_per_cutoff(mode):
    events = cdnow_events()
    got = engines.snapshot_queries(events, FS, Snapshots(CUTOFFS + (pd.Timestamp("2024-01-20", tz="UTC"),)), mode)
    expected = want(events, FS, CUTOFFS + (pd.Timestamp("2024-01-20", tz="UTC"),), mode)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    counts = got.groupby("as_of").size()
    assert counts.iloc[0] < counts.iloc[-1] == 400  # entities accumulate; all known at the end


def test_late_ingestion_hides_entities_in_known_at_mode():
    events = cdnow_events()
    known = engines.snapshot_queries(events, FS, Snapshots(CUTOFFS), "known_at")
    by_event_time = engines.snapshot_queries(events, FS, Snapshots(CUTOFFS), "as_of")
    assert len(known) < len(by_event_time)


@pytest.mark.parametrize("mode", MODES)
def test_several_cutoffs_string_keys_and_keyless_events_equal_the_kernel(mode):
    events = shop_events()
    events.loc[events.index[::97], "shop"] = None  # keyless events belong to no entity
    cutoffs = tuple(pd.Timestamp("2024-03-01", tz="UTC") + pd.Timedelta(hours=h) for h in (-1, 3, 20, 50, 200))
    got = engines.snapshot_queries(events, SHOP_FS, Snapshots(cutoffs), mode)
    pd.testing.assert_frame_equal(got, want(events, SHOP_FS, cutoffs, mode), check_exact=True)
    assert not (got["as_of"] == cutoffs[0]).any() and (got["as_of"] == cutoffs[-1]).sum() == 64


def test_no_events_and_one_cutoff():
    events = cdnow_events().iloc[:0]
    got = engines.snapshot_queries(events, FS, Snapshots(CUTOFFS), "known_at")
    pd.testing.assert_frame_equal(got, want(events, FS, CUTOFFS, "known_at"), check_exact=True)
    assert got.empty
    one = cdnow_events()
    pd.testing.assert_frame_equal(
        engines.snapshot_queries(one, FS, Snapshot(CUTOFFS[2]), "as_of"),
        kernel.snapshot_queries(one, FS, CUTOFFS[2], "as_of"),
        check_exact=True,
    )


def test_unknown_mode_and_null_timestamps_fail():
    events = cdnow_events()
    with pytest.raises(ValueError, match="mode must be one of"):
        engines.snapshot_queries(events, FS, Snapshots(CUTOFFS), "later")
    events.loc[3, "event_ts"] = pd.NaT
    with pytest.raises(ValueError, match="null timestamp"):
        engines.snapshot_queries(events, FS, Snapshots(CUTOFFS), "known_at")
