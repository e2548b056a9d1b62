"""The MLflow-backed registry: lineage gate, redaction, promotion on the same holdback, rollback, retention."""

import dataclasses
import json
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from features import registry as feature_registry
from jobs.config import Config
from jobs.models import metadata
from jobs.models.registry import (
    CHALLENGER,
    CHAMPION,
    REQUIRED,
    Candidate,
    LineageError,
    PromotionRefused,
    Registry,
    RegistryError,
)

FS = feature_registry.get("customer_activity_v1")
HOLDBACK = "a" * 64
OTHER_HOLDBACK = "b" * 64


@pytest.fixture(scope="module")
def model_text():
    rng = np.random.default_rng(0)
    x = rng.random((300, len(FS.feature_names)))
    y = (rng.random(300) < x[:, 0]).astype(int)
    ds = lgb.Dataset(x, y, feature_name=list(FS.feature_names))
    return lgb.train(
        {"objective": "binary", "verbosity": -1, "min_data_in_leaf": 5, "num_threads": 1}, ds, 3
    ).model_to_string()


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    return Config(lake_root=str(tmp_path_factory.mktemp("lake")))


@pytest.fixture(scope="module")
def reg(cfg):
    return Registry.from_config(cfg)


def candidate(model_text, name="m", auc=0.70, holdback=HOLDBACK, **changes) -> Candidate:
    c = Candidate(
        name=name,
        model_text=model_text,
        feature_set=FS.name,
        feature_names=list(FS.feature_names),
        code_commit="0123456789abcdef0123456789abcdef01234567",
        feature_set_fingerprint=FS.fingerprint,
        training_set_fingerprints={f"training_sets/{FS.name}/ds=1997-03-03": "c" * 64},
        environment_digest=metadata.environment_digest({"lightgbm": "4.7.0"}),
        environment={"lightgbm": "4.7.0"},
        params={"learning_rate": 0.05, "num_leaves": 31},
        metrics={"holdback_auc": auc, "valid_auc": auc + 0.01},
        holdback={"key": holdback, "range": ["1997-05-12", "1997-06-02"]},
        ranges={
            "train": ["1997-03-03", "1997-04-14"],
            "valid": ["1997-04-21", "1997-05-05"],
            "holdback": ["1997-05-12", "1997-06-02"],
        },
    )
    return dataclasses.replace(c, **changes)


@pytest.mark.parametrize("missing", REQUIRED)
def test_each_missing_lineage_field_refuses_registration(reg, model_text, missing):
    empty = {"training_set_fingerprints": {}, "params": {}, "metrics": {}}.get(missing)
    with pytest.raises(LineageError) as info:
        reg.register(candidate(model_text, name=f"gate-{missing}", **{missing: empty}))
    assert list(info.value.problems) == [missing]
    assert missing in str(info.value)
    with pytest.raises(RegistryError):
        reg.versions(f"gate-{missing}")  # nothing was written


@pytest.mark.parametrize(
    "field,value,why",
    [
        ("code_commit", "unknown", "not a full commit"),
        ("feature_set_fingerprint", "customer_activity_v1:0000000000000000", "not the current fingerprint"),
        ("metrics", {"valid_auc": 0.7}, "no holdback_auc"),
        ("metrics", {"holdback_auc": float("nan")}, "not finite"),
    ],
)
def test_invalid_lineage_is_refused_with_the_reason(reg, model_text, field, value, why):
    with pytest.raises(LineageError, match=why):
        reg.register(candidate(model_text, name="gate-invalid", **{field: value}))


def test_secrets_and_pii_are_redacted_before_anything_is_written(cfg, reg, model_text):
    c = candidate(
        model_text,
        name="redact",
        params={
            "learning_rate": 0.05,
            "output_model": "postgresql://bob:hunter2@db.internal:5432/ml",
            "machine_list_filename": "s3://AKIAIOSFODNN7EXAMPLE/list.txt",
            "db_password": "hunter2",
        },  # not a LightGBM/Lockstep parameter: dropped
        reports={"notes": "ask alice@example.com; card 4111 1111 1111 1111", "api_token": "tok-123"},
    )
    info = reg.register(c)
    run = reg.client.get_run(info.run_id)
    assert run.data.params["output_model"] == "[REDACTED:connection-string]"
    assert run.data.params["machine_list_filename"] == "s3://[REDACTED:token]/list.txt"
    assert "db_password" not in run.data.params and run.data.params["learning_rate"] == "0.05"
    findings = json.loads(info.tags["lockstep.redactions"])
    assert "params.db_password: not-allowlisted" in findings and "params.output_model: connection-string" in findings
    stored = b"".join(p.read_bytes() for p in Path(cfg.lake_root, "_registry").rglob("*") if p.is_file())
    for secret in (b"hunter2", b"AKIAIOSFODNN7EXAMPLE", b"alice@example.com", b"4111 1111 1111 1111", b"tok-123"):
        assert secret not in stored
    assert b"[REDACTED:email]" in stored and b"[REDACTED:card-number]" in stored


def test_detector_kinds():
    for text, kind in [
        ("Server=db;Database=x;User Id=a;Password=b;", "connection-string"),
        ("password=hunter2", "credential"),
        ("Bearer abcdefghijklmnop", "token"),
        ("4012888888881881", "card-number"),
        ("x@y.io", "email"),
    ]:
        clean, kinds = metadata.scan_text(text)
        assert kind in kinds and "[REDACTED" in clean, (text, clean)
    assert metadata.scan_text("4012888888881882")[1] == []  # fails Luhn: not a card number
    assert metadata.scan_text("https://lightgbm.readthedocs.io 0.1234567890123456")[1] == []


def test_promotion_requires_beating_the_champion_on_the_same_holdback(reg, model_text):
    v1 = reg.register(candidate(model_text, name="promo", auc=0.70))
    assert v1.aliases == [CHALLENGER]
    assert reg.promote("promo").version == v1.version  # no champion yet
    v2 = reg.register(candidate(model_text, name="promo", auc=0.69))
    with pytest.raises(PromotionRefused, match="does not beat"):
        reg.promote("promo")
    assert reg.get("promo", CHAMPION).version == v1.version and reg.get("promo", CHALLENGER).version == v2.version
    v3 = reg.register(candidate(model_text, name="promo", auc=0.75, holdback=OTHER_HOLDBACK))
    with pytest.raises(PromotionRefused, match="cannot be compared"):
        reg.promote("promo")  # a better number on another range proves nothing
    reg.record_holdback_eval("promo", v1.version, OTHER_HOLDBACK, {"auc": 0.74, "rows": 100})
    promoted = reg.promote("promo")
    assert promoted.version == v3.version and promoted.aliases == [CHAMPION]
    assert reg.alias("promo", CHALLENGER) is None


def test_rollback_restores_the_previous_champion(reg, model_text):
    first = reg.register(candidate(model_text, name="rb", auc=0.70))
    reg.promote("rb")
    with pytest.raises(RegistryError, match="no previous champion"):
        reg.rollback("rb")
    second = reg.register(candidate(model_text, name="rb", auc=0.72))
    reg.promote("rb")
    assert reg.get("rb", CHAMPION).version == second.version
    assert reg.rollback("rb").version == first.version
    assert reg.get("rb", CHAMPION).version == first.version
    assert reg.get("rb", second.version).tags["lockstep.rolled_back_from"] == "true"
    with pytest.raises(RegistryError, match="no previous champion"):
        reg.rollback("rb")


def test_retention_keeps_champion_challenger_rollback_target_top_k_and_referenced(reg, model_text):
    aucs = [0.60, 0.71, 0.62, 0.74, 0.63, 0.72, 0.61]
    versions = [reg.register(candidate(model_text, name="ret", auc=a)).version for a in aucs]
    # v1 champion, then v2 beats it: v2 champion, v1 rollback target; v7 stays challenger
    reg.client.set_registered_model_alias("ret", CHAMPION, str(versions[0]))
    reg.client.set_registered_model_alias("ret", CHALLENGER, str(versions[1]))
    reg.promote("ret")
    reg.client.set_registered_model_alias("ret", CHALLENGER, str(versions[6]))
    artifact_dirs = {
        v: Path(reg.client.get_run(reg.get("ret", v).run_id).info.artifact_uri[len("file://") :]) for v in versions
    }
    report = reg.prune("ret", references={("ret", versions[4]), ("other", versions[2])}, keep_top_k=2)
    kept = report["kept"]
    assert kept[versions[1]] == ["champion"] and kept[versions[6]] == ["challenger"]
    assert kept[versions[0]] == ["rollback-target"]
    assert "top-2" in kept[versions[3]] and "top-2" in kept[versions[5]]
    assert kept[versions[4]] == ["referenced-by-predictions"]
    assert report["deleted"] == [versions[2]]
    assert [m.version for m in reg.versions("ret")] == [v for v in versions if v != versions[2]]
    assert not artifact_dirs[versions[2]].exists() and artifact_dirs[versions[4]].exists()
    assert reg.rollback("ret").version == versions[0]  # still one command away


def test_load_returns_the_booster_and_its_lineage(reg, model_text):
    reg.register(candidate(model_text, name="load"))
    reg.promote("load")
    loaded = reg.load("load")
    assert loaded.booster.feature_name() == list(FS.feature_names)
    assert loaded.lineage["feature_set_fingerprint"] == FS.fingerprint
    with pytest.raises(RegistryError, match="no version or alias"):
        reg.load("load", "challenger")


def test_code_commit_reads_the_checkout_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(metadata.COMMIT_ENV, raising=False)
    git = tmp_path / "repo" / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    assert metadata.code_commit(tmp_path / "repo" / "sub") is None  # unborn branch
    (git / "packed-refs").write_text(f"# pack-refs\n{'1' * 40} refs/heads/main\n")
    assert metadata.code_commit(tmp_path / "repo") == "1" * 40
    (git / "refs" / "heads" / "main").write_text("2" * 40 + "\n")
    assert metadata.code_commit(tmp_path / "repo") == "2" * 40
    monkeypatch.setenv(metadata.COMMIT_ENV, "3" * 40)
    assert metadata.code_commit(tmp_path / "repo") == "3" * 40
    assert metadata.code_commit(tmp_path / "nowhere") == "3" * 40


def _late_order_repo():
    from features import repo

    return repo.load(str(Path(__file__).resolve().parents[2] / "fixtures" / "late_orders"))


def test_a_two_set_model_is_checked_set_by_set(model_text):
    from jobs.models.registry import check_lineage

    r = _late_order_repo()
    m = r.model("late_order")
    sets = [{"name": fs.name, "fingerprint": fs.fingerprint} for fs in m.feature_sets]
    c = candidate(
        model_text,
        name=m.name,
        feature_set="+".join(fs.name for fs in m.feature_sets),
        feature_sets=sets,
        feature_names=list(m.feature_names),
        feature_set_fingerprint=m.fingerprint,
    )
    check_lineage(c, r)  # complete
    with pytest.raises(LineageError, match="is not the joined fingerprints of feature sets"):
        check_lineage(dataclasses.replace(c, feature_set_fingerprint=sets[0]["fingerprint"]), r)
    stale = [sets[0], {"name": sets[1]["name"], "fingerprint": "courier_load_v1:0000"}]
    with pytest.raises(
        LineageError,
        match=r"'courier_load_v1:0000' is not the current fingerprint of feature set "
        r"'courier_load_v1'",
    ):
        check_lineage(
            dataclasses.replace(
                c, feature_sets=stale, feature_set_fingerprint="+".join(s["fingerprint"] for s in stale)
            ),
            r,
        )
    with pytest.raises(LineageError, match="not the current fingerprint"):
        check_lineage(c)  # against the shipped repo: these sets are not declared there
