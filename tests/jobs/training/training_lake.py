"""The small CDNOW training lake the training, baseline and tuning tests share.

Built once per session (ingest 1997-01-01..04-27, weekly 28-day labels, point-in-time training
sets for the Mondays 1997-02-03..03-31) and copied per test module, so each module gets its own
registry (``<lake>/_registry``) without paying for the build again.
"""

from __future__ import annotations

import shutil

import pytest

from jobs.config import Config

COMMIT = "0123456789abcdef0123456789abcdef01234567"
RANGES = {
    "train": ("1997-02-03", "1997-02-24"),
    "valid": ("1997-03-03", "1997-03-10"),
    "holdback": ("1997-03-17", "1997-03-31"),
}


@pytest.fixture(scope="session")
def training_lake_template(tmp_path_factory) -> str:
    from jobs.ingest.cdnow import ingest_cdnow
    from jobs.training.labels import build_labels, weekly_cutoffs
    from jobs.training.training_set import build_training_sets

    root = str(tmp_path_factory.mktemp("training_lake_template") / "lake")
    cfg = Config(lake_root=root)
    ingest_cdnow(cfg.lake(), "1997-01-01", "1997-04-27")
    cutoffs = weekly_cutoffs("1997-02-03", "1997-03-31")
    build_labels(cfg, cutoffs, horizon_days=28)
    build_training_sets(cfg, cutoffs, validate=False)
    return root


def training_lake(template: str, tmp_path_factory, **config) -> Config:
    """A private copy of the template lake, as a Config (``config``: extra Config fields)."""
    root = tmp_path_factory.mktemp("training_lake") / "lake"
    shutil.copytree(template, root)
    return Config(lake_root=str(root), **config)
