"""The service and the skew job with the real registry: the champion (LightGBM) serves; logged rows
are re-scored with the logged version; drift is measured against the lineage's training partitions."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from jobs.config import Config
from jobs.serving.app import Settings, create_app
from jobs.serving.log import model_wal_dir, publish
from jobs.serving.replay import plan_day, replay
from jobs.skew.job import run_skew

from .conftest import DAY, FS, MODEL

pytest.importorskip("mlflow")


def test_registry_champion_serves_and_is_rescored_exactly(lake_cfg, lake_events, tmp_path):
    import lightgbm as lgb

    from jobs.models.registry import CHAMPION, Candidate, Registry
    from jobs.serving.model import RegistrySource
    from jobs.snapshots import snapshot_table

    root = tmp_path / "lake"
    root.mkdir()
    for name in ("raw_events", "feature_snapshots"):
        (root / name).symlink_to(f"{lake_cfg.lake_root}/{name}")
    cfg = Config(lake_root=str(root))
    table = snapshot_table(cfg.lake(), FS)
    train = table.read("1997-04-07")
    x = train[list(FS.feature_names)].to_numpy(dtype=np.float64, na_value=np.nan)
    y = (train["recency_days"].to_numpy() < 30).astype(int)
    booster = lgb.train(
        {"objective": "binary", "num_leaves": 7, "verbose": -1, "num_threads": 1}, lgb.Dataset(x, y), num_boost_round=10
    )
    key = f"{table.name}/ds=1997-04-07"
    Registry.from_config(cfg).register(
        Candidate(
            name="repurchase_test",
            model_text=booster.model_to_string(),
            feature_set=FS.name,
            feature_names=list(FS.feature_names),
            code_commit="a" * 40,
            feature_set_fingerprint=FS.fingerprint,
            training_set_fingerprints={key: table.manifest("1997-04-07").content_fingerprint},
            environment_digest="b" * 64,
            params={"num_leaves": 7},
            metrics={"holdback_auc": 0.7},
            holdback={"key": "c" * 64},
            ranges={"train": ["1997-04-07", "1997-04-07"]},
        ),
        alias=CHAMPION,
    )

    source = RegistrySource(cfg, "repurchase_test")
    app = create_app(Settings(lake_root=str(root), wal_dir=str(tmp_path / "wal")), model_source=source, cfg=cfg)
    with TestClient(app) as c:
        res = replay(c, plan_day(lake_events[0], DAY, 80, seed=9))
    assert (res.status == 200).all()
    publish(cfg, model_wal_dir(tmp_path / "wal", MODEL), MODEL, DAY)
    rep = run_skew(cfg, DAY, model_source=source, allow_unvalidated=True)
    score = rep.feature("__score__")
    assert score["compared"] == 80 and score["rescore_max_abs_diff"] == 0.0
    assert rep.feature("recency_days")["psi"] is not None and rep.feature("recency_days")["psi"] > 0
    # The champion's age comes from its lineage's train range: 3 days, under the default 30 (no warning).
    assert rep.champion == {"name": "repurchase_test", "version": "1", "train_end": "1997-04-07", "age_days": 3}
    assert not any("champion" in w for w in rep.warnings)
    logged = cfg.lake().table(MODEL.serving_log_table).read(DAY)
    assert set(logged.model_name) == {"repurchase_test"} and set(logged.model_version) == {"1"}
    want = booster.predict(logged[list(FS.feature_names)].to_numpy(dtype=np.float64, na_value=np.nan))
    assert (logged.score.to_numpy() == want).all()


def test_a_baseline_flavor_champion_serves_its_own_scores():
    """A dask-ml baseline (no booster) promoted to champion serves through the same Model adapter."""
    import pandas as pd

    from jobs.models.registry import LoadedModel, ModelInfo
    from jobs.serving.model import BoosterModel
    from jobs.training.baseline import BaselineModel

    n = len(FS.feature_names)
    rng = np.random.default_rng(1)
    bm = BaselineModel(
        list(FS.feature_names),
        rng.random(n),
        np.ones(n),
        np.ones(n),
        [FS.feature_names[0]],
        rng.normal(size=n + 1),
        -0.5,
    )
    info = ModelInfo("repurchase_test_baseline", 1, ["champion"], {"flavor": "sgd_baseline"}, {}, "", "")
    model = BoosterModel(LoadedModel(info, None, {"feature_names": list(FS.feature_names)}, model=bm))
    x = rng.random((5, n))
    x[0, 0] = np.nan
    frame = pd.DataFrame(x, columns=list(FS.feature_names))
    assert np.array_equal(model.predict_matrix(x), bm.predict(x))
    assert np.array_equal(model.predict(frame), bm.predict(x)) and 0 < bm.predict(x).min()
