"""The skew report as one self-contained HTML page (matplotlib PNGs embedded as data URIs)."""

from __future__ import annotations

import base64
import html
import io
import json

import numpy as np
import pandas as pd

from jobs.skew.causes import CAUSE_COLORS, CAUSES, PSI_MAJOR, PSI_MODERATE, SCORE_ROW


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def plots(report, series: pd.DataFrame) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = report.table[report.table.feature != SCORE_ROW].set_index("feature")
    out = {}
    rates = t[list(CAUSES)].div(t["rows"].where(t["rows"] > 0, 1), axis=0)
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(t) + 1.2))
    left = np.zeros(len(t))
    for c in CAUSES:
        ax.barh(t.index, rates[c], left=left, color=CAUSE_COLORS[c], label=c)
        left += rates[c].to_numpy()
    ax.invert_yaxis()
    ax.set_xlabel("share of logged rows mismatching, by cause")
    ax.set_xlim(0, max(0.05, float(left.max()) * 1.1))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax.set_title(f"Per-feature mismatch rate, ds={report.ds}")
    out["mismatch"] = _png(fig)

    if t["psi"].notna().any():
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 0.28 * len(t) + 1.2), sharey=True)
        psi = t["psi"].astype(float).fillna(0)
        colors = ["#d62728" if v >= PSI_MAJOR else ("#ff7f0e" if v >= PSI_MODERATE else "#2ca02c") for v in psi]
        a1.barh(t.index, psi, color=colors)
        a1.axvline(PSI_MODERATE, ls="--", c="#ff7f0e", lw=1)
        a1.axvline(PSI_MAJOR, ls="--", c="#d62728", lw=1)
        a1.invert_yaxis()
        a1.set_xlabel("PSI vs training (10 quantile bins; 0.1 moderate, 0.25 major)")
        a2.barh(t.index, t["js_bits"].astype(float).fillna(0), color="#1f77b4")
        a2.set_xlabel("Jensen-Shannon divergence (bits, 0..1)")
        fig.suptitle("Drift of served features vs the champion's training set")
        out["drift"] = _png(fig)

    if len(series):
        s = series[series.feature != SCORE_ROW].copy()
        daily = s.groupby("ds")[list(CAUSES) + ["rows"]].sum()
        fig, ax = plt.subplots(figsize=(9, 3))
        for c in CAUSES:
            ax.plot(
                list(daily.index),
                daily[c] / daily["rows"].where(daily["rows"] > 0, 1),
                marker="o",
                color=CAUSE_COLORS[c],
                label=c,
            )
        ax.set_ylabel("mismatching (row, feature) share")
        ax.set_title("Skew over days, by cause")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
        fig.autofmt_xdate()
        out["timeseries"] = _png(fig)

    rows = report.rows
    worst = t["mismatches"].astype(int).idxmax() if t["mismatches"].sum() else None
    if worst is not None:
        fig, ax = plt.subplots(figsize=(5, 4))
        x = rows["known_at__" + worst].to_numpy(dtype=float)
        y = rows[worst].to_numpy(dtype=float)
        cause = report.causes[worst].to_numpy()
        keep = np.zeros(len(x), dtype=bool)  # at most ~4000 points per cause: a readable, fast plot
        for c in ("",) + tuple(CAUSES):
            idx = np.flatnonzero(cause == c)
            keep[idx[:: max(1, len(idx) // 4000)]] = True
        for c in ("",) + tuple(CAUSES):
            m = (cause == c) & keep
            if m.any():
                ax.scatter(x[m], y[m], s=8, alpha=0.6, color=CAUSE_COLORS.get(c, "#2ca02c"), label=c or "match")
        ax.set_xlabel(f"offline known_at {worst}")
        ax.set_ylabel(f"served {worst}")
        ax.set_title(f"Served vs offline: {worst}")
        ax.legend(fontsize=8)
        out["scatter"] = _png(fig)
    return out


def render(report, series: pd.DataFrame) -> str:
    imgs = plots(report, series)
    t = report.table
    status = ("FAILED: " + "; ".join(report.breaches)) if report.breaches else "PASSED: no threshold crossed"
    cols = [
        "feature",
        "feature_set",
        "rows",
        "compared",
        "both_null",
        "online_only_null",
        "offline_only_null",
        "mismatches",
        "mismatch_rate",
        *CAUSES,
        "mismatches_vs_as_of",
        "diff_mean",
        "abs_diff_p50",
        "abs_diff_p99",
        "psi",
        "js_bits",
        "drift",
        "breaches",
    ]
    feat = t[t.feature != SCORE_ROW][cols]
    score = t[t.feature == SCORE_ROW]

    def fmt(v):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return "—"
        if isinstance(v, float):
            return f"{v:.4g}"
        return html.escape(str(v))

    def table_html(frame: pd.DataFrame) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
        body = []
        for rec in frame.to_dict("records"):
            bad = bool(rec.get("breaches"))
            body.append(
                f"<tr class={'bad' if bad else ''}>" + "".join(f"<td>{fmt(v)}</td>" for v in rec.values()) + "</tr>"
            )
        return f"<table><tr>{head}</tr>{''.join(body)}</table>"

    samples = []
    for rec in t[t.feature != SCORE_ROW].to_dict("records"):
        s = json.loads(rec["samples"] or "[]")
        if s:
            samples.append(f"<h4>{html.escape(rec['feature'])}</h4>" + table_html(pd.DataFrame(s)))
    score_html = "<p>No model source: prediction skew not computed.</p>"
    if len(score) and pd.notna(score["compared"].iloc[0]):
        r = score.iloc[0]
        score_html = (
            f"<p>{int(r['compared'])} logged rows re-scored with the logged model version: "
            f"max |re-scored − logged| = {fmt(r['rescore_max_abs_diff'])} "
            f"({int(r['rescore_mismatches'])} differ). Served score vs the score of the offline "
            f"known_at features: {int(r['mismatches'])} differ, mean diff {fmt(r['diff_mean'])}, "
            f"p99 |diff| {fmt(r['abs_diff_p99'])}.</p>"
        )
    titles = {
        "mismatch": "Mismatches per feature, by cause",
        "drift": "Drift (PSI, JS in bits)",
        "timeseries": "Over days",
        "scatter": "Served vs offline, most-mismatched feature",
    }
    img = "".join(f'<h3>{titles[k]}</h3><img src="{v}"/>' for k, v in imgs.items())
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in report.notes)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Skew report {report.ds}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}} table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}} th{{background:#eee}} tr.bad td{{background:#fdd}}
.status{{font-size:18px;padding:8px;background:{"#fdd" if report.breaches else "#dfd"}}}</style></head><body>
<h1>Training-serving skew, ds={report.ds}</h1>
<p class="status">{html.escape(status)}</p>
<p>{len(report.rows)} logged requests; fingerprints served: {html.escape(json.dumps(report.fingerprints))}.
A (row, feature) mismatches when the served value differs from the offline known_at or as_of recomputation
beyond the feature's tolerance. Causes: <b>degraded</b> (service served defaults), <b>version_skew</b>
(fingerprint differs), <b>late_data</b> (served = known_at ≠ as_of), <b>staleness</b> (served vector = an
earlier daily snapshot), <b>logic_skew</b> (same fingerprint, the same code offline disagrees).
Differences are served − known_at. Drift: PSI (natural log) over 10 training-quantile bins plus a null bin;
Jensen-Shannon divergence over the same bins in <b>bits</b> (log base 2, range 0..1).</p>
<ul>{notes}</ul>
{img}
<h2>Per feature</h2>{table_html(feat)}
<h2>Prediction skew</h2>{score_html}
<h2>Sample mismatching rows</h2>{"".join(samples) or "<p>None.</p>"}
</body></html>"""


def write_html(cfg, report, series: pd.DataFrame, model: str) -> str:
    """Write ``<lake>/_reports/skew/<model>/ds=D.html``; returns its path."""
    lake = cfg.lake()
    path = lake.path("_reports", "skew", model, f"ds={report.ds}.html")
    lake.fs.makedirs(lake.path("_reports", "skew", model), exist_ok=True)
    with lake.fs.open(path, "w") as f:
        f.write(render(report, series))
    return path
