"""The error the suite loader (``suites``) and the batch combiner (``combine``) both raise."""

from __future__ import annotations


class SuiteError(ValueError):
    """A suite file is missing, malformed, or uses an expectation that cannot be combined."""
