"""Training end to end: no edge on a null market, the planted edge found, honest calibration,
resumable and parallel studies, W&B offline runs read back, bit-identical reloads."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from sklearn.metrics import log_loss

from ml.bundle import load_bundle
from ml.config import ALL_FAMILIES, GateSettings, from_dict, load
from ml.registry import run_gates
from ml.splits import chronological_split, purge_gap
from ml.synth import oracle_auc
from ml.train import load_dataset, train
from tests.conftest import ALL_CORES, REPO, run_ftml, strategy_project, train_request
from tests.test_recalibration import gate_share_after_weekly_recalibration
from tests.wandb_reader import read_run

pytestmark = pytest.mark.slow
# The trades of tests/strategies/EveryFewHours.py: long every few hours whatever the
# market does, exits at ROI 3%, stoploss 3% or after 24 candles. An unbiased sample of the
# market, so a model sees the planted edge (or none) at the strength the market has.
FAST = {"families": ["lightgbm", "logistic"], "trials": 6}


def pairs(n: int) -> list[str]:
    return [f"P{i}/BTC" for i in range(n)]


def run_training(root: Path, market: str, seed: int, n_pairs: int, candles: int, process=None, ml=None,
                 timerange: str | None = None, **training) -> dict:
    strategy_project(root, pairs(n_pairs), candles, market, seed, ml={**(ml or {}), "training": {**FAST, **training}},
                     **(process or {}))
    return train(load(root / "config.json"), train_request(root, timerange=timerange))


NULL_CUT = pd.Timestamp("2024-01-01", tz="UTC") + pd.Timedelta(hours=6000 - 22 * 24)


# One seed (40 s): more null markets are trained by tests/test_ensemble.py (5 seeds),
# test_strategies, test_retrain and test_walkforward, each refusing what they find.
NULL_SEED = 0


def test_null_market_reports_no_edge(tmp_path):
    # 16 pairs: the test block must be large enough that its own sampling noise (trades
    # overlap for up to 24 candles) stays well inside the tolerances below.
    summary = run_training(tmp_path, "null", NULL_SEED, n_pairs=16, candles=6000)
    test = summary["test"]
    assert abs(test["auc"] - 0.5) <= 0.03
    # The raw model too: a constant calibrator would make the calibrated AUC 0.5 whatever
    # the model ranks, so the null check must not rest on that number alone.
    assert test["auc_raw"] - 2 * test["auc_raw_se"] <= 0.5 and abs(test["auc_raw"] - 0.5) <= 0.05
    # The model can only know the base rate of the rows it was fitted on; the test block's
    # own hit rate differs from it by sampling noise, which we bound separately.
    assert abs(test["mean_p"] - test["fitted_base_rate"]) <= 0.02
    assert abs(test["mean_p"] - test["base_rate"]) <= 0.02
    assert test["brier_skill"] <= 0.005
    assert test["ev_gate_trades"] <= 0.02 * test["all_signals_trades"]  # almost none
    assert summary["verdict"] == "no edge" and summary["reasons"]
    # Nothing is promoted: the registry's gates refuse it.
    assert not run_gates(test, GateSettings())["passed"]
    # Recalibration never opens the gate on a market with no signal, even on a model an
    # operator forced into production: weekly refits over the last three weeks (the test
    # block: no fitted part saw them), each week's signals scored by the calibration then
    # in production.
    share = gate_share_after_weekly_recalibration(tmp_path, NULL_CUT, weeks=3)
    assert share["taken"] <= 0.01 * share["signals"], share


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    return root, run_training(root, "planted", 0, n_pairs=6, candles=20000)


def test_planted_market_finds_the_edge(planted):
    root, summary = planted
    test = summary["test"]
    # The best a model can do on these very trades: the generator's true score as a ranking.
    data = load_dataset(load(root / "config.json"), train_request(root))
    rows = pd.DataFrame({"pair": data.pairs, "date": pd.to_datetime(data.times, utc=True), "label": data.y})
    oracle = oracle_auc(rows, pairs(6), "1h", 20000, seed=0)
    assert oracle > 0.56  # the planted rule ranks these trades' outcomes
    assert test["auc"] >= oracle - 0.05, (test["auc"], oracle)
    assert test["brier_skill"] > 0
    assert summary["verdict"] == "edge"
    assert test["ev_gate_mean_return"] > test["all_signals_mean_return"]


def test_calibration_fixes_base_rate_drift_on_planted_data(tmp_path):
    """A bear market starts before the calibration block (a drift of -0.05 volatilities per
    candle): the long trades' win rate falls, and the raw model, fitted on the past, is
    off. Calibration on the recent block fixes it."""
    summary = run_training(tmp_path, "planted", 0, n_pairs=6, candles=20000,
                           process={"trend_at": 11000, "trend": -0.05})
    test = summary["test"]
    # Measured (seed 0): fitted base rate 0.468, test 0.428; ECE raw 0.076, calibrated 0.021.
    assert test["fitted_base_rate"] - test["base_rate"] > 0.03  # the drift is real
    assert test["ece"] < 0.5 * test["ece_raw"]
    assert test["ece"] <= 0.03
    assert abs(test["mean_p"] - test["base_rate"]) < 0.02


def test_bundle_is_self_describing(planted):
    root, summary = planted
    manifest = json.loads((root / "bundle" / "bundle.json").read_text())
    for key in ("feature_names", "feature_set_id", "label", "ranges", "train_end", "family", "metrics",
                "strategy", "sides", "outcome_returns"):
        assert key in manifest
    assert manifest["strategy"] == "EveryFewHours" and manifest["label_source"] == "trades"
    ranges = manifest["ranges"]
    assert ranges["train"][1] < ranges["calibration"][0] < ranges["calibration"][1] < ranges["test"][0]
    assert manifest["train_end"] < ranges["test"][0]  # nothing fitted saw the test block
    for plot in ("reliability.png", "feature_importance.png", "optimisation_history.png"):
        assert (root / "bundle" / "plots" / plot).stat().st_size > 5000
    metrics = json.loads((root / "bundle" / "metrics.json").read_text())
    assert len(metrics["calibrated"]["reliability"]) == 10
    assert sum(r["count"] for r in metrics["calibrated"]["reliability"]) == summary["rows"]["test"]
    assert metrics["trials"]["finished"] == 6 and "oof_log_loss" in metrics["trials"]


class PickleBomb:
    """Unpickling this creates a marker file: proof that something opened a pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


RELOAD = """
import sys, numpy as np
from ml.bundle import load_bundle
bundle = load_bundle(sys.argv[1])
X = np.load(sys.argv[2])
np.save(sys.argv[3], bundle.predict_proba(X))
"""


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_reload_in_a_fresh_process_is_bit_identical_and_never_opens_pickles(tmp_path, family):
    summary = run_training(tmp_path, "planted", 5, n_pairs=2, candles=4000, families=[family], trials=1)
    folder = Path(summary["bundle"])
    marker = tmp_path / "pickle_was_opened"
    for name in ("model.pkl", "calibrator.pkl", "model.joblib"):
        (folder / name).write_bytes(pickle.dumps(PickleBomb(marker)))
    X = np.random.default_rng(0).normal(0, 0.05, size=(500, len(load_bundle(folder).feature_names)))
    here = load_bundle(folder).predict_proba(X)
    np.save(tmp_path / "X.npy", X)
    done = subprocess.run([sys.executable, "-c", RELOAD, str(folder), str(tmp_path / "X.npy"),
                           str(tmp_path / "p.npy")], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    there = np.load(tmp_path / "p.npy")
    assert np.array_equal(here, there)
    assert not marker.exists()
    # ... and the reloaded model is the model that was trained: on the test block it gives
    # exactly the log loss that training measured in memory before saving.
    cfg = load(tmp_path / "config.json")
    data = load_dataset(cfg, train_request(tmp_path))
    t = cfg.training
    gap = purge_gap("1h", data.info["horizon_candles"], t.embargo)
    split = chronological_split(data.times, t.calib_fraction, t.test_fraction, gap,
                                data.label_end, min_rows=max(30, t.min_samples // 10))
    test_block = data.take(split.test)
    reloaded = load_bundle(folder).predict_proba(test_block.X)
    assert log_loss(test_block.y, np.clip(reloaded, 1e-6, 1 - 1e-6), labels=[0, 1]) == pytest.approx(
        summary["test"]["log_loss"], rel=1e-12)


@pytest.fixture
def cli_project(tmp_path):
    return strategy_project(tmp_path, ["ETH/BTC", "LTC/BTC"], 4000, "planted", 3, ml={"training": {**FAST, "trials": 5}})


def test_resume_adds_trials_to_the_same_study(cli_project):
    storage = f"sqlite:///{cli_project / 'studies.db'}"
    for _ in range(2):
        done = run_ftml("train", "-c", "config.json", "--pairs", "ETH/BTC", "LTC/BTC", "--trials", "5",
                        "--storage", storage, "--study", "resumable", cwd=cli_project)
        assert done.returncode == 0, done.stderr[-3000:]
        summary = json.loads(done.stdout.strip().splitlines()[-1])
    study = optuna.load_study(study_name="resumable", storage=storage)
    states = [t.state for t in study.trials]
    assert sum(s in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for s in states) == 10
    assert summary["trials"]["finished"] == 10


@pytest.mark.skipif(len(ALL_CORES) < 2, reason="needs two cores")
def test_two_workers_share_a_study_on_disjoint_cores(cli_project, all_cores):
    storage = f"sqlite:///{cli_project / 'workers.db'}"
    done = run_ftml("train", "-c", "config.json", "--pairs", "ETH/BTC", "LTC/BTC", "--trials", "6",
                    "--workers", "2", "--storage", storage, "--study", "parallel", cwd=cli_project)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = optuna.load_study(study_name="parallel", storage=storage).trials
    assert len(trials) == 6
    assert not [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    cpus_by_pid: dict[int, set] = {}
    for t in trials:
        cpus_by_pid.setdefault(t.user_attrs["pid"], set()).update(t.user_attrs["cpus"])
    assert len(cpus_by_pid) == 2
    first, second = cpus_by_pid.values()
    assert first and second and not first & second


def test_wandb_offline_run_is_written_and_reads_back(cli_project, tmp_path):
    env_free = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    done = subprocess.run(
        [sys.executable, "-m", "ml.cli", "train", "-c", "config.json", "--pairs", "ETH/BTC", "LTC/BTC",
         "--trials", "3", "--tracking", "offline"],
        cwd=cli_project, capture_output=True, text=True, env={**env_free, "OMP_NUM_THREADS": "1"}, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    run_dir = Path(summary["tracking"])
    assert run_dir.name.startswith("offline-run-") and run_dir.parent == (cli_project / "wandb").resolve()
    run = read_run(next(run_dir.glob("run-*.wandb")))
    assert run["summary"]["auc"] == pytest.approx(summary["test"]["auc"])
    assert run["summary"]["trials/finished"] == 3
    trial_rows = [h for h in run["history"] if "trial/number" in h]
    assert sorted(h["trial/number"] for h in trial_rows) == [0, 1, 2]
    assert any("plots/reliability/path" in h for h in run["history"])
    (artifact,) = run["artifacts"]
    files = {f.path for f in artifact.manifest.contents}
    assert {"bundle.json", "calibrator.json", "metrics.json"} <= files
    assert any(f.startswith("model.") for f in files)
    # a useful name, group, job type and tags; every trial's hyperparameters, logged as it finished
    stamp = Path(summary["bundle"]).name
    assert run["run"] == {"name": f"train-EveryFewHours-{stamp}", "group": "EveryFewHours", "job_type": "train",
                          "tags": ["EveryFewHours", "train", "1h", "synthetic-data"]}
    assert all("trial/params/family" in h and "trial/value" in h for h in trial_rows)
    first_plot = next(i for i, h in enumerate(run["history"]) if "plots/reliability/path" in h)
    assert max(run["history"].index(h) for h in trial_rows) < first_plot
    assert run["config"]["best_trial"]["number"] in {0, 1, 2} and run["config"]["strategy"] == "EveryFewHours"
    # The model travels with a copied wandb/ folder: every artifact file is inside it, by a
    # path relative to the project folder (where `wandb sync wandb/offline-run-*` runs).
    moved = tmp_path / "another-machine"
    moved.mkdir()
    shutil.copytree(cli_project / "wandb", moved / "wandb")
    shutil.rmtree(cli_project / "wandb")
    for entry in artifact.manifest.contents:
        assert not Path(entry.local_path).is_absolute(), entry.local_path
        copied = moved / entry.local_path
        assert base64.b64encode(hashlib.md5(copied.read_bytes()).digest()).decode() == entry.digest


def test_too_little_data_is_refused_with_numbers(cli_project):
    done = run_ftml("train", "-c", "config.json", "--pairs", "ETH/BTC", "--timerange", "20240101-20240201",
                    cwd=cli_project)
    assert done.returncode == 2
    assert "EveryFewHours made" in done.stderr and "min_samples" in done.stderr


def test_correlation_pruning_is_decided_in_training_and_saved(tmp_path):
    summary = run_training(tmp_path, "planted", 6, n_pairs=2, candles=4000, families=["logistic"], trials=1)
    full = json.loads((Path(summary["bundle"]) / "bundle.json").read_text())["feature_names"]
    cfg = load(tmp_path / "config.json").model_dump()
    cfg["features"]["correlation_pruning"] = 0.9
    pruned = train(from_dict(cfg), train_request(tmp_path, output="pruned", study="p"))
    bundle = load_bundle(pruned["bundle"])
    assert 10 < len(bundle.feature_names) < len(full)
    assert bundle.feature_set_id == json.loads((Path(summary["bundle"]) / "bundle.json").read_text())["feature_set_id"]
    assert set(bundle.feature_names) < set(full)  # a subset, chosen once, stored with the model
