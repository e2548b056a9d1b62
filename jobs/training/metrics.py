"""Binary-classifier metrics of a scored range: AUC, PR-AUC, log loss, calibration by deciles."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

EPS = 1e-15


def _check(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"labels {y.shape} and scores {p.shape} must be 1-D and of one length")
    if not len(y):
        raise ValueError("no rows to evaluate")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    if np.isnan(p).any():
        raise ValueError(f"{int(np.isnan(p).sum())} NaN score(s)")
    if y.min() == y.max():
        raise ValueError(f"all {len(y)} labels are {int(y[0])}: AUC is undefined; widen the range")
    return y, p


def auc(y, p) -> float:
    y, p = _check(y, p)
    return float(roc_auc_score(y, p))


def summary(y, p, bins: int = 10) -> dict:
    """``{rows, base_rate, auc, pr_auc, log_loss, ece, calibration}``; calibration = decile table."""
    y, p = _check(y, p)
    table = calibration_table(y, p, bins)
    ece = sum(r["rows"] * abs(r["mean_score"] - r["positive_rate"]) for r in table) / len(y)
    return {
        "rows": len(y),
        "base_rate": float(y.mean()),
        "auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "log_loss": float(log_loss(y, np.clip(p, EPS, 1 - EPS), labels=[0, 1])),
        "ece": float(ece),
        "calibration": table,
    }


def calibration_table(y, p, bins: int = 10) -> list[dict]:
    """Rows sorted by score and cut into ``bins`` equal-count bins (deciles by default).

    Each bin: rows, mean predicted score, observed positive rate, score range. Ties are
    kept in one bin so the table does not depend on the input order.
    """
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    ps, ys = p[order], y[order]
    edges = np.unique(np.searchsorted(ps, ps[np.linspace(0, len(ps), bins + 1).astype(int)[1:-1]], "left"))
    out = []
    for a, b in zip(np.r_[0, edges], np.r_[edges, len(ps)]):
        if b <= a:
            continue
        out.append(
            {
                "bin": len(out) + 1,
                "rows": int(b - a),
                "mean_score": float(ps[a:b].mean()),
                "positive_rate": float(ys[a:b].mean()),
                "min_score": float(ps[a]),
                "max_score": float(ps[b - 1]),
            }
        )
    return out
