"""``lockstep repo``: every declaration with its fingerprint, origin, tables and DAGs; a bad repo exits 1."""

from __future__ import annotations

import json
import textwrap

from jobs.cli import main

ORDERS = """
from features.model import Condition, Join, Model, OutcomeLabel, QueryRows
from features.source import Column, FileLander, Key, Source, hours
from features.spec import FeatureSet, count

ORDERS = Source(
    name="shop_orders",
    keys=(Key("shop", "string"),),
    columns=(Column("due_ts", "timestamp[us, tz=UTC]", nullable=False), Column("minutes_late", "double", min=0)),
    lander=FileLander("csv", "memory://shop_orders/{ds}.csv"),
    event_id="order_id",
    event_id_type="string",
)
SHOP_LOAD = FeatureSet("shop_load_v1", source=ORDERS, features=(count("shop_orders_6h", hours(6)),))
LATE = Model(
    name="late_order",
    queries=QueryRows(ORDERS, time="due_ts", offset_hours=-1),
    label=OutcomeLabel((Condition("minutes_late", ">=", 15),)),
    joins=(Join(SHOP_LOAD),),
)
"""


def test_repo_lists_every_declaration_with_fingerprint_origin_tables_and_dags(capsys):
    from features import repo

    assert main(["repo"]) == 0
    out = capsys.readouterr().out
    r = repo.load()
    fs = r.feature_set("customer_activity_v1")
    counts = f"{len(r.sources)} source(s), {len(r.feature_sets)} feature set(s), {len(r.models)} model(s)"
    assert f"{counts} — checked, no declaration error" in out
    assert f"customer_activity_v1  fingerprint {fs.fingerprint}" in out
    assert f"repurchase_90d  fingerprint {fs.fingerprint}" in out  # one set: the model's fingerprint is the set's
    assert "declared in  features.projects.cdnow.repurchase_90d" in out
    # where each is assigned, not the first module importing it
    assert "declared in  features.projects.cdnow.purchases" in out
    assert "declared in  features.projects.cdnow.customer_activity_v1" in out
    assert "tables       raw_events/cdnow_purchases" in out
    assert "tables       labels/repurchase_90d, training_sets/repurchase_90d, predictions, SQL predictions" in out
    assert (
        "dags         training__repurchase_90d, batch_scoring__repurchase_90d, skew_nightly__repurchase_90d, canary_ramp__repurchase_90d"
        in out
    )
    assert "dags         features_daily__cdnow_purchases" in out


def test_repo_json_plan(capsys):
    assert main(["repo", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["sources"]["cdnow_purchases"]["keys"] == {"customer_id": "int64"}
    assert plan["sources"]["cdnow_purchases"]["fingerprint"].startswith("cdnow_purchases:")
    assert plan["feature_sets"]["customer_activity_v1"]["asset"] == "lockstep://feature_snapshots/customer_activity_v1"
    assert plan["models"]["repurchase_90d"]["schedule"]["training"] == "0 0 * * 1"


def test_repo_flag_names_a_directory_of_declarations(tmp_path, capsys):
    (tmp_path / "orders.py").write_text(textwrap.dedent(ORDERS))
    assert main(["--repo", str(tmp_path), "repo", "-v"]) == 0
    out = capsys.readouterr().out
    assert "1 source(s), 1 feature set(s), 1 model(s)" in out and "cdnow" not in out
    assert "keys         shop string" in out and "entity       shop (string)" in out
    assert "queries      rows of shop_orders at due_ts-1h" in out
    assert "label        the query row matches any of: minutes_late >= 15" in out
    assert "id_columns   order_id (string), shop (string)" in out
    assert "dags         features_daily__shop_orders" in out
    assert "features     shop_orders_6h" in out  # -v


def test_a_bad_declaration_exits_1_with_its_message(tmp_path, monkeypatch, capsys):
    (tmp_path / "orders.py").write_text(textwrap.dedent(ORDERS).replace('"minutes_late", ">="', '"minutes", ">="'))
    monkeypatch.setenv("LOCKSTEP_REPO", str(tmp_path))  # the environment, as the DAGs read it
    assert main(["repo"]) == 1
    err = capsys.readouterr().err
    assert "lockstep repo: error: model 'late_order', field 'label.when[0]': unknown column 'minutes'" in err


def test_model_source_and_feature_set_flags_resolve_against_the_repo(tmp_path):
    import argparse

    import pytest

    from jobs.cli import common
    from jobs.config import Config

    p = argparse.ArgumentParser()
    common.add_model_arg(p)
    common.add_source_arg(p)
    common.add_feature_set_arg(p)
    cfg = Config()
    args = p.parse_args([])
    assert (common.model_name(cfg, args), common.source_name(cfg, args), common.feature_set_name(cfg, args)) == (
        "repurchase_90d",
        "cdnow_purchases",
        "customer_activity_v1",
    )
    args = p.parse_args(
        ["--model", "repurchase_90d", "--source", "cdnow_purchases", "--feature-set", "customer_activity_v1"]
    )
    assert common.model_name(cfg, args) == "repurchase_90d"
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        common.model_name(cfg, p.parse_args(["--model", "nope"]))
    (tmp_path / "orders.py").write_text(textwrap.dedent(ORDERS))
    other = Config(repo_package=str(tmp_path))
    assert (common.model_name(other, args := p.parse_args([])), common.source_name(other, args)) == (
        "late_order",
        "shop_orders",
    )
    assert common.feature_set_name(other, args) == "shop_load_v1"


def test_a_repo_module_that_does_not_import_exits_1_naming_it(tmp_path, capsys):
    (tmp_path / "broken.py").write_text("from features.source import Sauce\n")
    assert main(["--repo", str(tmp_path), "repo"]) == 1
    err = capsys.readouterr().err
    assert f"lockstep repo: error: cannot load the declarations of {tmp_path}: ImportError" in err and "Sauce" in err
