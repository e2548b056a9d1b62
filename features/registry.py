"""Feature sets by name, from the repo of declarations (``features.repo``). Tables and serving logs
carry fingerprints that are checked against it (an unknown fingerprint is an error)."""

from __future__ import annotations

from features import repo
from features.spec import FeatureSet


def get(name: str) -> FeatureSet:
    return repo.load().feature_set(name)


def known_fingerprints() -> dict[str, str]:
    return repo.load().known_fingerprints()
