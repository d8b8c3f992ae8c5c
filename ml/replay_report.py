"""``ftml replay-report``: the replay bot's entries next to a backtest's over the same candles.

Entries are keyed by (pair, candle, side): a live entry fills 1 s after its signal candle
closed, at the open of the next candle, the candle a backtest enters on. A difference is
explained when the other run still held a trade on that pair then (freqtrade opens one
trade per pair): an earlier exit filled at another candle, which is the documented
difference between live and backtest fills (a backtest's stoploss and ROI fill inside the
candle at the stop/ROI price; the bot sees one price per candle, the open, see ml.replay).
Anything else is listed as unexplained, and the command exits 1.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ml.errors import FtmlError

KEY = ["pair", "candle", "side"]
PRICE_TOLERANCE = 1e-4  # relative: both fill at the candle's open; the bot's price is on the price grid (a tick)


@dataclass
class ReplayComparison:
    window: tuple[str, str]
    replay_entries: int
    backtest_entries: int
    matched: int
    tags_differ: list[dict] = field(default_factory=list)
    only_replay: list[dict] = field(default_factory=list)
    only_backtest: list[dict] = field(default_factory=list)
    exits_differ: list[dict] = field(default_factory=list)
    prices_differ: list[dict] = field(default_factory=list)  # same entry, another fill price
    models: dict[str, int] = field(default_factory=dict)  # the replay's trades per recorded model

    @property
    def unexplained(self) -> list[dict]:
        return ([d for d in self.only_replay + self.only_backtest if d["why"] == "unexplained"] + self.tags_differ
                + self.prices_differ)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "unexplained": len(self.unexplained)}


def replay_trades(db_path: Path) -> pd.DataFrame:
    """The bot's trades (open and closed) with the model version the gate recorded on each."""
    if not db_path.is_file():
        raise FtmlError(f"replay-report: no replay database {db_path}; run `ftml freqtrade --offline --replay ...` "
                        "first or pass --db")
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as con:
        trades = pd.read_sql_query("SELECT id, pair, is_short, open_date, close_date, enter_tag, exit_reason, "
                                   "open_rate, close_rate FROM trades", con)
        custom = pd.read_sql_query("SELECT ft_trade_id, cd_value FROM trade_custom_data WHERE cd_key = 'ml_model'",
                                   con)
    models = dict(zip(custom["ft_trade_id"], custom["cd_value"].map(_json_str), strict=True))
    trades["ml_model"] = trades["id"].map(models).fillna("not recorded")
    return _normalise(trades)


def _json_str(value: str) -> str:
    try:
        return str(json.loads(value))
    except ValueError:
        return value


def _normalise(trades: pd.DataFrame) -> pd.DataFrame:
    trades = trades.copy()
    for col in ("open_date", "close_date"):
        trades[col] = pd.to_datetime(trades[col], utc=True, format="mixed")
    trades["side"] = trades["is_short"].astype(bool).map({False: "long", True: "short"})
    trades["enter_tag"] = trades["enter_tag"].fillna("").astype(str)
    return trades


def backtest_trades(config: str, strategy: str, start: pd.Timestamp, end: pd.Timestamp, timeframe: str,
                    folder: Path) -> pd.DataFrame:
    """freqtrade's backtest (offline runner, in process) of the replay's window."""
    from freqtrade.data.btanalysis import load_backtest_data

    from ml.offline import run_freqtrade

    last = end + pd.Timedelta(timeframe)  # the stop is exclusive: include the candle entered at `end`
    timerange = f"{int(start.timestamp())}-{int(last.timestamp())}"  # freqtrade takes epoch seconds
    code = run_freqtrade(["backtesting", "-c", config, "--strategy", strategy, "--timerange", timerange,
                          "--export", "trades", "--backtest-directory", str(folder), "--cache", "none"], offline=True)
    if code != 0:
        raise FtmlError(f"replay-report: the backtest of {strategy} over {timerange} failed (exit {code}); see above")
    return _normalise(load_backtest_data(folder, strategy))


def _held(trades: pd.DataFrame, pair: str, moment: pd.Timestamp) -> bool:
    """Did a trade on ``pair`` stay open over ``moment`` (opened before, closed at or after)?"""
    on = trades[trades["pair"] == pair]
    closes = on["close_date"].fillna(pd.Timestamp.max.tz_localize("UTC"))
    return bool(((on["open_date"] < moment) & (closes >= moment)).any())


def compare(replay: pd.DataFrame, backtest: pd.DataFrame, timeframe: str, window: tuple[str, str]) -> ReplayComparison:
    for frame in (replay, backtest):
        frame["candle"] = frame["open_date"].dt.floor(pd.Timedelta(timeframe))
    merged = replay.merge(backtest, on=KEY, how="outer", suffixes=("_replay", "_backtest"), indicator="source")
    result = ReplayComparison(window, len(replay), len(backtest), int((merged["source"] == "both").sum()),
                              models={str(k): int(v) for k, v in replay["ml_model"].value_counts().items()})
    for row in merged.itertuples(index=False):
        entry = {"pair": row.pair, "candle": str(row.candle), "side": row.side}
        if row.source == "left_only":
            busy = _held(backtest, row.pair, row.candle)
            result.only_replay.append({**entry, "why": "backtest held a trade on the pair (an exit filled later)"
                                       if busy else "unexplained"})
        elif row.source == "right_only":
            busy = _held(replay, row.pair, row.candle)
            result.only_backtest.append({**entry, "why": "replay held a trade on the pair (an exit filled later)"
                                         if busy else "unexplained"})
        else:
            if abs(row.open_rate_replay / row.open_rate_backtest - 1.0) > PRICE_TOLERANCE:
                result.prices_differ.append({**entry, "replay": row.open_rate_replay,
                                             "backtest": row.open_rate_backtest})
            if row.enter_tag_replay != row.enter_tag_backtest:
                result.tags_differ.append({**entry, "replay": row.enter_tag_replay, "backtest": row.enter_tag_backtest})
            if pd.notna(row.close_date_replay) and row.exit_reason_backtest != "force_exit" and (
                    row.close_date_replay.floor(timeframe) !=
                                                    row.close_date_backtest.floor(timeframe)):
                result.exits_differ.append({**entry, "replay": f"{row.close_date_replay} {row.exit_reason_replay}",
                                            "backtest": f"{row.close_date_backtest} {row.exit_reason_backtest}"})
    return result


def report(config: str, strategy: str | None, db: str | None) -> ReplayComparison:
    from ml.cli import freqtrade_settings
    from ml.config import read_json
    from ml.replay import summary_path

    strategy = strategy or read_json(config).get("strategy")
    if not strategy:
        raise FtmlError("replay-report: pass --strategy (the replayed strategy's class name)")
    db_path = Path(db) if db else Path(freqtrade_settings(config)["user_data_dir"]) / "replay" / f"{strategy}.sqlite"
    summary_file = summary_path(f"sqlite:///{db_path}")
    if summary_file is None or not summary_file.is_file():
        raise FtmlError(f"replay-report: no replay summary {summary_file}: the replay did not reach its end "
                        "(--replay-until / --replay-candles)")
    summary = json.loads(summary_file.read_text())
    replay = replay_trades(db_path)
    start, end = pd.Timestamp(summary["start"]), pd.Timestamp(summary["end"])
    with tempfile.TemporaryDirectory(prefix="ftml-replay-report-") as folder:
        backtest = backtest_trades(config, strategy, start, end, summary["timeframe"], Path(folder))
    return compare(replay, backtest, summary["timeframe"], (summary["start"], summary["end"]))


def print_comparison(result: ReplayComparison) -> None:
    from rich.table import Table

    from ml.display import make_console

    console = make_console()
    table = Table(title=f"Replay vs backtest, {result.window[0]} .. {result.window[1]}")
    for col in ("", "count"):
        table.add_column(col)
    rows = [("replay entries", result.replay_entries), ("backtest entries", result.backtest_entries),
            ("same entry (pair, candle, side)", result.matched), ("same entry, other tag", len(result.tags_differ)),
            ("only in replay", len(result.only_replay)), ("only in backtest", len(result.only_backtest)),
            ("same entry, another fill price", len(result.prices_differ)),
            ("same entry, exit on another candle", len(result.exits_differ)),
            ("unexplained differences", len(result.unexplained))]
    for name, count in rows:
        table.add_row(name, str(count))
    console.print(table)
    if result.models:
        console.print("Models that scored the replay's entries: " +
                      ", ".join(f"{k}: {v}" for k, v in result.models.items()))
    for item in result.unexplained[:20]:
        console.print(f"[red]unexplained[/red] {item}")
