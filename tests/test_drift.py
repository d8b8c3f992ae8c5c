"""Drift: PSI behaves, and `ftml drift` flags a volatility regime change the model never saw."""

import json

import numpy as np
import pytest

from ml.drift import psi
from ml.registry import open_registry
from tests.conftest import run_ftml, strategy_project

RNG = np.random.default_rng(3)


def test_psi_is_near_zero_for_the_same_distribution_and_large_for_a_shift():
    a, b = RNG.normal(size=20_000), RNG.normal(size=20_000)
    assert psi(a, b) < 0.01
    assert 0.1 < psi(a, RNG.normal(0.4, 1.0, 20_000)) < 0.4
    assert psi(a, RNG.normal(0, 3.0, 20_000)) > 0.5
    with_nan = np.where(RNG.random(20_000) < 0.3, np.nan, b)  # NaN is a bin of its own
    assert psi(a, with_nan) > 0.25


@pytest.mark.slow
def test_ftml_drift_flags_a_calmer_market(tmp_path):
    pairs = ["ETH/BTC", "LTC/BTC"]
    strategy_project(tmp_path, pairs, 9000, "planted", 2, ml={"training": {"trials": 2, "families": ["logistic"]},
                                                             "retrain": {"window_days": 60}},
                     vol_shift_at=7500, vol_shift=0.5)
    done = run_ftml("train", "-c", "config.json", "--pairs", *pairs, "--timerange", "20240101-20240901", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    open_registry(tmp_path / "registry").promote("EveryFewHours", 1, force=True, reason="drift test")
    done = run_ftml("drift", "-c", "config.json", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["drifted"] and report["features_major"] >= 3
    assert report["top"][0]["feature"].startswith(("f_natr", "f_vol", "f_bb_width", "f_range", "f_htf_4h_natr"))
    assert report["calibration"]["hit_rate"] < report["calibration"]["mean_p"]  # calmer: fewer wins than learned
    human = run_ftml("drift", "-c", "config.json", cwd=tmp_path)
    # "no drift above the threshold" contains "drift above the threshold": match the verdict.
    assert human.returncode == 0 and "-> drift above the threshold" in human.stdout
    assert "no drift above" not in human.stdout


@pytest.mark.parametrize("drifted", [True, False])
def test_the_printed_verdict_says_which_it_is(drifted):
    from rich.console import Console

    from ml.drift_check import print_drift

    console = Console(record=True, width=200)
    report = {"model": "m", "version": 1, "reference_rows": 10, "window_days": 30, "current_rows": 5,
              "window": ["2025-01-01 00:00", "2025-01-31 00:00"], "top": [{"feature": "f_x", "psi": 0.4}],
              "max_psi": 0.4, "features_major": 1, "features_moderate": 0, "drifted": drifted}
    print_drift(report, console)
    text = console.export_text()
    assert ("-> drift above the threshold" in text) is drifted
    assert ("-> no drift above the threshold" in text) is not drifted
