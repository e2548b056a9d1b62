"""``lockstep model ...``: NAME, ``--model`` or the repo's default model."""

from pathlib import Path

import pytest

from jobs import cli
from jobs.models.registry import RegistryError

LATE_ORDERS = Path(__file__).resolve().parents[2] / "fixtures" / "late_orders"


def _run(*argv):
    args = cli.build_parser().parse_args(list(argv))
    return args.func(args)


def test_the_default_model_a_declared_model_or_a_registered_name(tmp_path, monkeypatch):
    lake = str(tmp_path / "lake")
    with pytest.raises(RegistryError, match="repurchase_90d"):
        _run("--lake", lake, "model", "list")  # the shipped repo's only model
    with pytest.raises(RegistryError, match="repurchase_90d_baseline"):
        _run("--lake", lake, "model", "list", "repurchase_90d_baseline")
    monkeypatch.setenv("LOCKSTEP_REPO", str(LATE_ORDERS))
    with pytest.raises(RegistryError, match="late_order_int"):
        _run("--lake", lake, "model", "list", "--model", "late_order_int")
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        _run("--lake", lake, "model", "list", "--model", "nope")
    with pytest.raises(ValueError, match="not both"):
        _run("--lake", lake, "model", "list", "x", "--model", "late_order")
