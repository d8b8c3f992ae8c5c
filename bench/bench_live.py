"""The live path: populate_indicators (features + base signal + calibrated probability + EV)
for one pair on 1,000 candles, as freqtrade's loop calls it each new candle. Median of 50.

Reference in the same run: the un-gated twin's populate_indicators on the same frame.
Goal: median <= 20 ms. Then the same with the model served from its ONNX export
(``ftml export onnx``, ``ml.gate.runtime = "onnx"``) against the native LightGBM file.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from freqtrade.configuration import Configuration
from freqtrade.enums import RunMode
from freqtrade.resolvers import StrategyResolver

from bench.common import emit
from bench.project import ftml, make_project, train_and_promote
from ml.synth import simulate, write_market

REPEATS = 50


def median_ms(fn) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def load(folder: Path, name: str, config_file: str = "config.json"):
    config = Configuration.from_files([str(folder / config_file)])
    config.update(strategy=name, runmode=RunMode.DRY_RUN)
    strategy = StrategyResolver.load_strategy(config)
    strategy.ft_bot_start()
    return strategy


def probability_alone(strategy, frame) -> float:
    """Median ms of the model's calibrated probability on the frame's features (after one
    advise_indicators call loaded the model)."""
    features = strategy.engineer.features(frame)
    return median_ms(lambda: strategy.model.predict_proba(features))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pairs = [f"L{i}/BTC" for i in range(6)]  # enough of TrendPullback's trades to train on
        folder = make_project(Path(tmp), pairs, "1h")
        write_market(folder / "user_data" / "data" / "binance", pairs, "1h", 6000, "planted", seed=5)
        summary = train_and_promote(folder, pairs, "20240101-20240901")
        ftml(folder, "export", "onnx", summary["model"], str(summary["registered"]["version"]), "-c", "config.json")
        config = json.loads((folder / "config.json").read_text())
        config["ml"].setdefault("gate", {})["runtime"] = "onnx"
        (folder / "config-onnx.json").write_text(json.dumps(config))
        frame = simulate(1000, "1h", "planted", seed=9, start="2025-01-01")[0]
        gated, twin = load(folder, "TrendPullbackML"), load(folder, "TrendPullback")
        meta = {"pair": "L0/BTC"}
        gated_ms = median_ms(lambda: gated.advise_indicators(frame.copy(), meta))
        twin_ms = median_ms(lambda: twin.advise_indicators(frame.copy(), meta))
        served = load(folder, "TrendPullbackML", "config-onnx.json")
        onnx_ms = median_ms(lambda: served.advise_indicators(frame.copy(), meta))
        probability_ms = {"native": probability_alone(gated, frame), "onnx": probability_alone(served, frame)}
    emit("live", [{"figure": "live populate_indicators + probability, 1 pair, 1,000 candles (median of 50)",
                   "value": f"{gated_ms:.1f} ms", "reference": f"un-gated twin {twin_ms:.1f} ms",
                   "ratio": round(gated_ms / twin_ms, 1), "goal": "<= 20 ms", "met": gated_ms <= 20},
                  {"figure": "the same, model served from its ONNX export (onnxruntime) vs native LightGBM",
                   "value": f"{onnx_ms:.1f} ms (probability alone {probability_ms['onnx']:.2f} ms)",
                   "reference": f"native {gated_ms:.1f} ms (probability alone {probability_ms['native']:.2f} ms)",
                   "ratio": round(onnx_ms / gated_ms, 2), "goal": "report", "met": None}])


if __name__ == "__main__":
    main()
