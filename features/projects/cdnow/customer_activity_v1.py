"""Customer purchase activity for the CDNOW transaction log (and generated data of the same schema).

Windows of 7/30/90/365 days plus lifetime recency, tenure and frequency — the
RFM summary used in customer-base analysis (Fader, Hardie & Lee 2005).
"""

from features.projects.cdnow.purchases import CDNOW_PURCHASES
from features.spec import Feature, FeatureSet, agg, count, ratio

FEATURES = (
    count("txn_count_7d", 7, description="purchases in the last 7 days"),
    count("txn_count_30d", 30, description="purchases in the last 30 days"),
    count("txn_count_90d", 90, description="purchases in the last 90 days"),
    count("txn_count_365d", 365, description="purchases in the last 365 days"),
    agg("spend_sum_7d", "sum", "amount", 7, description="dollars spent in the last 7 days"),
    agg("spend_sum_30d", "sum", "amount", 30, description="dollars spent in the last 30 days"),
    agg("spend_sum_90d", "sum", "amount", 90, description="dollars spent in the last 90 days"),
    agg("spend_sum_365d", "sum", "amount", 365, description="dollars spent in the last 365 days"),
    agg("spend_mean_30d", "mean", "amount", 30, description="mean purchase value, 30 days"),
    agg("spend_mean_90d", "mean", "amount", 90, description="mean purchase value, 90 days"),
    agg("spend_mean_365d", "mean", "amount", 365, description="mean purchase value, 365 days"),
    agg("spend_min_90d", "min", "amount", 90, description="smallest purchase, 90 days"),
    agg("spend_max_90d", "max", "amount", 90, description="largest purchase, 90 days"),
    agg("items_sum_30d", "sum", "n_items", 30, description="CDs bought in the last 30 days"),
    agg("items_sum_365d", "sum", "n_items", 365, description="CDs bought in the last 365 days"),
    agg(
        "distinct_category_365d",
        "distinct_count",
        "category",
        365,
        description="distinct price bands bought in the last 365 days",
    ),
    count("frequency_lifetime", None, description="purchases ever (frequency)"),
    agg("spend_lifetime", "sum", "amount", None, description="dollars ever spent (monetary)"),
    Feature("recency_days", "days_since_last", description="days since the last purchase"),
    Feature("tenure_days", "days_since_first", description="days since the first purchase"),
    ratio("price_per_item_365d", "spend_sum_365d", "items_sum_365d", description="mean dollars per CD over 365 days"),
    ratio(
        "activity_trend_30_90",
        "txn_count_30d",
        "txn_count_90d",
        description="share of the 90-day purchases made in the last 30 days",
    ),
)

FEATURE_SET = FeatureSet(
    name="customer_activity_v1",
    source=CDNOW_PURCHASES,
    features=FEATURES,
    description=__doc__.strip().splitlines()[0],
    owner="lockstep",
)
