"""One Optuna study per training run: purged walk-forward log loss, seeded TPE, pruning.

* Objective: mean out-of-fold log loss over ``PurgedWalkForward`` folds of the training
  block (calibration and test blocks are never seen here). AUC and Brier per trial are
  user attributes.
* Sampler: TPE seeded from the config (worker k uses seed + k, so workers explore
  different points); the model family is a categorical choice unless the config fixes it.
* Pruner: ``MedianPruner`` on the running mean of fold losses after the second fold. With
  4-5 folds a rank test such as ``WilcoxonPruner`` can never reach significance (the
  smallest one-sided p-value with 3 folds is 1/8), so a median rule is what works.
* Storage is a URL (default: SQLite under user_data); a study resumes by name, and
  ``workers`` processes share it, each pinned to its own cores.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from ml.models import FAMILIES, FittedModel, available_cores, float32_grid
from ml.storage import create_or_join, open_storage

logger = logging.getLogger(__name__)
EARLY_STOP_SHARE = 0.15  # newest share of a training slice used for early stopping


@dataclass
class TuningData:
    """What a trial needs; plain arrays so it crosses process boundaries cheaply."""

    X: np.ndarray
    y: np.ndarray
    times: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]]
    families: list[str]
    seed: int
    weights: np.ndarray | None = None  # per row of X (``row_weights``); None: unweighted


def row_weights(kind: str, y: np.ndarray, realised: np.ndarray) -> np.ndarray | None:
    """Training-row weights (``ml.training.sample_weight``), mean 1; None for ``none``.

    ``balanced``: each class weighs half of the total. ``return``: |realised return|, so a
    trade that won or lost a lot counts more than a scratch near zero.
    """
    if kind == "none":
        return None
    if kind == "balanced":
        counts = np.bincount(y.astype(np.int64), minlength=2).astype(np.float64)
        weights = (len(y) / (2.0 * np.maximum(counts, 1.0)))[y.astype(np.int64)]
    elif kind == "return":
        weights = np.abs(np.asarray(realised, dtype=np.float64))
        if not weights.sum() > 0:
            raise ValueError("sample_weight 'return': every training row returned exactly 0")
    else:
        raise ValueError(f"unknown sample_weight {kind!r}: none, balanced or return")
    return weights / weights.mean()


def early_stopping_split(times: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split training rows into (fit, early-stop) by time: the newest share stops early."""
    cut = np.quantile(times[idx].astype(np.int64), 1 - EARLY_STOP_SHARE)
    newest = times[idx].astype(np.int64) > cut
    if newest.all() or not newest.any():
        return idx, idx
    return idx[~newest], idx[newest]


def fit_family(family: str, params: dict[str, Any], X: np.ndarray, y: np.ndarray, times: np.ndarray,
               idx: np.ndarray, n_jobs: int, seed: int, weights: np.ndarray | None = None) -> FittedModel:
    """Fit on rows ``idx``, early-stopping on their newest share (scored unweighted: the
    stopping point is where the probabilities, not the weighted loss, stop improving).
    Inputs are rounded to float32 (``models.float32_grid``), for the fit and every prediction."""
    fit_idx, stop_idx = early_stopping_split(times, idx)
    model = FAMILIES[family].fit(params, float32_grid(X[fit_idx]), y[fit_idx], float32_grid(X[stop_idx]),
                                 y[stop_idx], n_jobs, seed, sample_weight=None if weights is None else weights[fit_idx])
    model.float32_inputs = True
    return model


def suggest(trial: optuna.trial.BaseTrial, families: list[str]) -> tuple[str, dict[str, Any]]:
    family = trial.suggest_categorical("family", families) if len(families) > 1 else families[0]
    return family, FAMILIES[family].suggest(trial)


def trial_family(trial: optuna.trial.FrozenTrial, families: list[str]) -> str:
    """The family a trial fitted (a study of one family records none among its params)."""
    return trial.params.get("family", trial.user_attrs.get("family", families[0]))


def best_trial(study: optuna.Study, families: list[str]) -> optuna.trial.FrozenTrial:
    """The best complete trial among ``families``: a resumed study may hold trials of
    families this run excludes (``--families``), which must not be chosen."""
    allowed = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
               if trial_family(t, families) in families]
    if not allowed:
        raise RuntimeError(f"Study {study.study_name} has no complete trial of {families}; add trials.")
    return min(allowed, key=lambda t: t.value)


def trial_params(best: optuna.trial.FrozenTrial, families: list[str]) -> tuple[str, dict[str, Any]]:
    """Family and model parameters of a trial (see :func:`best_trial`), as the family's build expects them."""
    fixed = optuna.trial.FixedTrial(best.params)
    family = trial_family(best, families)
    return family, FAMILIES[family].suggest(fixed)


class Objective:
    """Mean out-of-fold log loss; ``on_fold(trial_number, folds_done, folds)`` after each fold
    (a progress bar; only in this process)."""

    def __init__(self, data: TuningData, n_jobs: int, on_fold=None):
        self.data, self.n_jobs, self.on_fold = data, n_jobs, on_fold

    def __call__(self, trial: optuna.Trial) -> float:
        d = self.data
        family, params = suggest(trial, d.families)
        trial.set_user_attr("family", family)
        trial.set_user_attr("cpus", sorted(os.sched_getaffinity(0)))
        trial.set_user_attr("pid", os.getpid())
        losses, aucs, briers = [], [], []
        for step, (train, val) in enumerate(d.folds):
            model = fit_family(family, params, d.X, d.y, d.times, train, self.n_jobs, d.seed, d.weights)
            p = np.clip(model.predict_raw(d.X[val]), 1e-6, 1 - 1e-6)
            losses.append(log_loss(d.y[val], p, labels=[0, 1]))
            briers.append(brier_score_loss(d.y[val], p))
            aucs.append(roc_auc_score(d.y[val], p) if len(np.unique(d.y[val])) == 2 else np.nan)
            if self.on_fold:
                self.on_fold(trial.number, step + 1, len(d.folds))
            trial.report(float(np.mean(losses)), step)
            if trial.should_prune():
                trial.set_user_attr("folds_done", step + 1)
                raise optuna.TrialPruned()
        trial.set_user_attr("auc", float(np.nanmean(aucs)))
        trial.set_user_attr("brier", float(np.mean(briers)))
        trial.set_user_attr("fold_log_loss", [float(v) for v in losses])
        return float(np.mean(losses))


def make_study(storage: str, name: str, seed: int, worker_index: int = 0) -> tuple[optuna.Study, bool]:
    """Create or join the study (race-safe); returns (study, created).

    TPE is seeded with ``seed`` (+ ``worker_index`` for ``--workers``) when this process
    creates the study, so a single run is reproducible. A process that *joins* a study that
    someone else created gets a seed mixed with its pid: with one seed, two processes on one
    study propose identical points (seen: 12 trials, 6 distinct).
    """
    # TPE's `group` (conditional spaces per family) is marked experimental; it is what we want.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    def sampler(created: bool) -> optuna.samplers.BaseSampler:
        own = seed + worker_index if created else (seed * 1_000_003 + os.getpid() * 7919 + worker_index) % 2**31
        return optuna.samplers.TPESampler(seed=own, multivariate=True, group=True)

    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    return create_or_join(open_storage(storage), name, sampler, pruner)


QUIET_S = 5.0  # a worker between two trials (sampling the next) runs none for a moment


def wait_for_running(study: optuna.Study, timeout: float = 1800.0, quiet: float = QUIET_S) -> int:
    """Wait until no other process has run a trial on the study for ``quiet`` seconds, so the
    best trial is chosen from all of them; returns how many were still running at the end."""
    deadline = time.monotonic() + timeout
    quiet_since = None
    while True:
        running = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))
        now = time.monotonic()
        if running:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        if (quiet_since is not None and now - quiet_since >= quiet) or now > deadline:
            return running
        time.sleep(0.5)


def finished(study: optuna.Study) -> int:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def _worker(storage: str, name: str, data: TuningData, n_trials: int, timeout: float | None,
            cpus: list[int], worker_index: int) -> None:
    """One worker process: pinned to its own cores, as a worker on another machine would be."""
    os.sched_setaffinity(0, cpus)
    os.environ["OMP_NUM_THREADS"] = str(len(cpus))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, _ = make_study(storage, name, data.seed, worker_index)
    study.optimize(Objective(data, n_jobs=len(cpus)), n_trials=n_trials, timeout=timeout, catch=())


def split_cores(workers: int) -> list[list[int]]:
    """Disjoint core sets, one per worker (workers beyond the core count share round-robin)."""
    cores = sorted(os.sched_getaffinity(0))
    if workers <= len(cores):
        return [[int(c) for c in chunk] for chunk in np.array_split(cores, workers)]
    return [[cores[i % len(cores)]] for i in range(workers)]


class TrialWatcher:
    """Tells ``progress(done)`` and ``on_trial(trial)`` about each trial of this run as it
    finishes, whether this process ran it or a worker did."""

    def __init__(self, study: optuna.Study, progress=None, on_trial=None):
        self.progress, self.on_trial = progress, on_trial
        self.seen = {t.number for t in self._finished(study)}
        self.already = len(self.seen)

    @staticmethod
    def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
        return study.get_trials(deepcopy=False, states=states)

    def __call__(self, study: optuna.Study, _trial=None) -> None:
        for trial in self._finished(study):
            if trial.number not in self.seen:
                self.seen.add(trial.number)
                if self.on_trial:
                    self.on_trial(trial)
        if self.progress:
            self.progress(finished(study) - self.already)


def run_study(storage: str, name: str, data: TuningData, n_trials: int, timeout: float | None,
              workers: int, n_jobs: int | None, progress=None, on_trial=None, on_fold=None,
              fixed_params: dict[str, Any] | None = None) -> optuna.Study:
    """Run ``n_trials`` more trials on the study (resuming it if it exists). ``progress(done)``,
    ``on_trial(frozen_trial)`` and ``on_fold(trial_number, folds_done, folds)`` report as it goes.

    ``fixed_params`` (a trial's ``params``, tuned elsewhere): no search, one trial of exactly
    those, scored on this data's folds like any other."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, _ = make_study(storage, name, data.seed)
    watch = TrialWatcher(study, progress, on_trial)
    if fixed_params is not None:
        study.enqueue_trial(fixed_params)
        n_trials, workers = 1, 1
    if workers <= 1:
        study.optimize(Objective(data, n_jobs or available_cores(), on_fold), n_trials=n_trials, timeout=timeout,
                       callbacks=[watch], catch=())
        return study
    shares = [n_trials // workers + (i < n_trials % workers) for i in range(workers)]
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_worker, args=(storage, name, data, share, timeout, cpus, i), daemon=True)
        for i, (share, cpus) in enumerate(zip(shares, split_cores(workers), strict=True)) if share
    ]
    for proc in procs:
        proc.start()
    while any(p.is_alive() for p in procs):
        time.sleep(0.5)
        watch(study)
    failed = [p.exitcode for p in procs if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"{len(failed)} tuning worker(s) failed with exit codes {failed}; see the log above.")
    watch(study)
    return study
