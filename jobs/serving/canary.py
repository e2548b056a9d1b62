"""Canary serving: a declared share of ENTITIES is served by the challenger.

An entity's place is :func:`canary_point`: ``blake2b(salt, model name, its query key(s))`` read as a
number in [0, 1). It is served by the challenger (arm ``canary``) when that point is below the share,
else by the champion (arm ``champion``). The point never changes for an entity (same keys, model
and salt), so it never flips between arms within a stage; and the test ``point < share`` is
monotone, so a ramp (``1% -> 5% -> 25% -> 100%``, ``lockstep canary --model M --share S``) only
ever ADDS entities to the canary: every entity of the 5% is still canary at 25%. Another salt draws
another population (a fresh canary for the next challenger).

The share is the challenger version's registry tag (``jobs.models.registry.CANARY_TAG``), read by
the service's challenger poll together with the alias, or ``Settings.canary_share`` (config wins).
A challenger that is refused, or not installed, serves nothing: every request is the champion's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import asdict, dataclass

ARMS = ("champion", "canary")
_SCALE = float(1 << 64)


def canary_point(keys, model: str, salt: str = "") -> float:
    """The entity's place in [0, 1): the first 8 bytes of ``blake2b`` over the salt, the model name
    and the query key values (in the model's key order; a null key is ``None``), big-endian."""
    h = hashlib.blake2b(digest_size=8)
    for part in (salt, model, *keys):
        data = repr(part).encode()
        h.update(len(data).to_bytes(4, "big"))  # length-prefixed: ("ab", "c") != ("a", "bc")
        h.update(data)
    return int.from_bytes(h.digest(), "big") / _SCALE


def in_canary(point: float, share: float) -> bool:
    """Whether an entity at ``point`` is in a canary of ``share`` (monotone in the share)."""
    return point < share


# ---- the ramp: advance a stage only while the guards hold ------------------------------------------------
ADVANCED = "advanced"
STARTED = "started"  # 0 -> the first step (by command only: nothing can judge a canary of share 0)
NO_CHALLENGER = "no challenger"
BREACH = "breach"
TOO_EARLY = "too early"
NOT_JUDGED = "not judged"
NOT_STARTED = "not started"
COMPLETE = "complete"
FORCED = "forced"


@dataclass(frozen=True)
class RampDecision:
    """What :func:`advance_canary` did (``reason``: one of the constants above) and why (``detail``)."""

    reason: str
    model: str
    version: str | None
    share_from: float
    share_to: float
    detail: str

    @property
    def advanced(self) -> bool:
        return self.reason in (ADVANCED, STARTED, FORCED)

    def describe(self) -> str:
        who = f"{self.model} v{self.version} (challenger)" if self.version else self.model
        if self.advanced:
            return f"{who}: canary share {self.share_from:g} -> {self.share_to:g} ({self.reason}: {self.detail})"
        return f"{who}: canary held at {self.share_from:g} ({self.reason}: {self.detail})"

    def as_dict(self) -> dict:
        return {**asdict(self), "advanced": self.advanced}


def _when(text: str | None) -> dt.datetime | None:
    try:
        at = dt.datetime.fromisoformat(str(text))
    except (TypeError, ValueError):
        return None
    return at if at.tzinfo else at.replace(tzinfo=dt.UTC)


def advance_canary(
    cfg, model, *, start: bool = False, force: bool = False, now: dt.datetime | None = None
) -> RampDecision:
    """Move the registry challenger of ``model`` (a ``features.model.Model``) to the next step of its
    declared ramp (``model.ramp``), only when (a) no guard breach is recorded on the version, (b) the
    current stage (``CANARY_STAGE_AT_TAG``) has lasted ``ramp.min_stage_minutes``, and (c) a service's
    guards judged the canary arm AT THE CURRENT SHARE after the stage began and found no breach
    (``CANARY_JUDGED_TAG``, written by ``GuardMonitor``). Otherwise it holds and says why; a hold is not
    an error. From share 0 it holds (``not started``) unless ``start`` (the command's ``--next``): there
    is no canary traffic to judge before the first step. ``force`` skips (b) and (c), never (a).
    A registry error propagates."""
    from jobs.models.registry import (
        CANARY_BREACH_TAG,
        CANARY_JUDGED_TAG,
        CANARY_STAGE_AT_TAG,
        CANARY_TAG,
        CHALLENGER,
        Registry,
    )

    ramp, name = model.ramp, model.name
    now = now or dt.datetime.now(dt.UTC)
    reg = Registry.from_config(cfg)
    info = reg.alias(name, CHALLENGER)
    if info is None:
        return RampDecision(NO_CHALLENGER, name, None, 0.0, 0.0, f"model {name!r} has no challenger alias")
    version, tags = str(info.version), info.tags
    share = float(tags.get(CANARY_TAG) or 0.0)

    def held(reason: str, detail: str) -> RampDecision:
        return RampDecision(reason, name, version, share, share, detail)

    if tags.get(CANARY_BREACH_TAG):
        return held(
            BREACH,
            f"stopped by its canary guards ({tags[CANARY_BREACH_TAG]}); clear the record first "
            "(lockstep canary --reset-breach)",
        )
    target = ramp.next_step(share)
    if target is None:
        return held(COMPLETE, f"already at the last step of the ramp {ramp.steps}")
    if share <= 0:
        if not start:
            return held(NOT_STARTED, "share 0 (shadow only): start the canary by command (lockstep canary --next)")
        reg.set_canary_share(name, target)
        return RampDecision(STARTED, name, version, share, target, "the first step of the ramp, by command")
    if force:
        reg.set_canary_share(name, target)
        return RampDecision(
            FORCED, name, version, share, target, "forced: the stage's age and guard verdict not checked"
        )
    began = _when(tags.get(CANARY_STAGE_AT_TAG))
    if began is None:
        return held(TOO_EARLY, "no stage start recorded on the version (set the share again to start a stage)")
    lasted = (now - began).total_seconds() / 60
    if lasted < ramp.min_stage_minutes:
        return held(
            TOO_EARLY,
            f"the stage at {share:g} began {began.isoformat()}, {lasted:.1f} min ago < "
            f"min_stage_minutes {ramp.min_stage_minutes:g}",
        )
    try:
        judged = json.loads(tags.get(CANARY_JUDGED_TAG) or "null")
    except ValueError:
        judged = None
    if not isinstance(judged, dict):
        return held(NOT_JUDGED, f"no passing guard verdict recorded at share {share:g}")
    at = _when(judged.get("at"))
    if judged.get("share") != share or at is None or at < began:
        return held(
            NOT_JUDGED,
            f"no passing guard verdict at share {share:g} since the stage began {began.isoformat()} "
            f"(the last: share {judged.get('share')!r} at {judged.get('at')!r})",
        )
    reg.set_canary_share(name, target)
    return RampDecision(
        ADVANCED,
        name,
        version,
        share,
        target,
        f"the stage lasted {lasted:.1f} min; the guards passed at {share:g} at {at.isoformat()} over "
        f"{judged.get('n_canary')} canary and {judged.get('n_champion')} champion requests",
    )
