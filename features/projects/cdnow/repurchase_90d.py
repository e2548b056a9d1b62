"""Will a customer buy again within 90 days? Scored every Monday for every known customer."""

from features.model import EntitySnapshots, EventLabel, Model, Ranges
from features.projects.cdnow.customer_activity_v1 import FEATURE_SET as CUSTOMER_ACTIVITY_V1
from features.projects.cdnow.purchases import CDNOW_PURCHASES

REPURCHASE_90D = Model(
    name="repurchase_90d",
    queries=EntitySnapshots(CDNOW_PURCHASES, every="week", weekday=0),
    label=EventLabel(
        CDNOW_PURCHASES, horizon_days=90, description="the customer buys again within 90 days of the cut-off"
    ),
    joins=(CUSTOMER_ACTIVITY_V1,),
    ranges=Ranges(train_weeks=8, valid_weeks=3, holdback_weeks=3),
    rounds=500,
    # today's table names, kept so existing prediction tables and their readers carry on
    predictions="predictions",
    sql_table="predictions",
    description=__doc__.strip(),
    owner="lockstep",
)
