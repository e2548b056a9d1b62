"""What the plane has been doing: departures, delays and turnaround over the last 6 h / 24 h / 7 d."""

from features.projects.flights.flights import FLIGHTS
from features.source import hours
from features.spec import Feature, FeatureSet, agg, count

WINDOWS = (("6h", hours(6)), ("24h", hours(24)), ("7d", 7.0))

FEATURE_SET = FeatureSet(
    name="plane_recent_v1",
    source=FLIGHTS,
    key="tailnum",
    features=tuple(
        f
        for label, w in WINDOWS
        for f in (
            count(f"plane_departures_{label}", w, description=f"departures (and cancellations) in the last {label}"),
            agg(f"plane_delay_mean_{label}", "mean", "dep_delay", w, description=f"mean departure delay, {label}"),
            agg(f"plane_delay_max_{label}", "max", "dep_delay", w, description=f"largest departure delay, {label}"),
            agg(
                f"plane_delayed_share_{label}",
                "mean",
                "delayed_15",
                w,
                description=f"share of departures delayed >= 15 min, {label}",
            ),
        )
    )
    + (
        Feature(
            "plane_days_since_last",
            "days_since_last",
            window_days=7.0,
            description="days since the plane's last departure within a week (null: none)",
        ),
    ),
    description=__doc__.strip(),
    owner="lockstep",
)
