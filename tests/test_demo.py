"""`ftml demo` stays runnable: the whole loop, offline, in a temporary copy of the project."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import write_config

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end_and_starts_clean_each_time(tmp_path):
    write_config(tmp_path / "config.json")
    (tmp_path / "user_data").mkdir()
    stale = tmp_path / "user_data" / "demo" / "left_over_from_a_crash"
    stale.parent.mkdir(parents=True)
    stale.write_text("half-state")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FTML_DEMO_TRIALS": "3"}
    done = subprocess.run([sys.executable, "-m", "ml.cli", "demo", "-c", "config.json"], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["synthetic"] is True and "SYNTHETIC" in done.stdout
    assert not stale.exists()  # the demo folder is replaced whole
    registry = json.loads((tmp_path / "user_data" / "demo" / "registry" / "registry.json").read_text())
    versions = registry["models"]["TrendPullback"]["versions"]
    assert len(versions) == 1
    assert summary["promoted"] and summary["verdict"] == "edge"  # the planted market has one
    assert registry["models"]["TrendPullback"]["production"] == summary["production_version"] == 1
    assert summary["ungated"]["trades"] > 0  # the backtest ran
    # The point of the product, on the demo's own strategy (meta-labelling): calibrated
    # probabilities on the untouched test block, and a gate that improves each trade.
    cal = summary["calibration"]
    assert cal["ece"] <= cal["ece_noise_band_90"][1], cal  # inside the band of a calibrated forecaster
    assert abs(cal["spiegelhalter_z"]) < 2, cal
    assert abs(cal["calibration_in_the_large"]) <= 2 * cal["calibration_in_the_large_se"], cal
    assert summary["gated"]["profit_per_trade"] > summary["ungated"]["profit_per_trade"]
    difference = summary["gated_minus_ungated"]
    assert difference["difference"] > 0 and difference["se"] > 0
    assert "gated - un-gated profit per trade" in done.stdout
    assert list((tmp_path / "user_data" / "demo" / "backtest").glob("backtest-result-*.zip"))
    assert (tmp_path / "wandb").is_dir() and str(summary["wandb"]).startswith(str(tmp_path / "wandb"))
