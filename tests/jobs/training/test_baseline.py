"""The incremental linear baseline (issue #7): out-of-core scaler + SGD on Dask, exact predictions
after a registry round trip, determinism, lineage gate, and the floor LightGBM must beat."""

import argparse
import dataclasses
import json
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from training_lake import COMMIT, RANGES, training_lake

from features import repo as feature_repo
from jobs.models.registry import (
    CHAMPION,
    LineageError,
    PromotionRefused,
    Registry,
    RegistryError,
)
from jobs.training import baseline as bl
from jobs.training.labels import weekly_cutoffs
from jobs.training.trainer import TrainSpec, train_model
from jobs.training.training_set import training_set_table

MODEL = feature_repo.load().model("repurchase_90d")
FS = MODEL.feature_sets[0]
FEATURES = list(FS.feature_names)
PARAMS = {"num_threads": 1, "num_leaves": 15, "min_data_in_leaf": 50}
NAME = "repurchase_90d"


# ---- the out-of-core test: a synthetic frame bigger than the worker's memory limit -----------------
MEMORY_LIMIT = 600_000_000  # bytes; an idle worker with pandas/pyarrow/sklearn/dask-ml loaded is ~300 MiB
SYN_FEATURES = [f"x{j:02d}" for j in range(22)]
FILES, ROW_GROUPS, RG_ROWS = 4, 9, 100_000  # 36 partitions of 100k rows x 23 float64 = 18.4 MB each


def _write_synthetic(root, seed: int = 0) -> list[str]:
    """Small-integer features (dictionary-encoded: ~10 MiB on disk), one with 10 % nulls, a
    logistic label. In memory, as float64, the frame is ~660 MB."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.3, len(SYN_FEATURES))
    files = []
    for i in range(FILES):
        n = ROW_GROUPS * RG_ROWS
        x = rng.integers(0, 8, size=(n, len(SYN_FEATURES)), dtype=np.int8)
        z = (x.astype(np.float32) - 3.5) @ w.astype(np.float32)
        cols = {name: pa.array(x[:, j]) for j, name in enumerate(SYN_FEATURES)}
        cols["x01"] = pa.array(x[:, 1], mask=rng.random(n) < 0.1)
        cols["label"] = pa.array((rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.int8))
        path = os.path.join(root, f"part-{i}.parquet")
        pq.write_table(pa.table(cols), path, row_group_size=RG_ROWS)
        files.append(path)
    return files


def _peak_rss() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.mark.dask
@pytest.mark.timeout(300)
def test_trains_on_more_partitions_than_fit_in_the_worker_memory_limit(tmp_path):
    import dask
    from distributed import Client, LocalCluster

    files = _write_synthetic(str(tmp_path))
    # No pausing: a worker paused at 80 % of its limit by unmanaged memory (pandas/pyarrow buffers
    # the allocator keeps) never resumes, and the fit waits forever (CI: a 300 s timeout at a peak
    # near 480 MB). Over the limit the nanny kills the worker instead, which the pid check reports.
    with (
        dask.config.set({"distributed.worker.memory.pause": False}),
        LocalCluster(
            n_workers=1, threads_per_worker=1, memory_limit=MEMORY_LIMIT, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
        dask.config.set(scheduler=client),
    ):
        ddf = bl.read_frame(files, SYN_FEATURES, "label")
        part_bytes = int(ddf.partitions[0].memory_usage(deep=True).sum().compute())
        pids = set(client.run(os.getpid).values())
        t = time.perf_counter()
        fit = bl.fit_baseline(ddf, SYN_FEATURES, "label", epochs=2, seed=0)
        seconds = time.perf_counter() - t
        peaks = client.run(_peak_rss)
        assert set(client.run(os.getpid).values()) == pids  # no worker was killed and restarted
    assert ddf.npartitions == FILES * ROW_GROUPS and fit.partitions == ddf.npartitions
    assert fit.rows == FILES * ROW_GROUPS * RG_ROWS
    assert ddf.npartitions * part_bytes > MEMORY_LIMIT, (ddf.npartitions, part_bytes)
    assert max(peaks.values()) < MEMORY_LIMIT, peaks  # never held the frame: peak RSS below the limit
    # The scaler saw every row of every partition: numpy over each full column (one at a time).
    for j, name in enumerate(SYN_FEATURES):
        col = np.concatenate(
            [
                pq.read_table(f, columns=[name]).column(name).to_numpy(zero_copy_only=False).astype(np.float64)
                for f in files
            ]
        )
        assert np.allclose(fit.scaler.mean_[j], np.nanmean(col), rtol=1e-12, atol=0)
        assert np.allclose(fit.scaler.var_[j], np.nanvar(col), rtol=1e-12, atol=0)
    assert fit.model.indicators == ["x01"] and fit.model.n_samples_seen == fit.rows
    # It learned the synthetic signal (weights are known up to the scale).
    assert len(fit.coef_history) == 2 and np.all(np.isfinite(fit.model.coef))
    print(
        f"\nout of core: {ddf.npartitions} partitions x {part_bytes / 1e6:.1f} MB = "
        f"{ddf.npartitions * part_bytes / 1e6:.0f} MB > limit {MEMORY_LIMIT / 1e6:.0f} MB; peak worker RSS "
        f"{max(peaks.values()) / 1e6:.0f} MB; fit {seconds:.1f} s {fit.seconds}"
    )


# ---- CDNOW: the job, the registry round trip, the floor -------------------------------------------
@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def cfg(training_lake_template, tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("LOCKSTEP_CODE_COMMIT", COMMIT)
    return training_lake(training_lake_template, tmp_path_factory)


@pytest.fixture(scope="module")
def registry(cfg):
    return Registry.from_config(cfg)


@pytest.fixture(scope="module")
def spec():
    return TrainSpec(**RANGES, embargo_days=0, num_boost_round=80, patience=10, params=PARAMS)


@pytest.fixture(scope="module")
def files(cfg):
    table = training_set_table(cfg.lake(), MODEL)
    return {role: [f for d in weekly_cutoffs(*r) for f in table.files(d)] for role, r in RANGES.items()}


@pytest.fixture(scope="module")
def baseline(cfg, registry, spec, dask_client):
    return bl.train_baseline(cfg, spec, registry, client=dask_client, epochs=5, seed=0)


@pytest.mark.dask
def test_baseline_is_registered_with_lineage_and_flavor(registry, baseline):
    info = baseline.registered
    assert info.name == f"{NAME}_baseline" and info.flavor == "sgd_baseline" and info.aliases == ["challenger"]
    assert info.tags["code_commit"] == COMMIT and info.tags["feature_set_fingerprint"] == FS.fingerprint
    m = baseline.candidate.metrics
    assert 0.6 < m["valid_auc"] < 1 and 0.6 < m["holdback_auc"] < 1
    assert info.metrics["holdback_auc"] == pytest.approx(m["holdback_auc"], abs=1e-12)
    run = registry.client.get_run(info.run_id)
    assert run.data.params["epochs"] == "5" and run.data.params["sgd_loss"] == "log_loss"
    assert json.loads(info.tags["lockstep.redactions"]) == []  # every parameter passed the allowlist
    loaded = registry.load(info.name, info.version)
    assert loaded.booster is None and loaded.model.features == FEATURES
    assert loaded.lineage["training_set_fingerprints"] == baseline.candidate.training_set_fingerprints


@pytest.mark.dask
def test_scoring_time_predictions_equal_training_time_predictions(registry, baseline, files):
    loaded = registry.load(baseline.registered.name, baseline.registered.version)
    model = loaded.model
    assert model.to_json() == baseline.model.to_json()  # exact floats through JSON
    for role in ("valid", "holdback"):
        y_train, p_train = baseline.predictions[role]  # computed on the cluster while training
        y, p = bl.score_files(model, files[role], "label", batch_rows=777)  # local, other batch sizes
        assert np.array_equal(y, y_train) and np.array_equal(p, p_train), role
    # The batch scorer's entry point (LoadedModel.predict) on a column-major matrix: the same scores.
    from jobs.training.sequence import load_matrix

    x = load_matrix(files["valid"], FEATURES)
    assert np.array_equal(loaded.predict(x), baseline.predictions["valid"][1])
    # ... and they are the SGD model's own probabilities (our fixed-order sum vs scikit-learn's dot).
    sk = baseline.fit.estimator.estimator_.predict_proba(model.design(x))[:, 1]
    assert np.allclose(sk, baseline.predictions["valid"][1], rtol=1e-12, atol=1e-15)


@pytest.mark.dask
def test_scaler_was_fitted_out_of_core_on_every_partition(baseline, files):
    from jobs.training.sequence import load_matrix

    x = load_matrix(files["train"], FEATURES)  # CDNOW is small: the in-memory reference is fine here
    scaler = baseline.fit.scaler
    assert np.allclose(scaler.mean_, np.nanmean(x, axis=0), rtol=1e-12, atol=1e-300)
    assert np.allclose(scaler.var_, np.nanvar(x, axis=0), rtol=1e-12, atol=1e-300)
    assert baseline.model.n_samples_seen == len(x) == baseline.candidate.metrics["train_rows"]
    assert np.array_equal(baseline.model.mean, scaler.mean_) and np.array_equal(baseline.model.scale, scaler.scale_)
    assert baseline.model.indicators == [f for j, f in enumerate(FEATURES) if np.isnan(x[:, j]).any()]
    assert baseline.fit.partitions >= len(files["train"])


@pytest.mark.dask
def test_same_seed_same_coefficients(cfg, files, dask_client):
    import dask

    with dask.config.set(scheduler=dask_client):
        ddf = bl.read_frame(files["train"], FEATURES, "label")
        a, b, c = (bl.fit_baseline(ddf, FEATURES, "label", epochs=3, seed=s) for s in (7, 7, 8))
    assert np.array_equal(a.model.coef, b.model.coef) and a.model.intercept == b.model.intercept
    assert a.model.to_json() == b.model.to_json()
    assert not np.array_equal(a.model.coef, c.model.coef)  # the seed matters (block order, SGD shuffle)


@pytest.mark.dask
@pytest.mark.cluster
def test_the_baseline_on_a_dask_cli_cluster_is_the_one_fitted_on_a_local_cluster(
    cfg, spec, baseline, dask_cli_scheduler
):
    """``dask worker`` processes whose PYTHONPATH has no ``features`` (shipped by the training client):
    the same coefficients and training-time predictions, bit for bit, as the LocalCluster's."""
    remote = dataclasses.replace(cfg, dask_address=dask_cli_scheduler["address"])
    got = bl.train_baseline(remote, spec, register=False, epochs=5, seed=0)
    assert got.model.to_json() == baseline.model.to_json()
    assert got.fit.partitions == baseline.fit.partitions
    for role in ("valid", "holdback"):
        (y, s), (want_y, want_s) = got.predictions[role], baseline.predictions[role]
        assert np.array_equal(y, want_y) and np.array_equal(s, want_s), role
    assert got.candidate.metrics == baseline.candidate.metrics


@pytest.mark.dask
def test_registration_without_lineage_is_refused_for_the_baseline(registry, baseline):
    before = [v.version for v in registry.versions(baseline.candidate.name)]
    for change in ({"code_commit": None}, {"training_set_fingerprints": {}}, {"metrics": {"valid_auc": 0.7}}):
        with pytest.raises(LineageError):
            registry.register(dataclasses.replace(baseline.candidate, **change))
    with pytest.raises(LineageError, match="flavor"):
        registry.register(dataclasses.replace(baseline.candidate, flavor="pickle"))
    assert [v.version for v in registry.versions(baseline.candidate.name)] == before


@pytest.mark.dask
def test_lightgbm_below_the_baseline_is_not_promoted_and_one_above_is(registry, baseline, spec, cfg, capsys):
    weak = train_model(
        cfg, dataclasses.replace(spec, num_boost_round=1, patience=1, params={**PARAMS, "num_leaves": 2}), registry
    )
    m = weak.candidate.metrics
    assert weak.baseline["version"] == baseline.registered.version
    assert m["baseline_valid_auc"] == pytest.approx(baseline.candidate.metrics["valid_auc"], abs=1e-12)
    assert m["valid_auc_lift_over_baseline"] == pytest.approx(m["valid_auc"] - m["baseline_valid_auc"], abs=1e-12)
    assert m["valid_auc_lift_over_baseline"] <= 0, m  # a single two-leaf tree loses to the linear floor
    assert weak.candidate.reports["baseline"]["winner"] == "baseline"
    assert "the baseline wins by" in weak.baseline["summary"]
    with pytest.raises(PromotionRefused) as info:
        registry.promote(NAME)
    msg = str(info.value)
    assert "does not beat" in msg and f"{NAME}_baseline v{baseline.registered.version}" in msg
    assert f"{m['valid_auc']:.5f}" in msg and f"{m['baseline_valid_auc']:.5f}" in msg
    assert registry.alias(NAME, CHAMPION) is None

    strong = train_model(cfg, spec, registry)
    s = strong.candidate.metrics
    print(
        f"\nCDNOW valid AUC: baseline {s['baseline_valid_auc']:.4f}, LightGBM {s['valid_auc']:.4f} "
        f"(weak {m['valid_auc']:.4f}); holdback: baseline {s['baseline_holdback_auc']:.4f}, "
        f"LightGBM {s['holdback_auc']:.4f}"
    )
    assert s["valid_auc_lift_over_baseline"] > 0, s
    assert strong.candidate.reports["baseline"]["winner"] == "lightgbm"
    assert strong.registered.metrics["valid_auc_lift_over_baseline"] == pytest.approx(
        s["valid_auc_lift_over_baseline"], abs=1e-12
    )
    assert strong.registered.tags["lockstep.baseline"] == f"{NAME}_baseline v{baseline.registered.version}"
    assert registry.promote(NAME).version == strong.registered.version


def test_model_json_round_trip_is_exact_and_checked():
    rng = np.random.default_rng(1)
    m = bl.BaselineModel(
        ["a", "b"],
        rng.normal(size=2),
        rng.random(2),
        rng.random(2) + 0.5,
        ["b"],
        rng.normal(size=3),
        rng.normal(),
        10,
        {"epochs": 1},
    )
    back = bl.BaselineModel.from_json(m.to_json())
    for k in ("mean", "var", "scale", "coef"):
        assert np.array_equal(getattr(back, k), getattr(m, k))
    x = np.array([[1.0, np.nan], [np.nan, 2.0], [0.5, 0.25]])
    assert np.array_equal(back.predict(x), m.predict(x)) and np.array_equal(
        m.predict(np.asfortranarray(x)), m.predict(x)
    )
    d = m.design(x)
    assert d.shape == (3, 3) and d[0, 1] == 0.0 and d[1, 0] == 0.0 and list(d[:, 2]) == [1.0, 0.0, 0.0]
    assert not np.isnan(x[0, 0]) and np.isnan(x[0, 1])  # the caller's matrix is not modified
    with pytest.raises(ValueError, match="format"):
        bl.BaselineModel.from_json(json.dumps({"format": "pickle"}))
    with pytest.raises(ValueError, match="coefficients"):
        bl.BaselineModel(["a"], [0.0], [1.0], [1.0], ["a"], [1.0], 0.0)


@pytest.mark.dask
def test_cli_baseline_command(cfg, registry, baseline, dask_client, capsys, monkeypatch):
    from jobs import cli
    from jobs.cli import training as cli_training

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "baseline" not in sub.choices:  # until jobs/cli/ registers it
        cli_training.add_baseline_parser(sub)
    monkeypatch.setenv("LOCKSTEP_DASK_ADDRESS", dask_client.scheduler.address)
    args = parser.parse_args(
        [
            "--lake",
            cfg.lake_root,
            "baseline",
            "--train",
            *RANGES["train"],
            "--valid",
            *RANGES["valid"],
            "--holdback",
            *RANGES["holdback"],
            "--epochs",
            "2",
            "--embargo-days",
            "0",
        ]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "trained baseline repurchase_90d_baseline" in out and "valid    AUC" in out
    newest = registry.versions(f"{NAME}_baseline")[-1]
    assert newest.version > baseline.registered.version and newest.flavor == "sgd_baseline"
    with pytest.raises(RegistryError):
        registry.versions("repurchase_90d_baseline_baseline")


@pytest.mark.dask
def test_batch_scoring_uses_the_registered_baseline(cfg, registry, baseline):
    """``lockstep score`` with a baseline champion: the persisted scaler, imputation and weights."""
    from jobs.quality.validate import validate_partition
    from jobs.scoring.batch import predictions_table, score_snapshot
    from jobs.snapshots import build_snapshot, snapshot_table

    name, ds = baseline.candidate.name, "1997-03-31"
    build_snapshot(cfg, ds)
    validate_partition(cfg, "feature_snapshots", ds, feature_set=FS.name, docs=False)  # score requires it
    registry.promote(name)  # no lift metric on a baseline: the floor does not apply to itself
    m = score_snapshot(cfg, ds, name, registry=registry, batch_rows=1_000, validate=False)
    snap = snapshot_table(cfg.lake(), FS).read(ds).sort_values("customer_id", ignore_index=True)
    got = predictions_table(cfg.lake(), MODEL).read(ds).sort_values("customer_id", ignore_index=True)
    want = registry.load(name).model.predict(snap[FEATURES])
    assert m.rows == len(snap) and np.array_equal(got["score"].to_numpy(), want)


@pytest.mark.dask
def test_with_no_champion_the_baseline_a_challenger_lost_to_becomes_the_first_champion(
    training_lake_template, tmp_path_factory, spec, dask_client, monkeypatch
):
    """A first training run whose LightGBM is below the floor still leaves scoring a champion: the
    better model, the baseline, adopted as a version of the model (same run, artifacts, lineage)."""
    monkeypatch.setenv("LOCKSTEP_CODE_COMMIT", COMMIT)
    cfg = training_lake(training_lake_template, tmp_path_factory)
    registry = Registry.from_config(cfg)
    base = bl.train_baseline(cfg, spec, registry, client=dask_client, epochs=2, seed=0)
    assert registry.baseline_as_first_champion(NAME) is None  # no challenger yet
    weak = train_model(
        cfg, dataclasses.replace(spec, num_boost_round=1, patience=1, params={**PARAMS, "num_leaves": 2}), registry
    )
    assert weak.candidate.metrics["valid_auc_lift_over_baseline"] <= 0
    with pytest.raises(PromotionRefused):
        registry.promote(NAME)
    first = registry.baseline_as_first_champion(NAME)
    assert first is not None and first.aliases == ["champion"] and first.flavor == "sgd_baseline"
    assert first.tags["lockstep.adopted_from"] == f"{NAME}_baseline v{base.registered.version}"
    assert first.run_id == base.registered.run_id and first.metrics == base.registered.metrics
    champion = registry.load(NAME)  # what batch scoring and the service load
    x = np.random.default_rng(0).random((50, len(FEATURES)))
    assert np.array_equal(champion.predict(x), base.model.predict(x))
    assert registry.baseline_as_first_champion(NAME) is None  # a champion exists now: nothing adopted
    # retention of the baseline model must not take the adopted champion's run and artifacts with it
    registry.client.delete_registered_model_alias(f"{NAME}_baseline", "challenger")
    assert registry.prune(f"{NAME}_baseline", references=[], keep_top_k=0)["deleted"] == [base.registered.version]
    assert np.array_equal(registry.load(NAME).predict(x), base.model.predict(x))
