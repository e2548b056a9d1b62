"""The real service (uvicorn, the MLflow registry, the WAL) with two test-only delays, for the kill -9
tests (``test_crash_recovery.py``). Run as ``python crash_service.py PORT``; the service reads its
settings from the environment as ``app_from_env`` does. Delays (nothing else changes):

* ``LOCKSTEP_TEST_HOLD_VERSION`` / ``LOCKSTEP_TEST_HOLD_S``: loading that registry version (a swap's
  load, on the follower's thread) first touches ``LOCKSTEP_TEST_HOLD_MARK`` then sleeps: the swap is
  in progress for that long, which is when the test kills the process;
* ``LOCKSTEP_TEST_SLOW_VERSION`` / ``LOCKSTEP_TEST_SLOW_S``: that version sleeps that long per model
  call (a slow challenger: the shadow backlog grows; ``slow_booster.SlowBooster``).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import uvicorn
from slow_booster import SlowBooster  # this file's directory is sys.path[0]

from jobs.serving.model import RegistrySource

_load = RegistrySource.load


def load(self, name: str, version: str):
    if str(version) == os.environ.get("LOCKSTEP_TEST_HOLD_VERSION"):
        Path(os.environ["LOCKSTEP_TEST_HOLD_MARK"]).write_text(f"{os.getpid()} loading v{version}\n")
        time.sleep(float(os.environ.get("LOCKSTEP_TEST_HOLD_S", "60")))
    model = _load(self, name, version)
    if str(version) == os.environ.get("LOCKSTEP_TEST_SLOW_VERSION"):
        # a class of an importable module: the shadow process unpickles it
        return SlowBooster(model.loaded, float(os.environ.get("LOCKSTEP_TEST_SLOW_S", "0.05")))
    return model


RegistrySource.load = load

if __name__ == "__main__":
    uvicorn.run(
        "jobs.serving.app:app_from_env",
        factory=True,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_level="warning",
        access_log=False,
    )
