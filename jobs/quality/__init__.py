"""Data-quality machinery behind ``jobs.quality.validate``: suites, derived checks, batch combining, GE glue.

- ``suites``: load the Great Expectations suites in ``expectations/*.json`` and bind them to a
  feature set (``${entity}``/``${features}`` placeholders, spec-derived expectations).
- ``derive``: expectations derived from a feature set's declaration.
- ``combine``: evaluate a suite over bounded batches, combining table-level results correctly.
- ``keys``: uniqueness across batches with bounded memory.
- ``gx``: the one shared ephemeral GE context, batch validation and Data Docs rendering.

Nothing here imports Great Expectations at module level: it is imported on first use.
"""

import sys


def _refuse_spark_connect_where_pyspark_would_exit() -> None:
    """Make ``import pyspark.sql.connect`` an ImportError in a process whose ``__main__`` has no spec, no
    file and no ``sys.ps1`` (``python -c``, a multiprocessing child of one): there
    ``pyspark/sql/connect/utils.py:check_dependencies`` takes the process for pyspark's doctest runner
    and, when a Spark Connect requirement such as ``grpc_status`` is missing, calls ``sys.exit(0)`` —
    and Great Expectations imports that module (``great_expectations/compatibility/pyspark.py``) on its
    first import, so a validation ended the process silently with status 0. Lockstep never uses Spark
    Connect; Great Expectations takes the ImportError for "not installed", as it does in a script."""
    main = sys.modules.get("__main__")
    doctest_like = (
        main is not None
        and getattr(main, "__spec__", None) is None
        and not hasattr(main, "__file__")
        and not hasattr(sys, "ps1")
    )
    if doctest_like and "pyspark.sql.connect" not in sys.modules:
        sys.modules["pyspark.sql.connect"] = None  # the import system's "no such module" marker


# Here, not at each lazy GE import: every module that imports Great Expectations is in this package.
_refuse_spark_connect_where_pyspark_would_exit()
