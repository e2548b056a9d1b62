"""A registry version that sleeps per row it scores: the slow challenger of ``crash_service.py``. A
module of its own (imported as ``slow_booster``, the service script's directory being on the path) so
that the shadow process, which gets the challenger as a pickle, can import its class too."""

from __future__ import annotations

import time

from jobs.serving.model import BoosterModel


class SlowBooster(BoosterModel):
    def __init__(self, loaded, delay_s: float):
        super().__init__(loaded)
        self.delay_s = delay_s

    def predict_matrix(self, x):
        # per call: the shadow process scores what it read in one call, so its backlog grows with the
        # traffic during each call, and a recovered backlog costs a few calls, not its rows' worth
        time.sleep(self.delay_s)
        return super().predict_matrix(x)
