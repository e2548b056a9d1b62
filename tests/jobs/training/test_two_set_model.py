"""A project declared only in a test (``tests/fixtures/late_orders``): string keys, hour windows, two
feature sets of two sources, and an outcome per query row — labels, a point-in-time training set,
training and registration with lineage, with no change to ``jobs/``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features import kernel
from jobs.config import Config
from jobs.lake import MissingPartitionError
from jobs.training.labels import build_labels, cutoffs_in, labels_table, latest_mature_cutoff
from jobs.training.training_set import build_training_set, training_set_table

REPO_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "late_orders"
_spec = importlib.util.spec_from_file_location("late_orders_fixture", REPO_DIR / "late_orders.py")
lo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lo)

COMMIT = "0123456789abcdef0123456789abcdef01234567"
UTC = "UTC"


def _cfg(tmp_path) -> Config:
    return Config(lake_root=str(tmp_path / "lake"), repo_package=str(REPO_DIR))


def _t(s: str) -> pd.Timestamp:
    return pd.Timestamp(s, tz=UTC)


def tiny_orders() -> pd.DataFrame:
    rows = [
        # order, shop, courier, created, due, minutes late, status
        ("o1", "s1", "c1", "2024-01-02 08:00", "2024-01-02 10:00", 20.0, "done"),  # as_of 09:00: late -> 1
        ("o2", "s1", "c2", "2024-01-02 21:00", "2024-01-03 00:30", None, "cancelled"),  # as_of 01-02 23:30 -> 1
        ("o3", "s2", "c1", "2024-01-01 20:00", "2024-01-02 00:30", 0.0, "done"),  # as_of 01-01 23:30: not 01-02
        ("o4", "s2", "c2", "2024-01-02 09:00", "2024-01-02 12:00", 14.9, "done"),  # 14.9 < 15 -> 0
        ("o5", "s1", "c1", "2024-01-02 10:00", "2024-01-02 13:00", None, None),  # no outcome matches -> 0
        ("o6", "s2", "c1", "2024-01-02 11:00", "2024-01-02 12:00", 15.0, "done"),  # exactly 15 -> 1
    ]
    df = pd.DataFrame(rows, columns=["order_id", "shop", "courier", "event_ts", "due_ts", "minutes_late", "status"])
    for c in ("event_ts", "due_ts"):
        df[c] = pd.to_datetime(df[c], utc=True).astype("datetime64[us, UTC]")
    df["ingested_at"] = df["event_ts"] + pd.Timedelta(minutes=5)
    # o4 lands again on 01-03 with its final outcome: the latest-ingested row counts
    again = df[df["order_id"] == "o4"].assign(minutes_late=30.0, ingested_at=_t("2024-01-03 09:00").as_unit("us"))
    return pd.concat([df, again], ignore_index=True)


def test_outcome_labels_of_a_tiny_frame_are_exact(tmp_path):
    cfg = _cfg(tmp_path)
    model = cfg.repo().model("late_order")
    days = ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"]
    lo.write_raw(cfg.lake(), model.queries.source, tiny_orders(), days=days)
    assert cutoffs_in(model, "2024-01-01", "2024-01-03") == days[:3]
    assert latest_mature_cutoff(cfg, "late_order") == "2024-01-02"  # 01-02 reads 01-01 .. 01-04
    (m,) = build_labels(cfg, "late_order", ["2024-01-02"], allow_unvalidated=True)
    got = labels_table(cfg.lake(), model).read("2024-01-02")
    assert m.table == "labels/late_order" and list(got.columns) == ["order_id", "shop", "courier", "as_of", "label"]
    assert got["order_id"].tolist() == ["o1", "o2", "o4", "o5", "o6"]
    assert got["label"].tolist() == [1, 1, 1, 0, 1]  # o4: the re-landed row (30 minutes late)
    assert got["as_of"].tolist() == [
        _t("2024-01-02 09:00"),
        _t("2024-01-02 23:30"),
        _t("2024-01-02 11:00"),
        _t("2024-01-02 12:00"),
        _t("2024-01-02 11:00"),
    ]
    assert got["shop"].tolist() == ["s1", "s1", "s2", "s1", "s2"] and str(got["label"].dtype) == "int8"
    assert "minutes_late >= 15 or status == 'cancelled'" in m.producer["definition"]
    with pytest.raises(MissingPartitionError, match="2024-01-05") as info:
        build_labels(cfg, "late_order", ["2024-01-03"], allow_unvalidated=True)  # reads through 01-05, not landed
    assert any("not mature" in n for n in info.value.__notes__)


def naive(model, labels: pd.DataFrame, events: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One kernel call per label row and joined set, over all of that set's events."""
    rows = []
    for _, row in labels.iterrows():
        out = row.to_dict()
        for j in model.joins:
            fs = j.feature_set
            one = pd.DataFrame({fs.entity: [row[j.key_name]], "as_of": [row["as_of"]]})
            feats = kernel.compute(events[fs.source.name], one, fs, fs.training_mode)
            out.update({n: feats[n].iloc[0] for n in fs.feature_names})
        rows.append(out)
    return pd.DataFrame(rows)


def _lake(tmp_path, key_type: str):
    cfg = _cfg(tmp_path)
    model = cfg.repo().model("late_order" if key_type == "string" else "late_order_int")
    orders, pings = lo.make_events(key_type=key_type)
    lo.write_raw(cfg.lake(), model.queries.source, orders)
    lo.write_raw(cfg.lake(), model.feature_sets[1].source, pings)
    return cfg, model, {model.queries.source.name: orders, model.feature_sets[1].source.name: pings}


@pytest.mark.parametrize("key_type", ["int64", "string"])
def test_training_set_equals_a_naive_per_row_computation(tmp_path, key_type):
    cfg, model, events = _lake(tmp_path, key_type)
    build_labels(cfg, model.name, ["2024-01-03"], allow_unvalidated=True)
    m = build_training_set(cfg, model.name, "2024-01-03", validate=False, allow_unvalidated=True)
    got = training_set_table(cfg.lake(), model).read("2024-01-03").sort_values("order_id", ignore_index=True)
    assert m.table == f"training_sets/{model.name}" and m.rows == len(got) > 20
    assert list(got.columns) == ["order_id", "shop", "courier", "as_of", "label", *model.feature_names]
    labels = labels_table(cfg.lake(), model).read("2024-01-03")
    want = naive(model, labels, events).sort_values("order_id", ignore_index=True)
    for c in ["order_id", "shop", "courier", "label"]:
        assert got[c].tolist() == want[c].tolist(), c
    for c in model.feature_names:
        np.testing.assert_array_equal(got[c].to_numpy(dtype=float), want[c].to_numpy(dtype=float), err_msg=c)
    assert got["courier_pings_1h"].sum() > 0 and got["shop_orders_6h"].sum() > 0
    assert m.producer["feature_set_fingerprint"] == model.fingerprint
    assert [s["name"] for s in m.producer["feature_sets"]] == [fs.name for fs in model.feature_sets]
    # each set reads from the day of the earliest query minus its longest window (hour windows: not the table's
    # first day; README "How much history a read takes")
    earliest = labels["as_of"].min()

    def first(fs) -> str:
        since = (earliest - pd.Timedelta(days=fs.horizon_days)).strftime("%Y-%m-%d")
        return max(cfg.lake().table(fs.source.table).first_ds(), since)

    assert sorted(m.inputs) == sorted(
        [f"labels/{model.name}/ds=2024-01-03"]
        + [f"raw_events/{fs.source.name}/ds={first(fs)}..2024-01-03" for fs in model.feature_sets]
    )
    assert [first(fs) for fs in model.feature_sets] == ["2024-01-02", "2024-01-02"]


@pytest.mark.parametrize("key_type", ["int64", "string"])
def test_train_and_register_with_lineage(tmp_path, key_type, monkeypatch):
    from jobs.models.registry import Registry
    from jobs.training.trainer import TrainSpec, train_model

    monkeypatch.setenv("LOCKSTEP_CODE_COMMIT", COMMIT)
    cfg, model, _ = _lake(tmp_path, key_type)
    days = cutoffs_in(model, "2024-01-02", "2024-01-05")
    build_labels(cfg, model.name, days, allow_unvalidated=True)
    for d in days:
        build_training_set(cfg, model.name, d, validate=False, allow_unvalidated=True)
    spec = TrainSpec(
        *(model.ranges.train, model.ranges.valid, model.ranges.holdback),
        model_name=model.name,
        num_boost_round=10,
        patience=5,
        params={"num_leaves": 4, "min_data_in_leaf": 2, "num_threads": 1},
    )
    registry = Registry.from_config(cfg)
    out = train_model(cfg, spec, registry, baseline=False)
    info = out.registered
    assert info.name == model.name and "challenger" in info.aliases
    assert info.tags["feature_set_fingerprint"] == model.fingerprint
    loaded = registry.load(model.name, info.version)
    assert loaded.lineage["feature_sets"] == [
        {"name": fs.name, "fingerprint": fs.fingerprint} for fs in model.feature_sets
    ]
    assert loaded.lineage["feature_names"] == list(model.feature_names)
    assert sorted(loaded.lineage["training_set_fingerprints"]) == [f"training_sets/{model.name}/ds={d}" for d in days]
    assert out.candidate.params["embargo_days"] == 1  # the outcome's 20-hour maturity, in days
    assert 0 <= out.candidate.metrics["holdback_auc"] <= 1
