"""``split_by_bucket`` (the radix-sorted split): each bucket holds exactly its rows, in input order."""

import numpy as np
import pyarrow as pa
import pytest

from jobs.engines.bucketing import bucket_of, split_by_bucket


@pytest.mark.parametrize("n_buckets", [1, 7, 16, 300])  # 300: the uint16 path
def test_each_bucket_is_its_rows_in_input_order(n_buckets):
    rng = np.random.default_rng(n_buckets)
    keys = rng.integers(0, 5_000, 20_000)
    table = pa.table({"k": pa.array(keys), "row": pa.array(np.arange(len(keys)))})
    parts = split_by_bucket(table, "k", n_buckets)
    b = bucket_of(pa.array(keys), n_buckets)
    assert sorted(parts) == sorted(np.unique(b).tolist())
    for p, piece in parts.items():
        want = np.flatnonzero(b == p)
        assert np.array_equal(piece.column("row").to_numpy(), want)  # same rows, same (input) order
        assert np.array_equal(piece.column("k").to_numpy(), keys[want])
    assert sum(t.num_rows for t in parts.values()) == len(keys)


def test_empty_buckets_are_absent_and_an_empty_table_gives_none():
    table = pa.table({"k": pa.array([3, 3, 3]), "v": pa.array([1.0, 2.0, 3.0])})
    parts = split_by_bucket(table, "k", 64)
    assert list(parts) == [int(bucket_of(pa.array([3]), 64)[0])]
    assert parts[next(iter(parts))].column("v").to_pylist() == [1.0, 2.0, 3.0]
    assert split_by_bucket(table.slice(0, 0), "k", 64) == {}
