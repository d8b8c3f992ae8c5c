"""Recency weighting inside the calibration block: does it help under base-rate drift?

Issue 12 asked to measure it and keep it only if it helps. Two planted markets (6 pairs x
6000 1h candles, tests/strategies/EveryFewHours.py's trades, 3 seeds each):

* "drift": a bear trend that starts in the calibration block and keeps growing through the
  test block (``trend_at`` 3600, ``trend`` -0.08, ``trend_ramp`` 2400): the case where the
  newest calibration rows should matter most;
* "stationary": the same market without the trend.

The model is trained once per market and seed (ml.train); then on its calibration block a
sigmoid is fitted with equal weights (what ml.calibration does) and with exponential recency
weights (half-life a quarter of the block's time span), and both are scored on the test
block. Reported: mean test log loss weighted / unweighted over the seeds (below 1: recency
weighting helps), and the calibration-in-the-large of each.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from bench.common import emit
from ml.bundle import load_bundle
from ml.calibration import _logit
from ml.config import load
from ml.train import load_dataset, train
from tests.conftest import strategy_project, train_request

MARKETS = {"drift": {"trend_at": 3600, "trend": -0.08, "trend_ramp": 2400}, "stationary": {}}
SEEDS = (0, 1, 2)
HALF_LIFE_SHARE = 0.25


def sigmoid(z_fit, y_fit, z_test, weights=None) -> np.ndarray:
    model = LogisticRegression(C=1e6, max_iter=1000).fit(z_fit.reshape(-1, 1), y_fit, sample_weight=weights)
    return model.predict_proba(z_test.reshape(-1, 1))[:, 1]


def log_loss(y, p) -> float:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def one_run(root: Path, process: dict, seed: int) -> dict[str, float]:
    strategy_project(root, [f"C{i}/BTC" for i in range(6)], 6000, "planted", seed,
                     ml={"training": {"families": ["lightgbm", "logistic"], "trials": 4}}, **process)
    cfg = load(root / "config.json")
    train(cfg, train_request(root))
    bundle = load_bundle(root / "bundle")
    ranges = bundle.manifest["ranges"]
    data = load_dataset(cfg, train_request(root))
    times = pd.to_datetime(data.times, utc=True)
    calib = (times >= pd.Timestamp(ranges["calibration"][0])) & (times <= pd.Timestamp(ranges["calibration"][1]))
    test = times >= pd.Timestamp(ranges["test"][0])
    z = _logit(bundle.predict_raw(data.X))
    age = (times[calib].max() - times[calib]).total_seconds().to_numpy()
    half_life = HALF_LIFE_SHARE * age.max()
    weights = 0.5 ** (age / half_life)
    y = data.y.astype(int)
    plain = sigmoid(z[calib], y[calib], z[test])
    recent = sigmoid(z[calib], y[calib], z[test], weights)
    return {"plain": log_loss(y[test], plain), "recent": log_loss(y[test], recent),
            "citl_plain": float(plain.mean() - y[test].mean()), "citl_recent": float(recent.mean() - y[test].mean()),
            "calib_rate": float(y[calib].mean()), "test_rate": float(y[test].mean())}


def main() -> None:
    rows = []
    for market, process in MARKETS.items():
        runs = []
        for seed in SEEDS:
            with tempfile.TemporaryDirectory() as tmp:
                runs.append(one_run(Path(tmp), process, seed))
        mean = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
        ratio = mean["recent"] / mean["plain"]
        rows.append({
            "figure": f"{market}: test log loss, sigmoid on the calibration block with recency weights (half-life "
                      f"1/4 of the block) / equal weights, mean of {len(SEEDS)} seeds (hit rate calibration "
                      f"{mean['calib_rate']:.3f} -> test {mean['test_rate']:.3f})",
            "value": f"{mean['recent']:.4f} (mean p - hit rate {mean['citl_recent']:+.3f})",
            "reference": f"{mean['plain']:.4f} (mean p - hit rate {mean['citl_plain']:+.3f})",
            "ratio": round(ratio, 4), "goal": "< 0.995 on both markets to keep it", "met": ratio < 0.995,
        })
    emit("calibration", rows)


if __name__ == "__main__":
    main()
