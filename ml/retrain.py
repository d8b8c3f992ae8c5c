"""``ftml retrain``: one unattended champion-vs-challenger round, safe to run from cron.

1. Lock (``user_data/retrain.lock``, an OS lock released when a process dies): a second
   run exits 0 at once saying another run holds it; a lock left by a killed run is
   noticed (its pid is gone) and taken over.
2. ``--download``: freqtrade download-data first; without a network it says so once and
   goes on with the candles on disk.
3. Window: the most recent ``retrain.window_days`` of candles, starting after the
   champion's ``train_end`` (or its active recalibration's ``fit_end``, if later) + embargo,
   so neither model was trained or calibrated on it.
4. Drift of the champion (``ml.drift``); with ``retrain.when = drift_or_age`` a stable,
   young champion is kept without training (decision "skipped").
5. Challenger: ``ml.train`` on the ``retrain.train_days`` before the nominal window
   (newest candle - ``window_days``; never moved by the champion, see challenger_request).
6. Both models scored on the same window rows (log loss, Brier, ECE, EV gate), then a real
   freqtrade backtest of the gated strategy with each model on that window (offline
   runner), each from a throw-away registry where that model is production.
7. Decision: promote only if the challenger passes every registry gate (including the
   backtest gate) and beats the champion (window log loss by ``min_logloss_gain`` and
   backtest profit). Otherwise it is registered as ``failed`` with the reasons. An empty
   registry promotes a challenger that passes the gates.
8. The model in production after the round is recalibrated (``ml.recalibrate``, unless
   ``recalibration.in_retrain`` is off): its calibration layer refitted on the newest
   resolved trades, applied only where it beats the current one. A kept (or skipped-to)
   champion: the base rate moves faster than its ranking goes stale. A challenger just
   promoted: its calibrator was fitted on a block that ends ``window_days`` before now, and
   the scoring window's trades, resolved since and never trained on, say where the base
   rate is now.

Output: one JSON line on stdout, a log file ``user_data/logs/retrain.log``, a W&B run.
Exit 0 for promoted / kept / skipped / locked; non-zero only for errors.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from filelock import FileLock, Timeout

from ml import jsonsafe, tracking
from ml.bundle import load_bundle
from ml.config import ConfigError, MLConfig, from_dict
from ml.data import DataError, newest_candle
from ml.dataset import build_trade_dataset
from ml.metrics import block_bootstrap_mean_se, evaluate, row_log_loss
from ml.offline import BacktestError, backtest
from ml.registry import (
    ProductionMoved,
    RegistryError,
    guard_end,
    open_registry,
    pid_alive,
    run_gates,
)
from ml.storage import redacted_settings
from ml.train import TrainRequest, per_row_outcomes, train

logger = logging.getLogger("ftml.retrain")


def _ns(ts: pd.Timestamp) -> np.datetime64:
    return pd.Timestamp(ts).tz_convert("UTC").tz_localize(None).to_datetime64()


def _day(ts: pd.Timestamp) -> str:
    return f"{ts:%Y%m%d}"


def paired_gain(champion_loss: np.ndarray, challenger_loss: np.ndarray, times: np.ndarray,
                block: np.timedelta64) -> dict[str, float]:
    """Mean per-row log-loss improvement of the challenger over the champion on the same rows,
    with a block-bootstrap SE (blocks as long as the label horizon: neighbouring rows share
    their outcome)."""
    diff = champion_loss - challenger_loss
    return {"mean": float(diff.mean()), "se": block_bootstrap_mean_se(diff, times, block)}


def logloss_refusal(scores: dict[str, Any], min_gain: float) -> str | None:
    """Why the challenger's window log loss does not beat the champion's, or None.

    Judged on the paired per-row difference with its block-bootstrap SE: a gain inside two
    SE is noise, and promoting on noise churns models for nothing.
    """
    gain = scores["gain"]
    needed = max(min_gain, 2 * gain["se"])
    if gain["mean"] > needed:
        return None
    return (f"window log loss {scores['challenger']['log_loss']:.5f} does not beat the champion's "
            f"{scores['champion']['log_loss']:.5f}: paired gain {gain['mean']:.5f} is not above {needed:.5f} "
            f"(the larger of min_logloss_gain and 2 SE = {2 * gain['se']:.5f})")


def _epoch(ts: pd.Timestamp) -> int:
    return int(pd.Timestamp(ts).timestamp())


class Retrain:
    """One round. ``now``: run as if the time were ``now`` (a walk-forward step, a replay):
    only candles before it are known, and only trades closed before it are labels.
    ``challenger(request) -> (train summary, bundle folder)`` replaces training (a
    walk-forward reuses the challenger it trained, or cached, for this moment)."""

    def __init__(self, config_path: Path, cfg: MLConfig, ft: dict[str, Any], dry_run: bool, download: bool,
                 now: pd.Timestamp | None = None, challenger=None):
        self.config_path, self.cfg, self.ft = config_path, cfg, ft
        self.dry_run, self.download = dry_run, download
        self.now, self.challenger = now, challenger
        self.user_data = Path(ft["user_data_dir"]).resolve()
        self.registry = open_registry(cfg.registry.path)
        self.strategy = cfg.training.strategy
        if not self.strategy:
            raise ConfigError(f"{config_path}: retrain learns from a strategy's own trades; set ml.training.strategy "
                              "to its class name (the un-gated one, e.g. MyStrategy).")
        from ml.trade_labels import strategy_name

        self.name = strategy_name(config_path, self.strategy)  # the name its MLGate twin loads
        self.cfg = cfg = from_dict({**cfg.model_dump(), "model": {"name": self.name}}, source=str(config_path))
        self.horizon = 1  # candles a trade lasts, typically: set by the label backtest
        self.started = time.perf_counter()
        self.timings: dict[str, float] = {}
        self.notes: list[str] = []

    # ------------------------------------------------------------------ steps
    def _timed(self, step: str, fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.timings[step] = round(time.perf_counter() - start, 1)

    def fetch(self) -> None:
        cmd = [sys.executable, "-m", "ml.cli", "freqtrade", "download-data", "-c", str(self.config_path),
               "--timeframes", self.ft["timeframe"]]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, preexec_fn=_die_with_parent)
            ok = done.returncode == 0
            why = (done.stderr.strip().splitlines() or ["no output"])[-1]
        except subprocess.TimeoutExpired:
            ok, why = False, "timed out after 600 s"
        if not ok:
            note = f"download failed ({why[:200]}): continuing with the candles on disk"
            logger.warning(note)
            self.notes.append(note)

    def data_end(self) -> pd.Timestamp:
        """The newest candle known: the newest stored one over the pairs, or with ``now`` the
        newest one closed by then."""
        newest = newest_candle(self.ft)
        if self.now is None:
            return newest
        known = self.now - pd.Timedelta(self.ft["timeframe"])
        if newest < known:
            raise DataError(f"retrain --now {self.now}: the candles end at {newest}; nothing is known up to that moment")
        return known

    @property
    def _until(self) -> str:
        """The end of a label backtest or backtest timerange: the data's end (""), or ``now``
        exactly (a trade still open then is not a label yet)."""
        return str(_epoch(self.now)) if self.now is not None else ""

    def window_rows(self, start: pd.Timestamp, end: pd.Timestamp):
        """The rows of the window: the strategy's own trades opened in it (its label backtest
        from the window's start)."""
        from ml.features import FeatureEngineer
        from ml.trade_labels import strategy_trades

        engineer = FeatureEngineer(self.cfg.features, self.ft["timeframe"])
        run = strategy_trades(self.config_path, self.strategy, f"{_day(start)}-{self._until}", self.ft["pairs"],
                              engineer=engineer)
        data = build_trade_dataset(self.cfg, run, min_rows=0)
        keep = (data.times > _ns(start)) & (data.times <= _ns(end))
        rows = data.take(np.flatnonzero(keep))
        self.horizon = data.info.get("horizon_candles", self.horizon)
        return rows

    @property
    def horizon_span(self) -> np.timedelta64:
        """Blocks of the bootstrap: as long as a typical trade (neighbouring rows share it)."""
        return (pd.Timedelta(self.ft["timeframe"]) * self.horizon).as_unit("ns").to_timedelta64()

    def score(self, bundle_dir: Path, rows) -> tuple[dict[str, Any], np.ndarray]:
        """Window metrics of one model, and its per-row log loss (for the paired comparison)."""
        bundle = load_bundle(bundle_dir)
        X = rows.X[bundle.feature_names].to_numpy(dtype=np.float64)
        p_raw = bundle.predict_raw(X)
        p = bundle.calibrator.transform(p_raw)
        sides = rows.side_of_rows()
        outcomes = per_row_outcomes({side: bundle.outcome_returns(side) for side in set(sides)}, sides)
        report = evaluate(rows.y, p_raw, p, rows.realised, outcomes, self.cfg.gate.ev_margin,
                          rows.times, self.horizon_span, rows.exit_times, rows.pairs, min_trades=self.cfg.gate.min_trades)
        summary = {"rows": report["rows"], "log_loss": report["log_loss"], "brier": report["brier"], "auc": report["auc"],
                   "ece": report["calibrated"]["ece"], "mean_p": report["mean_p"], "hit_rate": report["base_rate"],
                   "ev_gate_trades": report["ev_gate"]["gated"]["trades"],
                   "ev_gate_mean_return": report["ev_gate"]["gated"]["mean_return"]}
        return summary, row_log_loss(rows.y, p)

    def backtest(self, bundle_dir: Path, start: pd.Timestamp, end: pd.Timestamp, label: str) -> dict[str, Any]:
        """A real offline freqtrade backtest of the gated strategy with this model as production."""
        scratch = self.user_data / SCRATCH
        scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"{label}-", dir=scratch) as tmp:
            tmp = Path(tmp)
            store = open_registry(tmp / "registry")
            store.register(bundle_dir, self.name)
            store.promote(self.name, 1, force=True, reason=f"retrain backtest of the {label}")
            config = json.loads(self.config_path.read_text())
            config.setdefault("ml", {})["registry"] = {"path": str(store.root)}
            config["user_data_dir"] = str(self.user_data)
            if not Path(config.get("strategy_path", "strategies")).is_absolute():
                config["strategy_path"] = str((self.config_path.parent / config.get("strategy_path", "strategies")).resolve())
            (tmp / "config.json").write_text(json.dumps(config))
            export = tmp / "bt"
            export.mkdir()
            timerange = f"{_day(start)}-{self._until or _day(end + pd.Timedelta(days=1))}"
            try:
                stats = backtest(tmp / "config.json", [self.cfg.retrain.strategy], timerange, export)
            except BacktestError as err:
                raise RuntimeError(f"backtest of the {label} failed: {err}") from err
            stats = stats[self.cfg.retrain.strategy]
        return {"trades": stats["total_trades"], "profit_total": stats["profit_total"],
                "profit_factor": stats.get("profit_factor"), "max_drawdown": stats.get("max_relative_drawdown"),
                "timerange": f"{start} -> {end}"}

    # ------------------------------------------------------------------ the round
    def run(self) -> dict[str, Any]:
        if self.download:
            self._timed("download", self.fetch)
        end = self.data_end()
        doc = self.registry.read()
        champion = self.registry.production(self.name, doc) if self.name in doc["models"] else None
        if champion and (problems := self.registry.verify_version(champion)):
            raise RegistryError(f"The champion {self.name} v{champion['id']} fails verification: {'; '.join(problems)}. "
                                "Fix it or roll back (`ftml registry rollback`) before retraining.")
        step = pd.Timedelta(self.ft["timeframe"])
        start = end - pd.Timedelta(days=self.cfg.retrain.window_days)
        if champion:
            # After the champion's training *and* its active recalibration: a calibrator
            # fitted on the window's outcomes would score itself.
            start = max(start, pd.Timestamp(guard_end(champion)) + step * self.cfg.training.embargo)
        summary: dict[str, Any] = {"model": self.name, "dry_run": self.dry_run, "champion": champion and champion["id"],
                                   "challenger": None, "window": [str(start), str(end)], "notes": self.notes}
        drift = None
        if champion and self.now is None:  # drift reads the newest candles: a moment in the past has its own
            from ml.drift_check import run_drift

            drift = self._timed("drift", run_drift, self.cfg, self.ft, self.name, self.cfg.retrain.window_days,
                                self.config_path)
            summary["drift"] = {k: drift.get(k) for k in ("max_psi", "features_major", "drifted", "model_age_days")}
            summary["drift"]["calibration"] = drift.get("calibration")
            if self.cfg.retrain.when == "drift_or_age" and not drift["drifted"] \
                    and drift["model_age_days"] < self.cfg.retrain.max_age_days:
                return self._finish(summary, "skipped", [f"no drift above {self.cfg.retrain.max_psi} and the champion is "
                                                         f"{drift['model_age_days']} days old"])
        if end - start < pd.Timedelta(days=self.cfg.retrain.min_window_days):
            return self._finish(summary, "skipped", [f"only {end - start} of candles after the champion's training; "
                                                     f"need {self.cfg.retrain.min_window_days} days"])

        # ---- challenger on the train_days before the nominal window (end - window_days),
        # whatever the champion: its training never depends on the previous decision, so a
        # walk-forward can train every step's challenger at once
        request = challenger_request(self, end)
        if self.challenger is not None:
            trained, bundle_dir = self._timed("train", self.challenger, request)
        else:
            trained, bundle_dir = self._timed("train", train, self.cfg, request), request.output
        summary["challenger_test"] = {k: trained["test"][k] for k in ("auc", "brier_skill", "ece", "ev_gate_trades")}

        # ---- same window, both models
        rows = self._timed("window_rows", self.window_rows, start, end)
        summary["window_rows"] = len(rows)
        if len(rows) == 0:
            return self._finish(summary, "kept" if champion else "not promoted",
                                ["no closed trades in the window to score the models on"])
        scores, losses = {}, {}
        scores["challenger"], losses["challenger"] = self.score(bundle_dir, rows)
        champion_dir = self.registry.version_dir(champion) if champion else None
        if champion_dir:
            scores["champion"], losses["champion"] = self.score(champion_dir, rows)
            scores["gain"] = paired_gain(losses["champion"], losses["challenger"], rows.times, self.horizon_span)
        summary["scores"] = scores
        backtests: dict[str, Any] = {}
        # A challenger that fails its own gates cannot be promoted by any backtest: skip the
        # two freqtrade runs (most of a round's time on a market with no edge).
        failed = [c["name"] for c in run_gates(trained["test"], self.cfg.gate)["checks"] if not c["passed"]]
        if self.cfg.retrain.backtest and failed:
            summary["backtests_skipped"] = f"the challenger failed its gates ({', '.join(failed)}) before any backtest"
        elif self.cfg.retrain.backtest:
            backtests["challenger"] = self._timed("backtest_challenger", self.backtest, bundle_dir, start, end, "challenger")
            if champion_dir:
                backtests["champion"] = self._timed("backtest_champion", self.backtest, champion_dir, start, end, "champion")
        summary["backtests"] = backtests
        return self._decide(summary, trained, bundle_dir, scores, backtests)

    def _decide(self, summary, trained, bundle_dir, scores, backtests) -> dict[str, Any]:
        reasons = []
        challenger_bt, champion_bt = backtests.get("challenger"), backtests.get("champion")
        backtest_gate = None
        if challenger_bt is not None:
            floor = champion_bt["profit_total"] if champion_bt else 0.0
            # Against a champion, earning more is enough (staying out while the champion
            # loses counts); with no champion, it must trade and make money.
            passed = challenger_bt["profit_total"] > floor and (champion_bt is not None or challenger_bt["trades"] > 0)
            backtest_gate = {**challenger_bt, "passed": passed,
                             "threshold": "beats the champion's profit" if champion_bt else "profit > 0 with trades",
                             "summary": f"profit {challenger_bt['profit_total']:.4f} "
                             f"vs {'champion ' if champion_bt else ''}{floor:.4f}, {challenger_bt['trades']} trades"}
        gates = run_gates(trained["test"], self.cfg.gate, backtest_gate)
        reasons += [f"gate {c['name']} failed ({c['value']} vs {c['threshold']})" for c in gates["checks"] if not c["passed"]]
        if "champion" in scores:
            refusal = logloss_refusal(scores, self.cfg.retrain.min_logloss_gain)
            if refusal:
                reasons.append(refusal)
        decision = "promoted" if not reasons else ("kept" if summary["champion"] else "not promoted")
        if self.dry_run:
            summary["would"] = decision
            return self._finish(summary, "dry-run", reasons)
        why = "; ".join(reasons) or "challenger beat the champion"
        entry = self.registry.register(bundle_dir, self.name, notes=f"ftml retrain: {why}",
                                       status="staged" if not reasons else "failed", reason=why,
                                       gates=gates if reasons else None)
        vid = entry["id"]
        summary["challenger"] = vid
        if backtest_gate is not None:
            self.registry.set_backtest(self.name, vid, backtest_gate)
        if not reasons:
            result = self.registry.validate(self.name, vid, self.cfg.gate, backtest_gate)
            if result["passed"]:
                try:
                    self.registry.promote(self.name, vid, reason="retrain: challenger passed every gate and beat "
                                          "the champion", expected_production=summary["champion"])
                except ProductionMoved as moved:
                    reasons.append(str(moved))
                    decision = "kept"
            else:
                reasons.append("validation failed in the registry")
                decision = "kept" if summary["champion"] else "not promoted"
        return self._finish(summary, decision, reasons)

    def _recalibrate_production(self, summary: dict[str, Any], decision: str) -> None:
        """The production model after the round gets its calibration refitted on the newest
        resolved trades (``ml.recalibrate``, with its holdout rule): a kept champion because
        the base rate moves faster than the ranking goes stale, a promoted challenger because
        its calibration block ended ``window_days`` ago (without this its first weeks trade
        on the old base rate)."""
        in_production = decision == "promoted" or (decision in ("kept", "skipped") and summary.get("champion"))
        if not in_production or self.dry_run or not self.cfg.recalibration.in_retrain:
            return
        from ml.recalibrate import recalibrate

        try:
            result = self._timed("recalibrate", recalibrate, self.config_path, self.cfg, self.ft, self.strategy, self.now)
        except Exception as err:  # noqa: BLE001 - the round's decision stands; say why recalibration did not run
            logger.warning("Recalibration of the champion failed: %s", err)
            result = {"decision": "error", "reasons": [str(err).splitlines()[0] if str(err) else type(err).__name__]}
        summary["recalibration"] = {k: result.get(k) for k in ("decision", "reasons", "method", "new_revision",
                                                               "resolved_rows", "log_loss", "fit_end") if k in result}

    def _finish(self, summary, decision, reasons) -> dict[str, Any]:
        self._recalibrate_production(summary, decision)
        summary.update(decision=decision, reasons=reasons, durations=self.timings,
                       seconds=round(time.perf_counter() - self.started, 1))
        return summary


SCRATCH = "retrain-tmp"  # under user_data: throw-away registries and backtests of one run


def _die_with_parent() -> None:
    """In a child (preexec_fn): get SIGTERM when the retrain process dies, even by SIGKILL,
    so a killed cron run leaves no backtest running on its own."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: the child outlives a SIGKILLed parent, as before


def _clear_scratch(user_data: Path) -> list[str]:
    """Remove what earlier runs left in the scratch folder. Only called under the lock, so
    no other retrain is using it."""
    scratch = user_data / SCRATCH
    stale = sorted(p.name for p in scratch.iterdir()) if scratch.is_dir() else []
    shutil.rmtree(scratch, ignore_errors=True)
    return stale


def _read_owner(owner: Path) -> dict[str, Any]:
    """Who holds the lock; {} when the file is missing, half-written or not ours to parse."""
    try:
        holder = json.loads(owner.read_text())
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _write_owner(owner: Path, holder: dict[str, Any]) -> None:
    """Temp file + os.replace: a concurrent reader sees the old file or the new one, never half."""
    tmp = owner.with_name(f".{owner.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(holder))
    os.replace(tmp, owner)


def challenger_request(job: Retrain, end: pd.Timestamp) -> TrainRequest:
    """The challenger's training run: the strategy's trades of ``retrain.train_days`` before
    the nominal window ``[end - window_days, end]``, up to an embargo before it."""
    step = pd.Timedelta(job.ft["timeframe"])
    window_start = end - pd.Timedelta(days=job.cfg.retrain.window_days)
    train_from = window_start - pd.Timedelta(days=job.cfg.retrain.train_days)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return TrainRequest(Path(job.config_path), job.strategy, job.ft["pairs"], job.ft["timeframe"],
                        f"{_day(train_from)}-{_day(window_start - step * job.cfg.training.embargo)}",
                        job.user_data / "models" / job.name / f"retrain-{stamp}",
                        job.cfg.training.storage or f"sqlite:///{job.user_data / 'optuna.sqlite3'}",
                        f"{job.name}-retrain-{stamp}", job_type="retrain")


def record_run(user_data: Path, summary: dict[str, Any], job: str = "retrain") -> None:
    """Append the run's summary, timestamped, to user_data/logs/<job>.jsonl; a failed run
    also gets its line in <job>.log (a successful one logged itself already)."""
    logs = user_data / "logs"
    try:
        logs.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        with open(logs / f"{job}.jsonl", "a") as f:
            f.write(jsonsafe.dumps({"time": stamp, **summary}) + "\n")
        if summary.get("decision") == "error":
            with open(logs / f"{job}.log", "a") as f:
                f.write(f"{stamp} ERROR ftml.{job}: {job.capitalize()} failed (exit {summary.get('exit_code')}): "
                        f"{summary.get('error')}\n")
    except OSError as err:
        logger.warning("Could not record the %s run in %s: %s", job, logs, err)


def _setup_log(user_data: Path) -> logging.Handler:
    logs = user_data / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(logs / "retrain.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def run_retrain(config_path: str | Path, cfg: MLConfig, ft: dict[str, Any], dry_run: bool = False,
                download: bool = False, now: pd.Timestamp | None = None) -> dict[str, Any]:
    """One round, under the lock. Returns the summary (decision 'locked' when another run holds it)."""
    config_path = Path(config_path).resolve()
    user_data = Path(ft["user_data_dir"]).resolve()
    user_data.mkdir(parents=True, exist_ok=True)
    handler = _setup_log(user_data)
    lock_path = user_data / "retrain.lock"
    owner = user_data / "retrain.lock.json"
    lock = FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        holder = _read_owner(owner)
        logger.info("Another retrain holds the lock (pid %s since %s): nothing to do.", holder.get("pid"), holder.get("started"))
        logging.getLogger().removeHandler(handler)
        return {"decision": "locked", "holder": holder}
    notes = []
    try:
        previous = _read_owner(owner)
        if isinstance(previous.get("pid"), int) and not pid_alive(previous["pid"]):
            notes.append(f"recovered a stale lock left by pid {previous['pid']} (started {previous.get('started')})")
            logger.warning(notes[-1])
        if stale := _clear_scratch(user_data):
            notes.append(f"removed {len(stale)} scratch folders left by a killed run ({', '.join(stale[:5])})")
            logger.warning(notes[-1])
        _write_owner(owner, {"pid": os.getpid(), "started": datetime.now(UTC).isoformat(timespec="seconds")})
        job = Retrain(config_path, cfg, ft, dry_run, download, now)
        job.notes.extend(notes)
        summary = job.run()
        tracker = tracking.start(cfg.tracking, {"ml": redacted_settings(cfg.model_dump()), "retrain": True},
                                 name=f"retrain-{job.name}-{summary['decision']}", job_type="retrain", group=job.name,
                                 tags=[job.name, job.strategy, "retrain", summary["decision"]])
        tracker.log_metrics(summary)
        tracker.finish()
        summary["tracking"] = tracker.link
        logger.info("Retrain %s: %s", summary["decision"], "; ".join(summary.get("reasons", [])) or "ok")
        return summary
    finally:
        owner.unlink(missing_ok=True)
        lock.release()
        logging.getLogger().removeHandler(handler)
        handler.close()

