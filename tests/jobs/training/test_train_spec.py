"""resolve_spec: a TrainSpec takes its model's declared defaults (parameters, rounds, embargo)."""

import dataclasses

from features.repo import Repo
from jobs.config import Config
from jobs.training.spec import TrainSpec, resolve_spec


def test_declared_params_rounds_and_embargo_fill_the_spec(monkeypatch):
    cfg = Config()
    model = cfg.repo().model("repurchase_90d")
    declared = dataclasses.replace(model, params={"num_leaves": 7, "learning_rate": 0.2}, rounds=42)
    monkeypatch.setattr(Config, "repo", lambda self: Repo.of(declared))
    spec = TrainSpec(
        ("1997-06-02", "1997-08-25"),
        ("1997-12-01", "1997-12-15"),
        ("1998-01-05", "1998-01-19"),
        params={"learning_rate": 0.05},
    )
    got_model, got = resolve_spec(cfg, spec)
    assert got_model is declared and got.model_name == "repurchase_90d"
    assert got.params == {"num_leaves": 7, "learning_rate": 0.05}  # the run's own flags win
    assert got.num_boost_round == 42 and got.embargo_days == 90
    explicit = dataclasses.replace(spec, num_boost_round=5, embargo_days=91)
    assert resolve_spec(cfg, explicit)[1].num_boost_round == 5
    assert resolve_spec(cfg, explicit)[1].embargo_days == 91
