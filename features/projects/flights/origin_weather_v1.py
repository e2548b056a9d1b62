"""Weather at the origin airport: precipitation, visibility and wind over the last 1 h / 3 h / 6 h."""

from features.projects.flights.weather import WEATHER
from features.source import hours
from features.spec import FeatureSet, agg

FEATURE_SET = FeatureSet(
    name="origin_weather_v1",
    source=WEATHER,
    key="origin",
    features=tuple(
        f
        for label, w in (("1h", hours(1)), ("3h", hours(3)), ("6h", hours(6)))
        for f in (
            agg(f"weather_precip_sum_{label}", "sum", "precip", w, description=f"inches of precipitation, {label}"),
            agg(f"weather_visib_min_{label}", "min", "visib", w, description=f"lowest visibility, {label}"),
            agg(f"weather_gust_max_{label}", "max", "wind_gust", w, description=f"strongest gust, {label}"),
            agg(f"weather_wind_mean_{label}", "mean", "wind_speed", w, description=f"mean wind speed, {label}"),
        )
    ),
    description=__doc__.strip(),
    owner="lockstep",
)
