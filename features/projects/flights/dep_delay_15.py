"""Will this flight leave 15 minutes late or more? Asked 2 hours before its scheduled departure.

One query per row of the timetable (``as_of = sched_dep_ts - 2 h``), keyed by the plane and the
origin; the label is the flight's own outcome, its row of the ``flights`` source (same ``flight_id``): ``dep_delay >= 15``, and a cancelled flight counts as late
(1) — for a traveller a cancellation is the worst delay. Out of time: train January-August,
validate September-October, hold back November 1 - December 22 (the last cut-off whose timetable, published
a week ahead, is in the data: the labels of D read it through D + 2).
"""

from features.model import Condition, Join, Model, OutcomeLabel, QueryRows, Ranges, Schedule
from features.projects.flights.flights import FLIGHTS
from features.projects.flights.origin_congestion_v1 import FEATURE_SET as ORIGIN_CONGESTION_V1
from features.projects.flights.origin_weather_v1 import FEATURE_SET as ORIGIN_WEATHER_V1
from features.projects.flights.plane_recent_v1 import FEATURE_SET as PLANE_RECENT_V1
from features.projects.flights.schedule import SCHEDULE

DEP_DELAY_15 = Model(
    name="dep_delay_15",
    queries=QueryRows(SCHEDULE, time="sched_dep_ts", offset_hours=-2, lead_days=8),
    label=OutcomeLabel(
        when=(Condition("dep_delay", ">=", 15), Condition("cancelled", "==", 1)),
        source=FLIGHTS,
        maturity_hours=24,
        description="the flight departs >= 15 minutes late or is cancelled",
    ),
    joins=(
        Join(PLANE_RECENT_V1, key="tailnum"),
        Join(ORIGIN_CONGESTION_V1, key="origin"),
        Join(ORIGIN_WEATHER_V1, key="origin"),
    ),
    ranges=Ranges(
        train=("2013-01-01", "2013-08-31"), valid=("2013-09-01", "2013-10-31"), holdback=("2013-11-01", "2013-12-22")
    ),
    rounds=300,
    schedule=Schedule(training=None, skew="@daily"),
    description=__doc__.strip().splitlines()[0],
    owner="lockstep",
)
