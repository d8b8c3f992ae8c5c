"""``ftml walkforward``: the cron job replayed over history, then one backtest of the result.

Every ``--every`` from the start of ``--timerange`` is a *moment*: what ``ftml retrain --now
<moment>`` (and the recalibration it runs) would have done then, on the candles known then,
into a scratch registry (``user_data/walkforward/<strategy>/registry``). The version (and
calibration revision) in production after each moment trades until the next one: that is
the schedule (``schedule.json``, ``ml.gate.walkforward``) with which one freqtrade backtest
covers the whole timerange, next to the un-gated strategy.

Plan: a challenger's training depends only on its moment (``ml.retrain.challenger_request``:
the ``train_days`` before the nominal window), so every step's challenger is trained first,
in ``--workers`` processes, each cached under a content hash of its inputs (the candles
before the moment, the config without its registry/tracking keys, the strategy's files and
parameter file, the training and feature settings, the training range). The decisions then
run in order: each one's champion is the previous decision's result.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pandas as pd

from ml import jsonsafe
from ml.config import MLConfig, from_dict, without_secrets
from ml.data import DataError, candle_dates
from ml.errors import FtmlError

logger = logging.getLogger("ftml.walkforward")
CACHE_FORMAT = 2  # 2: trained.json holds the chosen params (--tune-every)


class WalkForwardError(FtmlError):
    """A walk-forward that cannot run as asked; the message says what to change."""


@dataclass(frozen=True)
class Step:
    index: int
    moment: pd.Timestamp  # the cron run's "now": only candles closed before it are known
    until: pd.Timestamp  # the version chosen at ``moment`` trades until here


def parse_every(text: str) -> pd.Timedelta:
    """'30d', '2w', '12h' -> a Timedelta (at least one hour)."""
    units = {"d": "D", "w": "W", "h": "h"}
    if not text or text[-1] not in units or not text[:-1].isdigit() or int(text[:-1]) < 1:
        raise WalkForwardError(f"--every {text!r}: use a number and d, w or h, e.g. 30d")
    return pd.Timedelta(int(text[:-1]), unit=units[text[-1]])


def plan(start: pd.Timestamp, end: pd.Timestamp, every: pd.Timedelta) -> list[Step]:
    """Moments start, start + every, ... before end; each trades until the next (or end)."""
    moments = list(pd.date_range(start, end, freq=every, inclusive="left"))
    return [Step(i, m, moments[i + 1] if i + 1 < len(moments) else end) for i, m in enumerate(moments)]


def _sha(*parts: Any) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()


class Candles:
    """The stored candles of the pairs, to fingerprint what is known before a moment."""

    def __init__(self, ft: dict[str, Any]):
        from freqtrade.data.history import get_datahandler
        from freqtrade.enums import CandleType

        handler = get_datahandler(Path(ft["datadir"]), ft["data_format"])
        self.frames = {pair: handler._ohlcv_load(pair, ft["timeframe"], None, CandleType.SPOT) for pair in ft["pairs"]}
        self.step = pd.Timedelta(ft["timeframe"])

    def fingerprint(self, moment: pd.Timestamp) -> str:
        """A hash of every candle closed before ``moment`` (a later candle changes nothing)."""
        digest = hashlib.sha256()
        for pair in sorted(self.frames):
            frame = self.frames[pair]
            known = frame[frame["date"] + self.step <= moment]
            digest.update(pair.encode())
            digest.update(pd.util.hash_pandas_object(known, index=False).to_numpy().tobytes())
        return digest.hexdigest()


def config_fingerprint(config_path: Path, strategy_files: list[Path]) -> str:
    """The config without the keys a walk-forward sets itself, and the strategy's files."""
    raw = json.loads(config_path.read_text())
    ml = raw.get("ml", {})
    for key in ("registry", "tracking"):
        ml.pop(key, None)
    ml.get("gate", {}).pop("walkforward", None)
    files = [(p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in strategy_files if p.is_file()]
    return _sha(raw, files)


def _train_one(config: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """One challenger, in a worker process (spawned: nothing inherited but the arguments)."""
    from ml.train import TrainRequest, train

    logging.basicConfig(level=logging.WARNING)
    fields = {**request, "config_path": Path(request["config_path"]), "output": Path(request["output"])}
    return {**train(from_dict(config), TrainRequest(**fields)), "trained_by": _process()}


def _delete_study(storage: str, name: str) -> None:
    """Remove a study a cache miss retrains (``--cache none``, or a step whose cache folder
    was deleted) from a shared storage, so its old trials do not choose the new model."""
    import optuna

    from ml.storage import open_storage

    try:
        optuna.delete_study(study_name=name, storage=open_storage(storage))
    except KeyError:
        pass


def _process() -> dict[str, Any]:
    """Which machine and process did the work (a worker's differs from the walk-forward's)."""
    return {"host": platform.node(), "pid": os.getpid()}


class WalkForward:
    def __init__(self, config_path: str | Path, cfg: MLConfig, ft: dict[str, Any], timerange: str,
                 every: pd.Timedelta, strategy: str | None = None, trials: int | None = None, workers: int = 1,
                 use_cache: bool = True, tune_every: int = 1):
        from freqtrade.configuration.timerange import TimeRange

        from ml.trade_labels import _source_files, strategy_name

        self.config_path = Path(config_path).resolve()
        self.ft = ft
        self.strategy = strategy or cfg.training.strategy
        if not self.strategy:
            raise WalkForwardError("Which strategy? Pass --strategy MyStrategy or set ml.training.strategy.")
        self.gated = cfg.retrain.strategy if self.strategy == cfg.training.strategy else f"{self.strategy}ML"
        parsed = TimeRange.parse_timerange(timerange)
        if not (parsed.startts and parsed.stopts):
            raise WalkForwardError(f"--timerange {timerange}: give both ends, e.g. 20250101-20260101")
        self.start = pd.Timestamp(parsed.startts, unit="s", tz="UTC")
        self.end = pd.Timestamp(parsed.stopts, unit="s", tz="UTC")
        self.steps = plan(self.start, self.end, every)
        if not self.steps:
            raise WalkForwardError(f"--timerange {timerange} holds no step of {every}")
        self.name = strategy_name(self.config_path, self.strategy)
        training = {**cfg.training.model_dump(), "strategy": self.strategy, **({"trials": trials} if trials else {})}
        self.workers = max(1, workers)
        if tune_every < 1:
            raise WalkForwardError(f"--tune-every {tune_every}: use 1 (tune every step) or more")
        self.tune_every = tune_every
        if self.workers > 1:  # each worker's models get their share of the cores
            from ml.models import available_cores

            training["n_jobs"] = max(1, available_cores() // self.workers)
        self.user_data = Path(ft["user_data_dir"]).resolve()
        self.folder = self.user_data / "walkforward" / self.name
        self.cache = self.folder / "cache"
        self.use_cache = use_cache
        self.store = self.folder / "registry"
        self.cfg = from_dict({**cfg.model_dump(), "training": training, "model": {"name": self.name},
                              "registry": {"path": str(self.store)}, "tracking": {"mode": "disabled"}})
        self.tracking = cfg.tracking
        from freqtrade.resolvers import StrategyResolver

        from ml.trade_labels import backtest_config

        # the strategy's files and parameter file are part of every step's cache key
        loaded = StrategyResolver.load_strategy(backtest_config(self.config_path, self.strategy, None))
        files = _source_files(type(loaded), getattr(loaded, "__file__", None))
        self.strategy_files = files + [p.with_suffix(".json") for p in files]
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ setup
    def _write_config(self) -> Path:
        """The walk-forward's own config: the user's, with the scratch registry and absolute paths."""
        config = json.loads(self.config_path.read_text())
        ml = config.setdefault("ml", {})
        ml["registry"] = {"path": str(self.store)}
        ml["tracking"] = {"mode": "disabled"}
        ml["training"] = {**ml.get("training", {}), "strategy": self.strategy,
                          "trials": self.cfg.training.trials, "n_jobs": self.cfg.training.n_jobs}
        config["user_data_dir"] = str(self.user_data)
        path = Path(config.get("strategy_path", "strategies"))
        config["strategy_path"] = str(path if path.is_absolute() else (self.config_path.parent / path).resolve())
        target = self.folder / "config.json"
        target.write_text(jsonsafe.dumps(without_secrets(config), indent=1))
        return target

    def _first_training_day(self) -> pd.Timestamp:
        """The earliest candle any step reads: the first step's training start."""
        return self.steps[0].moment - pd.Timedelta(days=self.cfg.retrain.window_days + self.cfg.retrain.train_days)

    def _check_data(self) -> None:
        first = self._first_training_day()
        starts = [d.min() for p in self.ft["pairs"]
                  if len(d := candle_dates(self.ft["datadir"], p, self.ft["timeframe"], self.ft["data_format"]))]
        if not starts:
            raise DataError(f"No {self.ft['timeframe']} candles for {self.ft['pairs']} in {self.ft['datadir']}.")
        if min(starts) > first:
            raise WalkForwardError(
                f"The first step ({self.steps[0].moment:%Y-%m-%d}) trains from {first:%Y-%m-%d} (retrain.window_days "
                f"{self.cfg.retrain.window_days} + train_days {self.cfg.retrain.train_days} before it), but the candles "
                f"start at {min(starts):%Y-%m-%d}: start the timerange later or lower ml.retrain.train_days.")

    # ------------------------------------------------------------------ phase 0: one label backtest
    def label_backtest(self, config_path: Path) -> None:
        """The strategy's trades over everything any step reads, once: every step's training,
        scoring window and recalibration range lies inside it, and ``ml.trade_labels`` cuts
        those from this cached run (exactly: every signal is its own trade) instead of
        running freqtrade again for each."""
        from ml.features import FeatureEngineer
        from ml.trade_labels import strategy_trades

        first = self._first_training_day() - pd.Timedelta(days=1)  # the newest closed candle is before the moment
        strategy_trades(config_path, self.strategy, f"{int(first.timestamp())}-{int(self.end.timestamp())}",
                        self.ft["pairs"], engineer=FeatureEngineer(self.cfg.features, self.ft["timeframe"]))

    # ------------------------------------------------------------------ phase 1: challengers
    def _job(self, config_path: Path, step: Step | None = None, challenger=None):
        from ml.retrain import Retrain

        return Retrain(config_path, self.cfg, self.ft, dry_run=False, download=False,
                       now=step.moment if step else None, challenger=challenger)

    def train_challengers(self, config_path: Path) -> dict[int, dict[str, Any]]:
        """Every step's challenger, trained or taken from the cache; says which were reused.

        With ``tune_every`` K, steps 0, K, 2K, ... tune (Optuna, ``trials``); each step in
        between trains once with the hyperparameters its latest tuning step chose, so those
        are trained second."""
        from ml.retrain import challenger_request

        candles = Candles(self.ft)
        base = config_fingerprint(self.config_path, self.strategy_files)
        template = self._job(config_path)
        settings = {k: v for k, v in self.cfg.training.model_dump().items() if k not in ("storage", "study", "workers")}
        found: dict[int, dict[str, Any]] = {}
        tuners = [s for s in self.steps if s.index % self.tune_every == 0]
        followers = [s for s in self.steps if s.index % self.tune_every != 0]
        for group in (tuners, followers):
            todo = {}
            for step in group:
                template.now = step.moment
                request = challenger_request(template, template.data_end())
                tuner = step.index - step.index % self.tune_every
                request.fixed_params = None if tuner == step.index else found[tuner]["params"]
                key = _sha(CACHE_FORMAT, base, candles.fingerprint(step.moment), request.timerange, request.pairs,
                           request.timeframe, settings, self.cfg.features.model_dump(), self.cfg.label.model_dump(),
                           request.fixed_params)[:20]
                folder = self.cache / key
                request.output = folder / "bundle"
                request.storage = self.cfg.training.storage or f"sqlite:///{folder / 'optuna.sqlite3'}"
                request.study = f"wf-{self.name}-{key}"
                done = folder / "trained.json"
                if self.use_cache and done.is_file() and (folder / "bundle" / "bundle.json").is_file():
                    found[step.index] = {**json.loads(done.read_text()), "key": key, "reused": True}
                    continue
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
                if self.cfg.training.storage:  # a shared server keeps the last run's study: start afresh
                    _delete_study(request.storage, request.study)
                todo[step.index] = (key, folder, request)
            logger.info("Walk-forward %s: %d %s steps, %d challengers from the cache, %d to train (%d workers).",
                        self.name, len(group), "tuning" if group is tuners else "fixed-parameter", len(group) - len(todo),
                        len(todo), self.workers)
            for i, trained in self._train(todo).items():
                key, folder, request = todo[i]
                trained = {**trained, "timerange": request.timerange, "tuned_at": i - i % self.tune_every}
                (folder / "trained.json").write_text(jsonsafe.dumps(trained))
                found[i] = {**trained, "key": key, "reused": False}
        return found

    def _train(self, todo: dict[int, tuple]) -> dict[int, dict[str, Any]]:
        """Train the requests, in ``workers`` spawned processes when there are several."""
        config = self.cfg.model_dump()
        requests = {i: {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(r).items()}
                    for i, (_, _, r) in todo.items()}
        if self.workers <= 1 or len(todo) <= 1:
            return {i: _train_one(config, req) for i, req in requests.items()}
        env = {"FTML_LABEL_WORKERS": "1", "OMP_NUM_THREADS": str(self.cfg.training.n_jobs or 1)}
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            with ProcessPoolExecutor(self.workers, mp_context=get_context("spawn")) as pool:
                futures = {i: pool.submit(_train_one, config, req) for i, req in requests.items()}
                return {i: f.result() for i, f in futures.items()}
        finally:
            for k, v in old.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)

    # ------------------------------------------------------------------ phase 2: decisions
    def decide(self, config_path: Path, challengers: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
        """The cron decisions in order, into the scratch registry (rebuilt each run: cheap)."""
        from ml.registry import open_registry

        shutil.rmtree(self.store, ignore_errors=True)
        records = []
        for step in self.steps:
            trained = challengers[step.index]

            def reuse(request, trained=trained):
                return trained, Path(trained["bundle"])

            job = self._job(config_path, step, reuse)
            summary = job.run()
            registry = open_registry(self.store)
            doc = registry.read()
            production = registry.production(self.name, doc) if self.name in doc["models"] else None
            bundle = json.loads((Path(trained["bundle"]) / "bundle.json").read_text())
            records.append({
                "step": step.index, "moment": step.moment.isoformat(), "until": step.until.isoformat(),
                "decision": summary["decision"], "reasons": summary.get("reasons", []),
                "champion": summary.get("champion"), "challenger": summary.get("challenger"),
                "production": production and production["id"],
                "revision": production and production.get("calibration_revision"),
                "window": summary.get("window"), "scores": summary.get("scores"), "backtests": summary.get("backtests"),
                "recalibration": summary.get("recalibration"),
                "challenger_training": {"timerange": trained.get("timerange"),
                                        "ranges": bundle.get("ranges"), "train_end": bundle.get("train_end"),
                                        "cache_key": trained["key"], "reused": trained["reused"],
                                        "tuned_at": trained.get("tuned_at"), "trials": trained.get("trials")},
            })
            logger.info("Walk-forward step %d (%s): %s%s", step.index, step.moment.date(), summary["decision"],
                        f" ({'; '.join(summary.get('reasons', [])[:2])})" if summary.get("reasons") else "")
        return records

    def write_schedule(self, records: list[dict[str, Any]]) -> Path:
        from ml.gate_schedule import FORMAT

        schedule = {"format": FORMAT, "registry": str(self.store), "model": self.name,
                    "segments": [{"step": r["step"], "from": r["moment"], "to": r["until"], "version": r["production"],
                                  "revision": r["revision"]} for r in records]}
        path = self.folder / "schedule.json"
        path.write_text(jsonsafe.dumps(schedule, indent=1))
        return path

    # ------------------------------------------------------------------ phase 3: one backtest
    def backtest(self, config_path: Path, schedule: Path) -> dict[str, Any]:
        """``freqtrade backtesting --strategy-list <gated> <strategy>`` over the whole range."""
        from ml.offline import BacktestError, backtest

        config = json.loads(config_path.read_text())
        config["ml"].setdefault("gate", {})["walkforward"] = str(schedule)
        bt_config = self.folder / "backtest-config.json"
        bt_config.write_text(jsonsafe.dumps(config, indent=1))
        export = self.folder / "backtest"
        shutil.rmtree(export, ignore_errors=True)
        export.mkdir()
        timerange = f"{int(self.start.timestamp())}-{int(self.end.timestamp())}"
        try:
            return backtest(bt_config, [self.gated, self.strategy], timerange, export)
        except BacktestError as err:
            raise WalkForwardError(f"the walk-forward backtest failed: {err}") from err

    # ------------------------------------------------------------------ the run
    def _timed(self, name: str, fn, *args):
        started = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.timings[name] = round(time.perf_counter() - started, 1)

    def run(self) -> dict[str, Any]:
        from ml.walkforward_report import report

        self._check_data()
        self.folder.mkdir(parents=True, exist_ok=True)
        config_path = self._write_config()
        self._timed("labels", self.label_backtest, config_path)
        challengers = self._timed("train", self.train_challengers, config_path)
        records = self._timed("decide", self.decide, config_path, challengers)
        schedule = self.write_schedule(records)
        stats = self._timed("backtest", self.backtest, config_path, schedule)
        result = self._timed("report", report, self, config_path, records, stats)
        result["timings"] = self.timings
        result["process"] = _process()
        result["reused"] = sorted(i for i, c in challengers.items() if c["reused"])
        result["trained"] = sorted(i for i, c in challengers.items() if not c["reused"])
        (self.folder / "report.json").write_text(jsonsafe.dumps(result, indent=1))
        return result

