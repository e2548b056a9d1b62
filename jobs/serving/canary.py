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

import hashlib

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
