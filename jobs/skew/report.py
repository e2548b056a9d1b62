"""The skew report as one self-contained HTML page (matplotlib PNGs embedded as data URIs).

Sections, in reading order: the verdict (breaches, warnings), the headline numbers, training-serving
SKEW (served vs the recomputation in each set's training mode: chart, table, mismatching rows),
FRESHNESS (data latency: late data that is not skew, the lag of the late events; never in the skew
bars), DRIFT (PSI / JS against the champion's training features), prediction skew, the days before,
notes. Counts print as integers, differences as the full-precision ``repr`` of the float.
"""

from __future__ import annotations

import base64
import html
import io
import json

import numpy as np
import pandas as pd

from jobs.skew.causes import CAUSE_COLORS, CAUSES, DRIFT_COLORS, LATE_DATA, MATCH_COLOR, SCORE_ROW, skew_causes

#: Columns printed as integers, as full-precision floats, as percentages, with 4 decimals.
_COUNTS = {
    "rows",
    "compared",
    "both_null",
    "online_only_null",
    "offline_only_null",
    "mismatches",
    "mismatches_vs_as_of",
    "diff_count",
    "events",
    "rows_in_flight",
    "served ≠ as_of (any cause)",
    *CAUSES,
}
_EXACT = {
    "diff_mean",
    "abs_diff_p50",
    "abs_diff_p99",
    "abs_diff_max",
    "late_abs_diff_max",
    "served",
    "known_at",
    "as_of",
    "max |served - as_of|",
}
_RATES = {"mismatch_rate", "late_rate"}
_LAGS = ("min", "p50", "p90", "p99", "max")
_FIXED4 = {"psi", "js_bits"}


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA


def fmt(column: str, v) -> str:
    """One cell: counts as integers, differences exactly (``repr``), rates as percentages."""
    if _missing(v):
        return "—"
    if column in _COUNTS or isinstance(v, (bool, np.bool_)):
        return html.escape(str(int(v)) if not isinstance(v, str) else v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if column in _RATES:
            return f"{100 * v:.4g}%"
        if column in _FIXED4:
            return f"{v:.4f}"
        if column in _EXACT or column.startswith("served - "):
            return repr(v)
        return f"{v:.6g}"
    return html.escape(str(v))


def duration(seconds) -> str:
    """``1 d 12 h 00 min`` / ``15 min 00 s`` for a lag in seconds (and the exact seconds in a title)."""
    if _missing(seconds):
        return "—"
    s = int(round(float(seconds)))
    d, rest = divmod(s, 86_400)
    h, rest = divmod(rest, 3_600)
    m, sec = divmod(rest, 60)
    text = f"{d} d {h} h {m:02d} min" if d else (f"{h} h {m:02d} min" if h else f"{m} min {sec:02d} s")
    return f'<span title="{float(seconds)!r} s">{text}</span>'


def _skew_causes_of(t: pd.DataFrame, feature: str) -> tuple[str, ...]:
    mode = t.at[feature, "training_mode"] if "training_mode" in t.columns else None
    return skew_causes(mode if isinstance(mode, str) else "known_at")


def plots(report, series: pd.DataFrame) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = report.table[report.table.feature != SCORE_ROW].set_index("feature")
    out = {}
    rows = t["rows"].where(t["rows"] > 0, 1).astype(float)
    height = 0.28 * len(t) + 1.2

    # Skew: per feature, the causes that are skew under its set's training mode.
    fig, ax = plt.subplots(figsize=(9, height))
    left = np.zeros(len(t))
    for c in CAUSES:
        share = np.array([t.at[f, c] / rows[f] if c in _skew_causes_of(t, f) else 0.0 for f in t.index])
        if c == LATE_DATA and not share.any():
            continue  # not skew for any feature here: its bars are in the freshness chart
        ax.barh(t.index, share, left=left, color=CAUSE_COLORS[c], label=c)
        left += share
    ax.invert_yaxis()
    ax.set_xlabel("share of logged rows whose served value differs from the training-mode recomputation")
    ax.set_xlim(0, max(0.05, float(left.max()) * 1.1))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax.set_title(f"Training-serving skew per feature, by cause, ds={report.ds}")
    out["mismatch"] = _png(fig)

    # Freshness: late data that is not skew, one colour.
    late = np.array([0.0 if LATE_DATA in _skew_causes_of(t, f) else t.at[f, LATE_DATA] / rows[f] for f in t.index])
    fig, ax = plt.subplots(figsize=(9, height))
    ax.barh(t.index, late, color=CAUSE_COLORS[LATE_DATA])
    ax.invert_yaxis()
    ax.set_xlabel("share of logged rows: served = known_at (what training sees) ≠ as_of (events that arrived later)")
    ax.set_xlim(0, max(0.05, float(late.max()) * 1.1))
    ax.set_title(f"Freshness: late data per feature (not skew), ds={report.ds}")
    out["freshness"] = _png(fig)

    if t["psi"].notna().any():
        moderate, major = report.drift_levels["moderate"], report.drift_levels["major"]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, height), sharey=True)
        levels = t["drift"].fillna("n/a").to_numpy()
        colors = [DRIFT_COLORS.get(lv, DRIFT_COLORS["n/a"]) for lv in levels]
        a1.barh(t.index, t["psi"].astype(float).fillna(0), color=colors)
        a1.axvline(moderate, ls="--", c=DRIFT_COLORS["moderate"], lw=1)
        a1.axvline(major, ls="--", c=DRIFT_COLORS["major"], lw=1)
        a1.invert_yaxis()
        a1.set_xlabel(f"PSI vs training (10 quantile bins; {moderate:g} moderate, {major:g} major)")
        a2.barh(t.index, t["js_bits"].astype(float).fillna(0), color=colors)
        a2.set_xlabel("Jensen-Shannon divergence (bits, 0..1)")
        handles = [plt.Rectangle((0, 0), 1, 1, color=DRIFT_COLORS[lv]) for lv in ("stable", "moderate", "major")]
        a2.legend(handles, ["stable", "moderate", "major"], loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
        fig.suptitle("Drift of served features vs the champion's training set (colour = drift level)")
        out["drift"] = _png(fig)

    if len(series):
        s = series[series.feature != SCORE_ROW].copy()
        mode = s["training_mode"].fillna("known_at") if "training_mode" in s else pd.Series("known_at", index=s.index)
        s[LATE_DATA] = s[LATE_DATA].where(mode == "as_of", 0)  # late data under known_at is not skew
        daily = s.groupby("ds")[list(CAUSES) + ["rows"]].sum()
        fig, ax = plt.subplots(figsize=(9, 3))
        for c in CAUSES:
            if c == LATE_DATA and not daily[c].any():
                continue
            ax.plot(
                list(daily.index),
                daily[c] / daily["rows"].where(daily["rows"] > 0, 1),
                marker="o",
                color=CAUSE_COLORS[c],
                label=c,
            )
        ax.set_ylabel("skew (row, feature) share")
        ax.set_title("Training-serving skew over days, by cause")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
        fig.autofmt_xdate()
        out["timeseries"] = _png(fig)

    rows_f = report.rows
    worst = t["mismatches"].astype(int).idxmax() if t["mismatches"].sum() else None
    if worst is not None:
        fig, ax = plt.subplots(figsize=(5, 4))
        mode = t.at[worst, "training_mode"] if isinstance(t.at[worst, "training_mode"], str) else "known_at"
        x = rows_f[f"{mode}__{worst}"].to_numpy(dtype=float)
        y = rows_f[worst].to_numpy(dtype=float)
        cause = np.asarray(report.causes[worst].to_numpy(), dtype=object)
        cause = np.where(np.isin(cause, skew_causes(mode)), cause, "")  # late data matches training
        keep = np.zeros(len(x), dtype=bool)  # at most ~4000 points per cause: a readable, fast plot
        for c in ("",) + tuple(CAUSES):
            idx = np.flatnonzero(cause == c)
            keep[idx[:: max(1, len(idx) // 4000)]] = True
        for c in ("",) + tuple(CAUSES):
            m = (cause == c) & keep
            if m.any():
                color = CAUSE_COLORS.get(c, MATCH_COLOR)
                ax.scatter(x[m], y[m], s=8, alpha=0.6, color=color, label=c or "matches training")
        ax.set_xlabel(f"offline {mode} {worst} (training semantics)")
        ax.set_ylabel(f"served {worst}")
        ax.set_title(f"Served vs training: {worst}")
        ax.legend(fontsize=8)
        out["scatter"] = _png(fig)
    return out


def table_html(frame: pd.DataFrame, bad=None) -> str:
    """``frame`` as a table; the rows where ``bad`` (a boolean per row) holds are highlighted."""
    head = "".join(f"<th>{html.escape(str(c)).replace('_', '_<wbr>')}</th>" for c in frame.columns)
    body = []
    bad = [False] * len(frame) if bad is None else list(bad)
    for rec, is_bad in zip(frame.to_dict("records"), bad):
        cls = " class=bad" if is_bad else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{fmt(str(k), v)}</td>" for k, v in rec.items()) + "</tr>")
    return f'<div class="wide"><table><tr>{head}</tr>{"".join(body)}</table></div>'


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.4g}%" if whole else "—"


def render(report, series: pd.DataFrame) -> str:
    imgs = plots(report, series)
    t = report.table
    feats = t[t.feature != SCORE_ROW].copy()
    score = t[t.feature == SCORE_ROW]
    h = report.headline()
    if report.breaches:
        items = "".join(f"<li>{html.escape(b)}</li>" for b in report.breaches)
        status = f"<b>FAILED</b>: {len(report.breaches)} threshold breach(es)<ul>{items}</ul>"
    else:
        status = "<b>PASSED</b>: no threshold crossed"
    drift_alert_html = ""
    if report.drift_alerts:
        items = "".join(f"<li>{html.escape(a)}</li>" for a in report.drift_alerts)
        drift_alert_html = f'<div class="drift"><b>Major drift (alerted)</b><ul>{items}</ul></div>'

    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in report.warnings)
    warn_html = f'<div class="warn"><b>Warnings</b><ul>{warnings}</ul></div>' if warnings else ""

    modes = sorted(set(feats["training_mode"].dropna())) or ["known_at"]
    any_as_of = "as_of" in modes
    skew_cols = [
        "feature",
        "feature_set",
        "training_mode",
        "mismatches",
        "mismatch_rate",
        *[c for c in CAUSES if c != LATE_DATA or any_as_of],
        "diff_count",
        "abs_diff_max",
        "diff_mean",
        "abs_diff_p50",
        "abs_diff_p99",
        "compared",
        "both_null",
        "online_only_null",
        "offline_only_null",
    ]
    sets = feats["feature_set"].nunique()
    per_set_cols = ["feature_set", "training_mode"] if sets > 1 or len(modes) > 1 else []
    skew_cols = [c for c in skew_cols if c not in ("feature_set", "training_mode") or c in per_set_cols]
    skew_t = feats[skew_cols].copy()
    if any_as_of:  # late data is skew only under as_of training
        skew_t[LATE_DATA] = [v if m == "as_of" else None for v, m in zip(skew_t[LATE_DATA], feats["training_mode"])]
    fresh_t = feats[["feature", "feature_set", "training_mode", "rows", LATE_DATA]].copy()
    fresh_t.loc[fresh_t["training_mode"] == "as_of", LATE_DATA] = None  # counted as skew there
    fresh_t["late_rate"] = fresh_t[LATE_DATA].astype(float) / fresh_t["rows"].where(fresh_t["rows"] > 0, 1)
    fresh_t["served ≠ as_of (any cause)"] = feats["mismatches_vs_as_of"]
    fresh_t["late_abs_diff_max"] = feats["late_abs_diff_max"]
    fresh_t = fresh_t.rename(columns={LATE_DATA: "late_data (rows)", "late_abs_diff_max": "max |served - as_of|"})
    fresh_t = fresh_t.drop(columns=[c for c in ("feature_set", "training_mode") if c not in per_set_cols])
    drift_t = feats[["feature", *per_set_cols[:1], "psi", "js_bits", "drift"]]

    lag_rows = [
        {
            "feature_set": f["feature_set"],
            "source": f["source"],
            "rows_in_flight": f["rows_in_flight"],
            "events": f["lag_s"]["events"],
            **{q: duration(f["lag_s"][q]) for q in _LAGS},
        }
        for f in report.freshness
    ]
    lag_html = "<p>No freshness data.</p>"
    if lag_rows:
        head = "".join(f"<th>{c}</th>" for c in lag_rows[0])
        body = "".join(
            "<tr>" + "".join(f"<td>{v if k in _LAGS else fmt(k, v)}</td>" for k, v in r.items()) + "</tr>"
            for r in lag_rows
        )
        lag_html = f"<table><tr>{head}</tr>{body}</table>"

    def samples_html(column: str) -> str:
        out = []
        for rec in feats.to_dict("records"):
            s = json.loads(rec[column] or "[]")
            if s:
                out.append(f"<h4>{html.escape(rec['feature'])}</h4>" + table_html(pd.DataFrame(s)))
        return "".join(out) or "<p>None.</p>"

    score_html = "<p>No model source: prediction skew not computed.</p>"
    if len(score) and not _missing(score["compared"].iloc[0]):
        r = score.iloc[0]
        score_html = (
            f"<p>{int(r['compared'])} logged rows re-scored with the logged model version: "
            f"max |re-scored − logged| = {fmt('abs_diff_max', r['rescore_max_abs_diff'])} "
            f"({int(r['rescore_mismatches'])} differ). Served score vs the score of the offline "
            f"known_at features: {int(r['mismatches'])} differ, mean diff {fmt('diff_mean', r['diff_mean'])}, "
            f"max |diff| {fmt('abs_diff_max', r['abs_diff_max'])}.</p>"
        )
    champ = report.champion
    champ_html = ""
    if champ:
        end = champ.get("train_end") or "unknown"
        age = f", {int(champ['age_days'])} days before ds={report.ds}" if champ.get("age_days") is not None else ""
        champ_html = (
            f"<p>Champion {html.escape(champ['name'])} v{html.escape(champ['version'])}: "
            f"training window ends {html.escape(end)}{age}.</p>"
        )

    def img(key: str) -> str:
        return f'<img src="{imgs[key]}"/>' if key in imgs else ""

    notes = "".join(f"<li>{html.escape(n)}</li>" for n in report.notes)
    one_set = ""
    if not per_set_cols and len(feats):
        one_set = f"Every feature here: set {html.escape(str(feats['feature_set'].iloc[0]))}, trained {modes[0]}."
    levels = report.drift_levels
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Skew report {report.ds}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}} table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}} th{{background:#eee}} tr.bad td{{background:#fdd}}
.status{{font-size:18px;padding:8px;background:{"#fdd" if report.breaches else "#dfd"}}}
.warn{{padding:4px 8px;background:#fff3cd;border:1px solid #e0c36a}}
.drift{{padding:4px 8px;margin:4px 0;background:#f3e9d2;border:2px solid {DRIFT_COLORS["major"]}}} .headline{{font-size:16px}}
h2{{border-bottom:2px solid #ccc;margin-top:1.6em}} .wide{{overflow-x:auto}} .status ul{{margin:4px 0}}</style></head><body>
<h1>Training-serving skew, ds={report.ds}</h1>
<div class="status">{status}</div>
{drift_alert_html}
{warn_html}
<p class="headline"><b>Skew</b> (served vs what the model was trained on, training mode {", ".join(modes)}):
<b>{h["rows_mismatching"]}</b> of {h["rows"]} logged rows ({_pct(h["rows_mismatching"], h["rows"])}) differ on at
least one feature; {h["mismatches"]} of {h["values"]} (row, feature) values ({_pct(h["mismatches"], h["values"])}).
<br><b>Freshness</b> (not skew): {h["rows_late"]} rows, {h["late"]} values differ from the as_of recomputation only
because events arrived after the request.</p>
<p>{h["rows"]} logged requests; fingerprints served: {html.escape(json.dumps(report.fingerprints))}.</p>

<h2>Training-serving skew</h2>
<p>A (row, feature) is a <b>mismatch</b> when the served value differs, beyond the feature's tolerance, from the
offline recomputation in its set's training mode (<b>known_at</b>: events as known at the request time, what training
sees). Causes: <b>degraded</b> (service served defaults), <b>version_skew</b> (fingerprint differs),
<b>staleness</b> (served vector = an earlier daily snapshot), <b>logic_skew</b> (same fingerprint, the same code
offline disagrees){"; <b>late_data</b> for sets trained <b>as_of</b>" if any_as_of else ""}. {one_set}
Null counts compare served with the training-mode value on every row; differences (served − training) are over the
mismatching rows, <i>diff_count</i> of which have both values, and print as exact floats.</p>
{img("mismatch")}
{table_html(skew_t, bad=feats["breaches"].fillna("").astype(bool))}
<h3>Mismatching rows</h3>{samples_html("samples")}
{img("scatter")}

<h2>Freshness (data latency, not skew)</h2>
<p><b>late_data</b>: served = known_at (what training sees too) ≠ as_of (every event before the request, however late
it arrived). The lag is how long after its event time an event became known (ingested_at − event_ts), over the events
that arrived after a logged request of their entity.</p>
{lag_html}
{img("freshness")}
{table_html(fresh_t)}
<details><summary><b>Late rows</b> (up to 5 per feature: served = known_at ≠ as_of)</summary>
{samples_html("late_samples")}</details>

<h2>Drift</h2>
<p>Reference: the champion's training features. PSI (natural log) over 10 training-quantile bins plus a null bin; Jensen-Shannon divergence over the same bins in
<b>bits</b> (log base 2, range 0..1). This model: moderate at PSI ≥ {levels["moderate"]:g} (a warning), major at
PSI ≥ {levels["major"]:g} (an error-level alert; the job goes on).</p>
{champ_html}
{img("drift")}
{table_html(drift_t)}

<h2>Prediction skew</h2>{score_html}
{"<h2>Over days</h2>" + img("timeseries") if "timeseries" in imgs else ""}
<h2>Notes</h2><ul>{notes or "<li>None.</li>"}</ul>
</body></html>"""


def write_html(cfg, report, series: pd.DataFrame, model: str) -> str:
    """Write ``<lake>/_reports/skew/<model>/ds=D.html``; returns its path."""
    lake = cfg.lake()
    path = lake.path("_reports", "skew", model, f"ds={report.ds}.html")
    lake.fs.makedirs(lake.path("_reports", "skew", model), exist_ok=True)
    with lake.fs.open(path, "w") as f:
        f.write(render(report, series))
    return path
