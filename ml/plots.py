"""PNG plots written next to the model: what people would rather look at than read."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed (cron, CI)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def reliability_diagram(raw: list[dict], calibrated: list[dict], band: list[float], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect")
    for rows, label, marker in ((raw, "raw model", "o"), (calibrated, "calibrated", "s")):
        ax.plot([r["mean_p"] for r in rows], [r["hit_rate"] for r in rows], marker=marker, label=label)
    lo = min(r["mean_p"] for r in raw + calibrated)
    hi = max(r["mean_p"] for r in raw + calibrated)
    pad = max(0.05, (hi - lo) * 0.2)
    ax.set_xlim(max(0, lo - pad), min(1, hi + pad))
    ax.set_ylim(max(0, lo - pad), min(1, hi + pad))
    ax.set_xlabel("predicted probability (bin mean)")
    ax.set_ylabel("observed win rate")
    ax.set_title(f"Reliability on the test block\n(ECE noise band for a calibrated model: {band[0]:.3f}-{band[1]:.3f})")
    ax.legend()
    fig.tight_layout()
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
    fig, ax = plt.subplots(figsize=(6.5, 4))
    xs = np.arange(len(values))
    done = [i for i, s in enumerate(states) if s == "COMPLETE" and values[i] is not None]
    pruned = [i for i, s in enumerate(states) if s == "PRUNED"]
    if done:
        ys = np.array([values[i] for i in done])
        ax.scatter(done, ys, label="complete", s=18)
        best = np.minimum.accumulate(ys)
        ax.step(done, best, where="post", color="C3", label="best so far")
    if pruned:
        ax.scatter(pruned, [np.nan] * len(pruned), label=f"pruned ({len(pruned)})")
        for i in pruned:
            ax.axvline(i, color="grey", alpha=0.15)
    ax.set_xlim(-0.5, max(len(xs) - 0.5, 0.5))
    ax.set_xlabel("trial")
    ax.set_ylabel("out-of-fold log loss (lower is better)")
    ax.set_title("Optuna optimisation history")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
