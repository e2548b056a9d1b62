"""Batch scoring catches up (issue 15 item 11): a run scores every announced day that is due — every set's
snapshot validated, no validated predictions built from the current inputs, no failed attempt on them —
so a day whose Asset event Airflow handed to no run is still scored, exactly once. Exact on a small lake
of hand-written partitions (no Airflow here; the real scheduler is in test_scoring_catch_up_e2e.py)."""

from __future__ import annotations

import types

import pandas as pd
import pytest

from features import repo
from jobs import orchestration as o
from jobs.config import Config
from jobs.lake import inputs_fingerprint

REPURCHASE = repo.load().model("repurchase_90d")  # one set; predictions read the snapshot of ds
DELAY = repo.load().model("dep_delay_15")  # three sets; predictions read the query source's raw range
SNAP = "feature_snapshots/customer_activity_v1"
DAYS = ["1997-02-01", "1997-02-02", "1997-02-03", "1997-02-04"]


def passed(staged):  # a gate that passes: the version is published validated
    return None


def failed(staged):
    raise ValueError("predictions suite failed: score outside [0, 1]")


def _snapshot(lake, table, ds, value=1.0, validated=True):
    frame = pd.DataFrame({"customer_id": [1, 2], "f": [value, 2.0]})
    return lake.table(table).write_partition(ds, frame, producer={"job": "test"}, gate=passed if validated else None)


def _predictions(lake, table, ds, inputs, gate=passed):
    frame = pd.DataFrame({"customer_id": [1, 2], "score": [0.1, 0.2]})
    return lake.table(table).write_partition(ds, frame, producer={"job": "score_snapshot"}, inputs=inputs, gate=gate)


@pytest.fixture
def cfg(tmp_path):
    return Config(lake_root=str(tmp_path / "lake"))


def test_each_state_of_a_one_set_model_exactly(cfg):
    lake = cfg.lake()
    snaps = {d: _snapshot(lake, SNAP, d) for d in DAYS[:3]}
    _snapshot(lake, SNAP, DAYS[3], validated=False)  # published, its validation not run yet
    _predictions(lake, "predictions", DAYS[0], {f"{SNAP}/ds={DAYS[0]}": snaps[DAYS[0]].content_fingerprint})
    with pytest.raises(ValueError, match="outside"):  # the attempt on day 2 failed validation: quarantined
        _predictions(lake, "predictions", DAYS[1], {f"{SNAP}/ds={DAYS[1]}": snaps[DAYS[1]].content_fingerprint}, failed)
    assert o.scoring_states(cfg, REPURCHASE, [*DAYS, "1997-02-05"]) == {
        DAYS[0]: o.SCORED,
        DAYS[1]: o.FAILED,  # not retried by itself: the same data fails again (a `ds` run re-scores it)
        DAYS[2]: o.DUE,  # its event was handed to no run: the next run scores it
        DAYS[3]: o.WAITING,  # its own event comes once it is validated
        "1997-02-05": o.WAITING,  # no snapshot at all
    }


def test_a_rebuilt_snapshot_makes_its_day_due_again_and_a_failed_day_too(cfg):
    lake = cfg.lake()
    old = _snapshot(lake, SNAP, DAYS[0])
    _predictions(lake, "predictions", DAYS[0], {f"{SNAP}/ds={DAYS[0]}": old.content_fingerprint})
    with pytest.raises(ValueError):
        _predictions(
            lake,
            "predictions",
            DAYS[1],
            {f"{SNAP}/ds={DAYS[1]}": _snapshot(lake, SNAP, DAYS[1]).content_fingerprint},
            failed,
        )
    assert o.scoring_states(cfg, REPURCHASE, DAYS[:2]) == {DAYS[0]: o.SCORED, DAYS[1]: o.FAILED}
    # new content for both days (a re-landed raw day rebuilt them): the predictions are of the old one
    new = _snapshot(lake, SNAP, DAYS[0], value=9.0)
    _snapshot(lake, SNAP, DAYS[1], value=9.0)
    assert new.content_fingerprint != old.content_fingerprint
    assert o.scoring_states(cfg, REPURCHASE, DAYS[:2]) == {DAYS[0]: o.DUE, DAYS[1]: o.DUE}


def test_unvalidated_predictions_are_not_taken_as_scored(cfg):
    lake = cfg.lake()
    snap = _snapshot(lake, SNAP, DAYS[0])
    _predictions(lake, "predictions", DAYS[0], {f"{SNAP}/ds={DAYS[0]}": snap.content_fingerprint}, gate=None)
    assert not lake.table("predictions").validated(DAYS[0])
    assert o.scoring_states(cfg, REPURCHASE, DAYS[:1]) == {DAYS[0]: o.DUE}


def test_a_three_set_model_waits_for_every_set_and_compares_its_raw_range(cfg):
    lake = cfg.lake()
    sets = [o.snapshot_table_name(fs.name) for fs in DELAY.feature_sets]
    raw = DELAY.queries.source.table
    for d in DAYS[:3]:
        _snapshot(lake, raw, d)
        for table in sets[:2]:
            _snapshot(lake, table, d)
    for d in DAYS[:2]:  # the weather set of day 3 has not published yet
        _snapshot(lake, sets[2], d)
    key = f"{raw}/ds={DAYS[0]}..{DAYS[0]}"
    _predictions(lake, DELAY.predictions_table, DAYS[0], {key: inputs_fingerprint(lake.table(raw), DAYS[0], DAYS[0])})
    key1 = f"{raw}/ds={DAYS[0]}..{DAYS[1]}"
    _predictions(lake, DELAY.predictions_table, DAYS[1], {key1: inputs_fingerprint(lake.table(raw), DAYS[0], DAYS[1])})
    assert o.scoring_states(cfg, DELAY, DAYS[:3]) == {DAYS[0]: o.SCORED, DAYS[1]: o.SCORED, DAYS[2]: o.WAITING}
    _snapshot(lake, sets[2], DAYS[2])
    _snapshot(lake, raw, DAYS[0], value=5.0)  # day 1 re-landed: every prediction that read it is stale
    assert o.scoring_states(cfg, DELAY, DAYS[:3]) == {DAYS[0]: o.DUE, DAYS[1]: o.DUE, DAYS[2]: o.DUE}


def test_partitions_to_score_merges_triggering_and_announced_events_and_keeps_the_due_days(cfg):
    Event = types.SimpleNamespace
    lake = cfg.lake()
    snaps = {d: _snapshot(lake, SNAP, d) for d in DAYS}
    _predictions(lake, "predictions", DAYS[0], {f"{SNAP}/ds={DAYS[0]}": snaps[DAYS[0]].content_fingerprint})
    consumed = {"snap": [Event(extra={"ds": DAYS[0]}), Event(extra={"ds": DAYS[1]})]}  # what Airflow handed over
    announced = {"snap": [Event(extra={"ds": d}) for d in DAYS]}  # every event of the Asset (inlet_events)

    def states(days):
        return o.scoring_states(cfg, REPURCHASE, days)

    assert o.partitions_to_score(None, consumed, announced, states) == DAYS[1:]
    assert o.partitions_to_score(None, consumed, None, states) == DAYS[1:2]
    assert o.partitions_to_score(DAYS[0], consumed, announced, states) == DAYS[:1]  # the Param: unconditionally
    # everything scored already (a run whose days another run scored): nothing to do, not an error
    for d in DAYS[1:]:
        _predictions(lake, "predictions", d, {f"{SNAP}/ds={d}": snaps[d].content_fingerprint})
    assert o.partitions_to_score(None, consumed, announced, states) == []
    with pytest.raises(ValueError, match="no partition"):
        o.partitions_to_score(None, {"snap": [Event(extra={})]}, {}, states)


def test_built_from_unvalidated_input_a_snapshot_is_ready_once_an_event_announced_it(cfg):
    """The demo's case: raw history landed without validation, so no snapshot or prediction of it is ever
    marked validated (``unvalidated_inputs``); the snapshot's event says its suite passed."""
    import datetime as dt

    from jobs.lake import UNVALIDATED_INPUTS

    lake, day = cfg.lake(), DAYS[0]
    frame = pd.DataFrame({"customer_id": [1, 2], "f": [1.0, 2.0]})
    producer = {"job": "test", UNVALIDATED_INPUTS: ["raw_events/cdnow_purchases/ds=1997-01-01"]}
    snap = lake.table(SNAP).write_partition(day, frame, producer=producer, gate=passed)
    assert not lake.table(SNAP).validated(day)
    published = dt.datetime.fromisoformat(snap.created_at)

    def announced(*offsets_s):
        return {SNAP: [{"extra": {"ds": day}, "timestamp": published + dt.timedelta(seconds=s)} for s in offsets_s]}

    assert o.scoring_states(cfg, REPURCHASE, [day]) == {day: o.WAITING}  # no event: its suite may not have run
    assert o.scoring_states(cfg, REPURCHASE, [day], announced(-5)) == {day: o.WAITING}  # announced an older version
    assert o.scoring_states(cfg, REPURCHASE, [day], announced(-5, 2)) == {day: o.DUE}
    iso = {SNAP: [{"extra": {"ds": day}, "timestamp": (published + dt.timedelta(seconds=2)).isoformat()}]}
    assert o.scoring_states(cfg, REPURCHASE, [day], iso) == {day: o.DUE}  # the REST API's ISO times
    inputs = {f"{SNAP}/ds={day}": snap.content_fingerprint}
    preds = pd.DataFrame({"customer_id": [1, 2], "score": [0.1, 0.2]})
    lake.table("predictions").write_partition(
        day,
        preds,
        producer={"job": "score_snapshot", UNVALIDATED_INPUTS: [f"{SNAP}/ds={day}"]},
        inputs=inputs,
        gate=passed,
    )
    assert not lake.table("predictions").validated(day)
    assert o.scoring_states(cfg, REPURCHASE, [day], announced(2)) == {day: o.SCORED}  # never markable: published
    _predictions(lake, "predictions", DAYS[1], {f"{SNAP}/ds={DAYS[1]}": "x"}, gate=None)  # validated-input, unchecked
    _snapshot(lake, SNAP, DAYS[1])
    assert o.scoring_states(cfg, REPURCHASE, [DAYS[1]]) == {DAYS[1]: o.DUE}
