"""The causes a training-serving skew mismatch is attributed to, and the constants the skew job
(``job``) and its HTML report (``report``) share.

``CAUSES`` is the one list of the causes, in the order of the report's columns, plots and
printed counts. The attribution rules (first match wins) are in ``jobs.skew.job.attribute``.
"""

from __future__ import annotations

#: Every cause, in report order.
CAUSES = ("degraded", "version_skew", "late_data", "staleness", "logic_skew")
DEGRADED, VERSION_SKEW, LATE_DATA, STALENESS, LOGIC_SKEW = CAUSES

#: Plot colour of each cause.
CAUSE_COLORS = {
    DEGRADED: "#7f7f7f",
    VERSION_SKEW: "#9467bd",
    LATE_DATA: "#1f77b4",
    STALENESS: "#ff7f0e",
    LOGIC_SKEW: "#d62728",
}

#: The report row of the prediction skew (``feature == SCORE_ROW``).
SCORE_ROW = "__score__"
#: PSI levels of "moderate" and "major" drift.
PSI_MODERATE, PSI_MAJOR = 0.1, 0.25
