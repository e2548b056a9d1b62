"""Fixtures of the training tests: the shared CDNOW training lake (see ``training_lake.py``)."""

from training_lake import training_lake_template  # noqa: F401  (a session fixture, registered here once)
