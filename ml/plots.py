"""PNG plots written next to the model: what people would rather look at than read."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed (cron, CI)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def reliability_diagram(raw: list[dict], calibrated: list[dict], band: list[float], path: Path,
                        method: str | None = None) -> Path:
    return _save(reliability_figure(raw, calibrated, band, method), path)


def reliability_figure(raw: list[dict], calibrated: list[dict], band: list[float], method: str | None = None):
    """Bin mean p against the observed win rate, raw and calibrated, on the test block. Each
    calibrated bin carries its trade count and a 2-SE bar: a point far off the diagonal
    with n = 12 says little, one with n = 400 says a lot."""
    fig, ax = plt.subplots(figsize=(6, 5.4))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    ax.plot([r["mean_p"] for r in raw], [r["hit_rate"] for r in raw], marker="o", alpha=0.6, label="raw model")
    xs = np.array([r["mean_p"] for r in calibrated])
    ys = np.array([r["hit_rate"] for r in calibrated])
    counts = np.array([r["count"] for r in calibrated])
    se = np.sqrt(np.clip(xs * (1 - xs), 1e-6, None) / np.maximum(counts, 1))  # binomial SE at the forecast
    ax.errorbar(xs, ys, yerr=2 * se, marker="s", capsize=3, color="C1",
                label=f"calibrated ({method or 'calibrator'}), ±2 SE")
    for x, y, n in zip(xs, ys, counts, strict=True):
        ax.annotate(f"n={n}", (x, y), textcoords="offset points", xytext=(4, -11), fontsize=7, color="C1")
    seen = [r[k] for r in raw + calibrated for k in ("mean_p", "hit_rate")]  # every point stays in view
    lo, hi = min(seen), max(seen)
    pad = max(0.05, (hi - lo) * 0.1)
    ax.set_xlim(max(0, lo - pad), min(1, hi + pad))
    ax.set_ylim(max(0, lo - pad), min(1, hi + pad))
    ax.set_xlabel("predicted probability (bin mean)")
    ax.set_ylabel("observed win rate")
    ax.set_title(f"Reliability on the test block ({int(counts.sum())} trades, calibrator: {method or '?'})\n"
                 f"ECE noise band for a calibrated model: {band[0]:.3f}-{band[1]:.3f}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def feature_importance(names: list[str], importance: np.ndarray, path: Path, top: int = 20) -> Path:
    order = np.argsort(importance)[::-1][:top]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(order) + 1.2))
    if importance.sum() > 0:
        ax.barh([names[i] for i in order][::-1], importance[order][::-1])
        ax.set_xlabel("importance (gain, or |coefficient| for logistic)")
    else:
        ax.text(0.5, 0.5, "this model family reports no importances", ha="center", va="center")
    ax.set_title(f"Top {len(order)} features")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def optimisation_history(values: list[float | None], states: list[str], path: Path) -> Path:
    return _save(history_figure(values, states), path)


def history_figure(values: list[float | None], states: list[str]):
    """Each complete trial's out-of-fold log loss, the best so far, and where pruned trials ran."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    xs = np.arange(len(values))
    done = [i for i, s in enumerate(states) if s == "COMPLETE" and values[i] is not None]
    pruned = [i for i, s in enumerate(states) if s == "PRUNED"]
    if done:
        ys = np.array([values[i] for i in done])
        ax.scatter(done, ys, label="complete", s=18)
        best = np.minimum.accumulate(ys)
        ax.step(done, best, where="post", color="C3", label="best so far")
    # A pruned trial has no score to plot: a grey line marks where it ran (one legend entry).
    for k, i in enumerate(pruned):
        ax.axvline(i, color="grey", alpha=0.25, label=f"pruned trial ({len(pruned)})" if k == 0 else None)
    ax.set_xlim(-0.5, max(len(xs) - 0.5, 0.5))
    ax.set_xlabel("trial")
    ax.set_ylabel("out-of-fold log loss (lower is better)")
    ax.set_title("Optuna optimisation history")
    ax.legend()
    fig.tight_layout()
    return fig
