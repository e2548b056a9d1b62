"""The training job on CDNOW training sets: time split, metrics, lineage-gated registration, Dask."""

import json

import numpy as np
import pandas as pd
import pytest
from training_lake import COMMIT, RANGES, training_lake

from features import repo as feature_repo
from jobs.config import Config
from jobs.models.registry import CHAMPION, Registry
from jobs.training.labels import weekly_cutoffs
from jobs.training.lgbm import score_files
from jobs.training.trainer import TrainSpec, resolve_spec, train_model
from jobs.training.training_set import training_set_table

MODEL = feature_repo.load().model("repurchase_90d")
FS = MODEL.feature_sets[0]
PARAMS = {"num_threads": 1, "num_leaves": 15, "min_data_in_leaf": 50}


@pytest.fixture(scope="module")
def cfg(training_lake_template, tmp_path_factory):
    return training_lake(training_lake_template, tmp_path_factory, dask_workers=2)


@pytest.fixture(scope="module")
def registry(cfg):
    return Registry.from_config(cfg)


@pytest.fixture(scope="module")
def trained(cfg, registry, monkeypatch_module):
    monkeypatch_module.setenv("LOCKSTEP_CODE_COMMIT", COMMIT)
    return train_model(
        cfg, TrainSpec(**RANGES, embargo_days=0, num_boost_round=80, patience=10, params=PARAMS), registry
    )


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_metrics_cover_validation_and_holdback(trained):
    m = trained.candidate.metrics
    assert 0.65 < m["valid_auc"] < 1 and 0.65 < m["holdback_auc"] < 1
    for k in ("pr_auc", "log_loss", "ece", "base_rate", "rows"):
        assert f"holdback_{k}" in m and f"valid_{k}" in m
    assert 1 <= m["best_iteration"] <= 80
    cal = trained.candidate.reports["calibration"]["holdback"]
    assert len(cal) == 10 and sum(b["rows"] for b in cal) == m["holdback_rows"]
    assert [b["mean_score"] for b in cal] == sorted(b["mean_score"] for b in cal)
    gain = trained.candidate.reports["feature_importance_gain"]
    assert set(gain) == set(FS.feature_names) and max(gain.values()) > 0
    assert len(trained.result.history["auc"]) >= m["best_iteration"]


def test_holdback_metrics_are_those_of_the_registered_model(cfg, registry, trained):
    loaded = registry.load("repurchase_90d", trained.registered.version)
    table = training_set_table(cfg.lake(), MODEL)
    files = [f for d in weekly_cutoffs(*RANGES["holdback"]) for f in table.files(d)]
    y, p = score_files(loaded.booster, files, list(FS.feature_names), "label")
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y, p) == pytest.approx(trained.candidate.metrics["holdback_auc"], abs=1e-12)
    assert loaded.booster.current_iteration() == trained.candidate.metrics["best_iteration"]


def test_registered_lineage_names_every_partition(cfg, registry, trained):
    info = trained.registered
    assert info.aliases == ["challenger"]
    assert info.tags["code_commit"] == COMMIT and info.tags["feature_set_fingerprint"] == FS.fingerprint
    lineage = registry.load("repurchase_90d", info.version).lineage
    table = training_set_table(cfg.lake(), MODEL)
    want = {
        f"{table.name}/ds={d}": table.manifest(d).content_fingerprint
        for d in weekly_cutoffs("1997-02-03", "1997-03-31")
    }
    assert lineage["training_set_fingerprints"] == want
    assert lineage["holdback"]["partitions"] == {k: v for k, v in want.items() if k[-10:] >= "1997-03-17"}
    assert json.loads(info.tags["ranges"]) == {k: list(v) for k, v in RANGES.items()}
    assert len(info.tags["environment_digest"]) == 64 and info.metrics["holdback_auc"] > 0.65


def test_time_split_is_checked():
    with pytest.raises(ValueError, match="must start after the train range"):
        TrainSpec(
            train=("1997-03-03", "1997-03-10"),
            valid=("1997-03-03", "1997-03-10"),
            holdback=("1997-03-17", "1997-03-31"),
            embargo_days=0,
        )
    with pytest.raises(ValueError, match="embargo_days"):
        TrainSpec(**RANGES, embargo_days=90)  # 7 days between train and valid, labels look 90 days ahead
    with pytest.raises(ValueError, match="labels look 90 days ahead"):
        resolve_spec(Config(), TrainSpec(**RANGES))  # the default embargo: the model's label horizon
    model, spec = resolve_spec(Config(), TrainSpec(**RANGES, embargo_days=0))
    assert spec.model_name == model.name == "repurchase_90d" and spec.embargo_days == 0
    with pytest.raises(ValueError, match="holdback range"):
        TrainSpec(train=RANGES["train"], valid=RANGES["valid"], holdback=("1997-03-10", "1997-03-31"), embargo_days=0)


def test_a_second_model_is_compared_with_the_champion_on_the_same_holdback(cfg, registry, trained, monkeypatch_module):
    registry.promote("repurchase_90d")
    weak = train_model(
        cfg,
        TrainSpec(**RANGES, embargo_days=0, num_boost_round=3, patience=3, params={**PARAMS, "num_leaves": 2}),
        registry,
    )
    assert weak.candidate.holdback["key"] == trained.candidate.holdback["key"]
    champion = registry.get("repurchase_90d", CHAMPION)
    assert champion.version == trained.registered.version
    from jobs.models.registry import PromotionRefused

    with pytest.raises(PromotionRefused, match="does not beat"):
        registry.promote("repurchase_90d")


@pytest.mark.dask
@pytest.mark.timeout(240)
def test_dask_backend_trains_on_a_local_cluster(cfg, trained):
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, memory_limit="2GiB"
        ) as cluster,
        Client(cluster) as client,
    ):
        out = train_model(
            cfg,
            TrainSpec(**RANGES, embargo_days=0, num_boost_round=60, patience=10, backend="dask", params=PARAMS),
            register=False,
            client=client,
        )
    m, ref = out.candidate.metrics, trained.candidate.metrics
    assert m["train_rows"] == ref["train_rows"]
    assert abs(m["holdback_auc"] - ref["holdback_auc"]) < 0.02, (m["holdback_auc"], ref["holdback_auc"])
    hist = out.result.history["auc"]
    assert m["best_iteration"] == int(np.argmax(hist)) + 1
    assert pd.Series(out.candidate.reports["feature_importance_gain"]).gt(0).any()


def test_cli_model_list_and_promote(cfg, registry, trained, capsys):
    from jobs import cli

    parser = cli.build_parser()
    args = parser.parse_args(["--lake", cfg.lake_root, "model", "list", "repurchase_90d"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert f"v{trained.registered.version}" in out and "holdback AUC" in out
    args = parser.parse_args(["--lake", cfg.lake_root, "model", "prune", "repurchase_90d", "--dry-run"])
    assert args.func(args) == 0
    assert '"deleted": []' in capsys.readouterr().out
