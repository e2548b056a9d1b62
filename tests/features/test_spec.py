"""Feature sets as data: validation, fingerprints, the concrete CDNOW set."""

import dataclasses
from pathlib import Path

import pytest

from features import registry
from features.spec import Feature, FeatureSet, count, ratio


def test_customer_activity_v1_declares_enough_features_over_the_required_windows():
    fs = registry.get("customer_activity_v1")
    assert len(fs.features) >= 15
    windows = {f.window_days for f in fs.features if f.agg != "ratio"}
    assert {7, 30, 90, 365, None} <= windows
    aggs = {f.agg for f in fs.features}
    assert {
        "count",
        "sum",
        "mean",
        "min",
        "max",
        "distinct_count",
        "days_since_last",
        "days_since_first",
        "ratio",
    } <= aggs
    assert fs.source_columns == ("amount", "n_items", "category")
    assert fs.horizon_days is None  # lifetime features need all history online


def test_fingerprint_is_stable_and_changes_with_the_spec():
    fs = registry.get("customer_activity_v1")
    assert fs.fingerprint == registry.get("customer_activity_v1").fingerprint
    assert fs.fingerprint.startswith("customer_activity_v1:") and len(fs.fingerprint.split(":")[1]) == 16
    changed = dataclasses.replace(
        fs, features=fs.features[:-1] + (ratio("activity_trend_30_90", "txn_count_7d", "txn_count_90d"),)
    )
    assert changed.fingerprint != fs.fingerprint
    assert registry.known_fingerprints()[fs.fingerprint] == "customer_activity_v1"


def test_fingerprint_covers_the_kernel_source(monkeypatch, tmp_path):
    """The kernel hashed is the one this process runs: the loaded ``features.kernel`` module's file."""
    import hashlib
    import sys

    from features import kernel, spec

    fs = FeatureSet("k_v1", "u", (count("c", 1),))
    before = fs.fingerprint
    assert spec.kernel_source() == Path(kernel.__file__).read_bytes()
    fake = tmp_path / "kernel.py"
    fake.write_text("# a different kernel\n")
    monkeypatch.setattr(kernel, "__file__", str(fake))
    assert FeatureSet("k_v1", "u", (count("c", 1),)).fingerprint != before
    assert spec.kernel_fingerprint() == hashlib.sha256(b"# a different kernel\n").hexdigest()[:16]
    # not imported yet: the kernel.py beside this spec module
    monkeypatch.delitem(sys.modules, "features.kernel")
    monkeypatch.setattr(spec, "__file__", str(tmp_path / "spec.py"))
    fake.write_text("# another one\n")
    assert spec.kernel_fingerprint() == hashlib.sha256(b"# another one\n").hexdigest()[:16]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Feature("x", "median", column="a"), "unknown aggregation 'median'"),
        (lambda: Feature("x", "sum"), "needs a source column"),
        (lambda: Feature("x", "count", window_days=0), "window_days must be > 0"),
        (lambda: Feature("x", "ratio", numerator="a"), "needs a numerator and a denominator"),
        (lambda: FeatureSet("s", "u", (count("a", 1), count("a", 2))), "duplicate feature names"),
        (
            lambda: FeatureSet("s", "u", (ratio("r", "a", "b"), count("a", 1), count("b", 1))),
            "must be declared before it",
        ),
        (lambda: FeatureSet("s", "u", (count("as_of", 1),)), "clash with key columns"),
        (lambda: FeatureSet("s", "u", (count("a", 1),), training_mode="later"), "training_mode"),
    ],
)
def test_invalid_declarations_are_rejected_with_a_clear_message(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_unknown_feature_set_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="customer_activity_v1"):
        registry.get("customer_activity_v9")
