"""``bench_pit_v1``: the benchmark's feature set (not a published set; not in the registry).

For each window of 1, 7 and 30 days: event count, sum and mean of ``amount``,
days since the last event in the window, distinct ``category`` values. The native
peers (DuckDB, Polars, Spark SQL) are hand-written for exactly these features and
produce the same column names.
"""

from features.spec import Feature, FeatureSet, agg, count

WINDOWS_DAYS = (1, 7, 30)
ENTITY = "customer_id"
QUERY_ID = "query_id"
AS_OF = "as_of"
US_PER_DAY = 86_400_000_000


def names(w: int) -> dict[str, str]:
    """Column names of window ``w``'s five features, by aggregation."""
    return {
        "count": f"count_{w}d",
        "sum": f"amount_sum_{w}d",
        "mean": f"amount_mean_{w}d",
        "days_since_last": f"days_since_last_{w}d",
        "distinct_count": f"category_distinct_{w}d",
    }


def _features():
    for w in WINDOWS_DAYS:
        n = names(w)
        yield count(n["count"], w)
        yield agg(n["sum"], "sum", "amount", w)
        yield agg(n["mean"], "mean", "amount", w)
        yield Feature(n["days_since_last"], "days_since_last", window_days=w)
        yield agg(n["distinct_count"], "distinct_count", "category", w)


FEATURE_SET = FeatureSet(
    name="bench_pit_v1",
    entity=ENTITY,
    features=tuple(_features()),
    training_mode="as_of",
    description="benchmark: 1/7/30-day count, sum, mean, days since last, distinct categories",
    owner="bench",
)
FEATURE_NAMES = FEATURE_SET.feature_names
INTEGER_FEATURES = tuple(f.name for f in FEATURE_SET.features if f.is_integer)
FLOAT_FEATURES = tuple(f.name for f in FEATURE_SET.features if not f.is_integer)
#: Every variant writes these columns (any order, any row order, any number of files).
OUTPUT_COLUMNS = (QUERY_ID, ENTITY, AS_OF, *FEATURE_NAMES)
