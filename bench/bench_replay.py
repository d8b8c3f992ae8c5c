"""Soak: freqtrade's real bot loop (``ftml freqtrade --offline --replay``) on 5,000 replayed
1h candles of 6 pairs with the gated strategy, as fast as the bot goes.

Figures, from the replay's own summary (ml.replay.ReplayStats):
* RSS growth of the bot process from candle 500 to the end (goal: < 50 MB);
* the strategy's time per candle (freqtrade's analysis of all 6 pairs each iteration),
  against the un-gated twin replayed over the first 1,000 of the same candles.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from bench.common import emit
from bench.project import ftml, make_project, train_and_promote
from ml.synth import write_market

PAIRS = [f"S{i}/BTC" for i in range(6)]
CANDLES, TWIN_CANDLES = 5000, 1000
START = "20241001"


def replay(folder: Path, strategy: str, candles: int) -> dict:
    ftml(folder, "freqtrade", "--offline", "--replay", START, "--replay-candles", str(candles), "trade", "--dry-run",
         "-c", "config.json", "--strategy", strategy)
    return json.loads((folder / "user_data" / "replay" / f"{strategy}.replay.json").read_text())


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_project(Path(tmp), PAIRS, "1h")
        cfg = json.loads((folder / "config.json").read_text())
        cfg["max_open_trades"] = 50
        (folder / "config.json").write_text(json.dumps(cfg, indent=1))
        write_market(folder / "user_data" / "data" / "binance", PAIRS, "1h", 12000, "planted", seed=5)
        train_and_promote(folder, PAIRS, "20240101-20240901")
        gated = replay(folder, "TrendPullbackML", CANDLES)
        twin = replay(folder, "TrendPullback", TWIN_CANDLES)
    growth = gated["rss_mb_end"] - gated["rss_mb_at_500"]
    gated_ms, twin_ms = 1000 * gated["strategy_s_per_candle"], 1000 * twin["strategy_s_per_candle"]
    emit("replay", [
        {"figure": f"bot RSS growth, candle 500 to {CANDLES} (6 pairs, 1h, gated)", "value": f"{growth:.1f} MB",
         "reference": f"RSS at candle 500: {gated['rss_mb_at_500']:.0f} MB",
         "ratio": round(gated["rss_mb_end"] / gated["rss_mb_at_500"], 3), "goal": "< 50 MB", "met": growth < 50},
        {"figure": "strategy time per candle, 6 pairs (freqtrade's analyze in the bot loop)",
         "value": f"{gated_ms:.1f} ms", "reference": f"un-gated twin {twin_ms:.1f} ms ({TWIN_CANDLES} candles)",
         "ratio": round(gated_ms / twin_ms, 2), "goal": "-", "met": True},
        {"figure": "replayed candles per second of wall time (whole bot loop)",
         "value": f"{gated['candles'] / gated['wall_s']:.1f}/s", "reference": f"twin {twin['candles'] / twin['wall_s']:.1f}/s",
         "ratio": round((twin["candles"] / twin["wall_s"]) / (gated["candles"] / gated["wall_s"]), 2), "goal": "-",
         "met": True},
    ])


if __name__ == "__main__":
    main()
