"""Batch scoring of a CDNOW feature snapshot: champion and shadow challenger, idempotence,
fingerprint mismatch refused."""

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from features import registry as feature_registry
from features import repo
from jobs.config import Config
from jobs.ingest.cdnow import ingest_cdnow
from jobs.models import metadata
from jobs.models.registry import Candidate, Registry
from jobs.scoring.batch import (
    FingerprintMismatchError,
    predictions_table,
    referenced_models,
    score_snapshot,
    scored_at_for,
)
from jobs.snapshots import build_snapshot, snapshot_table

FS = feature_registry.get("customer_activity_v1")
MODEL = repo.load().model("repurchase_90d")
DS = "1997-01-31"
NAME = MODEL.name


def _booster(seed: int) -> lgb.Booster:
    rng = np.random.default_rng(seed)
    x = rng.gamma(1.0, 5.0, (500, len(FS.feature_names)))
    y = (rng.random(500) < 1 / (1 + np.exp(-(x[:, 0] - 2)))).astype(int)
    params = {"objective": "binary", "verbosity": -1, "min_data_in_leaf": 5, "num_threads": 1, "seed": seed}
    return lgb.train(params, lgb.Dataset(x, y, feature_name=list(FS.feature_names)), 5)


def _candidate(booster, auc) -> Candidate:
    return Candidate(
        name=NAME,
        model_text=booster.model_to_string(),
        feature_set=FS.name,
        feature_names=list(FS.feature_names),
        code_commit="0123456789abcdef0123456789abcdef01234567",
        feature_set_fingerprint=FS.fingerprint,
        training_set_fingerprints={f"training_sets/{FS.name}/ds=1997-01-06": "c" * 64},
        environment_digest=metadata.environment_digest({}),
        params={"learning_rate": 0.1},
        metrics={"holdback_auc": auc},
        holdback={"key": "k" * 64},
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg = Config(lake_root=str(tmp_path_factory.mktemp("lake")))
    ingest_cdnow(cfg.lake(), "1997-01-01", DS)
    build_snapshot(cfg, DS, allow_unvalidated=True)
    reg = Registry.from_config(cfg)
    champion, challenger = _booster(1), _booster(2)
    reg.register(_candidate(champion, 0.70))
    reg.promote(NAME)
    reg.register(_candidate(challenger, 0.69))
    return cfg, reg, champion, challenger


def test_champion_scores_every_snapshot_row_in_bounded_batches(setup):
    cfg, reg, champion, _ = setup
    m = score_snapshot(cfg, DS, NAME, registry=reg, batch_rows=1_000, validate=False, allow_unvalidated=True)
    snap = snapshot_table(cfg.lake(), FS).read(DS).sort_values("customer_id", ignore_index=True)
    got = predictions_table(cfg.lake(), MODEL).read(DS).sort_values("customer_id", ignore_index=True)
    assert m.rows == len(snap) == len(got) > 5_000
    want = champion.predict(snap[list(FS.feature_names)].to_numpy(dtype=np.float64))
    np.testing.assert_array_equal(got["score"].to_numpy(), want)
    assert (got["customer_id"] == snap["customer_id"]).all()
    assert set(got["role"]) == {"champion"} and set(got["model_version"]) == {1}
    assert set(got["feature_set_fingerprint"]) == {FS.fingerprint}
    assert (got["scored_at"] == pd.Timestamp("1997-02-01", tz="UTC")).all() and scored_at_for(DS) == pd.Timestamp(
        "1997-02-01", tz="UTC"
    )
    assert m.producer["models"][0] | {"run_id": None} == {
        "name": NAME,
        "version": 1,
        "role": "champion",
        "run_id": None,
    }
    assert m.inputs == {
        f"{snapshot_table(cfg.lake(), FS).name}/ds={DS}": snapshot_table(cfg.lake(), FS)
        .manifest(DS)
        .content_fingerprint
    }


def test_rescoring_is_idempotent(setup):
    cfg, reg, _, _ = setup
    a = score_snapshot(cfg, DS, NAME, registry=reg, validate=False, allow_unvalidated=True)
    b = score_snapshot(cfg, DS, NAME, registry=reg, batch_rows=777, validate=False, allow_unvalidated=True)
    assert a.content_fingerprint == b.content_fingerprint and a.rows == b.rows


def test_shadow_mode_records_champion_and_challenger(setup):
    cfg, reg, *_ = setup
    m = score_snapshot(cfg, DS, NAME, registry=reg, shadow=True, validate=False, allow_unvalidated=True)
    got = predictions_table(cfg.lake(), MODEL).read(DS)
    n = snapshot_table(cfg.lake(), FS).manifest(DS).rows
    assert m.rows == 2 * n
    by_role = {r: g.sort_values("customer_id") for r, g in got.groupby("role")}
    assert set(by_role) == {"champion", "challenger"}
    assert set(by_role["challenger"]["model_version"]) == {2}
    assert not np.array_equal(by_role["champion"]["score"].to_numpy(), by_role["challenger"]["score"].to_numpy())
    assert referenced_models(cfg) == {(NAME, 1), (NAME, 2)}


def test_a_model_for_another_feature_set_version_is_refused(setup, tmp_path):
    cfg, reg, _, _ = setup
    table = snapshot_table(cfg.lake(), FS)
    before = predictions_table(cfg.lake(), MODEL).manifest(DS)
    m = table.manifest(DS)
    stale = "customer_activity_v1:00000000deadbeef"
    # the same day, as a snapshot job of another feature-set version would have published it
    table.write_partition(
        DS, table.read(DS), producer={**m.producer, "feature_set_fingerprint": stale}, inputs=m.inputs
    )
    try:
        with pytest.raises(FingerprintMismatchError, match=f"built with {stale}") as info:
            score_snapshot(cfg, DS, NAME, registry=reg, validate=False, allow_unvalidated=True)
        assert FS.fingerprint in str(info.value)
        assert predictions_table(cfg.lake(), MODEL).manifest(DS) == before  # nothing was replaced
    finally:
        table.write_partition(DS, table.read(DS), producer=m.producer, inputs=m.inputs)


def test_no_champion_is_a_clear_error(setup, tmp_path):
    cfg, reg, _, _ = setup
    from jobs.models.registry import RegistryError

    with pytest.raises(RegistryError, match="no registered model|no version or alias"):
        score_snapshot(cfg, DS, "nobody", registry=reg, validate=False, allow_unvalidated=True)
    empty = Registry.from_config(Config(lake_root=str(tmp_path / "empty")))
    with pytest.raises(RegistryError, match="no registered model|no version or alias"):
        score_snapshot(cfg, DS, NAME, registry=empty, validate=False, allow_unvalidated=True)


def test_a_registered_name_no_model_declares_scores_for_the_model_its_lineage_names(setup):
    """E.g. a model's baseline: registered under its own name, its lineage's feature set says which
    declared model's table it scores into."""
    cfg, reg, _, challenger = setup
    other = _candidate(challenger, 0.6)
    other.name = "scorer_other"
    reg.register(other, alias="champion")
    m = score_snapshot(cfg, DS, "scorer_other", registry=reg, validate=False, allow_unvalidated=True)
    got = predictions_table(cfg.lake(), MODEL).read(DS).sort_values("customer_id", ignore_index=True)
    snap = snapshot_table(cfg.lake(), FS).read(DS).sort_values("customer_id", ignore_index=True)
    assert m.table == MODEL.predictions_table and set(got["model_name"]) == {"scorer_other"}
    np.testing.assert_array_equal(
        got["score"].to_numpy(), challenger.predict(snap[list(FS.feature_names)].to_numpy(dtype=np.float64))
    )


def test_an_unvalidated_snapshot_is_refused_unless_the_override_is_given(setup):
    from jobs.lake import UNVALIDATED_INPUTS, UnvalidatedPartitionError

    cfg, reg, *_ = setup
    snap, preds = snapshot_table(cfg.lake(), FS), predictions_table(cfg.lake(), MODEL)
    assert not snap.validated(DS)  # the fixture's snapshot was never validated
    before = preds.manifest(DS) if preds.exists(DS) else None
    with pytest.raises(UnvalidatedPartitionError) as err:
        score_snapshot(cfg, DS, NAME, registry=reg, validate=False, allow_unvalidated=False)
    assert str(err.value).startswith(
        f"table '{snap.name}' ds={DS}: not validated (run `lockstep validate feature_snapshots --table {snap.name} "
        f"--ds {DS}`)"
    )
    assert (preds.manifest(DS) if preds.exists(DS) else None) == before  # nothing published
    m = score_snapshot(cfg, DS, NAME, registry=reg, validate=False, allow_unvalidated=True)
    assert m.producer[UNVALIDATED_INPUTS] == [f"{snap.name}/ds={DS}"]


def test_a_score_outside_0_1_from_a_scoring_worker_publishes_nothing(setup):
    """The range check runs in the scoring workers: a regression model's scores (~5) stop the write
    with the error, and the published partition stays the one before."""
    from jobs.lake import LakeError

    cfg, reg, _, _ = setup
    rng = np.random.default_rng(7)
    x = rng.gamma(1.0, 5.0, (300, len(FS.feature_names)))
    params = {"objective": "regression", "verbosity": -1, "min_data_in_leaf": 5, "num_threads": 1}
    bad = lgb.train(params, lgb.Dataset(x, 5.0 + rng.random(300), feature_name=list(FS.feature_names)), 3)
    other = _candidate(bad, 0.6)
    other.name = "scorer_out_of_range"
    reg.register(other, alias="champion")
    table = predictions_table(cfg.lake(), MODEL)
    before = table.manifest(DS) if table.exists(DS) else None
    with pytest.raises(LakeError, match=r"model scorer_out_of_range v1: \d+ score\(s\) outside \[0, 1\]"):
        score_snapshot(
            cfg, DS, "scorer_out_of_range", registry=reg, batch_rows=1_000, validate=False, allow_unvalidated=True
        )
    after = table.manifest(DS) if table.exists(DS) else None
    assert (after and after.content_fingerprint) == (before and before.content_fingerprint)
