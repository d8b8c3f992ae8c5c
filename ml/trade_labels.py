"""Labels from the strategy's own trades, made by freqtrade's backtesting engine.

``strategy_trades(config_path, strategy)`` runs the *un-gated* strategy through
freqtrade's ``Backtesting`` class in this process (markets from disk, see ``ml.offline``)
with position stacking, unlimited open trades, protections off and a wallet that never
runs dry, so every entry signal becomes a trade that exits by the strategy's own rules:
ROI table, stoploss, trailing stop, ``custom_stoploss``, ``custom_exit``, exit signals,
long and short. Each closed trade is one training row (``ml.dataset.build_trade_dataset``).

The backtest is cached under ``<user_data>/ftml-cache/trades/<key>/`` (feather + JSON, no
pickle), keyed by a sha256 of the strategy's source files, the config file, the data files
the backtest reads, the timerange and the freqtrade version: tuning and retraining do not
repeat it, and any change to one of them runs it again.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import multiprocessing
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ml.errors import FtmlError
from ml.trade_copy import fast_trade_copies

logger = logging.getLogger(__name__)
UNGATED_KEY = "ftml_ungated"  # config flag: an MLGate strategy passes every entry through
CACHE_FORMAT = 2  # 2: keys are the span key + the timerange
TRADE_COLUMNS = ["pair", "open_date", "close_date", "is_short", "profit_ratio", "enter_tag", "exit_reason"]
# The wallet of the label backtest: large enough that no signal is ever refused for money.
LABEL_WALLET, LABEL_STAKE = 1e12, 1.0


class StrategyError(FtmlError, ValueError):
    """The strategy cannot be loaded or gives nothing to learn from; the message says why."""


@dataclass
class TradeRun:
    """The un-gated strategy's trades and the candles they were made on."""

    strategy: str  # the user's strategy class (the model's default name)
    timeframe: str
    can_short: bool
    trades: pd.DataFrame  # TRADE_COLUMNS, closed trades only, open_date order
    candles: dict[str, pd.DataFrame]  # pair -> OHLCV the strategy saw (startup included)
    unresolved: int  # trades still open at the end of the range: outcome unknown, left out
    cache_hit: bool
    key: str
    info: dict[str, Any] = field(default_factory=dict)
    indicators: dict[str, pd.DataFrame] = field(default_factory=dict)  # pair -> date + include_columns


def ungated_class(cls: type) -> type:
    """The user's own strategy class behind an ``MLGate`` subclass (or ``cls`` itself)."""
    from freqtrade.strategy import IStrategy

    from ml.gate import MLGate

    for klass in cls.__mro__:
        if issubclass(klass, IStrategy) and not issubclass(klass, MLGate):
            return klass
    return cls


# The strategy settings that decide when its trades exit: the labels are only true for
# these. A gated strategy whose exits differ (hyperopt, an edited ROI table) is told so.
EXIT_SETTINGS = ("minimal_roi", "stoploss", "trailing_stop", "trailing_stop_positive", "trailing_stop_positive_offset",
                 "trailing_only_offset_is_reached", "use_exit_signal", "exit_profit_only", "exit_profit_offset",
                 "ignore_roi_if_entry_signal", "use_custom_stoploss")


def exit_settings(strategy: Any) -> dict[str, Any]:
    """The strategy's exit settings as plain JSON values (ROI keys as minutes, sorted)."""
    found: dict[str, Any] = {}
    for key in EXIT_SETTINGS:
        value = getattr(strategy, key, None)
        if key == "minimal_roi" and isinstance(value, dict):
            value = {str(int(float(k))): float(v) for k, v in sorted(value.items(), key=lambda kv: float(kv[0]))}
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
        elif not isinstance(value, (bool, type(None))):
            value = str(value)
        found[key] = value
    return found


def exit_differences(learned: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """'key learned -> now' for each exit setting that changed (none when nothing was recorded)."""
    if not learned:
        return []
    return [f"{key} {learned.get(key)} -> {now.get(key)}" for key in EXIT_SETTINGS
            if key in learned and learned.get(key) != now.get(key)]


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def backtest_config(config_path: str | Path, strategy: str, timerange: str | None,
                    pairs: list[str] | None = None) -> dict[str, Any]:
    """freqtrade's own configuration for the label backtest (as `freqtrade backtesting`
    would build it), with every signal allowed to become a trade."""
    from freqtrade.configuration import setup_utils_configuration
    from freqtrade.enums import RunMode

    args = {"config": [str(config_path)], "strategy": strategy, "timerange": timerange}
    try:
        try:
            config = setup_utils_configuration(args, RunMode.BACKTEST)
        except FileExistsError:
            # freqtrade checks, then creates, the user_data folders: training workers started
            # together on a fresh project race there. The folder is there now; once more.
            config = setup_utils_configuration(args, RunMode.BACKTEST)
    except Exception as err:  # freqtrade raises its own exception types for a bad config
        raise StrategyError(f"freqtrade cannot read {config_path}: {_first_line(err)}") from err
    if pairs:
        config["exchange"]["pair_whitelist"] = list(pairs)
    config.update({
        "position_stacking": True, "max_open_trades": -1, "enable_protections": False,
        "stake_amount": LABEL_STAKE, "dry_run_wallet": LABEL_WALLET, "tradable_balance_ratio": 1.0,
        "export": "none", UNGATED_KEY: True,
    })
    config.pop("available_capital", None)  # it would cap the wallet
    return config


def _source_files(cls: type, loaded_from: str | None = None) -> list[Path]:
    """The files that define the strategy: its class and every user base class.

    freqtrade's resolver loads a strategy file without registering its module, so
    ``inspect`` cannot find the class it loaded; ``loaded_from`` (the resolver's
    ``strategy.__file__``) stands in for that one.
    """
    files = []
    for klass in cls.__mro__:
        module = klass.__module__.split(".")[0]
        if module in ("freqtrade", "builtins", "abc", "ml"):
            continue
        try:
            files.append(Path(inspect.getfile(klass)).resolve())
        except (TypeError, OSError):
            if loaded_from and klass is cls:
                files.append(Path(loaded_from).resolve())
    return sorted(set(files))


def _data_files(config: dict[str, Any], pairs: list[str]) -> list[Path]:
    """Every candle file of the whitelisted pairs (any timeframe: informative pairs too)."""
    datadir = Path(config["datadir"])
    stems = {pair.replace("/", "_").replace(":", "_") for pair in pairs}
    return sorted(p for p in datadir.rglob("*") if p.is_file() and any(p.name.startswith(s + "-") for s in stems))


def span_key(config_path: str | Path, config: dict[str, Any], cls: type, pairs: list[str],
             loaded_from: str | None = None) -> str | None:
    """What a label backtest's trades depend on, except its timerange; None (no caching)
    when the strategy's source file cannot be found, since a change to it could then go
    unnoticed. Runs with the same span key differ only in their range (see
    :func:`_slice_of_longer_run`)."""
    import freqtrade

    digest = hashlib.sha256()
    digest.update(json.dumps({"format": CACHE_FORMAT, "freqtrade": freqtrade.__version__,
                              "timeframe": config.get("timeframe"),
                              "strategy": cls.__name__, "pairs": sorted(pairs)}, sort_keys=True).encode())
    # The config file without its "ml" section: the gate's settings never change the
    # un-gated strategy's trades, so tuning them must not re-run the backtest.
    raw = json.loads(Path(config_path).read_text())
    raw.pop("ml", None)
    digest.update(json.dumps(raw, sort_keys=True).encode())
    sources = _source_files(cls, loaded_from)
    if not sources:
        return None
    # freqtrade's parameter file beside a strategy (hyperopt's export) changes its trades too.
    params = [p.with_suffix(".json") for p in sources if p.with_suffix(".json").is_file()]
    for path in [*sources, *params, *_data_files(config, pairs)]:
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    digest.update(str(config.get("startup_candle_count")).encode())
    return digest.hexdigest()[:24]


def cache_key(span: str | None, timerange: str | None) -> str | None:
    """The label backtest's cache key: its span key and its timerange."""
    if span is None:
        return None
    return hashlib.sha256(json.dumps([span, timerange]).encode()).hexdigest()[:24]


def _index_span(config: dict[str, Any], span: str, key: str, start: pd.Timestamp, end: pd.Timestamp) -> None:
    index = _cache_dir(config) / "spans" / f"{span}.jsonl"
    index.parent.mkdir(parents=True, exist_ok=True)
    with index.open("a") as f:  # one short line per write: concurrent writers do not interleave
        f.write(json.dumps({"key": key, "start": str(start), "end": str(end)}) + "\n")


def _slice_of_longer_run(config: dict[str, Any], span: str, start: pd.Timestamp,
                         end: pd.Timestamp) -> tuple[pd.DataFrame, dict[str, Any]] | None:
    """The trades of ``[start, end]`` cut from a cached run over a longer range, or None.

    Exact, because every signal becomes a trade (position stacking, no open-trade limit, a
    wallet that never runs dry): a trade depends only on its own candles, not on the others.
    The range's trades are those opened after ``start`` and closed by ``end``; one still
    open at ``end`` is unresolved, as the engine's force exit at the end of the data makes it.
    (The strategy's indicators warm up on more history in the longer run; with an honest
    ``startup_candle_count`` that changes nothing.)"""
    index = _cache_dir(config) / "spans" / f"{span}.jsonl"
    try:
        runs = [json.loads(line) for line in index.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return None
    for run in runs:
        if pd.Timestamp(run["start"]) <= start and pd.Timestamp(run["end"]) >= end:
            cached = _read_cache(_cache_dir(config) / run["key"])
            if cached is None:
                continue
            trades, meta = cached
            # As a backtest of [start, end] runs: freqtrade shifts each signal onto the next
            # candle after cutting the range, so nothing opens on its first candle (a signal
            # before the range) nor on its last.
            opened = (trades["open_date"] > start) & (trades["open_date"] < end)
            closed = opened & (trades["close_date"] <= end)
            info = {**meta.get("info", {}), "start": str(start), "end": str(end), "sliced_from": run["key"]}
            left_open = int(meta.get("unresolved", 0)) if pd.Timestamp(run["end"]) == end else 0
            meta = {**meta, "unresolved": int((opened & ~closed).sum()) + left_open, "info": info}
            return trades[closed].reset_index(drop=True), meta
    return None


def _cache_dir(config: dict[str, Any]) -> Path:
    return Path(config["user_data_dir"]) / "ftml-cache" / "trades"


def _read_cache(folder: Path) -> tuple[pd.DataFrame, dict[str, Any]] | None:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        trades = pd.read_feather(folder / "trades.feather")
    except (OSError, ValueError):
        return None
    if meta.get("format") != CACHE_FORMAT or list(trades.columns) != TRADE_COLUMNS:
        return None
    return trades, meta


def _write_cache(folder: Path, trades: pd.DataFrame, meta: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"trades.feather.{os.getpid()}.tmp"
    trades.reset_index(drop=True).to_feather(tmp)
    os.replace(tmp, folder / "trades.feather")
    (folder / "meta.json").write_text(json.dumps({"format": CACHE_FORMAT, **meta}, indent=2))


def strategy_trades(config_path: str | Path, strategy: str, timerange: str | None = None,
                    pairs: list[str] | None = None, use_cache: bool = True, engineer=None) -> TradeRun:
    """Run (or reuse) the label backtest of ``strategy``; see the module docstring.

    ``engineer``: the FeatureEngineer the model will use. The backtest warms up at least as
    long as its features need, as the gated strategy does (MLGate raises its
    startup_candle_count), so indicators with a long memory (EMA, RSI) give the same signals
    in both. With ``include_columns`` it also keeps those columns of the strategy's own
    indicators, per pair, for the features.
    """
    from freqtrade.data.converter import trim_dataframes
    from freqtrade.data.history import get_timerange
    from freqtrade.optimize.backtesting import Backtesting

    from ml.offline import install

    config = backtest_config(config_path, strategy, timerange, pairs)
    install(offline=True)
    try:
        backtesting = Backtesting(config)
    except Exception as err:  # noqa: BLE001 - freqtrade's own errors name the problem
        raise StrategyError(f"freqtrade cannot load strategy {strategy!r}: {_first_line(err)}") from err
    strat = backtesting.strategylist[0]
    cls = ungated_class(type(strat))
    startup = max(int(strat.startup_candle_count), engineer.startup_candles if engineer is not None else 0)
    strat.startup_candle_count = backtesting.required_startup = config["startup_candle_count"] = startup
    whitelist = list(backtesting.pairlists.whitelist)
    # Keyed by the user's class: the gate never changes the un-gated trades.
    loaded_from = getattr(strat, "__file__", None) if type(strat) is cls else None
    # One hash of the data files for both keys (large data directories take seconds to read).
    span = span_key(config_path, config, cls, whitelist, loaded_from)
    key = cache_key(span, config.get("timerange"))
    if key is None:
        use_cache = False
        logger.warning("Label backtest of %s: its source file cannot be found, so the backtest is not cached.",
                       cls.__name__)
    folder = _cache_dir(config) / (key or "uncached")
    data, bt_range = backtesting.load_bt_data()
    candles = {pair: frame.copy() for pair, frame in data.items()}
    cached = _read_cache(folder) if use_cache else None
    wanted = engineer is not None and bool(engineer.settings.include_columns)
    if cached is None and use_cache and span is not None and (in_range := trim_dataframes(
            data, bt_range, backtesting.required_startup)):
        cached = _slice_of_longer_run(config, span, *get_timerange(in_range))
    if cached is not None:
        trades, meta = cached
        indicators = _user_indicators(strat, data, engineer) if wanted else {}
        source = f"the trades of {meta['info']['start']} .. {meta['info']['end']} in the longer cached run " \
                 f"{meta['info']['sliced_from']}" if "sliced_from" in meta.get("info", {}) else f"the cache {folder}"
        logger.info("Label backtest of %s: using %s (%d trades); it is keyed by the strategy files, "
                    "the config, the data and the timerange.", cls.__name__, source, len(trades))
        return TradeRun(cls.__name__, backtesting.timeframe, bool(strat.can_short), trades, candles,
                        int(meta["unresolved"]), True, key, meta.get("info", {}), indicators)

    logger.info("Label backtest of %s over %d pairs (every signal becomes a trade) ...", cls.__name__, len(whitelist))
    backtesting._set_strategy(strat)
    _freeze_wallet(backtesting)
    processed = strat.advise_all_indicators(data)
    # Before the backtest: it empties `processed` as it goes.
    indicators = {pair: _chosen(frame, engineer) for pair, frame in processed.items()} if wanted else {}
    trimmed = trim_dataframes(processed, bt_range, backtesting.required_startup)
    if not trimmed:
        raise StrategyError(f"No candles left for {strategy} after its {backtesting.required_startup} startup "
                            f"candles in timerange {timerange}: use a longer timerange.")
    start, end = get_timerange(trimmed)
    try:
        with fast_trade_copies():
            results = _backtest_by_pair_groups(backtesting, processed, start, end, label_workers(len(processed)))
    except Exception as err:  # noqa: BLE001 - a strategy's own bug, or freqtrade refusing the data
        raise StrategyError(f"freqtrade's backtest of {strategy} failed: {type(err).__name__}: {_first_line(err)}") from err
    if results.empty:
        results = pd.DataFrame(columns=TRADE_COLUMNS)
    results = results.assign(is_short=results.get("is_short", False))
    # Trades the engine closed only because the data ended ("force_exit" at the last
    # candle): their outcome is not known, so they are not labels.
    left_open = results["exit_reason"].astype(str) == "force_exit"
    # A total order (not the engine's close order), so that one process and several give
    # the same rows in the same order.
    trades = results.loc[~left_open, TRADE_COLUMNS].sort_values(["open_date", "pair", "is_short", "close_date"],
                                                                kind="stable").reset_index(drop=True)
    trades["is_short"] = trades["is_short"].astype(bool)
    trades["enter_tag"] = trades["enter_tag"].astype("string")
    trades["exit_reason"] = trades["exit_reason"].astype(str)
    info = {"start": str(start), "end": str(end), "pairs": whitelist, "exits": exit_settings(strat)}
    if key is not None:
        _write_cache(folder, trades, {"strategy": cls.__name__, "unresolved": int(left_open.sum()), "info": info})
        if span is not None:
            _index_span(config, span, key, start, end)
    logger.info("Label backtest of %s: %d closed trades (%d left open at the end, not used)%s.", cls.__name__,
                len(trades), int(left_open.sum()), f"; cached in {folder}" if key else "")
    return TradeRun(cls.__name__, backtesting.timeframe, bool(strat.can_short), trades, candles,
                    int(left_open.sum()), False, key or "", info, indicators)


def _freeze_wallet(backtesting) -> None:
    """Skip freqtrade's wallet recount after every entry and exit (a tenth of the label
    backtest's time): the label wallet never runs dry, so every trade is the same with the
    starting balance (counted when the wallet was made) as with a recount (a test compares
    them)."""
    backtesting.wallets.update = lambda *args, **kwargs: None


def label_workers(n_pairs: int) -> int:
    """Processes for the label backtest: the cores this process may use, at most one per
    pair; ``FTML_LABEL_WORKERS`` overrides (1: in this process)."""
    from ml.models import available_cores

    wanted = os.environ.get("FTML_LABEL_WORKERS")
    cores = int(wanted) if wanted and wanted.isdigit() and int(wanted) > 0 else available_cores()
    return max(1, min(cores, n_pairs))


_FORKED: dict[str, Any] = {}  # what forked workers inherit: the Backtesting object and candles


def _backtest_pairs(pairs: list[str]) -> pd.DataFrame:
    backtesting, processed, start, end = (_FORKED[k] for k in ("backtesting", "processed", "start", "end"))
    return backtesting.backtest(processed={p: processed[p] for p in pairs}, start_date=start, end_date=end)["results"]


def _backtest_by_pair_groups(backtesting, processed: dict[str, pd.DataFrame], start, end,
                             workers: int) -> pd.DataFrame:
    """freqtrade's backtest of every pair, split over ``workers`` forked processes.

    With position stacking, unlimited open trades, protections off and a wallet that never
    runs dry, no pair's trades depend on another's, so backtesting groups of pairs apart
    gives the same trades as one run (a test compares them). The children inherit the
    loaded strategy and candles by fork (nothing is reloaded) and send back only their
    trades. A strategy whose callbacks look at other pairs' open trades (a global
    ``lock_pair('*')``, counting ``Trade.get_open_trades()``) would see only its group:
    ``FTML_LABEL_WORKERS=1`` runs it in one process.
    """
    pairs = sorted(processed)
    if workers <= 1 or len(pairs) < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return backtesting.backtest(processed=processed, start_date=start, end_date=end)["results"]
    groups = [pairs[i::workers] for i in range(workers)]
    _FORKED.update(backtesting=backtesting, processed=processed, start=start, end=end)
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_backtest_pairs, groups)
    finally:
        _FORKED.clear()
    parts = [part for part in parts if not part.empty]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=TRADE_COLUMNS)


def _chosen(frame: pd.DataFrame, engineer) -> pd.DataFrame:
    return frame[["date", *engineer.user_columns(frame)]].copy()


def _user_indicators(strat, data: dict[str, pd.DataFrame], engineer) -> dict[str, pd.DataFrame]:
    """The include_columns of the strategy's own indicators (a cache hit has no backtest run)."""
    return {pair: _chosen(frame, engineer) for pair, frame in strat.advise_all_indicators(data).items()}


def strategy_name(config_path: str | Path, strategy: str) -> str:
    """The user's strategy class behind ``strategy`` (``MyStrategyML`` -> ``MyStrategy``):
    the name its model is registered under."""
    from freqtrade.resolvers import StrategyResolver

    config = backtest_config(config_path, strategy, None)
    try:
        loaded = StrategyResolver.load_strategy(config)
    except Exception as err:  # noqa: BLE001 - freqtrade's own errors name the problem
        raise StrategyError(f"freqtrade cannot load strategy {strategy!r}: {_first_line(err)}") from err
    return ungated_class(type(loaded)).__name__
