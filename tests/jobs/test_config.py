"""Config: defaults, environment, validation, lake and scratch paths."""

import dataclasses
import os

import pytest

from jobs.config import ENGINES, Config
from jobs.lake import Lake

ENV_VARS = [
    "LOCKSTEP_LAKE",
    "LOCKSTEP_ENGINE",
    "LOCKSTEP_DASK_ADDRESS",
    "LOCKSTEP_SPARK_MASTER",
    "LOCKSTEP_BUCKETS",
    "LOCKSTEP_DASK_MEMORY_LIMIT",
]


@pytest.fixture
def clean_env(monkeypatch):
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_defaults_match_contract(clean_env):
    cfg = Config.from_env()
    assert cfg == Config()
    assert (cfg.lake_root, cfg.storage_options, cfg.engine, cfg.dask_address) == (".lockstep/lake", {}, "local", None)
    assert (cfg.dask_workers, cfg.dask_threads_per_worker, cfg.dask_memory_limit) == (2, 1, "4GiB")
    assert (cfg.spark_master, cfg.buckets, cfg.verify_checksums) == ("local[2]", 16, True)
    assert ENGINES == ("local", "dask", "spark")


def test_from_env_reads_every_variable(clean_env, tmp_path):
    clean_env.setenv("LOCKSTEP_LAKE", str(tmp_path / "lk"))
    clean_env.setenv("LOCKSTEP_ENGINE", "dask")
    clean_env.setenv("LOCKSTEP_DASK_ADDRESS", "tcp://10.0.0.1:8786")
    clean_env.setenv("LOCKSTEP_SPARK_MASTER", "spark://host:7077")
    clean_env.setenv("LOCKSTEP_BUCKETS", "64")
    clean_env.setenv("LOCKSTEP_DASK_MEMORY_LIMIT", "2GiB")
    cfg = Config.from_env()
    assert cfg.lake_root == str(tmp_path / "lk")
    assert cfg.engine == "dask"
    assert cfg.dask_address == "tcp://10.0.0.1:8786"
    assert cfg.spark_master == "spark://host:7077"
    assert cfg.buckets == 64
    assert cfg.dask_memory_limit == "2GiB"


def test_overrides_beat_env_and_none_falls_through(clean_env):
    clean_env.setenv("LOCKSTEP_ENGINE", "dask")
    clean_env.setenv("LOCKSTEP_BUCKETS", "8")
    cfg = Config.from_env(engine="spark", buckets=None, verify_checksums=False)
    assert (cfg.engine, cfg.buckets, cfg.verify_checksums) == ("spark", 8, False)


def test_bad_engine_names_allowed_ones(clean_env):
    with pytest.raises(ValueError) as err:
        Config(engine="ray")
    for name in ("'ray'", "local", "dask", "spark"):
        assert name in str(err.value)
    clean_env.setenv("LOCKSTEP_ENGINE", "Spark ")
    with pytest.raises(ValueError, match="allowed engines are: local, dask, spark"):
        Config.from_env()


def test_bad_buckets_and_unknown_override(clean_env):
    clean_env.setenv("LOCKSTEP_BUCKETS", "many")
    with pytest.raises(ValueError, match="LOCKSTEP_BUCKETS='many'"):
        Config.from_env()
    with pytest.raises(ValueError, match="buckets"):
        Config(buckets=0)
    with pytest.raises(TypeError, match="lake_rot"):
        Config.from_env(lake_rot="y")


def test_frozen_and_hashable():
    cfg = Config(storage_options={"anon": True})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.engine = "dask"
    assert hash(cfg) == hash(Config(storage_options={"anon": False}))
    assert cfg != Config(storage_options={"anon": False})


def test_lake_uses_root_options_and_verification(tmp_path):
    cfg = Config(lake_root=str(tmp_path / "lk"), verify_checksums=False)
    lake = cfg.lake()
    assert isinstance(lake, Lake)
    assert lake.path("raw_events") == str(tmp_path / "lk" / "raw_events")
    assert lake.verify_checksums is False
    assert not (tmp_path / "lk").exists()  # building the lake object touches nothing


def test_scratch_is_fresh_unique_and_created(tmp_path):
    cfg = Config(lake_root=str(tmp_path / "lk"))
    assert not (tmp_path / "lk").exists()
    a, b = cfg.scratch("bucket-join"), cfg.scratch("bucket-join")
    assert a != b
    for path in (a, b):
        assert os.path.isdir(path)
        assert os.path.dirname(path) == str(tmp_path / "lk" / "_scratch")
        assert os.path.basename(path).startswith("bucket-join-")
        assert os.listdir(path) == []
    with pytest.raises(ValueError):
        cfg.scratch("../escape")


def test_scratch_on_memory_lake_is_a_url():
    cfg = Config(lake_root="memory://cfgtest/lk")
    url = cfg.scratch("tmp")
    assert url.startswith("memory:///cfgtest/lk/_scratch/tmp-")
    assert cfg.lake().fs.isdir(url)
