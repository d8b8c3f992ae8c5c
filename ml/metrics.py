"""Out-of-time evaluation: discrimination, calibration that respects sample size, EV gate.

All functions take the untouched test block. ECE alone misleads on small samples (a
perfectly calibrated forecaster shows ECE > 0 from noise), so it is reported next to the
band such a forecaster would show at the same n, with calibration-in-the-large and
Spiegelhalter's Z.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import brier_score_loss, log_loss

N_BINS = 10
NOISE_SIMULATIONS = 200


def expected_value(p: np.ndarray, win_return: np.ndarray | float, loss_return: np.ndarray | float) -> np.ndarray:
    """EV per unit stake: p*E[r | win] + (1-p)*E[r | loss] (DESIGN.md, "Gate").

    The conditional means are *realised* net returns (fees already in them), so no fee is
    subtracted again, and a time exit counts with what it really returned, not as a full
    stop-loss.
    """
    return p * win_return + (1.0 - p) * loss_return


def outcome_returns(y: np.ndarray, realised: np.ndarray) -> dict[str, float | int]:
    """Mean realised net return of winning and of losing rows (fitted on the calibration block)."""
    y = np.asarray(y).astype(bool)
    realised = np.asarray(realised, dtype=np.float64)
    if y.all() or not y.any():
        raise ValueError("outcome_returns needs both winning and losing rows")
    return {"win": float(realised[y].mean()), "loss": float(realised[~y].mean()),
            "wins": int(y.sum()), "losses": int((~y).sum())}


def side_outcome_returns(y: np.ndarray, realised: np.ndarray, sides: np.ndarray) -> dict[str, dict[str, float | int]]:
    """:func:`outcome_returns` per trade side ("long", "short"). A side without both wins and
    losses in the block takes the pooled means (its EV then rests on the pooled outcomes)."""
    pooled = outcome_returns(y, realised)
    out = {}
    for side in sorted(set(np.asarray(sides).tolist())):
        mask = np.asarray(sides) == side
        try:
            out[side] = outcome_returns(np.asarray(y)[mask], np.asarray(realised)[mask])
        except ValueError:
            out[side] = {**pooled, "pooled": True}
    return out


def row_log_loss(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Log loss of every row (for paired comparisons of two forecasts on the same rows)."""
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def rank_auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count one half): the value of sklearn's
    ``roc_auc_score`` at a fraction of its cost, which matters inside a bootstrap (200
    replicates per score; sklearn's input checks were most of a walk-forward's time)."""
    y = np.asarray(y)
    positive = y == 1
    n1 = int(positive.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(p)
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def auc_with_se(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """ROC AUC and its Hanley-McNeil standard error."""
    if len(np.unique(y)) < 2:
        return float("nan"), float("nan")
    auc = rank_auc(y, p)
    n1, n0 = int(y.sum()), int(len(y) - y.sum())
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (n1 - 1) * (q1 - auc**2) + (n0 - 1) * (q2 - auc**2)) / (n1 * n0)
    return auc, float(math.sqrt(max(var, 0.0)))


def block_bootstrap_se(stat, y: np.ndarray, p: np.ndarray, times: np.ndarray, block: np.timedelta64,
                       reps: int = 200, seed: int = 0) -> float:
    """Standard error of ``stat(y, p)`` from resampling whole time blocks.

    Labels of neighbouring candles share most of their future (overlapping horizons), and
    all pairs share the market's moments, so rows are not independent and textbook
    errors are too small; blocks as long as the horizon, across every pair, keep that
    dependence inside each resampled unit.
    """
    block_id = ((times - times.min()) // block).astype(np.int64)
    ids, inverse = np.unique(block_id, return_inverse=True)
    members = [np.flatnonzero(inverse == i) for i in range(len(ids))]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(reps):
        rows = np.concatenate([members[i] for i in rng.integers(0, len(ids), len(ids))])
        if len(np.unique(y[rows])) == 2:
            values.append(stat(y[rows], p[rows]))
    return float(np.std(values)) if len(values) > 1 else float("nan")


def block_bootstrap_mean_se(values: np.ndarray, times: np.ndarray, block: np.timedelta64,
                            reps: int = 200, seed: int = 0) -> float:
    """Standard error of the mean of ``values`` from resampling whole time blocks (see above)."""
    block_id = ((times - times.min()) // block).astype(np.int64)
    ids, inverse = np.unique(block_id, return_inverse=True)
    sums = np.bincount(inverse, weights=values, minlength=len(ids))
    counts = np.bincount(inverse, minlength=len(ids)).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(ids), size=(reps, len(ids)))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    return float(np.std(means)) if len(ids) > 1 else float("nan")


def _quantile_bins(p: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin id per row on quantile edges, as ``sklearn.calibration.calibration_curve(strategy=
    'quantile')``: equal predictions always share a bin, whatever their order in time."""
    edges = np.percentile(p, np.linspace(0, 100, n_bins + 1))
    return np.searchsorted(edges[1:-1], p)


def reliability_table(y: np.ndarray, p: np.ndarray, n_bins: int = N_BINS) -> list[dict[str, float]]:
    """Quantile bins of p (empty bins dropped): count, p range, mean p and hit rate per bin."""
    bins = _quantile_bins(p, n_bins)
    rows = []
    for b in np.unique(bins):
        chunk = bins == b
        rows.append({
            "count": int(chunk.sum()),
            "p_low": float(p[chunk].min()),
            "p_high": float(p[chunk].max()),
            "mean_p": float(p[chunk].mean()),
            "hit_rate": float(y[chunk].mean()),
        })
    return rows


def ece(y: np.ndarray, p: np.ndarray, n_bins: int = N_BINS) -> float:
    table = reliability_table(y, p, n_bins)
    n = sum(r["count"] for r in table)
    return float(sum(r["count"] * abs(r["mean_p"] - r["hit_rate"]) for r in table) / n)


def ece_noise_band(p: np.ndarray, seed: int = 0, n_bins: int = N_BINS) -> tuple[float, float]:
    """5th and 95th percentile of ECE for a *perfectly calibrated* forecaster with these p."""
    rng = np.random.default_rng(seed)
    sims = [ece(rng.random(len(p)) < p, p, n_bins) for _ in range(NOISE_SIMULATIONS)]
    return float(np.percentile(sims, 5)), float(np.percentile(sims, 95))


def calibration_in_the_large(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """mean p - hit rate, and its standard error under perfect calibration."""
    return float(p.mean() - y.mean()), float(math.sqrt(np.sum(p * (1 - p))) / len(p))


def spiegelhalter_z(y: np.ndarray, p: np.ndarray) -> float:
    """Spiegelhalter's Z: ~N(0, 1) when p is calibrated."""
    num = np.sum((y - p) * (1 - 2 * p))
    den = math.sqrt(np.sum((1 - 2 * p) ** 2 * p * (1 - p)))
    return float(num / den) if den > 0 else float("nan")


def calibration_report(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    band = ece_noise_band(p)
    citl, citl_se = calibration_in_the_large(y, p)
    return {
        "ece": ece(y, p),
        "ece_noise_band_90": list(band),
        "calibration_in_the_large": citl,
        "calibration_in_the_large_se": citl_se,
        "spiegelhalter_z": spiegelhalter_z(y, p),
        "reliability": reliability_table(y, p),
    }


def non_overlapping(times: np.ndarray, trade_end: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Mask of the rows a bot trading one position per pair could really take, in time order:
    a row counts only when the pair's previous counted trade has closed (``trade_end``: its
    exit time; ``label_end`` is a conservative stand-in).

    Overlapping signal rows of one pair share most of their outcome; counting each as a
    trade inflates the count and shrinks the standard error. The loop runs over the rows
    already taken by the gate, once, at evaluation time (not in a strategy's hot path).
    """
    keep = np.zeros(len(times), dtype=bool)
    order = np.lexsort((times, pairs))
    free_from: dict[Any, np.datetime64] = {}
    for i in order:
        pair = pairs[i]
        if pair not in free_from or times[i] > free_from[pair]:
            keep[i] = True
            free_from[pair] = trade_end[i]
    return keep


def trade_summary(realised: np.ndarray) -> dict[str, float]:
    n = len(realised)
    return {
        "trades": n,
        "hit_rate": float((realised > 0).mean()) if n else float("nan"),
        "mean_return": float(realised.mean()) if n else float("nan"),
        "mean_return_se": float(realised.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"),
        "total_return": float(realised.sum()) if n else 0.0,
    }


def ev_gate_simulation(p: np.ndarray, realised: np.ndarray, win_return, loss_return, margin: float = 0.0,
                       times: np.ndarray | None = None, trade_end: np.ndarray | None = None,
                       pairs: np.ndarray | None = None) -> dict[str, Any]:
    """Trades the EV gate would take on the test rows, against taking every signal.

    With ``times``, ``trade_end`` and ``pairs``, trades are counted as a bot would make them:
    one open trade per pair, the next only after it closed (see :func:`non_overlapping`).
    ``signal_rows`` keeps the raw count of rows the gate let through.
    """
    # Equal probabilities everywhere (a constant calibrator) carry no ranking: the gate would
    # take all signals or none on the strength of the base rate alone. It takes none.
    ranked = len(p) > 0 and float(np.ptp(p)) > 0
    taken = (expected_value(p, win_return, loss_return) > margin) & ranked
    everything = np.ones_like(taken, dtype=bool)
    if times is not None and trade_end is not None and pairs is not None:
        gated_idx = np.flatnonzero(taken)
        real = np.zeros_like(taken)
        real[gated_idx[non_overlapping(times[gated_idx], trade_end[gated_idx], pairs[gated_idx])]] = True
        all_real = non_overlapping(times, trade_end, pairs)
    else:
        real, all_real = taken, everything
    gated, signals = trade_summary(realised[real]), trade_summary(realised[all_real])
    gated["signal_rows"], signals["signal_rows"] = int(taken.sum()), int(len(taken))
    # Per-row returns (one per trade side) are reported by their distinct values.
    return {"margin": margin, "win_return": np.unique(np.asarray(win_return)).tolist(),
            "loss_return": np.unique(np.asarray(loss_return)).tolist(),
            "gated": gated, "all_signals": signals, "share_taken": int(taken.sum()) / max(len(taken), 1)}


def evaluate(y: np.ndarray, p_raw: np.ndarray, p_cal: np.ndarray, realised: np.ndarray,
             outcome: dict[str, float], margin: float = 0.0,
             times: np.ndarray | None = None, block: np.timedelta64 | None = None,
             trade_end: np.ndarray | None = None, pairs: np.ndarray | None = None,
             fitted_base_rate: float | None = None, min_trades: int = 30) -> dict[str, Any]:
    """Everything the report needs, on the untouched test block.

    ``outcome`` holds the mean realised returns of wins and losses (from the calibration
    block, :func:`outcome_returns`) that turn p into EV. With ``times`` and ``block`` (the
    label horizon), the AUC and calibration-in-the-large errors are the larger of the
    textbook value and a block bootstrap, so overlapping labels don't fake an edge; with
    ``trade_end`` (each row's exit time) and ``pairs`` too, EV-gate trades are counted
    without overlap.
    ``fitted_base_rate`` is the hit rate of the rows the model and calibrator were fitted
    on: what a model with no information should predict.
    """
    y = np.asarray(y, dtype=np.float64)
    auc, auc_se = auc_with_se(y, p_cal)
    # The raw model's AUC too: a constant calibrator makes the calibrated AUC exactly 0.5,
    # which hides what the model itself ranks (volatility, say, instead of direction).
    auc_raw, auc_raw_se = auc_with_se(y, p_raw)
    citl_se = None
    if times is not None and block is not None:
        auc_se = max(auc_se, block_bootstrap_se(rank_auc, y, p_cal, times, block))
        auc_raw_se = max(auc_raw_se, block_bootstrap_se(rank_auc, y, p_raw, times, block))
        citl_se = block_bootstrap_se(lambda yy, pp: pp.mean() - yy.mean(), y, p_cal, times, block)
    base_rate = float(y.mean())
    brier = float(brier_score_loss(y, p_cal))
    brier_ref = base_rate * (1 - base_rate)  # a constant forecast of the test hit rate
    report = {
        "rows": int(len(y)),
        "base_rate": base_rate,
        "mean_p": float(p_cal.mean()),
        "auc": auc,
        "auc_se": auc_se,
        "log_loss": float(log_loss(y, np.clip(p_cal, 1e-6, 1 - 1e-6), labels=[0, 1])),
        "brier": brier,
        "brier_skill": 1.0 - brier / brier_ref if brier_ref > 0 else float("nan"),
        "fitted_base_rate": fitted_base_rate,
        "calibrated": calibration_report(y, p_cal),
        "raw": {"auc": auc_raw, "auc_se": auc_raw_se, "ece": ece(y, p_raw), "log_loss": float(log_loss(y, np.clip(p_raw, 1e-6, 1 - 1e-6), labels=[0, 1])),
                "reliability": reliability_table(y, p_raw)},
        "ev_gate": ev_gate_simulation(p_cal, realised, outcome["win"], outcome["loss"], margin,
                                      times, trade_end, pairs),
    }
    cal = report["calibrated"]
    if citl_se is not None and np.isfinite(citl_se):
        # Neighbouring trades share the market's moves, so the block has fewer independent
        # rows than it holds. The bootstrap / textbook ratio of the calibration-in-the-large
        # SE measures that (a design effect): Z is divided by it and the ECE band widened
        # by it, as if the block held n / factor^2 independent rows.
        textbook = cal["calibration_in_the_large_se"]
        factor = max(1.0, citl_se / textbook) if textbook > 0 else 1.0
        cal["calibration_in_the_large_se"] = max(textbook, citl_se)
    else:
        factor = 1.0
    cal["dependence_factor"] = factor
    cal["spiegelhalter_z_effective"] = cal["spiegelhalter_z"] / factor
    cal["ece_noise_band_90_effective"] = [v * factor for v in cal["ece_noise_band_90"]]
    report["verdict"] = edge_verdict(report, min_trades)
    return report


def edge_verdict(report: dict[str, Any], min_trades: int = 30) -> dict[str, Any]:
    """'edge' only when all hold on the test block: AUC above 0.5 by two standard errors,
    positive Brier skill, and an EV gate that takes at least ``min_trades`` (non-overlapping)
    trades whose mean net return is above zero by two standard errors. Anything less is
    reported as "no edge", with the reasons."""
    reasons = []
    gated = report["ev_gate"]["gated"]
    if gated["trades"] < min_trades:
        reasons.append(f"the EV gate takes {gated['trades']} trades (< {min_trades})")
    elif not gated["mean_return"] - 2 * gated["mean_return_se"] > 0:
        reasons.append(f"gated trades' mean return {gated['mean_return']:.4f} is not above 0 by 2 SE "
                       f"({gated['mean_return_se']:.4f})")
    if not report["auc"] - 2 * report["auc_se"] > 0.5:
        reasons.append(f"test AUC {report['auc']:.3f} is within 2 SE ({report['auc_se']:.3f}) of 0.5")
    if not report["brier_skill"] > 0:
        reasons.append(f"Brier skill {report['brier_skill']:.4f} <= 0 (no better than the base rate)")
    return {"edge": not reasons, "label": "edge" if not reasons else "no edge", "reasons": reasons}


def trial_spread(values: list[float]) -> dict[str, float]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if not len(v):
        return {"count": 0}
    return {"count": int(len(v)), "best": float(v.min()), "median": float(np.median(v)),
            "worst": float(v.max()), "std": float(v.std())}
