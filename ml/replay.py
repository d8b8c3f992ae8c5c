"""Replay: freqtrade's real bot (``Worker`` and ``FreqtradeBot``) on stored candles, offline.

``ftml freqtrade --offline --replay START[:SPEED] [--replay-until DATE | --replay-candles N]
trade --dry-run ...`` runs ``freqtrade trade`` unchanged, with two things replaced:

* **the clock** (time-machine): it starts at START (+1 s, freqtrade's own offset after a
  candle closes) and jumps to the next candle's close each time the bot would sleep, so one
  bot iteration is one candle; SPEED caps the candles per second of wall time;
* **the exchange's data calls** (``PATCHED``): candles, tickers, order books and bids/asks
  come from the candle files in the data directory. A candle is served only once it has
  closed on the replayed clock, so the bot cannot see the future; the price of the moment is
  the open of the forming candle (the price a backtest fills an entry at), with an order book
  of that one price and no spread. Dry-run orders fill there by freqtrade's own dry-run code.

Markets come from ``ml.offline`` (cache or data), websockets are off, nothing reaches the
network. The run ends cleanly at ``--replay-until`` / after ``--replay-candles`` (freqtrade's
own shutdown), leaving the trades in the replay's sqlite database and a summary JSON beside
it, which ``ftml replay-report`` compares with a backtest over the same candles.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ml.errors import FtmlError

logger = logging.getLogger("ftml.replay")

FREQTRADE_CHECKED = "2026.9"  # the freqtrade version whose signatures PATCHED was checked against
# Every freqtrade method replay replaces, with its signature (parameter names) at
# FREQTRADE_CHECKED; tests/test_replay.py fails loudly when freqtrade changes one of them.
PATCHED = {
    "freqtrade.exchange.exchange.Exchange.__init__": ("self", "config", "exchange_config", "validate",
                                                      "load_leverage_tiers"),
    "freqtrade.exchange.exchange.Exchange._async_get_candle_history": ("self", "pair", "timeframe", "candle_type",
                                                                       "since_ms"),
    "freqtrade.exchange.exchange.Exchange.fetch_ticker": ("self", "pair"),
    "freqtrade.exchange.exchange.Exchange.get_tickers": ("self", "symbols", "cached", "market_type"),
    "freqtrade.exchange.exchange.Exchange.fetch_bids_asks": ("self", "symbols", "cached"),
    "freqtrade.exchange.exchange.Exchange.fetch_l2_order_book": ("self", "pair", "limit"),
    "freqtrade.worker.Worker._sleep": ("sleep_duration",),
}
SECOND = timedelta(seconds=1)
DATE_FORMATS = ("%Y%m%d", "%Y-%m-%d", "%Y%m%d%H%M", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S")
PROGRESS_EVERY = 100  # candles between two progress lines


class ReplayFinished(KeyboardInterrupt):
    """Raised from the bot's sleep at the end of the replay: freqtrade handles it as Ctrl-C,
    so its own shutdown (worker.exit, database cleanup) runs."""


def parse_date(text: str) -> datetime:
    for fmt in DATE_FORMATS:
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    raise FtmlError(f"replay: {text!r} is not a date; use YYYYMMDD, YYYY-MM-DD or YYYY-MM-DDTHH:MM (UTC)")


def parse_replay(text: str) -> tuple[datetime, float]:
    """``START[:SPEED]`` -> (start, candles per second; 0 = as fast as the bot goes)."""
    start_text, speed = text, 0.0
    head, _, tail = text.rpartition(":")
    if head and re.fullmatch(r"\d+(\.\d+)?", tail):
        try:
            parse_date(head)
            start_text, speed = head, float(tail)
        except FtmlError:
            pass  # the colon belongs to the time of day
    if speed < 0:
        raise FtmlError(f"replay: SPEED must be positive candles per second, got {speed}")
    return parse_date(start_text), speed


@dataclass
class ReplaySettings:
    start: datetime
    speed: float = 0.0
    until: datetime | None = None
    candles: int | None = None
    summary_path: Path | None = None


@dataclass
class ReplayStats:
    """What a replay measured; written as JSON beside its database."""

    start: str
    end: str = ""
    timeframe: str = ""
    candles: int = 0
    wall_s: float = 0.0
    strategy_s_per_candle: float = 0.0
    rss_mb_at_500: float | None = None
    rss_mb_end: float = 0.0
    db_url: str = ""
    strategy: str = ""
    analyze_s: list[float] = field(default_factory=list, repr=False)


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


# ---------------------------------------------------------------- stored candles
class CandleStore:
    """The candle files of the data directory, loaded once per (pair, timeframe, type)."""

    def __init__(self, datadir: Path, data_format: str, timeframe: str, candle_type_def: Any) -> None:
        from freqtrade.data.history.datahandlers import get_datahandler

        self.datadir = Path(datadir)
        self.handler = get_datahandler(self.datadir, data_format)
        self.timeframe = timeframe
        self.candle_type_def = candle_type_def
        self._frames: dict[tuple, Any] = {}

    def arrays(self, pair: str, timeframe: str, candle_type) -> tuple[Any, Any]:
        """(open times in ms, rows [date_ms, o, h, l, c, v]) of a stored series; empty if none."""
        import numpy as np
        from freqtrade.enums import CandleType

        key = (pair, timeframe, str(candle_type))
        if key not in self._frames:
            kind = CandleType.from_string(str(candle_type)) if candle_type else CandleType.SPOT
            frame = self.handler.ohlcv_load(pair, timeframe, kind, fill_missing=False, warn_no_data=False)
            times = frame["date"].dt.as_unit("ms").astype("int64").to_numpy() if len(frame) else np.zeros(0, "int64")
            rows = np.column_stack([times, frame[["open", "high", "low", "close", "volume"]].to_numpy(float)]) \
                if len(frame) else np.zeros((0, 6))
            self._frames[key] = (times, rows)
        return self._frames[key]

    def closed(self, pair: str, timeframe: str, candle_type, since_ms: int | None, limit: int,
               now: datetime) -> list[list]:
        """Candles closed at ``now``: from ``since_ms`` on (first ``limit``), else the newest ``limit``."""
        import numpy as np
        from freqtrade.exchange import timeframe_to_msecs

        times, rows = self.arrays(pair, timeframe, candle_type)
        closed_end = int(np.searchsorted(times, _ms(now) - timeframe_to_msecs(timeframe), side="right"))
        if since_ms is None:
            begin = max(0, closed_end - limit)
        else:
            begin = int(np.searchsorted(times, since_ms, side="left"))
        end = min(closed_end, begin + limit)
        return [[int(r[0]), *map(float, r[1:])] for r in rows[begin:end]]

    def price(self, pair: str, now: datetime) -> float | None:
        """The open of the candle forming at ``now`` (the last close if the data ends)."""
        import numpy as np

        times, rows = self.arrays(pair, self.timeframe, self.candle_type_def)
        i = int(np.searchsorted(times, _ms(now), side="right")) - 1
        if i < 0:
            return None
        return float(rows[i, 1])


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _store(exchange) -> CandleStore:
    store = getattr(exchange, "_ftml_candles", None)
    if store is None:
        cfg = exchange._config
        store = CandleStore(cfg["datadir"], cfg.get("dataformat_ohlcv", "feather"), cfg["timeframe"],
                            cfg["candle_type_def"])
        exchange._ftml_candles = store
    return store


def _now() -> datetime:
    return datetime.now(UTC)


def ticker(exchange, pair: str) -> dict[str, Any]:
    from freqtrade.exceptions import TemporaryError

    price = _store(exchange).price(pair, _now())
    if price is None:
        raise TemporaryError(f"Replay has no candle of {pair} at {_now():%Y-%m-%d %H:%M}")
    # On the market's price grid, as an exchange quotes: freqtrade rounds its limit price to
    # it, and an unrounded quote would leave that limit a hair off the book, unfilled.
    price = exchange.price_to_precision(pair, price)
    return {"symbol": pair, "timestamp": _ms(_now()), "datetime": _now().isoformat(), "last": price,
            "bid": price, "ask": price, "close": price, "open": price, "high": price, "low": price,
            "bidVolume": None, "askVolume": None, "quoteVolume": None, "baseVolume": None,
            "percentage": None, "info": {"ftml_replay": True}}


# ---------------------------------------------------------------- patches
def _patch_exchange() -> None:
    from freqtrade.exchange.exchange import Exchange

    original_init = Exchange.__init__

    def init_without_websockets(self, config, *, exchange_config=None, **kwargs) -> None:
        # Websocket OHLCV would bypass the replayed candles (and needs a network).
        for conf in (config.get("exchange"), exchange_config):
            if conf is not None:
                conf["enable_ws"] = False
        original_init(self, config, exchange_config=exchange_config, **kwargs)

    async def candle_history(self, pair, timeframe, candle_type, since_ms=None):
        limit = self.ohlcv_candle_limit(timeframe, candle_type=candle_type, since_ms=since_ms)
        data = _store(self).closed(pair, timeframe, candle_type, since_ms, limit, _now())
        return pair, timeframe, candle_type, data, False  # only closed candles: nothing to drop

    def fetch_ticker(self, pair):
        return ticker(self, pair)

    def get_tickers(self, symbols=None, *, cached=False, market_type=None):
        return {pair: ticker(self, pair) for pair in (symbols or self.markets)
                if _store(self).price(pair, _now()) is not None}

    def fetch_bids_asks(self, symbols=None, *, cached=False):
        return get_tickers(self, symbols)

    def fetch_l2_order_book(self, pair, limit=100):
        price = ticker(self, pair)["last"]
        depth = 1e12  # one price, unlimited depth: fills at the replayed price
        return {"symbol": pair, "bids": [[price, depth]], "asks": [[price, depth]], "timestamp": _ms(_now()),
                "datetime": _now().isoformat(), "nonce": None}

    Exchange.__init__ = init_without_websockets
    Exchange._async_get_candle_history = candle_history
    Exchange.fetch_ticker = fetch_ticker
    Exchange.get_tickers = get_tickers
    Exchange.fetch_bids_asks = fetch_bids_asks
    Exchange.fetch_l2_order_book = fetch_l2_order_book


class ReplayClock:
    """The replayed time: one candle per bot iteration, paced to SPEED candles per second."""

    def __init__(self, settings: ReplaySettings, timeframe: str) -> None:
        import time_machine

        self.settings, self.timeframe = settings, timeframe
        self.stats = ReplayStats(start=settings.start.isoformat(), timeframe=timeframe)
        self._traveller = time_machine.travel(settings.start + SECOND, tick=False)
        self._coordinates = None
        self._wall_start = self._last_tick = time.monotonic()

    def start(self) -> None:
        self._coordinates = self._traveller.start()
        logger.warning("REPLAY: the clock is %s; candles, tickers and order books come from the data directory, "
                       "one candle per bot iteration%s. Nothing reaches an exchange.", _now().isoformat(),
                       f", {self.settings.speed:g} candles/s" if self.settings.speed else "")

    def stop(self) -> None:
        if self._coordinates is not None:
            self._traveller.stop()
            self._coordinates = None

    def sleep(self, sleep_duration: float) -> None:
        """Worker._sleep: jump to 1 s after the next candle closes, or end the replay."""
        from freqtrade.exchange import timeframe_to_next_date

        nxt = timeframe_to_next_date(self.timeframe, _now() - SECOND) + SECOND
        stats = self.stats
        stats.candles += 1
        if stats.candles == 500:
            stats.rss_mb_at_500 = rss_mb()
        until, count = self.settings.until, self.settings.candles
        if (until is not None and nxt > until + SECOND) or (count is not None and stats.candles >= count):
            self.finish()
            raise ReplayFinished()
        if self.settings.speed:
            time.sleep(max(0.0, 1.0 / self.settings.speed - (time.monotonic() - self._last_tick)))
        self._last_tick = time.monotonic()
        if stats.candles % PROGRESS_EVERY == 0:
            rate = stats.candles / max(time.monotonic() - self._wall_start, 1e-9)
            logger.info("Replay: candle %d at %s (%.1f candles/s).", stats.candles, nxt - SECOND, rate)
        self._coordinates.move_to(nxt)

    def finish(self) -> None:
        stats = self.stats
        stats.end = (_now() - SECOND).isoformat()
        stats.wall_s = round(time.monotonic() - self._wall_start, 3)
        stats.rss_mb_end = round(rss_mb(), 1)
        if stats.analyze_s:
            stats.strategy_s_per_candle = round(sum(stats.analyze_s) / len(stats.analyze_s), 5)
        logger.warning("Replay finished at %s: %d candles in %.1f s; trades are in %s.", stats.end,
                       stats.candles, stats.wall_s, stats.db_url)
        if self.settings.summary_path is not None:
            summary = {k: v for k, v in asdict(stats).items() if k != "analyze_s"}
            self.settings.summary_path.write_text(json.dumps(summary, indent=2) + "\n")


def _time_the_strategy(clock: ReplayClock) -> None:
    """Measure freqtrade's per-iteration analysis of every pair (the strategy's cost per candle)."""
    from freqtrade.strategy.interface import IStrategy

    original = IStrategy.analyze

    def analyze(self, pairs):
        began = time.perf_counter()
        try:
            return original(self, pairs)
        finally:
            clock.stats.analyze_s.append(time.perf_counter() - began)

    IStrategy.analyze = analyze


def install(settings: ReplaySettings, config: dict[str, Any]) -> ReplayClock:
    """Patch freqtrade for a replay and start the replayed clock (call before freqtrade runs)."""
    from freqtrade.worker import Worker

    _patch_exchange()
    clock = ReplayClock(settings, config["timeframe"])
    clock.stats.strategy = config.get("strategy", "")
    Worker._sleep = staticmethod(clock.sleep)
    _time_the_strategy(clock)
    clock.start()
    return clock


# ---------------------------------------------------------------- command line
def _arg(args: list[str], *names: str) -> str | None:
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def prepare(args: list[str], settings: ReplaySettings) -> tuple[list[str], dict[str, Any]]:
    """Check a replay's freqtrade arguments; add its own database; return (args, config)."""
    from ml.cli import freqtrade_settings
    from ml.config import read_json

    if not args or args[0] != "trade":
        raise FtmlError("--replay runs the bot: use `ftml freqtrade --offline --replay START trade --dry-run ...`")
    if "--dry-run" not in args:
        raise FtmlError("--replay needs `trade --dry-run`: a replay must never place real orders")
    config_path = _arg(args, "-c", "--config") or "config.json"
    if not Path(config_path).is_file():
        raise FtmlError(f"replay: no config file {config_path}; pass -c CONFIG")
    raw = read_json(config_path)
    config = {**freqtrade_settings(config_path), "trading_mode": raw.get("trading_mode", "spot"),
              "strategy": _arg(args, "-s", "--strategy") or raw.get("strategy", "")}
    _check_data(config, settings)
    given = _arg(args, "--db-url")
    if given is None:
        folder = Path(config["user_data_dir"]) / "replay"
        folder.mkdir(parents=True, exist_ok=True)
        db = folder / f"{config['strategy'] or 'replay'}.sqlite"
        if db.exists():  # the replay's own scratch database: a new replay starts from no trades
            db.unlink()
            logger.info("Replay: removed the previous replay database %s.", db)
        args = [*args, "--db-url", f"sqlite:///{db.resolve()}"]
    elif given.startswith("sqlite:///") and Path(given[len("sqlite:///"):]).exists():
        raise FtmlError(f"replay: {given} exists; a replay writes trades dated in the past, so it needs a new "
                        "database (leave --db-url out to use user_data/replay/<strategy>.sqlite)")
    db_url = _arg(args, "--db-url") or ""
    settings.summary_path = summary_path(db_url)
    if settings.summary_path is not None:
        settings.summary_path.unlink(missing_ok=True)  # a stale summary would describe another run
    config["db_url"] = db_url
    return args, config


def summary_path(db_url: str) -> Path | None:
    """The replay summary beside a sqlite database (None for another database)."""
    if not db_url.startswith("sqlite:///"):
        return None
    return Path(db_url[len("sqlite:///"):]).with_suffix(".replay.json")


def _check_data(config: dict[str, Any], settings: ReplaySettings) -> None:
    """Every literal whitelist pair has candles at START: else the bot would loop on errors."""
    from freqtrade.enums import CandleType

    kind = CandleType.FUTURES if config["trading_mode"] == "futures" else CandleType.SPOT
    store = CandleStore(config["datadir"], config["data_format"], config["timeframe"], kind)
    pairs = [p for p in config["pairs"] if re.fullmatch(r"[\w.-]+/[\w.-]+(:[\w.-]+)?", p)]
    missing = [p for p in pairs if store.price(p, settings.start) is None]
    if missing:
        raise FtmlError(f"replay: no {config['timeframe']} candles at or before {settings.start:%Y-%m-%d %H:%M} for "
                        f"{', '.join(missing)} in {store.datadir}. Pick a later START or get the data first.")
    if settings.until is not None and settings.until <= settings.start:
        raise FtmlError("replay: --replay-until must be after START")


def run(args: list[str], settings: ReplaySettings, freqtrade_main) -> int:
    """Run ``freqtrade trade`` under the replay; freqtrade's exit code."""
    args, config = prepare(args, settings)
    os.environ.setdefault("FTML_REPLAY", "1")
    clock = install(settings, config)
    clock.stats.db_url = config["db_url"]
    try:
        code = freqtrade_main(args)
    finally:
        clock.stop()
    # freqtrade exits 130 after Ctrl-C: the replay's own clean end is success.
    return 0 if code == 130 and clock.stats.end else code
