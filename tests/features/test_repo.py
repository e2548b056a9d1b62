"""The repo of declarations: loading, derived names, and every declaration error with its message."""

import dataclasses

import pytest

from features import repo
from features.model import Condition, EntitySnapshots, EventLabel, Join, Model, OutcomeLabel, QueryRows, Ranges
from features.source import Column, DeclarationError, FileLander, Key, ParserLander, Source, hours
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
    features=(count("shop_orders_6h", hours(6)), agg("shop_late_mean_6h", "mean", "minutes_late", hours(6))),
)
COURIER_LOAD = FeatureSet(
    "courier_load_v1", source=ORDERS, key="courier", features=(count("courier_orders_1h", hours(1)),)
)


def late_model(**changes) -> Model:
    base = dict(
        name="late_order",
        queries=QueryRows(ORDERS, time="due_ts", offset_hours=-1),
        label=OutcomeLabel((Condition("minutes_late", ">=", 15), Condition("status", "==", "cancelled"))),
        joins=(Join(SHOP_LOAD), Join(COURIER_LOAD, key="courier")),
    )
    base.update(changes)
    return Model(**base)


def test_the_shipped_repo_loads_cdnow_with_derived_names():
    r = repo.load()
    m = r.model("repurchase_90d")
    fs = r.feature_set("customer_activity_v1")
    src = r.source("cdnow_purchases")
    assert fs.source is src and fs.entity == "customer_id" and fs.entity_type == "int64"
    assert m.feature_sets == (fs,) and m.id_columns == (("customer_id", "int64"),)
    assert src.table == "raw_events/cdnow_purchases"
    assert src.raw_column_names == [
        "event_id",
        "customer_id",
        "event_ts",
        "ingested_at",
        "n_items",
        "amount",
        "category",
    ]
    assert r.feature_sets_of(src) == [fs] and r.models_of(fs) == [m]
    assert m.fingerprint == fs.fingerprint


def test_a_model_over_query_rows_joins_sets_of_two_keys():
    r = repo.Repo.of(late_model())
    m = r.model("late_order")
    assert set(r.sources) == {"orders"} and set(r.feature_sets) == {"shop_load_v1", "courier_load_v1"}
    assert m.query_id == "order_id"
    assert m.id_columns == (("order_id", "string"), ("shop", "string"), ("courier", "string"))
    assert m.feature_names == ("shop_orders_6h", "shop_late_mean_6h", "courier_orders_1h")
    assert SHOP_LOAD.feature("shop_orders_6h").window_us == 6 * 3_600_000_000
    assert m.fingerprint == f"{SHOP_LOAD.fingerprint}+{COURIER_LOAD.fingerprint}"


def test_feature_set_fingerprint_covers_the_source_columns_not_the_lander():
    moved = dataclasses.replace(ORDERS, lander=FileLander("csv", "s3://elsewhere/{ds}.csv"))
    retyped = dataclasses.replace(
        ORDERS, columns=ORDERS.columns[:1] + (Column("minutes_late", "int64"),) + ORDERS.columns[2:]
    )
    fp = SHOP_LOAD.fingerprint
    assert dataclasses.replace(SHOP_LOAD, source=moved).fingerprint == fp
    assert dataclasses.replace(SHOP_LOAD, source=retyped).fingerprint != fp


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: FeatureSet("x_v1", source=ORDERS, features=(count("c", 1),)),
            r"feature set 'x_v1', field 'key': source 'orders' has keys \['shop', 'courier'\]; name one with key=",
        ),
        (
            lambda: FeatureSet("x_v1", source=ORDERS, key="city", features=(count("c", 1),)),
            r"feature set 'x_v1', field 'key': 'city' is not a key of source 'orders'",
        ),
        (
            lambda: FeatureSet("x_v1", source=ORDERS, key="shop", features=(agg("s", "sum", "minutes", 1),)),
            r"feature set 'x_v1', field 'features.s.column': unknown column 'minutes'",
        ),
        (
            lambda: FeatureSet("x_v1", source=ORDERS, key="shop", features=(agg("s", "sum", "status", 1),)),
            r"field 'features.s.column': sum needs a numeric column; 'status' is string",
        ),
        (
            lambda: dataclasses.replace(ORDERS, keys=(Key("shop", "uuid"),)),
            r"source 'orders', field 'keys': key 'shop' has type 'uuid'",
        ),
        (
            lambda: dataclasses.replace(ORDERS, lander=FileLander("xml", "a/{ds}")),
            r"source 'orders', field 'lander': format 'xml'",
        ),
        (
            lambda: dataclasses.replace(ORDERS, lander=FileLander("csv", "a/b.csv")),
            r"source 'orders', field 'lander': path 'a/b.csv' has no \{ds\} placeholder",
        ),
        (
            lambda: dataclasses.replace(ORDERS, lander=FileLander("csv", "a/{ds}", columns={"nope": "x"})),
            r"source 'orders', field 'lander': maps unknown raw column\(s\) \['nope'\]",
        ),
        (
            lambda: dataclasses.replace(ORDERS, columns=ORDERS.columns + (Column("shop", "string"),)),
            r"source 'orders', field 'columns': column names used twice: \['shop'\]",
        ),
        (
            lambda: dataclasses.replace(ORDERS, columns=(Column("n", "int64", allowed=("a",)),)),
            r"column 'n': allowed values need a string column",
        ),
    ],
)
def test_source_and_feature_set_errors_name_the_declaration_and_field(make, message):
    with pytest.raises(DeclarationError, match=message):
        make()


INT_KEYED = FeatureSet(
    "int_keyed_v1", features=(count("n_1d", 1),), source=Source("ints", (Key("shop", "int64"),), (), ParserLander("p"))
)


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"joins": (Join(SHOP_LOAD, key="store"),)},
            r"model 'late_order', field 'joins\[0\].key': unknown column 'store'",
        ),
        (
            {"joins": (Join(SHOP_LOAD), Join(INT_KEYED, key="shop"))},
            r"model 'late_order', field 'joins\[1\].key': key-type mismatch: query column 'shop' is string, "
            r"feature set 'int_keyed_v1' is keyed by shop \(int64\)",
        ),
        (
            {"joins": (Join(SHOP_LOAD), Join(dataclasses.replace(SHOP_LOAD, name="shop_load_v2"), key="shop"))},
            r"field 'joins\[1\]': feature name 'shop_orders_6h' is used by two joined sets: 'shop_load_v1' and 'shop_load_v2'",
        ),
        (
            {"label": OutcomeLabel((Condition("delay", ">=", 15),))},
            r"model 'late_order', field 'label.when\[0\]': unknown column 'delay' of source 'orders'",
        ),
        ({"queries": QueryRows(ORDERS, time="due")}, r"model 'late_order', field 'queries.time': unknown column 'due'"),
        (
            {"queries": QueryRows(ORDERS, time="minutes_late")},
            r"field 'queries.time': 'minutes_late' is double, not a timestamp",
        ),
        (
            {
                "queries": EntitySnapshots(ORDERS, key="shop"),
                "label": EventLabel(ORDERS, horizon_days=31),
                "joins": (Join(SHOP_LOAD),),
            },
            r"model 'late_order', field 'label.horizon_days': a 31-day horizon \(\+0 grace\) is longer than the data "
            r"of source 'orders' \(2024-01-01..2024-01-31, 31 days\)",
        ),
        (
            {
                "queries": EntitySnapshots(ORDERS, key="shop"),
                "label": EventLabel(ORDERS, horizon_days=7),
                "joins": (Join(SHOP_LOAD), Join(COURIER_LOAD)),
            },
            r"model 'late_order', field 'joins\[1\].key': unknown column 'courier': the queries have \['shop'\]",
        ),
        (
            {"ranges": Ranges(train=("2023-12-01", "2024-01-10"))},
            r"field 'ranges.train': 2023-12-01..2024-01-10 is outside the data \(2024-01-01..2024-01-31\)",
        ),
        (
            # an outcome label of D reads the query rows ingested through D + 1 (maturity 0 h)
            {"ranges": Ranges(holdback=("2024-01-20", "2024-01-31"))},
            r"field 'ranges.holdback': the labels of its last cut-off 2024-01-31 read 'orders' through 2024-02-01, "
            r"past its data \(which ends 2024-01-31\): they can never mature",
        ),
    ],
)
def test_model_errors_name_the_model_and_field(changes, message):
    with pytest.raises(DeclarationError, match=message):
        repo.Repo.of(late_model(**changes))


def test_model_shape_errors_are_raised_at_declaration():
    with pytest.raises(
        DeclarationError, match="model 'late_order', field 'label': entity-snapshot queries need an EventLabel"
    ):
        late_model(queries=EntitySnapshots(ORDERS, key="shop"), label=OutcomeLabel((Condition("status", "is_null"),)))
    with pytest.raises(DeclarationError, match="field 'joins': a model joins at least one feature set"):
        late_model(joins=())


def test_two_declarations_of_one_name_are_refused():
    other = dataclasses.replace(SHOP_LOAD, features=(count("shop_orders_1h", hours(1)),))
    with pytest.raises(DeclarationError, match=r"feature set 'shop_load_v1', field 'name': declared twice"):
        repo.Repo.of(late_model(), other)


def test_a_repo_directory_is_loaded_from_its_modules(tmp_path, monkeypatch):
    (tmp_path / "orders.py").write_text(
        "from features.source import Column, FileLander, Key, Source\n"
        "SRC = Source('orders_dir', (Key('shop', 'string'),), (Column('x', 'double'),), FileLander('csv', 'f/{ds}.csv'))\n"
    )
    (tmp_path / "shop_v1.py").write_text(
        "from features.spec import FeatureSet, count\n"
        "from features.source import hours\n"
        "import importlib\n"
        "SRC = importlib.import_module('lockstep_repo.orders').SRC\n"
        "FS = FeatureSet('shop_dir_v1', source=SRC, features=(count('n_2h', hours(2)),))\n"
    )
    monkeypatch.setenv(repo.REPO_ENV, str(tmp_path))
    r = repo.load()
    assert set(r.sources) == {"orders_dir"} and r.feature_set("shop_dir_v1").entity_type == "string"
    assert r.origins["feature set:shop_dir_v1"].endswith("shop_v1.py")
    with pytest.raises(KeyError, match=r"unknown model 'nope'; known: \[\]"):
        r.model("nope")


OUTCOMES = Source(
    name="order_outcomes",
    keys=(Key("shop", "string"),),
    columns=(Column("minutes_late", "double"), Column("status", "string")),
    lander=FileLander("csv", "memory://outcomes/{ds}.csv"),
    event_id="order_id",
    event_id_type="string",
)


def test_outcomes_from_another_source_by_query_id():
    m = late_model(label=OutcomeLabel((Condition("minutes_late", ">=", 15),), source=OUTCOMES))
    r = repo.Repo.of(m)
    assert m.label_source is OUTCOMES and set(r.sources) == {"orders", "order_outcomes"}
    wrong_id = dataclasses.replace(OUTCOMES, event_id="outcome_id")
    with pytest.raises(
        DeclarationError, match=r"field 'label.source': outcome source 'order_outcomes' has event id 'outcome_id'"
    ):
        repo.Repo.of(late_model(label=OutcomeLabel((Condition("minutes_late", ">=", 15),), source=wrong_id)))
    with pytest.raises(
        DeclarationError, match=r"field 'label.when\[0\]': unknown column 'due_ts' of source 'order_outcomes'"
    ):
        repo.Repo.of(late_model(label=OutcomeLabel((Condition("due_ts", "is_null"),), source=OUTCOMES)))
    # the outcomes' maturity bounds the ranges as much as the queries' source does
    # lead 1 day and maturity 0 h (the defaults): the queries ingested D-1 .. D+1, the outcomes D-1 .. D+1
    assert m.label_reads("2024-01-10") == {
        "orders": ("2024-01-09", "2024-01-11"),
        "order_outcomes": ("2024-01-09", "2024-01-11"),
    }
    late = dataclasses.replace(OUTCOMES, span=("2024-01-01", "2024-01-20"))
    with pytest.raises(DeclarationError, match=r"read 'order_outcomes' through 2024-01-21, past its data"):
        repo.Repo.of(
            late_model(
                label=OutcomeLabel((Condition("minutes_late", ">=", 15),), source=late),
                ranges=Ranges(holdback=("2024-01-15", "2024-01-20")),
            )
        )
    with pytest.raises(DeclarationError, match=r"field 'queries.lead_days': must be >= 0, got -1"):
        repo.Repo.of(late_model(queries=QueryRows(ORDERS, time="due_ts", lead_days=-1)))


def test_join_serving_options_and_id_nullability():
    with pytest.raises(DeclarationError, match=r"join 'shop_load_v1', field 'mode': 'cached'"):
        Join(SHOP_LOAD, mode="cached")
    with pytest.raises(DeclarationError, match=r"join 'shop_load_v1', field 'timeout_ms': must be > 0"):
        Join(SHOP_LOAD, timeout_ms=0)
    nullable = dataclasses.replace(ORDERS, keys=(Key("shop", "string"), Key("courier", "string", nullable=True)))
    m = late_model(
        queries=QueryRows(nullable, time="due_ts"),
        joins=(
            Join(dataclasses.replace(SHOP_LOAD, source=nullable)),
            Join(dataclasses.replace(COURIER_LOAD, source=nullable)),
        ),
    )
    assert m.id_fields == (("order_id", "string", False), ("shop", "string", False), ("courier", "string", True))
    assert m.serving_log_table == "serving_logs/late_order" and m.skew_report_table == "skew_reports/late_order"


def test_the_default_model_is_the_only_one_or_the_declared_one():
    one = repo.Repo.of(late_model())
    assert one.default_model().name == "late_order"
    two = repo.Repo.of(late_model(), late_model(name="late_order_b"))
    with pytest.raises(KeyError, match=r"2 models \['late_order', 'late_order_b'\] and no DEFAULT_MODEL"):
        two.default_model()
    two.default = "late_order_b"
    assert two.default_model().name == "late_order_b"
    two.default = "nope"
    with pytest.raises(DeclarationError, match="DEFAULT_MODEL.*names no declared model"):
        repo.check(two)
    shipped = repo.load()
    assert shipped.default_model().name == "repurchase_90d" and {"repurchase_90d", "dep_delay_15"} <= set(
        shipped.models
    )
