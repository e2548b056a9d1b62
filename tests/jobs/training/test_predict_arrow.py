"""Streamed scoring (``lgbm.predict_batches``: row groups decoded in worker threads into one reused
float64 buffer each) gives the bits of scoring the whole float64 matrix in memory."""

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.training import lgbm
from jobs.training.sequence import to_matrix

FEATS = ["f_float", "f_int", "f_int32", "f_bool", "f_f32", "f_allnull"]


def _table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    fl = rng.normal(size=n)
    fl[rng.random(n) < 0.1] = np.nan
    ints = rng.integers(0, 50, n)
    null_int = rng.random(n) < 0.1
    return pa.table(
        {
            "entity_id": pa.array(np.arange(n, dtype=np.int64)),
            "f_float": pa.array(fl, from_pandas=True),  # NaN -> null
            "f_int": pa.array(ints, mask=null_int),
            "f_int32": pa.array(rng.integers(-5, 5, n).astype(np.int32)),
            "f_bool": pa.array(rng.random(n) < 0.5),
            "f_f32": pa.array(rng.normal(size=n).astype(np.float32)),
            "f_allnull": pa.nulls(n, pa.float64()),
            "label": pa.array((fl > 0) ^ (ints > 25)),
        }
    )


@pytest.fixture(scope="module")
def model_and_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("arrow_predict")
    train = _table(20_000, 0)
    x = to_matrix(train, FEATS)
    booster = lgb.train(
        {"objective": "binary", "num_leaves": 15, "num_threads": 1, "verbose": -1, "min_data_in_leaf": 5},
        lgb.Dataset(x, label=train.column("label").to_numpy(zero_copy_only=False).astype(float)),
        num_boost_round=20,
    )
    files = []
    for i in range(2):
        path = root / f"part-{i}.parquet"
        pq.write_table(_table(7_000, i + 1), path, row_group_size=3_000)
        files.append(str(path))
    return booster, files


def test_scores_are_bit_identical_to_the_matrix_path(model_and_files):
    booster, files = model_and_files
    got_p, got_ids = [], []
    for p, extra in lgbm.predict_batches(booster, files, FEATS, extra=["entity_id"], batch_rows=2_500):
        assert len(p) <= 2_500
        got_p.append(p)
        got_ids.append(extra.column("entity_id").to_numpy())
    whole = pa.concat_tables([pq.read_table(f) for f in files])
    want = booster.predict(to_matrix(whole, FEATS))
    got = np.concatenate(got_p)
    assert len(got) == 14_000
    assert np.array_equal(got, want)  # bit for bit, not approximately
    assert np.array_equal(np.concatenate(got_ids), whole.column("entity_id").to_numpy())
    assert np.unique(got).size > 50  # the model is not constant: equality means something


def test_a_reused_buffer_gives_the_fresh_matrix_each_time():
    buf = np.full(40 * len(FEATS), -1.0)
    for seed, n in [(3, 40), (4, 17), (5, 40)]:  # a shorter batch after a full one, then full again
        t = _table(n, seed)
        want = to_matrix(t, FEATS, order="F")
        got = to_matrix(t, FEATS, order="F", out=buf)
        assert got.flags["F_CONTIGUOUS"] and np.shares_memory(got, buf)
        assert np.array_equal(got, want, equal_nan=True)
        assert np.isnan(got).any()  # nulls -> NaN through the buffer too


def test_a_buffer_too_small_or_of_another_dtype_is_refused():
    t = _table(10, 3)
    with pytest.raises(ValueError, match="flat float64 buffer of >= 60 values"):
        to_matrix(t, FEATS, out=np.empty(59))
    with pytest.raises(ValueError, match="flat float64 buffer"):
        to_matrix(t, FEATS, out=np.empty(60, dtype=np.float32))


def test_a_string_feature_is_refused_naming_the_column(tmp_path, model_and_files):
    booster, _ = model_and_files
    t = _table(100, 4).set_column(2, "f_int", pa.array([str(i) for i in range(100)]))
    path = tmp_path / "bad.parquet"
    pq.write_table(t, path)
    with pytest.raises(TypeError, match="feature column 'f_int' is string, not numeric"):
        list(lgbm.predict_batches(booster, [str(path)], FEATS))


def test_a_missing_feature_column_names_the_file(tmp_path, model_and_files):
    booster, _ = model_and_files
    path = tmp_path / "short.parquet"
    pq.write_table(_table(100, 5).drop_columns(["f_bool"]), path)
    with pytest.raises(KeyError, match=r"short\.parquet: missing column\(s\) \['f_bool'\]"):
        list(lgbm.predict_batches(booster, [str(path)], FEATS))


@pytest.mark.parametrize("workers", [1, 3])
def test_pipelined_batches_keep_file_order_for_any_worker_count(model_and_files, workers):
    booster, files = model_and_files
    got = list(lgbm.predict_batches(booster, files, FEATS, extra=["entity_id"], batch_rows=1_000, workers=workers))
    whole = pa.concat_tables([pq.read_table(f) for f in files])
    # 3_000-row groups cut into 1_000-row batches, 2 files of 7_000 rows (3 + 3 + 1 groups each)
    assert [len(p) for p, _ in got] == ([1_000] * 6 + [1_000]) * 2
    assert np.array_equal(np.concatenate([p for p, _ in got]), booster.predict(to_matrix(whole, FEATS)))
    assert np.array_equal(
        np.concatenate([t.column("entity_id").to_numpy() for _, t in got]), whole.column("entity_id").to_numpy()
    )


def test_files_behind_fsspec_are_scored_like_local_ones(model_and_files):
    import fsspec

    booster, files = model_and_files
    mem = fsspec.filesystem("memory")
    urls = []
    for i, f in enumerate(files):
        with open(f, "rb") as src, mem.open(f"/predict_arrow/part-{i}.parquet", "wb") as dst:
            dst.write(src.read())
        urls.append(f"memory:///predict_arrow/part-{i}.parquet")
    got = np.concatenate([p for p, _ in lgbm.predict_batches(booster, urls, FEATS)])
    want = np.concatenate([p for p, _ in lgbm.predict_batches(booster, files, FEATS)])
    assert np.array_equal(got, want)


def test_a_bad_row_group_after_good_ones_raises_and_stops_the_workers(tmp_path, model_and_files):
    import threading

    booster, files = model_and_files
    bad = _table(100, 6).set_column(2, "f_int", pa.array([str(i) for i in range(100)]))
    path = tmp_path / "bad_last.parquet"
    pq.write_table(bad, path)
    seen = []
    with pytest.raises(TypeError, match="feature column 'f_int' is string"):
        for p, _ in lgbm.predict_batches(booster, [*files, str(path)], FEATS, workers=2):
            seen.append(len(p))
    assert sum(seen) == 14_000  # every good batch before the bad group came out first
    assert not [t for t in threading.enumerate() if t.name.startswith("predict")]


def test_stopping_early_shuts_the_pool_down(model_and_files):
    import threading

    booster, files = model_and_files
    gen = lgbm.predict_batches(booster, files, FEATS, batch_rows=1_000, workers=2)
    first, _ = next(gen)
    assert len(first) == 1_000
    gen.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("predict")]
