"""Data-quality machinery behind ``jobs.quality.validate``: suites, derived checks, batch combining, GE glue.

- ``suites``: load the Great Expectations suites in ``expectations/*.json`` and bind them to a
  feature set (``${entity}``/``${features}`` placeholders, spec-derived expectations).
- ``derive``: expectations derived from a feature set's declaration.
- ``combine``: evaluate a suite over bounded batches, combining table-level results correctly.
- ``keys``: uniqueness across batches with bounded memory.
- ``gx``: the one shared ephemeral GE context, batch validation and Data Docs rendering.

Nothing here imports Great Expectations at module level: it is imported on first use.
"""
