"""The small CDNOW training lake the training, baseline and tuning tests share.

Built once per session (land and validate 1997-01-01..04-27, weekly labels of ``repurchase_90d`` with a 28-day
horizon (``MODEL_28D``), point-in-time training sets for the Mondays 1997-02-03..03-31) and copied per test module, so each module gets its own
registry (``<lake>/_registry``) without paying for the build again.
"""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from features import repo
from jobs.config import Config

MODEL = repo.load().model("repurchase_90d")
#: The shipped model with a 28-day horizon: a short CDNOW range suffices (same name, same tables).
MODEL_28D = dataclasses.replace(MODEL, label=dataclasses.replace(MODEL.label, horizon_days=28))

COMMIT = "0123456789abcdef0123456789abcdef01234567"
RANGES = {
    "train": ("1997-02-03", "1997-02-24"),
    "valid": ("1997-03-03", "1997-03-10"),
    "holdback": ("1997-03-17", "1997-03-31"),
}


@pytest.fixture(scope="session")
def training_lake_template(tmp_path_factory) -> str:
    from jobs.ingest.landing import land
    from jobs.quality.validate import validate_range
    from jobs.training.labels import build_labels, cutoffs_in
    from jobs.training.training_set import build_training_sets

    root = str(tmp_path_factory.mktemp("training_lake_template") / "lake")
    cfg = Config(lake_root=root)
    land(cfg, MODEL.label_source.name, "1997-01-01", "1997-04-27")
    # validated, as the features DAG leaves them: labels and training sets refuse unvalidated raw days
    validate_range(cfg, "raw_events", "1997-01-01", "1997-04-27", source=MODEL.label_source.name, docs=False)
    cutoffs = cutoffs_in(MODEL, "1997-02-03", "1997-03-31")
    build_labels(cfg, MODEL_28D, cutoffs)
    build_training_sets(cfg, MODEL, cutoffs, validate=False)
    return root


def training_lake(template: str, tmp_path_factory, **config) -> Config:
    """A private copy of the template lake, as a Config (``config``: extra Config fields)."""
    root = tmp_path_factory.mktemp("training_lake") / "lake"
    shutil.copytree(template, root)
    return Config(lake_root=str(root), **config)
