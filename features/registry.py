"""Every published feature set, by name. Tables and serving logs carry fingerprints
that are checked against this registry (an unknown fingerprint is an error)."""
from __future__ import annotations

from features.sets.customer_activity_v1 import FEATURE_SET as CUSTOMER_ACTIVITY_V1
from features.spec import FeatureSet

FEATURE_SETS: dict[str, FeatureSet] = {fs.name: fs for fs in (CUSTOMER_ACTIVITY_V1,)}


def get(name: str) -> FeatureSet:
    try:
        return FEATURE_SETS[name]
    except KeyError:
        raise KeyError(f"unknown feature set {name!r}; known: {sorted(FEATURE_SETS)}") from None


def known_fingerprints() -> dict[str, str]:
    return {fs.fingerprint: name for name, fs in FEATURE_SETS.items()}
