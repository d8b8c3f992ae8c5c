"""`ml.training.sample_weight`: weighted model fits, an unweighted calibrator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ml.config import load
from ml.train import train
from ml.tuning import row_weights
from tests.conftest import strategy_project, train_request


def test_row_weights():
    y = np.array([1, 0, 0, 0])
    balanced = row_weights("balanced", y, np.zeros(4))
    assert balanced.mean() == pytest.approx(1.0)
    assert balanced[y == 1].sum() == pytest.approx(balanced[y == 0].sum())  # each class half
    realised = np.array([0.03, -0.03, 0.0, -0.006])
    by_return = row_weights("return", y, realised)
    assert by_return.mean() == pytest.approx(1.0) and by_return[2] == 0.0
    assert by_return[0] == pytest.approx(5 * by_return[3])  # a 3% trade counts 5x a 0.6% one
    assert row_weights("none", y, realised) is None
    with pytest.raises(ValueError, match="returned exactly 0"):
        row_weights("return", y, np.zeros(4))


def _mean_p(reliability: list[dict]) -> float:
    return sum(b["count"] * b["mean_p"] for b in reliability) / sum(b["count"] for b in reliability)


def test_balanced_weights_move_the_raw_model_and_the_calibrator_moves_it_back(tmp_path):
    # A 1% stop-loss under a 3% ROI target: most trades lose. Balanced weights make the
    # model believe in a 50% base rate; the calibrator, fitted unweighted on the
    # calibration block, must bring the probabilities back to the real one.
    strategy_project(tmp_path, ["ETH/BTC", "LTC/BTC"], 4000, "planted", 5,
                     ml={"training": {"families": ["logistic"], "trials": 1, "sample_weight": "balanced"}})
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "stoploss": -0.01}))
    summary = train(load(tmp_path / "config.json"), train_request(tmp_path))
    folder = Path(summary["bundle"])
    assert json.loads((folder / "bundle.json").read_text())["sample_weight"] == "balanced"
    metrics = json.loads((folder / "metrics.json").read_text())
    base = metrics["fitted_base_rate"]
    assert base < 0.38, base  # really imbalanced, or the test shows nothing
    raw = _mean_p(metrics["raw"]["reliability"])
    assert raw - base > 0.05, (raw, base)  # the weighted fit is pulled toward 0.5
    calibrated = metrics["calibrated"]
    assert abs(calibrated["calibration_in_the_large"]) < 2.5 * calibrated["calibration_in_the_large_se"], metrics
