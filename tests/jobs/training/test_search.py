"""Hyperparameter search (successive halving on the Dask cluster) on a small CDNOW lake."""

import json
import shutil

import numpy as np
import pytest
from training_lake import COMMIT, RANGES, training_lake

from features import repo as feature_repo
from jobs.config import Config
from jobs.training import search as t
from jobs.training.labels import weekly_cutoffs
from jobs.training.trainer import TrainSpec
from jobs.training.training_set import partitions_in, training_set_table

pytestmark = [pytest.mark.dask, pytest.mark.timeout(300)]

MODEL = feature_repo.load().model("repurchase_90d")
FS = MODEL.feature_sets[0]
SPEC = TrainSpec(**RANGES, embargo_days=0, num_boost_round=300, patience=30)
SEARCH = {"n_candidates": 9, "eta": 3, "min_rows": 4_000, "max_rows": 36_000, "seed": 7}


@pytest.fixture(scope="module")
def cfg(training_lake_template, tmp_path_factory):
    return training_lake(training_lake_template, tmp_path_factory, dask_workers=2)


@pytest.fixture(scope="module")
def no_holdback_cfg(cfg, tmp_path_factory):
    """A copy of the lake without the holdback range's training-set partitions."""
    root = tmp_path_factory.mktemp("lake_no_holdback") / "lake"
    shutil.copytree(cfg.lake_root, root)
    copy = Config(lake_root=str(root), dask_workers=2)
    table = training_set_table(copy.lake(), MODEL)
    for d in weekly_cutoffs(*RANGES["holdback"]):
        shutil.rmtree(table.partition_path(d))
        assert not table.exists(d)
    with pytest.raises(Exception):  # noqa: B017 - whatever reads the holdback now fails
        partitions_in(copy.lake(), MODEL, *RANGES["holdback"])
    return copy


@pytest.fixture(scope="module")
def first(no_holdback_cfg, dask_client):
    lines = []
    res = t.tune(no_holdback_cfg, SPEC, client=dask_client, progress=lines.append, **SEARCH)
    return res, lines


def _table(res):
    return res.table().drop(columns=["seconds", "worker"])


def test_search_never_reads_the_holdback_and_follows_the_schedule(first):
    res, lines = first  # ran on a lake without the holdback partitions
    assert [r["rows"] for r in res.rungs] == [4_000, 12_000, 36_000]
    # 9 candidates -> best 3 -> best 1, plus the defaults (candidate 0) when halving dropped them
    by_rung = [sorted(r.candidate for r in res.records if r.rung == k) for k in range(3)]
    assert by_rung[0] == list(range(9))
    for k in (1, 2):
        prev = sorted((r for r in res.records if r.rung == k - 1), key=lambda r: (-r.valid_auc, r.candidate))
        want = {r.candidate for r in prev[: 3 if k == 1 else 1]} | {0}
        assert by_rung[k] == sorted(want)
    assert res.n_configs == 9 and res.n_fits == len(res.records) == sum(r["candidates"] for r in res.rungs)
    assert res.records[0].params == t.TUNED_DEFAULTS
    assert res.stopped_early is None and res.best_rows == 36_000
    assert all(r.budget == r.rows * r.rounds and r.status == "done" for r in res.records)
    assert res.summary()["holdback_used"] is False
    # one progress line per finished fit, one per rung, a header and a result
    assert sum("rows) candidate" in line for line in lines) == res.n_fits
    assert len(lines) == res.n_fits + 3 + 2


def test_without_the_guard_halving_can_drop_better_defaults(first, no_holdback_cfg, dask_client):
    res, _ = first
    plain = t.tune(no_holdback_cfg, SPEC, client=dask_client, keep_defaults=False, **SEARCH)
    assert [r["candidates"] for r in plain.rungs] == [9, 3, 1]
    # the guard only adds the defaults to a rung: the other survivors are the same
    for k in (1, 2):
        assert {r.candidate for r in plain.records if r.rung == k} <= {r.candidate for r in res.records if r.rung == k}
    assert res.best_auc >= plain.best_auc


def test_same_seed_same_table(first, no_holdback_cfg, dask_client):
    res, _ = first
    again = t.tune(no_holdback_cfg, SPEC, client=dask_client, **SEARCH)
    assert _table(res).equals(_table(again))
    assert (again.best_id, again.best_params, again.best_auc) == (res.best_id, res.best_params, res.best_auc)
    other = t.tune(no_holdback_cfg, SPEC, client=dask_client, **{**SEARCH, "seed": 8})
    assert other.records[1].params != res.records[1].params


def test_best_is_at_least_as_good_as_the_defaults(first, no_holdback_cfg):
    res, _ = first
    lake = no_holdback_cfg.lake()
    table = training_set_table(lake, MODEL)
    files = {
        r: [f for m in partitions_in(lake, MODEL, *RANGES[r]) for f in table.files(m.ds)] for r in ("train", "valid")
    }
    x, y, _ = t.load_subsample(files["train"], FS.feature_names, "label", SEARCH["max_rows"], SEARCH["seed"])
    xv, yv = t.load_all(files["valid"], FS.feature_names, "label")
    base = res.settings["base_params"]
    default = t.fit_candidate(x, y, xv, yv, res.best_rows, {**base, **t.TUNED_DEFAULTS}, 300, 30)
    assert res.best_auc >= default["valid_auc"]
    # and the best one, refit here, reproduces the search's score
    again = t.fit_candidate(x, y, xv, yv, res.best_rows, {**base, **res.best_params}, 300, 30)
    assert again["valid_auc"] == res.best_auc


def test_stratified_subsample_keeps_the_label_rate(first, no_holdback_cfg):
    y = np.array([0] * 900 + [1] * 100)
    order = t.stratified_order(y, 3)
    assert sorted(order) == list(range(1000))
    for r in (10, 50, 100, 333, 1000):
        assert abs(y[order[:r]].sum() - r / 10) <= 1
    assert (order == t.stratified_order(y, 3)).all() and not (order == t.stratified_order(y, 4)).all()


def test_budgets(no_holdback_cfg, dask_client):
    res = t.tune(no_holdback_cfg, SPEC, client=dask_client, **{**SEARCH, "n_candidates": 4, "max_seconds": 0.01})
    assert len({r.candidate for r in res.records}) == 4
    assert [r["rung"] for r in res.rungs] == [0]  # no rung starts after the deadline
    assert "time budget" in res.stopped_early and res.best_rows == 4_000
    assert res.n_configs == 4 and res.n_fits == 4


def test_bad_input(no_holdback_cfg, dask_client):
    with pytest.raises(ValueError, match="n_candidates"):
        t.tune(no_holdback_cfg, SPEC, client=dask_client, **{**SEARCH, "n_candidates": 0})
    empty = TrainSpec(
        train=("1997-01-06", "1997-01-20"), valid=RANGES["valid"], holdback=RANGES["holdback"], embargo_days=0
    )
    with pytest.raises(ValueError, match="no labels/repurchase_90d partitions"):
        t.tune(no_holdback_cfg, empty, client=dask_client, **SEARCH)
    with pytest.raises(ValueError, match="empty"):
        TrainSpec(
            train=("1997-02-24", "1997-02-03"), valid=RANGES["valid"], holdback=RANGES["holdback"], embargo_days=0
        )
    with pytest.raises(ValueError, match="eta"):
        t.rung_sizes(10, 100, 1)


def test_tune_and_train_registers_the_best_with_its_report(cfg, dask_client, monkeypatch):
    monkeypatch.setenv("LOCKSTEP_CODE_COMMIT", COMMIT)
    from jobs.models.registry import Registry

    registry = Registry.from_config(cfg)
    out = t.tune_and_train(cfg, SPEC, registry, client=dask_client, **{**SEARCH, "n_candidates": 3})
    assert set(out.report) == {"candidates.csv", "score_vs_budget.png", "summary.json", "summary.md"}
    with open(out.report["score_vs_budget.png"], "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    import pandas as pd

    csv = pd.read_csv(out.report["candidates.csv"])
    assert len(csv) == len(out.tuning.records) and {"valid_auc", "rows", "budget", "num_leaves"} <= set(csv.columns)
    with open(out.report["summary.json"]) as fh:
        summary = json.load(fh)
    assert (
        summary["configs_tried_on_validation"] == 3 and "/_reports/tuning/repurchase_90d/" in out.report["summary.md"]
    )
    info = out.train.registered
    assert info.aliases == ["challenger"]
    assert info.metrics["valid_configs_tried"] == 3 and info.metrics["holdback_auc"] > 0.6
    params = out.train.candidate.params
    for k, v in out.tuning.best_params.items():
        assert params[k] == v
    assert out.train.candidate.reports["tuning"]["configs_tried_on_validation"] == 3
    assert len(out.train.candidate.reports["tuning"]["candidates"]) == len(out.tuning.records)


def test_cli_tune_no_train(no_holdback_cfg, dask_client, monkeypatch, capsys):
    import argparse

    from jobs.cli import training as tune_cli

    p = argparse.ArgumentParser()
    for opt in ("--lake", "--engine", "--dask-address", "--spark-master"):
        p.add_argument(opt)
    p.add_argument("--buckets", type=int)
    tune_cli.add_parsers(p.add_subparsers(dest="command"))
    args = p.parse_args(
        [
            "--lake",
            no_holdback_cfg.lake_root,
            "--dask-address",
            dask_client.scheduler.address,
            "tune",
            "--train",
            *RANGES["train"],
            "--valid",
            *RANGES["valid"],
            "--holdback",
            *RANGES["holdback"],
            "--embargo-days",
            "0",
            "--candidates",
            "3",
            "--min-rows",
            "4000",
            "--max-rows",
            "12000",
            "--rounds",
            "100",
            "--no-train",
        ]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    import re

    assert re.search(r"searched 3 configurations \(\d fits\) against the validation range", out)
    assert "report: " in out and "rows) candidate" in out
