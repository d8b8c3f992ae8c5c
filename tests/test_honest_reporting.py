"""Honest reporting (issue "Honest reporting"): sign flips, raw AUC, constant calibrators,
visible cron failures. Each test reproduces a defect."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ml import calibration
from ml.config import GateSettings
from ml.metrics import ev_gate_simulation, evaluate
from ml.registry import open_registry, run_gates
from tests.conftest import run_ftml, write_config
from tests.test_registry import bundle  # noqa: F401

RNG = np.random.default_rng(19)


def test_a_calibrator_never_inverts_the_models_ranking():
    """A raw model that is anti-predictive on the calibration block: the sigmoid fitted there
    has a negative slope and would report AUC 0.77 for a model whose raw AUC is 0.23."""
    n = 6000
    p_true = RNG.uniform(0.2, 0.8, n)
    y = (RNG.random(n) < p_true).astype(int)
    p_raw = 1 - p_true  # ranks exactly backwards
    cal, info = calibration.choose_and_fit(p_raw, y)
    assert info["slope"] < -0.5 and "invert" in info["refused"]
    assert info["method"] != "sigmoid"
    p_cal = cal.transform(p_raw)
    assert np.corrcoef(p_cal, p_raw)[0, 1] >= 0 or np.ptp(p_cal) == 0  # never flipped
    gates = run_gates({"auc": 0.77, "ece": 0.01, "brier_skill": 0.05, "ev_gate_trades": 100,
                       "ev_gate_mean_return": 0.01, "ev_gate_mean_return_se": 0.001, "calibration_slope": info["slope"]},
                      GateSettings())
    slope_check = next(c for c in gates["checks"] if c["name"] == "calibration_slope")
    assert not slope_check["passed"] and not gates["passed"]


def test_the_raw_models_auc_is_reported_beside_the_calibrated_one():
    """With a constant calibrator the calibrated AUC is 0.5 by construction; the raw model's
    ranking (here a real one, AUC ~0.7) must still be visible."""
    n = 4000
    score = RNG.normal(size=n)
    y = (RNG.random(n) < 1 / (1 + np.exp(-score))).astype(float)
    p_raw = 1 / (1 + np.exp(-score))
    p_const = np.full(n, y.mean())
    report = evaluate(y, p_raw, p_const, RNG.normal(0, 0.03, n), {"win": 0.03, "loss": -0.032})
    assert report["auc"] == pytest.approx(0.5)
    assert report["raw"]["auc"] > 0.65 and report["raw"]["auc_se"] > 0


def test_a_constant_calibrator_never_opens_the_gate():
    """p = 0.6 on every row is above the break-even, so the gate used to take every signal:
    all-or-nothing on the base rate alone, with no ranking to select on."""
    p = np.full(500, 0.6)
    sim = ev_gate_simulation(p, RNG.normal(0, 0.03, 500), 0.03, -0.03)
    assert sim["gated"]["trades"] == 0 and sim["share_taken"] == 0
    ranked = ev_gate_simulation(np.r_[p[:-1], 0.61], RNG.normal(0, 0.03, 500), 0.03, -0.03)
    assert ranked["gated"]["trades"] == 500  # any spread at all: judged row by row


def test_a_failed_retrain_says_so_on_stdout_and_in_the_logs(tmp_path):
    """No candles: exit 2 as documented, and, since cron sends stderr to /dev/null, a JSON
    line on stdout, an entry in retrain.log and a line in retrain.jsonl."""
    write_config(tmp_path / "config.json", ml={"tracking": {"mode": "disabled"}, "training": {"strategy": "TrendPullback"}})
    done = run_ftml("retrain", "-c", "config.json", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert line["decision"] == "error" and "candles" in line["error"] and line["exit_code"] == 2
    logs = tmp_path / "user_data" / "logs"
    assert "Retrain failed (exit 2)" in (logs / "retrain.log").read_text()
    assert json.loads((logs / "retrain.jsonl").read_text().splitlines()[-1])["decision"] == "error"
    (tmp_path / "config.json").write_text('{"ml": {"model": {"name": ".."}}}')  # a broken config too
    done = run_ftml("retrain", "-c", "config.json", cwd=tmp_path)
    assert done.returncode == 2 and json.loads(done.stdout.strip().splitlines()[-1])["decision"] == "error"
    assert len((logs / "retrain.jsonl").read_text().splitlines()) == 2


def test_a_force_promoted_version_can_be_validated(tmp_path, bundle):  # noqa: F811
    reg = open_registry(tmp_path / "registry")
    reg.register(bundle, "m")
    reg.promote("m", 1, force=True, reason="urgent")
    result = reg.validate("m", 1, GateSettings())
    stored = reg.version("m", 1)
    assert stored["status"] == "production"  # judged and recorded, not demoted
    assert stored["gates"]["passed"] == result["passed"] and len(stored["gates"]["checks"]) == len(result["checks"])
