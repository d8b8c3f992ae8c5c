"""Drift between what the production model learned from and what the market does now.

* Population stability index per feature: reference = the champion's training rows,
  current = the most recent ``window_days``. Bins are the reference deciles (NaN is its
  own bin). PSI < 0.1 stable, 0.1-0.25 moderate, > 0.25 a major shift.
* The champion's calibration on the recent window: ECE, mean p against the hit rate.
  On real markets the base rate drifts (DESIGN.md), and this is where it shows first.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ml.metrics import calibration_in_the_large, ece

PSI_BINS = 10
EPS = 1e-4
MODERATE, MAJOR = 0.1, 0.25


def psi(reference: np.ndarray, current: np.ndarray, bins: int = PSI_BINS) -> float:
    """Population stability index of ``current`` against ``reference``."""
    ref, cur = np.asarray(reference, dtype=np.float64), np.asarray(current, dtype=np.float64)
    finite_ref = ref[np.isfinite(ref)]
    if len(finite_ref) == 0 or len(cur) == 0:
        return float("nan")
    edges = np.unique(np.quantile(finite_ref, np.linspace(0, 1, bins + 1)[1:-1]))

    def shares(x: np.ndarray) -> np.ndarray:
        finite = np.isfinite(x)
        counts = np.bincount(np.searchsorted(edges, x[finite], side="right"), minlength=len(edges) + 1)
        return np.append(counts, (~finite).sum()) / len(x)

    e, a = shares(ref) + EPS, shares(cur) + EPS
    return float(np.sum((a - e) * np.log(a / e)))


def feature_psi(reference: pd.DataFrame, current: pd.DataFrame) -> pd.Series:
    """PSI of every column, largest first."""
    values = {c: psi(reference[c].to_numpy(), current[c].to_numpy()) for c in reference.columns}
    return pd.Series(values, name="psi").sort_values(ascending=False)


def drift_report(reference: pd.DataFrame, current: pd.DataFrame, y_current: np.ndarray | None = None,
                 p_current: np.ndarray | None = None, top: int = 10) -> dict[str, Any]:
    """Summary for people and for retrain's decision."""
    scores = feature_psi(reference, current)
    report: dict[str, Any] = {
        "reference_rows": int(len(reference)), "current_rows": int(len(current)),
        "max_psi": float(scores.max()), "mean_psi": float(scores.mean()),
        "features_major": int((scores > MAJOR).sum()), "features_moderate": int(((scores > MODERATE) & (scores <= MAJOR)).sum()),
        "top": [{"feature": k, "psi": float(v)} for k, v in scores.head(top).items()],
    }
    if y_current is not None and p_current is not None and len(y_current):
        y, p = np.asarray(y_current, dtype=np.float64), np.asarray(p_current, dtype=np.float64)
        citl, se = calibration_in_the_large(y, p)
        report["calibration"] = {"rows": int(len(y)), "ece": ece(y, p), "mean_p": float(p.mean()),
                                 "hit_rate": float(y.mean()), "calibration_in_the_large": citl,
                                 "calibration_in_the_large_se": se}
    return report
