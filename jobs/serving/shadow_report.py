"""``lockstep shadow --model M --ds D``: the champion against the challenger it shadowed, on one day's
published serving log (``serving_logs/<model>/ds=D``).

Rows compared: the served rows with a ``shadow_score`` (both models scored the SAME feature vector;
``jobs.serving.shadow``); rows without one (dropped, no challenger yet) are counted, not compared.
Numbers:

* the score distributions of both: quantiles 0, 0.1, 0.25, 0.5, 0.75, 0.9, 1 (linear interpolation);
* Spearman's rank correlation: Pearson's correlation of the average ranks (ties share their mean rank);
* agreement at the decision threshold (``--threshold``, default 0.5: a score ``>= threshold`` is a
  positive decision): the share of rows both decide alike, and each model's positive rate;
* AUC of each on the same served rows, where labels exist: for a model over query rows
  (``QueryRows``) the labels partition ``labels/<model>/ds=D`` of that day, joined on the query keys
  and ``request_time == as_of``; AUC is the Mann-Whitney statistic (ties count one half). A model
  over entity snapshots has no label per served request (its labels are per cut-off entity): skipped
  with a note, as is a day whose labels are not built (not mature) or that matches no served row.

Output: a text table (returned, printed by the CLI) and ``<lake>/_reports/shadow/<model>/ds=D.html``
(with a histogram and a scatter plot of the two scores when matplotlib is installed).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
DEFAULT_THRESHOLD = 0.5


def ranks(x) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    return pd.Series(np.asarray(x, dtype=np.float64)).rank(method="average").to_numpy()


def spearman(a, b) -> float | None:
    """Spearman's rank correlation of two score vectors (None: fewer than 2 rows or a constant one)."""
    ra, rb = ranks(a), ranks(b)
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return None
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / np.sqrt((ra * ra).sum() * (rb * rb).sum()))


def auc(scores, labels) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties one half); None without both classes."""
    y = np.asarray(labels).astype(bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return None
    r = ranks(scores)
    return float((r[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


@dataclass
class ShadowReport:
    model: str
    ds: str
    threshold: float
    rows: int  # served rows of the day
    compared: int  # rows with both scores
    champion_versions: list = field(default_factory=list)
    shadow_versions: list = field(default_factory=list)
    quantiles: dict = field(default_factory=dict)  # {"champion": [...], "challenger": [...]}
    spearman: float | None = None
    agreement: float | None = None
    positive_rate: dict = field(default_factory=dict)
    labelled: int = 0
    auc: dict = field(default_factory=dict)  # {"champion": x, "challenger": y} when labels exist
    label_note: str | None = None
    html_path: str | None = None

    def table(self) -> str:
        """The report as printed: one line per number, both models side by side."""

        def f(v):
            return "-" if v is None else f"{v:.4f}"

        lines = [
            f"shadow {self.model} ds={self.ds}: {self.compared} of {self.rows} served rows with both scores "
            f"(champion v{','.join(self.champion_versions) or '-'}, challenger v{','.join(self.shadow_versions) or '-'})",
            f"{'':<22}{'champion':>12}{'challenger':>12}",
        ]
        for i, q in enumerate(QUANTILES):
            c, s = (self.quantiles.get(k, [None] * len(QUANTILES))[i] for k in ("champion", "challenger"))
            lines.append(f"{'score q' + format(q, 'g'):<22}{f(c):>12}{f(s):>12}")
        pr = self.positive_rate
        lines.append(
            f"{'positive rate >=' + format(self.threshold, 'g'):<22}{f(pr.get('champion')):>12}"
            f"{f(pr.get('challenger')):>12}"
        )
        if self.auc:
            lines.append(
                f"{'AUC (' + str(self.labelled) + ' labelled)':<22}{f(self.auc['champion']):>12}"
                f"{f(self.auc['challenger']):>12}"
            )
        lines.append(f"spearman rank correlation: {f(self.spearman)}")
        lines.append(f"agreement at threshold {self.threshold:g}: {f(self.agreement)}")
        if self.label_note:
            lines.append(f"AUC: {self.label_note}")
        return "\n".join(lines)


def compare(logs: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD, labels=None) -> dict:
    """The numbers of :class:`ShadowReport` for served rows ``logs`` (``score``, ``shadow_score``,
    ``model_version``, ``shadow_version``); ``labels``: one 0/1 (or NaN: unknown) per row of ``logs``."""
    both = logs["shadow_score"].notna().to_numpy() & logs["score"].notna().to_numpy()
    c = logs["score"].to_numpy(dtype=np.float64)[both]
    s = logs["shadow_score"].to_numpy(dtype=np.float64)[both]
    out = {
        "rows": len(logs),
        "compared": int(both.sum()),
        "champion_versions": sorted({str(v) for v in logs.loc[both, "model_version"]}),
        "shadow_versions": sorted({str(v) for v in logs.loc[both, "shadow_version"]}),
        "quantiles": {},
        "spearman": None,
        "agreement": None,
        "positive_rate": {},
        "labelled": 0,
        "auc": {},
    }
    if not len(c):
        return out
    out["quantiles"] = {
        k: [float(v) for v in np.quantile(x, QUANTILES)] for k, x in (("champion", c), ("challenger", s))
    }
    out["spearman"] = spearman(c, s)
    out["agreement"] = float(((c >= threshold) == (s >= threshold)).mean())
    out["positive_rate"] = {"champion": float((c >= threshold).mean()), "challenger": float((s >= threshold).mean())}
    if labels is not None:
        y = np.asarray(labels, dtype=np.float64)[both]
        known = ~np.isnan(y)
        out["labelled"] = int(known.sum())
        a, b = auc(c[known], y[known]), auc(s[known], y[known])
        if a is not None:
            out["auc"] = {"champion": a, "challenger": b}
    return out


def served_labels(cfg, decl, logs: pd.DataFrame, ds: str) -> tuple[np.ndarray | None, str | None]:
    """(one label per served row, NaN where none; or None) and a note when there are none."""
    from features.model import QueryRows
    from jobs.serving.log import log_keys
    from jobs.training.labels import labels_table

    if not isinstance(decl.queries, QueryRows):
        return None, (
            f"skipped: model {decl.name!r} queries entity snapshots; its labels are per cut-off entity, "
            "not per served request"
        )
    table = labels_table(cfg.lake(), decl)
    if not table.exists(ds):
        return None, f"skipped: no labels partition {decl.labels_table}/ds={ds} (not built, or not mature yet)"
    lab = table.read(ds)
    id_cols = {c for c, _ in decl.id_columns}
    on = [(log_col, col) for log_col, col, _ in log_keys(decl) if col in id_cols]
    left = pd.DataFrame({col: logs[log_col].to_numpy() for log_col, col in on})
    left["as_of"] = pd.to_datetime(logs["request_time"], utc=True).to_numpy()
    left["_row"] = np.arange(len(logs))
    right = lab[[col for _, col in on] + ["as_of", "label"]].copy()
    right["as_of"] = pd.to_datetime(right["as_of"], utc=True)
    right = right.drop_duplicates([col for _, col in on] + ["as_of"], keep=False)  # ambiguous: no label
    left["as_of"] = pd.to_datetime(left["as_of"], utc=True)
    joined = left.merge(right, on=[col for _, col in on] + ["as_of"], how="left").sort_values("_row")
    y = joined["label"].to_numpy(dtype=np.float64, na_value=np.nan)
    if np.isnan(y).all():
        return None, f"skipped: no served row of ds={ds} matches a row of {decl.labels_table}/ds={ds}"
    return y, None


def run_shadow_report(cfg, model: str | None, ds: str, threshold: float | None = None, html_out: bool = True):
    """Read ``serving_logs/<model>/ds=D`` (and its labels), compare, write the HTML page."""
    from jobs.serving.log import log_schema

    repo = cfg.repo()
    decl = repo.model(model) if model else repo.default_model()
    threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    table = cfg.lake().table(decl.serving_log_table, log_schema(decl))
    if not table.exists(ds):
        raise FileNotFoundError(f"no published serving log {decl.serving_log_table}/ds={ds} (lockstep publish-log)")
    logs = table.read(ds)
    labels, note = served_labels(cfg, decl, logs, ds)
    rep = ShadowReport(model=decl.name, ds=ds, threshold=threshold, label_note=note, **compare(logs, threshold, labels))
    if labels is not None and not rep.auc:
        rep.label_note = "skipped: the labelled rows with both scores do not hold both classes"
    if html_out:
        rep.html_path = write_html(cfg, rep, logs)
    return rep


def write_html(cfg, rep: ShadowReport, logs: pd.DataFrame) -> str:
    lake = cfg.lake()
    folder = lake.path("_reports", "shadow", rep.model)
    lake.fs.makedirs(folder, exist_ok=True)
    path = lake.path("_reports", "shadow", rep.model, f"ds={rep.ds}.html")
    plot = _plot(logs)
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>shadow {html.escape(rep.model)} ds={rep.ds}"
        f"</title></head><body><h1>Shadow: {html.escape(rep.model)} ds={rep.ds}</h1>"
        f"<pre>{html.escape(rep.table())}</pre>{plot}</body></html>"
    )
    with lake.fs.open(path, "w") as f:
        f.write(page)
    return path


def _plot(logs: pd.DataFrame) -> str:
    """An inline SVG: the two score histograms and their scatter (empty without matplotlib or rows)."""
    both = logs[logs["shadow_score"].notna() & logs["score"].notna()]
    if both.empty:
        return ""
    try:
        import io

        from matplotlib.figure import Figure
    except ImportError:
        return "<p>(no plots: matplotlib is not installed)</p>"
    fig = Figure(figsize=(9, 3.5))
    ax1, ax2 = fig.subplots(1, 2)
    bins = np.linspace(0, 1, 41)
    ax1.hist(both["score"], bins=bins, alpha=0.6, label="champion")
    ax1.hist(both["shadow_score"], bins=bins, alpha=0.6, label="challenger")
    ax1.set_xlabel("score")
    ax1.legend()
    ax2.scatter(both["score"], both["shadow_score"], s=4, alpha=0.5)
    ax2.plot([0, 1], [0, 1], lw=0.8, color="grey")
    ax2.set_xlabel("champion")
    ax2.set_ylabel("challenger")
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    return buf.getvalue()
