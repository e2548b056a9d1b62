"""A string-keyed project declared for the tests (as a user would write it): orders of shops and
couriers, a feature set per key with hour windows, and a model with an outcome per order.

Loaded as a repo of declarations by path (``Config(repo_package=REPO_DIR)``), never imported by
``jobs/``: scoring, SQL, serving and skew must take it with no change to the platform.
"""

from features.model import Condition, EntitySnapshots, EventLabel, Join, Model, OutcomeLabel, QueryRows
from features.source import Column, FileLander, Key, Source, hours
from features.spec import FeatureSet, agg, count

ORDERS = Source(
    name="orders",
    keys=(Key("shop", "string"), Key("courier", "string")),
    columns=(
        Column("due_ts", "timestamp[us, tz=UTC]", nullable=False),
        Column("minutes_late", "double", min=0),
        Column("status", "string", allowed=("done", "cancelled")),
    ),
    lander=FileLander("csv", "memory://orders/{ds}.csv"),
    event_id="order_id",
    event_id_type="string",
    span=("2024-01-01", "2024-01-31"),
)

SHOP_LOAD = FeatureSet(
    "shop_load_v1",
    source=ORDERS,
    key="shop",
    features=(
        count("shop_orders_6h", hours(6)),
        agg("shop_late_mean_6h", "mean", "minutes_late", hours(6)),
        count("shop_orders_lifetime", None),
    ),
)

COURIER_LOAD = FeatureSet(
    "courier_load_v1",
    source=ORDERS,
    key="courier",
    features=(count("courier_orders_2h", hours(2)), agg("courier_late_max_24h", "max", "minutes_late", 1)),
)

LATE_ORDER = Model(
    name="late_order",
    queries=QueryRows(ORDERS, time="due_ts", offset_hours=-1, lead_days=2),  # due up to 30 h after the order
    label=OutcomeLabel((Condition("minutes_late", ">=", 15), Condition("status", "==", "cancelled"))),
    joins=(Join(SHOP_LOAD), Join(COURIER_LOAD, key="courier")),
    skew_thresholds={"logic_skew": 0.0},
    drift_psi=0.5,
)

SHOP_LATENESS = FeatureSet(
    "shop_lateness_v1",
    source=ORDERS,
    key="shop",
    features=(agg("shop_late_max_24h", "max", "minutes_late", 1), agg("shop_late_sum_12h", "sum", "minutes_late", 0.5)),
)

SHOP_RISK = Model(
    name="shop_risk",
    queries=EntitySnapshots(ORDERS, key="shop", every="day"),
    label=EventLabel(ORDERS, horizon_days=1, where=(Condition("minutes_late", ">=", 30),)),
    joins=(SHOP_LOAD, SHOP_LATENESS),
)

SHOP_BUSY = Model(
    name="shop_busy",
    queries=EntitySnapshots(ORDERS, key="shop", every="day"),
    label=EventLabel(ORDERS, horizon_days=1, where=(Condition("status", "==", "cancelled"),)),
    joins=(SHOP_LOAD,),
    predictions="predictions/shop_busy",
)

#: A second source keyed by shop: a model joining sets of two sources (one online store per set).
SHOP_RATINGS_SOURCE = Source(
    name="shop_ratings",
    keys=(Key("shop", "string"),),
    columns=(Column("stars", "double", min=1, max=5),),
    lander=FileLander("jsonl", "memory://ratings/{ds}.jsonl"),
    event_id="rating_id",
    event_id_type="string",
    span=("2024-01-01", "2024-01-31"),
)

SHOP_RATINGS = FeatureSet(
    "shop_ratings_v1",
    source=SHOP_RATINGS_SOURCE,
    features=(count("ratings_24h", 1), agg("stars_mean_24h", "mean", "stars", 1)),
)

SHOP_RATED = Model(
    name="shop_rated",
    queries=EntitySnapshots(ORDERS, key="shop", every="day"),
    label=EventLabel(ORDERS, horizon_days=1, where=(Condition("status", "==", "cancelled"),)),
    joins=(SHOP_LOAD, SHOP_RATINGS),
    predictions="predictions/shop_rated",
)
