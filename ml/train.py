"""Training pipeline: dataset -> splits -> Optuna study -> refit -> calibrate -> evaluate -> bundle.

Honest by construction: the study sees only the training block (purged walk-forward
folds); the calibrator sees only the calibration block with the model frozen; the test
block is touched once, for the report. Nothing is shuffled.
"""

from __future__ import annotations

import logging
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from ml import calibration, ensemble, plots, tracking
from ml.bundle import save_bundle
from ml.config import MLConfig
from ml.dataset import Dataset, build_trade_dataset
from ml.features import FeatureEngineer, correlation_prune
from ml.metrics import evaluate, side_outcome_returns, trial_spread
from ml.models import available_cores
from ml.splits import PurgedWalkForward, chronological_split, purge_gap
from ml.storage import open_storage, redact, redacted_settings
from ml.tuning import (
    QUIET_S,
    TuningData,
    best_trial,
    finished,
    fit_family,
    row_weights,
    run_study,
    trial_params,
    wait_for_running,
)

logger = logging.getLogger(__name__)
PLOTS = "plots"


@dataclass
class TrainRequest:
    """Whose trades, over which candles, and where the results go (the config says how to train)."""

    config_path: Path  # the freqtrade config the strategy's label backtest runs with
    strategy: str  # learn from this freqtrade strategy's own trades
    pairs: list[str]
    timeframe: str
    timerange: str | None
    output: Path
    storage: str
    study: str
    tracking_mode: str | None = None
    worker_only: bool = False  # add trials to a shared study; fit and register nothing
    synthetic_data: dict[str, str] = field(default_factory=dict)  # pair -> what wrote it (ml.synth_marker)
    job_type: str = "train"  # W&B job type: train, retrain or demo
    # Hyperparameters tuned by an earlier run (a trial's params): one trial of them, no search
    # (``ftml walkforward --tune-every``).
    fixed_params: dict[str, Any] | None = None


def git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent)
        return done.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _span(data: Dataset) -> list[str]:
    return [str(pd.Timestamp(data.times.min(), tz="UTC")), str(pd.Timestamp(data.times.max(), tz="UTC"))]


def trial_row(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """One finished trial for the W&B history: its score and its hyperparameters."""
    return {"number": t.number, "state": t.state.name, "value": t.value, "family": t.user_attrs.get("family"),
            "auc": t.user_attrs.get("auc"), "brier": t.user_attrs.get("brier"),
            "folds_done": t.user_attrs.get("folds_done", len(t.user_attrs.get("fold_log_loss", []))),
            **{f"params/{k}": v for k, v in t.params.items()}}


def run_name(cfg: MLConfig, req: TrainRequest) -> str:
    """W&B run name: job, model and the bundle folder's time stamp ('train-MyStrategy-20260101-120000')."""
    return f"{req.job_type}-{cfg.model.name}-{req.output.name}"


def load_dataset(cfg: MLConfig, req: TrainRequest) -> Dataset:
    """One row per trade the strategy (``req.strategy``) makes in freqtrade's engine."""
    from ml.trade_labels import strategy_trades

    engineer = FeatureEngineer(cfg.features, req.timeframe)
    run = strategy_trades(req.config_path, req.strategy, req.timerange, req.pairs or None, engineer=engineer)
    return build_trade_dataset(cfg, run)


def per_row_outcomes(outcomes: dict[str, dict[str, float]], sides: np.ndarray) -> dict[str, np.ndarray]:
    """Each row's E[r | win] and E[r | loss], by its trade side."""
    win = np.array([outcomes[s]["win"] for s in sides], dtype=np.float64)
    loss = np.array([outcomes[s]["loss"] for s in sides], dtype=np.float64)
    return {"win": win, "loss": loss}


def train(cfg: MLConfig, req: TrainRequest, progress=None, on_fold=None) -> dict[str, Any]:
    """Run the whole pipeline; return the summary (also written into the bundle).

    ``progress(trials_done)`` and ``on_fold(trial_number, folds_done, folds)`` report as it goes."""
    started = time.perf_counter()
    t = cfg.training
    open_storage(req.storage)  # a wrong storage URL fails now, not after the label backtest
    data = load_dataset(cfg, req)
    horizon = data.info["horizon_candles"]  # how long a trade lasts, typically
    gap = purge_gap(req.timeframe, horizon, t.embargo)
    split = chronological_split(data.times, t.calib_fraction, t.test_fraction, gap, data.label_end,
                                min_rows=max(30, t.min_samples // 10))
    train_block, calib_block, test_block = data.take(split.train), data.take(split.calib), data.take(split.test)
    folds = list(PurgedWalkForward(t.folds, gap, min_train_rows=50).split(train_block.times, train_block.label_end))
    logger.info("Rows: %d train, %d calibration, %d test; %d folds; purge gap %s",
                len(train_block), len(calib_block), len(test_block), len(folds), gap)

    # ---- optional correlation pruning: decided on the training block, saved as the
    # model's input list, never recomputed at inference
    inputs = list(train_block.X.columns)
    if cfg.features.correlation_pruning:
        inputs = correlation_prune(train_block.X, cfg.features.correlation_pruning)
        logger.info("Correlation pruning at |r| > %s keeps %d of %d features",
                    cfg.features.correlation_pruning, len(inputs), train_block.X.shape[1])

    # ---- tuning on the training block only
    X_train = train_block.X[inputs].to_numpy(dtype=np.float64)
    weights = row_weights(t.sample_weight, train_block.y, train_block.realised)
    tuning = TuningData(X_train, train_block.y, train_block.times, folds, list(t.families), t.seed, weights)
    n_jobs = t.n_jobs or available_cores()
    if req.worker_only:
        tracker: tracking.Tracker = tracking.NoopTracker()  # a worker adds trials; the owner's run logs them
    else:
        tracker = tracking.start(cfg.tracking, _tracking_config(cfg, req, data), name=run_name(cfg, req),
                                 job_type=req.job_type, mode=req.tracking_mode, group=cfg.model.name,
                                 tags=_tracking_tags(cfg, req, data))
    try:
        study = run_study(req.storage, req.study, tuning, t.trials, t.timeout, t.workers, n_jobs, progress,
                          on_trial=lambda trial: tracker.log_trials([trial_row(trial)]), on_fold=on_fold,
                          fixed_params=req.fixed_params)
        shared = len({tr.user_attrs.get("pid") for tr in study.get_trials(deepcopy=False)}) > 1 or t.workers > 1
        if req.worker_only:
            return {"worker_only": True, "study": req.study, "storage": redact(req.storage), "trials": finished(study),
                    "seconds": round(time.perf_counter() - started, 1)}
        # Other processes' trials on a shared study count too (a study only this run used has
        # nothing running: no wait beyond the quiet period's first look).
        still = wait_for_running(study, quiet=QUIET_S if shared else 0.0)
        if still:
            logger.warning("%d trials of study %s are still running after the wait; choosing among finished ones.",
                           still, req.study)
        chosen = best_trial(study, list(t.families))
        family, params = trial_params(chosen, list(t.families))

        # ---- refit the best trial on the whole training block, then freeze it
        model = fit_family(family, params, X_train, train_block.y, train_block.times,
                           np.arange(len(train_block)), n_jobs, t.seed, weights)
        best_single, ensemble_info = model, None
        if t.ensemble_members:
            model, ensemble_info = _maybe_ensemble(study, tuning, t, model, chosen.number, n_jobs)
        p_calib_raw = model.predict_raw(calib_block.X[inputs].to_numpy(dtype=np.float64))
        calibrator, calib_info = calibration.choose_and_fit(p_calib_raw, calib_block.y)
        # What a win and a loss really return (fees and time exits included), measured where the
        # calibrator was fitted: the EV gate's inputs, stored with the model.
        outcomes = side_outcome_returns(calib_block.y, calib_block.realised, calib_block.side_of_rows())

        # ---- one look at the test block
        p_test_raw = model.predict_raw(test_block.X[inputs].to_numpy(dtype=np.float64))
        p_test = calibrator.transform(p_test_raw)
        horizon_span = (pd.Timedelta(req.timeframe) * horizon).as_unit("ns").to_timedelta64()
        report = evaluate(test_block.y, p_test_raw, p_test, test_block.realised,
                          per_row_outcomes(outcomes, test_block.side_of_rows()), cfg.gate.ev_margin,
                          test_block.times, horizon_span, test_block.exit_times, test_block.pairs,
                          fitted_base_rate=float(np.concatenate([train_block.y, calib_block.y]).mean()),
                          min_trades=cfg.gate.min_trades)
        trials = study.get_trials(deepcopy=False)
        values = [tr.value for tr in trials if tr.state == optuna.trial.TrialState.COMPLETE]
        report["trials"] = {
            "finished": finished(study), "complete": len(values),
            "pruned": sum(tr.state == optuna.trial.TrialState.PRUNED for tr in trials),
            "failed": sum(tr.state == optuna.trial.TrialState.FAIL for tr in trials),
            "oof_log_loss": trial_spread(values), "best_number": chosen.number,
            "best_value": chosen.value,
        }
        report["calibration_choice"] = calib_info
        if ensemble_info is not None:
            if model is not best_single:  # out of sample: is the ensemble better than its best member?
                ensemble_info["best_member_test_log_loss"] = _test_log_loss(best_single, calib_block, test_block, inputs)
            ensemble_info["test_log_loss"] = report["log_loss"]
            report["ensemble"] = ensemble_info
        report["dataset"] = data.info

        # ---- bundle
        engineer = FeatureEngineer(cfg.features, req.timeframe)
        out = req.output
        (out / PLOTS).mkdir(parents=True, exist_ok=True)
        images = {
            "reliability": plots.reliability_diagram(report["raw"]["reliability"], report["calibrated"]["reliability"],
                                                     report["calibrated"]["ece_noise_band_90"], out / PLOTS / "reliability.png",
                                                     calib_info.get("method")),
            "feature_importance": plots.feature_importance(inputs, model.importance(len(inputs)),
                                                           out / PLOTS / "feature_importance.png"),
            "optimisation_history": plots.optimisation_history([tr.value for tr in trials], [tr.state.name for tr in trials],
                                                               out / PLOTS / "optimisation_history.png"),
        }
        manifest = {
            "model_name": cfg.model.name,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "git_commit": git_commit(),
            "feature_names": inputs,  # the model's inputs (after any pruning), in order
            "engineer_feature_count": len(engineer.feature_names),
            "feature_set_id": data.feature_set_id,
            "features": cfg.features.model_dump(),
            "timeframe": req.timeframe,
            "startup_candles": engineer.startup_candles,
            "label": cfg.label.model_dump(),
            "strategy": data.info["strategy"],
            "label_source": "trades",
            "sides": data.info["sides"],
            "exits": data.info.get("exits"),  # the strategy's exit settings its trades (the labels) used
            # EV = p*win + (1-p)*loss per side; the strategy gates at the same margin the test
            # block's EV gate was scored at.
            "outcome_returns": outcomes,
            "ev_margin": cfg.gate.ev_margin,
            "pairs": sorted(data.info["pairs"]),
            "ranges": {"train": _span(train_block), "calibration": _span(calib_block), "test": _span(test_block)},
            # The newest candle any fitted part (model or calibrator) depended on.
            "train_end": str(pd.Timestamp(calib_block.label_end.max(), tz="UTC")),
            "sample_weight": t.sample_weight,  # of the model's fits; the calibrator is unweighted
            "ensemble": ensemble_info,  # what was tried and chosen (None: ensembles off)
            "study": {"storage": redact(req.storage), "name": req.study, "trials": report["trials"]["finished"],
                      "tuned": req.fixed_params is None},
            "metrics": _headline(report),
            "plots": {k: str(Path(PLOTS) / v.name) for k, v in images.items()},
            "synthetic_data": req.synthetic_data,
        }
        # ---- tracking (never fails the run): trials were logged as they finished
        manifest["tracking"] = tracker.link
        files = save_bundle(out, model, calibrator, manifest, report)
        tracker.log_config({"best_trial": {"number": chosen.number, "family": family, "params": params}})
        tracker.log_metrics(report)
        tracker.log_images(images)
        tracker.log_model(out, name=f"{cfg.model.name}-model")
        tracker.finish()

        return {
            "model": cfg.model.name, "bundle": str(out), "files": files, "family": model.family,
            "ensemble": ensemble_info,
            "params": chosen.params, "tuned": req.fixed_params is None,
            "rows": {"train": len(train_block), "calibration": len(calib_block), "test": len(test_block)},
            "test": _headline(report), "verdict": report["verdict"]["label"], "reasons": report["verdict"]["reasons"],
            "trials": {k: report["trials"][k] for k in ("finished", "complete", "pruned", "failed")},
            "study": req.study, "tracking": tracker.link, "seconds": round(time.perf_counter() - started, 1),
            "synthetic_data": req.synthetic_data,
        }
    except BaseException:
        tracker.finish(exit_code=1)  # a failed run shows as failed in W&B, not as running forever
        raise


def _maybe_ensemble(study: optuna.Study, data: TuningData, t, model, best_number: int, n_jobs: int):
    """The model to calibrate (an ``EnsembleModel`` only when one beat the best single model on
    out-of-fold predictions) and what was tried."""
    started = time.perf_counter()
    chosen = ensemble.plan(study, data, list(t.families), t.ensemble_members, n_jobs)
    info = {**chosen.info, "seconds": None}
    if chosen.combiner is not None:
        first = model if chosen.members[0].trial == best_number else None
        members = ensemble.fit_members(chosen.members, data, n_jobs, first)
        model = ensemble.EnsembleModel(members, chosen.combiner, [m.trial for m in chosen.members])
    info["seconds"] = round(time.perf_counter() - started, 1)
    logger.info("Ensemble: %s chosen among %s (%s s)", chosen.chosen, [m.family for m in chosen.members],
                info["seconds"])
    return model, info


def _test_log_loss(model, calib_block: Dataset, test_block: Dataset, inputs: list[str]) -> float:
    """Test-block log loss of ``model`` calibrated on the calibration block, as the pipeline would."""
    from sklearn.metrics import log_loss

    raw = model.predict_raw(calib_block.X[inputs].to_numpy(dtype=np.float64))
    calibrator, _ = calibration.choose_and_fit(raw, calib_block.y)
    p = calibrator.transform(model.predict_raw(test_block.X[inputs].to_numpy(dtype=np.float64)))
    return float(log_loss(test_block.y, np.clip(p, 1e-6, 1 - 1e-6), labels=[0, 1]))


def _headline(report: dict[str, Any]) -> dict[str, Any]:
    cal = report["calibrated"]
    gate = report["ev_gate"]
    return {
        "auc": report["auc"], "auc_se": report["auc_se"], "log_loss": report["log_loss"],
        "brier": report["brier"], "brier_skill": report["brier_skill"], "base_rate": report["base_rate"],
        "fitted_base_rate": report["fitted_base_rate"],
        "calibration_in_the_large_se": cal["calibration_in_the_large_se"],
        "auc_raw": report["raw"]["auc"], "auc_raw_se": report["raw"]["auc_se"],
        "calibration_method": report.get("calibration_choice", {}).get("method"),
        "calibration_slope": report.get("calibration_choice", {}).get("slope"),
        "mean_p": report["mean_p"], "ece": cal["ece"], "ece_raw": report["raw"]["ece"],
        "ece_noise_band_90": cal["ece_noise_band_90"], "calibration_in_the_large": cal["calibration_in_the_large"],
        "spiegelhalter_z": cal["spiegelhalter_z"], "spiegelhalter_z_effective": cal["spiegelhalter_z_effective"],
        "ece_noise_band_90_effective": cal["ece_noise_band_90_effective"],
        "dependence_factor": cal["dependence_factor"], "ev_gate_trades": gate["gated"]["trades"],
        "ev_gate_mean_return": gate["gated"]["mean_return"],
        "ev_gate_mean_return_se": gate["gated"]["mean_return_se"], "ev_gate_signal_rows": gate["gated"]["signal_rows"],
        "all_signals_trades": gate["all_signals"]["trades"],
        "all_signals_mean_return": gate["all_signals"]["mean_return"], "edge": report["verdict"]["edge"],
    }


def _tracking_config(cfg: MLConfig, req: TrainRequest, data: Dataset) -> dict[str, Any]:
    return {
        "ml": redacted_settings(cfg.model_dump()), "pairs": sorted(data.info["pairs"]), "timeframe": req.timeframe,
        "timerange": req.timerange, "data_start": data.info.get("start"), "data_end": data.info.get("end"),
        "feature_set_id": data.feature_set_id, "git_commit": git_commit(), "study": req.study,
        "strategy": data.info["strategy"], "synthetic_data": req.synthetic_data,
    }


def _tracking_tags(cfg: MLConfig, req: TrainRequest, data: Dataset) -> list[str]:
    """Filters for the W&B project page: model, strategy, job, timeframe, synthetic data."""
    tags = [cfg.model.name, data.info["strategy"], req.job_type, req.timeframe]
    return list(dict.fromkeys(tags + (["synthetic-data"] if req.synthetic_data else [])))
