"""``ftml freqtrade --offline``: freqtrade's own CLI, markets from disk, no network."""

import json
import subprocess
import sys
import textwrap

import pytest
from freqtrade.data.btanalysis.bt_fileutils import load_backtest_stats

from ml.offline import synthetic_market
from tests.conftest import run_ftml, write_config

pytestmark = pytest.mark.slow
PAIRS = ["ETH/BTC", "LTC/BTC"]


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    """A project with a synthetic market written by the real CLI."""
    root = tmp_path_factory.mktemp("offline")
    write_config(root / "config.json")
    done = run_ftml("data", "synth", "-c", "config.json", "--pairs", *PAIRS, "--candles", "3000",
                    "--market", "planted", "--seed", "2", cwd=root)
    assert done.returncode == 0, done.stderr
    return root


def backtest(root, export, *extra):
    export.mkdir(parents=True, exist_ok=True)
    return run_ftml("freqtrade", "--offline", "backtesting", "-c", "config.json",
                    "--strategy", "TrendPullback", "--export", "trades",
                    "--backtest-directory", str(export), *extra, cwd=root)


def test_backtesting_offline_exports_trades_for_the_asked_pair_and_timerange(market):
    export = market / "bt_one"
    done = backtest(market, export, "--timerange", "20240215-20240415", "--pairs", "ETH/BTC")
    assert done.returncode == 0, done.stderr[-3000:]
    stats = load_backtest_stats(export)["strategy"]["TrendPullback"]
    assert stats["total_trades"] > 0
    assert {t["pair"] for t in stats["trades"]} == {"ETH/BTC"}
    assert stats["backtest_start"].startswith("2024-02-15")
    assert stats["backtest_end"].startswith("2024-04-1")  # the last candle before 2024-04-15 closes
    assert max(t["open_date"] for t in stats["trades"]) < "2024-04-15"
    log = done.stdout + done.stderr
    assert log.count("no market cache") == 1  # said once, not per call


def test_cached_exchange_markets_are_used_when_present(market, tmp_path):
    root = tmp_path
    write_config(root / "config.json")
    # Same data, plus a cached markets file whose fee is unusual enough to recognise.
    done = run_ftml("data", "synth", "-c", "config.json", "--pairs", *PAIRS, "--candles", "3000",
                    "--market", "planted", "--seed", "2", cwd=root)
    assert done.returncode == 0

    cached = {p: {**synthetic_market(p, 4, fee=0.0017), "info": {"from": "exchange"}} for p in PAIRS}
    markets_dir = root / "user_data" / "markets"
    markets_dir.mkdir(parents=True)
    (markets_dir / "binance.json").write_text(json.dumps(cached))
    export = root / "bt_cache"
    done = backtest(root, export, "--timerange", "20240215-20240415")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "markets from the cache" in done.stdout + done.stderr
    trades = load_backtest_stats(export)["strategy"]["TrendPullback"]["trades"]
    assert trades and all(t["fee_open"] == pytest.approx(0.0017) for t in trades)


def test_online_run_caches_the_exchange_markets(tmp_path):
    """Mock only the exchange: ccxt's load_markets returns two markets, as Binance would."""
    write_config(tmp_path / "config.json")
    (tmp_path / "user_data").mkdir()
    script = textwrap.dedent(
        f"""
        import ccxt.async_support as ccxt_async
        from ml.offline import install, synthetic_market

        async def fake_load_markets(self, reload=False, params=None):
            self.set_markets([synthetic_market(p, 4, fee=0.00075) for p in {PAIRS!r}])
            return self.markets

        ccxt_async.binance.load_markets = fake_load_markets
        install(offline=False)
        from freqtrade.configuration import Configuration
        from freqtrade.enums import RunMode
        from freqtrade.resolvers import ExchangeResolver
        config = Configuration.from_files(["config.json"])
        config["runmode"] = RunMode.BACKTEST
        ExchangeResolver.load_exchange(config, validate=True)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    cached = json.loads((tmp_path / "user_data" / "markets" / "binance.json").read_text())
    assert set(cached) == set(PAIRS) and cached["ETH/BTC"]["taker"] == 0.00075


def test_list_strategies_offline_and_plain(market):
    for extra in (["--offline"], []):
        done = run_ftml("freqtrade", *extra, "list-strategies", "-c", "config.json", cwd=market)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "TrendPullback" in done.stdout


def analysis_row(output: str, strategy_file: str) -> list[str]:
    """The cells of a strategy's row in freqtrade's analysis table."""
    row = next(ln for ln in output.splitlines() if f"{strategy_file} │" in ln)
    return [cell.strip() for cell in row.split("│")[1:-1]]


def test_lookahead_and_recursive_analysis_offline(market):
    done = run_ftml("freqtrade", "--offline", "lookahead-analysis", "-c", "config.json",
                    "--strategy", "TrendPullback", "--timerange", "20240210-20240501",
                    "--minimum-trade-amount", "10", "--targeted-trade-amount", "10", cwd=market)
    assert done.returncode == 0, done.stderr[-3000:]
    cells = analysis_row(done.stdout, "TrendPullback.py")
    assert cells[2] == "No" and int(cells[3]) >= 10 and cells[4] == "0" and cells[5] == "0"
    done = run_ftml("freqtrade", "--offline", "recursive-analysis", "-c", "config.json",
                    "--strategy", "TrendPullback", "--timerange", "20240201-20240315",
                    "--pairs", "ETH/BTC", cwd=market)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert "No variance on indicator(s) found due to recursive formula" in log
    assert "No lookahead bias on indicators found" in log


def test_hyperopt_offline(market):
    done = run_ftml("freqtrade", "--offline", "hyperopt", "-c", "config.json",
                    "--strategy", "TrendPullback", "--hyperopt-loss", "SharpeHyperOptLoss",
                    "--spaces", "roi", "stoploss", "--epochs", "3", "-j", "1",
                    "--timerange", "20240201-20240315", "--pairs", "ETH/BTC", "--disable-param-export",
                    cwd=market)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert "3 epochs saved" in log and "Best result:" in log
