"""How busy and late the origin airport is: departures, mean delay and cancellations, last 1 h / 3 h / 24 h."""

from features.projects.flights.flights import FLIGHTS
from features.source import hours
from features.spec import FeatureSet, agg, count

FEATURE_SET = FeatureSet(
    name="origin_congestion_v1",
    source=FLIGHTS,
    key="origin",
    features=tuple(
        f
        for label, w in (("1h", hours(1)), ("3h", hours(3)), ("24h", hours(24)))
        for f in (
            count(f"origin_departures_{label}", w, description=f"departures from the airport, {label}"),
            agg(f"origin_delay_mean_{label}", "mean", "dep_delay", w, description=f"mean departure delay, {label}"),
            agg(f"origin_cancelled_{label}", "sum", "cancelled", w, description=f"cancellations, {label}"),
        )
    ),
    description=__doc__.strip(),
    owner="lockstep",
)
