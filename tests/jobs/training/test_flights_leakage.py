"""dep_delay_15 on real rows: a training row's features see nothing at or after its as_of, and
its label is the flight's own outcome.

One landed lake (timetable, flights and weather of 2013-01-01..17), labels and training sets of
two weeks of queries (``as_of`` = scheduled departure - 2 h on 2013-01-02..15). For a seeded
sample of training rows, the raw frames are modified — the flight's own departure moved to its
as_of instant with another delay, and every event not yet known at the as_of (``ingested_at >=
as_of``, the sets' ``known_at`` training mode) shifted later with scrambled values — and the
row's features, recomputed with ``features.kernel.compute``, must equal the published row
exactly. A change before the as_of (the plane's last known departure removed) must show, so the
comparison is not vacuous.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features import kernel
from jobs.config import Config
from jobs.ingest.landing import land
from jobs.ingest.nycflights13 import read_flights
from jobs.training.labels import build_labels, cutoffs_in, labels_table
from jobs.training.training_set import build_training_set, training_set_table

DAYS = ("2013-01-02", "2013-01-15")
LANDED = ("2013-01-01", "2013-01-17")
SAMPLE = 60


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    cfg = Config(lake_root=str(tmp_path_factory.mktemp("flights_leakage") / "lake"))
    land(cfg, "flight_schedule", "2012-12-25", LANDED[1])
    land(cfg, "flights", *LANDED)
    land(cfg, "weather", *LANDED)
    model = cfg.repo().model("dep_delay_15")
    days = cutoffs_in(model, *DAYS)
    build_labels(cfg, model, days, allow_unvalidated=True)
    for d in days:
        build_training_set(cfg, model, d, allow_unvalidated=True)
    lake = cfg.lake()
    raw = {name: lake.table(cfg.repo().source(name).table).read(*LANDED) for name in ("flights", "weather")}
    rows = training_set_table(lake, model).read(*DAYS)
    return cfg, model, days, raw, rows


def features_of(model, raw: dict, row: pd.Series) -> dict:
    """The row's features recomputed from ``raw`` with the kernel, one set at a time."""
    out = {}
    for join in model.joins:
        fs = join.feature_set
        q = pd.DataFrame({fs.entity: pd.array([row[join.key_name]], dtype="str"), "as_of": [row["as_of"]]})
        got = kernel.compute(raw[fs.source.name], q, fs, fs.training_mode)
        out.update(got.iloc[0][list(fs.feature_names)].to_dict())
    return out


def same(a: dict, b: dict) -> bool:
    return all((pd.isna(a[k]) and pd.isna(b[k])) or a[k] == b[k] for k in b)


def moved(raw: dict, row: pd.Series, rng: np.random.Generator) -> dict:
    """``raw`` with the flight's own departure at its as_of instant (delay 999, late) and every
    event not known at the as_of shifted 1 min .. 3 days later with scrambled values."""
    t = row["as_of"]
    out = {}
    for name, frame in raw.items():
        frame = frame.copy()
        later = (frame["ingested_at"] >= t).to_numpy()
        shift = pd.to_timedelta(rng.integers(1, 3 * 24 * 60, int(later.sum())), unit="min")
        for col in ("event_ts", "ingested_at"):
            frame.loc[later, col] = frame.loc[later, col] + shift
        if name == "flights":
            n = int(later.sum())
            frame.loc[later, "dep_delay"] = rng.integers(-30, 600, n).astype(float)
            frame.loc[later, "delayed_15"] = pd.array(rng.integers(0, 2, n), dtype="Int64")
            frame.loc[later, "cancelled"] = rng.integers(0, 2, n)
            own = (frame["flight_id"] == row["flight_id"]).to_numpy()
            assert own.sum() == 1 and later[own].all()  # its own departure is never known at its as_of
            frame.loc[own, ["event_ts", "ingested_at"]] = t
            frame.loc[own, ["dep_delay", "delayed_15", "cancelled"]] = [999.0, 1, 0]
        else:
            for col in ("precip", "visib", "wind_gust", "wind_speed"):
                frame.loc[later, col] = rng.permutation(frame.loc[later, col].to_numpy())
        out[name] = frame
    return out


def test_the_training_sets_are_the_model_queries(lake):
    cfg, model, days, raw, rows = lake
    assert days == [str(d.date()) for d in pd.date_range(*DAYS)]
    assert len(rows) == int(labels_table(cfg.lake(), model).read(*DAYS).shape[0]) == 12_269
    assert list(rows.columns[:5]) == ["flight_id", "tailnum", "origin", "as_of", "label"]
    assert rows["flight_id"].is_unique


def test_moving_the_own_departure_or_any_later_event_does_not_change_features(lake):
    cfg, model, _, raw, rows = lake
    rng = np.random.default_rng(12)
    sample = rows.iloc[rng.choice(len(rows), SAMPLE, replace=False)]
    names = list(model.feature_names)
    seen_before = 0
    for _, row in sample.iterrows():
        published = row[names].to_dict()
        assert same(features_of(model, raw, row), published), row["flight_id"]
        assert same(features_of(model, moved(raw, row, rng), row), published), row["flight_id"]
        if row["plane_departures_24h"] > 0:
            # the comparison has teeth: the plane's last departure known at the as_of, removed
            flights = raw["flights"]
            known = flights[(flights["tailnum"] == row["tailnum"]) & (flights["ingested_at"] < row["as_of"])]
            last = known["event_ts"].idxmax()
            assert not same(features_of(model, {**raw, "flights": flights.drop(index=last)}, row), published)
            seen_before += 1
    assert seen_before >= SAMPLE // 3


def test_the_label_is_the_flights_own_outcome(lake):
    cfg, model, _, _, _ = lake
    labels = labels_table(cfg.lake(), model).read("2013-01-10")
    flights = read_flights().set_index("flight_id")
    own = flights.loc[labels["flight_id"].astype(object)]
    assert (labels["as_of"].to_numpy() == (own["sched_dep_ts"] - pd.Timedelta(hours=2)).to_numpy()).all()
    expected = ((own["dep_delay"] >= 15) | (own["cancelled"] == 1)).astype(np.int8).to_numpy()
    assert (labels["label"].to_numpy() == expected).all()
    # every flight whose as_of falls on the day is a row of it
    as_of = flights["sched_dep_ts"] - pd.Timedelta(hours=2)
    on_day = flights.index[as_of.dt.strftime("%Y-%m-%d") == "2013-01-10"]
    assert sorted(labels["flight_id"]) == sorted(on_day)
    # 926 flights, 96 late or cancelled (3 cancelled, 2 of them without a plane)
    assert len(labels) == 926 and int(labels["label"].sum()) == 96 and int(own["cancelled"].sum()) == 3
    assert int(labels["tailnum"].isna().sum()) == 2 and (labels.loc[labels["tailnum"].isna(), "label"] == 1).all()
