"""The causes a training-serving skew mismatch is attributed to, and the constants the skew job
(``job``) and its HTML report (``report``) share.

``CAUSES`` is the one list of the causes, in the order of the report's columns, plots and
printed counts. The attribution rules (first match wins) are in ``jobs.skew.job.attribute``.
Which causes are skew depends on the feature set's training mode (:func:`skew_causes`).
"""

from __future__ import annotations

#: Every cause, in report order.
CAUSES = ("degraded", "version_skew", "late_data", "staleness", "logic_skew")
DEGRADED, VERSION_SKEW, LATE_DATA, STALENESS, LOGIC_SKEW = CAUSES


def skew_causes(training_mode: str) -> tuple[str, ...]:
    """The causes that are training-serving skew for a feature set trained in ``training_mode``.

    ``known_at`` training sees each event as known at the query time, so an event that arrived after
    the request (``late_data``) is missing from training too: data latency (the report's freshness
    section), not skew. ``as_of`` training sees it, serving cannot: there late data is skew.
    """
    return tuple(c for c in CAUSES if not (c == LATE_DATA and training_mode == "known_at"))


#: Plot colour of each cause (late_data's blue is the freshness section's colour); nothing else uses them.
CAUSE_COLORS = {
    DEGRADED: "#7f7f7f",
    VERSION_SKEW: "#9467bd",
    LATE_DATA: "#1f77b4",
    STALENESS: "#ff7f0e",
    LOGIC_SKEW: "#d62728",
}
#: Plot colour of a matching value.
MATCH_COLOR = "#2ca02c"
#: Plot colour of each drift level: one brown scale, shared with no cause.
DRIFT_COLORS = {"stable": "#e7cb94", "moderate": "#bd9e39", "major": "#8c6d31", "n/a": "#dddddd"}

#: The report row of the prediction skew (``feature == SCORE_ROW``).
SCORE_ROW = "__score__"
#: Default PSI levels of "moderate" and "major" drift (a model's ``drift_psi_moderate`` / ``drift_psi``).
PSI_MODERATE, PSI_MAJOR = 0.1, 0.25
