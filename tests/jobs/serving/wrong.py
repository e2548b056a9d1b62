"""Deliberately wrong fresh-mode feature computations, injected through the service's hook (test only)."""

from __future__ import annotations

import dataclasses

import pandas as pd

from features.online import compute_one
from features.spec import FeatureSet


def _with(fs: FeatureSet, **changes_by_feature) -> FeatureSet:
    feats = tuple(
        dataclasses.replace(f, **changes_by_feature[f.name]) if f.name in changes_by_feature else f for f in fs.features
    )
    return dataclasses.replace(fs, features=feats)


def window_7_for_30(fs: FeatureSet):
    """Every 30-day window computed over 7 days (same names, same fingerprint stamped)."""
    wrong = _with(fs, **{f.name: {"window_days": 7} for f in fs.features if f.window_days == 30})

    def hook(events, entity_id, t, _fs):
        return compute_one(events, entity_id, t, wrong, "known_at")

    return hook


def nulls_as_zero(events, entity_id, t, fs):
    """Null amounts imputed as 0 before aggregation."""
    return compute_one(events.assign(amount=events["amount"].fillna(0.0)), entity_id, t, fs, "known_at")


def timezone_shift(events, entity_id, t, fs):
    """Event times read as New York wall-clock time and taken for UTC (a classic naive-timestamp bug)."""
    local = events["event_ts"].dt.tz_convert("America/New_York").dt.tz_localize(None).dt.tz_localize("UTC")
    return compute_one(events.assign(event_ts=local.astype("datetime64[us, UTC]")), entity_id, t, fs, "known_at")


class StaleCache:
    """A feature cache filled at ``warm_time`` (a past midnight) and never invalidated."""

    def __init__(self, warm_time: pd.Timestamp):
        self.warm_time, self.cache = warm_time, {}

    def __call__(self, events, entity_id, t, fs):
        if entity_id not in self.cache:
            self.cache[entity_id] = compute_one(events, entity_id, self.warm_time, fs, "known_at")
        return dict(self.cache[entity_id])


def old_definition(fs: FeatureSet):
    """A service still running the previous definition of spend_max_90d (60 days), stamping ITS fingerprint."""
    old = _with(fs, spend_max_90d={"window_days": 60})

    def hook(events, entity_id, t, _fs):
        return compute_one(events, entity_id, t, old, "known_at")

    hook.fingerprint = old.fingerprint
    return hook
