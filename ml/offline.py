"""Run freqtrade's own CLI with exchange markets from disk instead of the network.

Freqtrade loads the exchange's markets at start, so every command needs the network.
``ftml freqtrade --offline ...`` patches exactly one thing, the exchange's market loading:

1. ``user_data/markets/<exchange>.json`` when present: the exchange's real markets,
   cached by an earlier online run of ``ftml freqtrade`` (real precision, limits, fees);
2. otherwise markets built from the config's pairs and the pairs in the data directory,
   with a generic precision and a 0.1% fee; this is said once in the log.

Without ``--offline`` the command is plain freqtrade, plus caching the markets it loaded.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger("ftml.offline")

DEFAULT_FEE = 0.001
_TICK_SIZE, _DECIMAL_PLACES = 4, 2  # ccxt precision modes


def cache_path(config: dict[str, Any]) -> Path:
    """Where the markets of the config's exchange are cached."""
    exchange = config["exchange"]["name"].lower()
    return Path(config["user_data_dir"]) / "markets" / f"{exchange}.json"


def _data_pairs(config: dict[str, Any]) -> list[str]:
    from freqtrade.data.history.datahandlers.idatahandler import get_datahandlerclass
    from freqtrade.enums import TradingMode

    handler = get_datahandlerclass(config.get("dataformat_ohlcv", "feather"))
    mode = TradingMode.FUTURES if config.get("trading_mode") == "futures" else TradingMode.SPOT
    found = handler.ohlcv_get_available_data(Path(config["datadir"]), mode)
    return sorted({pair for pair, _, _ in found})


def _wanted_pairs(config: dict[str, Any]) -> list[str]:
    """Literal whitelist pairs plus every pair with data (regex whitelists need those)."""
    literal = [
        p for p in config["exchange"].get("pair_whitelist", []) if re.fullmatch(r"[\w.-]+/[\w.-]+(:[\w.-]+)?", p)
    ]
    return sorted(set(literal) | set(_data_pairs(config)))


def synthetic_market(pair: str, precision_mode: int, fee: float = DEFAULT_FEE) -> dict[str, Any]:
    """A ccxt-style market that freqtrade accepts, for a pair we only have data for: spot,
    or a linear perpetual swap for a futures pair (``ETH/USDT:USDT``)."""
    base, quote = pair.split(":")[0].split("/")
    settle = pair.split(":")[1] if ":" in pair else None
    digits = 8
    step = 10.0**-digits if precision_mode == _TICK_SIZE else digits
    market = _spot_market(pair, base, quote, step, fee)
    if settle:
        market.update({"id": f"{base}{quote}_PERP", "type": "swap", "spot": False, "swap": True,
                       "contract": True, "linear": True, "inverse": False, "contractSize": 1.0,
                       "settle": settle, "settleId": settle})
        market["limits"]["leverage"] = {"min": 1.0, "max": 20.0}
    return market


def _spot_market(pair: str, base: str, quote: str, step: float, fee: float) -> dict[str, Any]:
    return {
        "id": f"{base}{quote}",
        "symbol": pair,
        "base": base,
        "quote": quote,
        "baseId": base,
        "quoteId": quote,
        "settle": None,
        "settleId": None,
        "type": "spot",
        "spot": True,
        "margin": False,
        "swap": False,
        "future": False,
        "option": False,
        "contract": False,
        "linear": None,
        "inverse": None,
        "contractSize": None,
        "active": True,
        "taker": fee,
        "maker": fee,
        "percentage": True,
        "tierBased": False,
        "precision": {"amount": step, "price": step, "base": step, "quote": step},
        "limits": {
            "amount": {"min": None, "max": None},
            "price": {"min": None, "max": None},
            "cost": {"min": None, "max": None},
            "leverage": {"min": None, "max": None},
        },
        "info": {"ftml_offline": True},
    }


def offline_markets(config: dict[str, Any], precision_mode: int) -> tuple[list[dict], str]:
    """Markets for an offline run, and a sentence saying where they came from."""
    wanted = _wanted_pairs(config)
    cached_file = cache_path(config)
    markets: dict[str, dict] = {}
    if cached_file.is_file():
        markets = json.loads(cached_file.read_text())
        source = f"markets from the cache {cached_file} ({len(markets)} markets)"
    else:
        source = (
            f"no market cache at {cached_file}: markets built from the config and data "
            f"({len(wanted)} pairs, fee {DEFAULT_FEE:.2%}, generic precision). Run any "
            "`ftml freqtrade` command once with a network to cache the exchange's real markets"
        )
    missing = [p for p in wanted if p not in markets]
    for pair in missing:
        markets[pair] = synthetic_market(pair, precision_mode)
    if cached_file.is_file() and missing:
        source += f"; {len(missing)} pairs not in the cache built from the data: {', '.join(missing)}"
    return list(markets.values()), source


def _write_cache(config: dict[str, Any], markets: dict[str, Any]) -> None:
    path = cache_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(markets, default=str))
    os.replace(tmp, path)
    logger.info("Cached %d markets to %s for offline runs.", len(markets), path)


def install(offline: bool) -> None:
    """Patch freqtrade's market loading: from disk (offline) or cache after loading (online);
    and its per-pair price precision with the same result, faster (ml.tick_size)."""
    from freqtrade.exchange.exchange import Exchange

    from ml import tick_size

    tick_size.install()

    original = Exchange._api_reload_markets
    said = {"source": False}

    async def reload_offline(self: Exchange, reload: bool = False) -> None:
        markets, source = offline_markets(self._config, self._api_async.precisionMode)
        if not said["source"]:
            logger.warning("Offline mode: %s.", source)
            said["source"] = True
        self._api_async.set_markets(markets)

    async def reload_and_cache(self: Exchange, reload: bool = False) -> None:
        await original(self, reload)
        try:
            _write_cache(self._config, self._api_async.markets)
        except (OSError, TypeError, KeyError) as err:  # caching is a convenience only
            logger.warning("Could not cache markets: %s", err)

    Exchange._api_reload_markets = reload_offline if offline else reload_and_cache
    if offline:
        # The time-offset check asks the exchange's clock: there is none offline.
        Exchange.check_time_offset = lambda self: None


class _RefusedConfig:
    """Notes freqtrade's "Configuration error" log line: freqtrade then exits 0 although
    nothing ran (seen: a 5m strategy needing more startup candles than the exchange gives,
    a timerange freqtrade cannot parse). It wraps the ``error`` method of freqtrade's
    logger object: freqtrade's logging setup (dictConfig) drops handlers added before it."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self._logger = logging.getLogger("freqtrade")

    def _error(self, msg, *args, **kwargs) -> None:
        message = str(msg) % args if args else str(msg)
        if message.startswith("Configuration error"):
            self.messages.append(message.split("\n")[0])
        type(self._logger).error(self._logger, msg, *args, **kwargs)

    def __enter__(self) -> _RefusedConfig:
        self._logger.error = self._error  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc) -> None:
        del self._logger.error


STARTUP_HINT = (" For the gated strategies the FeatureEngineer's warm-up sets startup_candle_count: at short "
                "timeframes use fewer/shorter ml.features.higher_timeframes (at 5m: [\"1h\"]) or smaller "
                "ml.features.periods.")


def _exit_code(freqtrade_main, args: list[str]) -> int:
    try:
        freqtrade_main(args)
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)


def run_freqtrade(args: list[str], offline: bool, replay=None) -> int:
    """Run freqtrade's CLI in this process with the market patch (and, with ``replay``, the
    replayed clock and exchange of ``ml.replay``); return its exit code (2, with one line
    saying why, where freqtrade refused its configuration but exited 0)."""
    install(offline)
    from freqtrade.main import main as freqtrade_main

    with _RefusedConfig() as refused:
        if replay is not None:
            from ml.replay import run as run_replay

            code = run_replay(args, replay, lambda a: _exit_code(freqtrade_main, a))
        else:
            code = _exit_code(freqtrade_main, args)
    if code == 0 and refused.messages:
        hint = STARTUP_HINT if "candles to start" in refused.messages[0] else ""
        print(f"ftml: error: freqtrade refused the configuration, nothing ran: {refused.messages[0]}.{hint}",
              file=sys.stderr)
        return 2
    return code


class BacktestError(RuntimeError):
    """freqtrade's backtest failed; the message is freqtrade's own."""


def backtest(config_file: str | Path, strategies: list[str], timerange: str, export: str | Path) -> dict[str, Any]:
    """``freqtrade backtesting --strategy-list ... --export trades`` with offline markets, in
    this process (a second interpreter costs seconds and its own copy of every library);
    returns the per-strategy stats freqtrade exported to ``export`` (an existing folder)."""
    import contextlib
    import io

    from freqtrade.commands.optimize_commands import setup_optimize_configuration
    from freqtrade.data.btanalysis.bt_fileutils import load_backtest_stats
    from freqtrade.enums import RunMode
    from freqtrade.optimize.backtesting import Backtesting

    install(offline=True)
    args = {"config": [str(config_file)], "strategy_list": list(strategies), "timerange": timerange,
            "export": "trades", "exportdirectory": str(export), "backtest_cache": "none"}
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # freqtrade prints its result tables
            Backtesting(setup_optimize_configuration(args, RunMode.BACKTEST)).start()
    except Exception as err:  # noqa: BLE001 - freqtrade's own errors name the problem
        raise BacktestError(f"{type(err).__name__}: {err}") from err
    return load_backtest_stats(Path(export))["strategy"]


if __name__ == "__main__":  # python -m ml.offline [--offline] ARGS
    flag = "--offline" in sys.argv[1:2]
    sys.exit(run_freqtrade(sys.argv[2:] if flag else sys.argv[1:], flag))
