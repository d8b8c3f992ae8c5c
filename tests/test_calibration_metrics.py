"""Calibrators and metrics on data whose truth we know."""

import json

import numpy as np
import pytest

from ml import calibration
from ml.metrics import (
    calibration_in_the_large,
    ece,
    ece_noise_band,
    edge_verdict,
    ev_gate_simulation,
    evaluate,
    expected_value,
    reliability_table,
    spiegelhalter_z,
)

RNG = np.random.default_rng(42)


def miscalibrated(n: int):
    """True p in (0.2, 0.8); the 'model' reports an over-confident, shifted version."""
    p_true = RNG.uniform(0.2, 0.8, n)
    y = (RNG.random(n) < p_true).astype(int)
    logit = np.log(p_true / (1 - p_true))
    p_raw = 1 / (1 + np.exp(-(2.0 * logit + 0.5)))
    return p_true, p_raw, y


def test_sigmoid_recovers_the_true_map_and_round_trips_json():
    p_true, p_raw, y = miscalibrated(20_000)
    cal = calibration.SigmoidCalibrator().fit(p_raw, y)
    assert cal.a == pytest.approx(0.5, abs=0.05) and cal.b == pytest.approx(-0.25, abs=0.05)
    again = calibration.from_json(calibration.to_json(cal))
    assert np.array_equal(again.transform(p_raw), cal.transform(p_raw))
    assert np.abs(cal.transform(p_raw) - p_true).mean() < 0.02


def test_isotonic_needs_1000_rows_and_round_trips_json():
    _, p_raw, y = miscalibrated(999)
    with pytest.raises(ValueError, match="at least 1000"):
        calibration.IsotonicCalibrator().fit(p_raw, y)
    _, p_raw, y = miscalibrated(5000)
    cal = calibration.IsotonicCalibrator().fit(p_raw, y)
    text = calibration.to_json(cal)
    assert set(json.loads(text)) == {"method", "x", "y"}
    assert np.array_equal(calibration.from_json(text).transform(p_raw), cal.transform(p_raw))
    assert np.all(np.diff(cal.transform(np.sort(p_raw))) >= 0)  # monotone


def test_choice_is_cross_fitted_and_small_blocks_get_sigmoid():
    _, p_raw, y = miscalibrated(1500)
    cal, info = calibration.choose_and_fit(p_raw, y)
    assert info["method"] == "sigmoid" and set(info["cross_fit_log_loss"]) == {"sigmoid", "constant"}
    _, p_raw, y = miscalibrated(6000)
    cal, info = calibration.choose_and_fit(p_raw, y)
    assert set(info["cross_fit_log_loss"]) == {"sigmoid", "isotonic", "constant"}
    assert cal.method == info["method"] != "constant"


def test_scores_without_information_get_the_constant_calibrator():
    p_raw = RNG.uniform(0.2, 0.8, 8000)  # noise: unrelated to the outcome
    y = (RNG.random(8000) < 0.45).astype(int)
    cal, info = calibration.choose_and_fit(p_raw, y)
    assert info["method"] == "constant"
    assert np.all(cal.transform(p_raw) == pytest.approx(y.mean()))
    assert calibration.from_json(calibration.to_json(cal)).p == cal.p


def test_bad_calibrator_json_is_refused():
    with pytest.raises(ValueError, match="Unknown calibration method"):
        calibration.from_json('{"method": "pickle", "blob": "..."}')
    with pytest.raises(ValueError, match="same, non-zero length"):
        calibration.from_json('{"method": "isotonic", "x": [0.1, 0.2], "y": [0.5]}')


def test_calibrated_forecaster_sits_inside_its_noise_band():
    p = RNG.uniform(0.3, 0.7, 3000)
    y = (RNG.random(3000) < p).astype(float)
    low, high = ece_noise_band(p)
    assert 0 < low < high < 0.06
    assert ece(y, p) < high * 1.5
    assert abs(spiegelhalter_z(y, p)) < 3
    citl, se = calibration_in_the_large(y, p)
    assert abs(citl) < 3 * se
    table = reliability_table(y, p)
    assert len(table) == 10 and sum(r["count"] for r in table) == 3000


def test_miscalibration_is_detected():
    _, p_raw, y = miscalibrated(5000)
    assert ece(y, p_raw) > 0.05 and abs(spiegelhalter_z(y, p_raw)) > 5


def test_ev_gate_uses_the_design_formula():
    assert expected_value(np.array([0.6]), 0.03, 0.03, 0.002)[0] == pytest.approx(0.6 * 0.03 - 0.4 * 0.03 - 0.002)
    p = np.array([0.40, 0.55, 0.70])
    realised = np.array([-0.032, 0.03, 0.03])
    sim = ev_gate_simulation(p, realised, 0.03, 0.03, 0.002)
    assert sim["gated"]["trades"] == 2 and sim["all_signals"]["trades"] == 3
    assert sim["gated"]["mean_return"] == pytest.approx(0.03)


def test_edge_verdict_needs_auc_skill_and_profitable_gated_trades():
    y = (RNG.random(4000) < 0.5).astype(float)
    p = np.full(4000, 0.5) + RNG.normal(0, 0.01, 4000)
    report = evaluate(y, p, p, RNG.normal(0, 0.03, 4000), 0.03, 0.03, 0.002)
    assert report["verdict"]["label"] == "no edge" and len(report["verdict"]["reasons"]) >= 2
    fake = {"auc": 0.6, "auc_se": 0.01, "brier_skill": 0.02,
            "ev_gate": {"gated": {"trades": 10, "mean_return": 0.01}}}
    assert edge_verdict(fake, min_trades=30)["label"] == "no edge"
    fake["ev_gate"]["gated"]["trades"] = 100
    assert edge_verdict(fake, min_trades=30)["label"] == "edge"
