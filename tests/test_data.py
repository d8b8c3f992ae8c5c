"""``ml.data`` / ``ftml data check``: every defect is flagged, nothing is dropped."""

import json

import numpy as np
import pandas as pd
import pytest
from freqtrade.data.history.datahandlers.idatahandler import get_datahandler
from freqtrade.enums import CandleType

from ml.data import available_pairs, load_candles
from tests.conftest import SHARED_DATA, run_ftml


def clean_frame(n: int = 50, start: str = "2024-01-01") -> pd.DataFrame:
    dates = pd.date_range(start, periods=n, freq="1h", tz="UTC")
    close = 100 + np.arange(n, dtype=float)
    return pd.DataFrame({"date": dates, "open": close - 0.5, "high": close + 1.0,
                         "low": close - 1.0, "close": close, "volume": np.full(n, 10.0)})


def defective_frame() -> pd.DataFrame:
    """One of each row defect at a known place, plus a 3-candle gap."""
    df = clean_frame(60)
    df.loc[5, "high"] = df.loc[5, "close"] - 0.2            # high below close
    df.loc[6, "low"] = df.loc[6, "open"] + 0.1              # low above open
    df.loc[10, "close"] = np.nan                            # NaN
    df.loc[11, "volume"] = np.inf                           # inf
    df.loc[15, ["open", "low"]] = [0.0, -1.0]               # non-positive prices
    df.loc[20, "volume"] = 0.0                              # zero volume
    df = df.drop(index=[30, 31, 32])                        # gap of 3 candles
    dup = df.loc[[40]]                                      # duplicate date
    out_of_order = df.loc[[45]]                             # a row repeated later: unsorted
    return pd.concat([df.iloc[:38], dup, df.iloc[38:], out_of_order], ignore_index=True)


def store(datadir, pair, frame, timeframe="1h"):
    handler = get_datahandler(datadir, "feather")
    handler.ohlcv_store(pair, timeframe, frame, CandleType.SPOT)


@pytest.fixture
def crafted(tmp_path):
    datadir = tmp_path / "data"
    datadir.mkdir()
    store(datadir, "BAD/USDT", defective_frame())
    store(datadir, "GOOD/USDT", clean_frame(50))
    store(datadir, "SHORT/USDT", clean_frame(5))
    store(datadir, "EMPTY/USDT", clean_frame(0))
    return datadir


def test_every_defect_is_flagged_by_the_cli(crafted, tmp_path):
    done = run_ftml("data", "check", "--datadir", str(crafted), "--timeframe", "1h", "--min-candles", "20",
                    "--pairs", "BAD/USDT", "GOOD/USDT", "SHORT/USDT", "EMPTY/USDT", "MISSING/USDT",
                    "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    by_pair = {p["pair"]: p for p in report["pairs"]}
    assert report["ok"] is False

    bad = by_pair["BAD/USDT"]
    assert bad["problems"] == {
        "duplicate_date": 2,      # the duplicated row and the later repeat of row 45
        "unsorted_date": 1,       # the repeat of row 45 comes after later dates
        "nan_or_inf": 2,
        "non_positive_price": 1,
        "ohlc_inconsistent": 2,
        "zero_volume": 1,
    }
    assert [g["missing_candles"] for g in bad["gaps"]] == [3]
    assert bad["gaps"][0]["start"].startswith("2024-01-02 05:00")
    assert bad["examples"]["zero_volume"] == ["2024-01-01 20:00:00+00:00"]
    assert bad["rows"] == 59  # 60 - 3 dropped by the test + 2 added: nothing removed by the check

    assert by_pair["GOOD/USDT"]["ok"] is True and by_pair["GOOD/USDT"]["problems"] == {}
    assert any("too short" in n for n in by_pair["SHORT/USDT"]["notes"])
    assert any("empty" in n for n in by_pair["EMPTY/USDT"]["notes"])
    assert any("missing" in n for n in by_pair["MISSING/USDT"]["notes"])


def test_flagged_rows_are_kept_and_marked(crafted):
    frames, report = load_candles(crafted, ["BAD/USDT"], "1h")
    df = frames["BAD/USDT"]
    assert len(df) == 59
    # 2 OHLC + NaN + inf + non-positive + zero volume + the duplicate + the late repeat
    assert df["bad_row"].sum() == 8
    # The bad rows keep their original (bad) values: nothing is "fixed".
    assert np.isnan(df["close"]).sum() == 1
    assert (df["volume"] == 0).sum() == 1


def test_timerange_trims_before_checking(crafted):
    _, report = load_candles(crafted, ["BAD/USDT"], "1h", timerange="20240101-20240101")
    assert report.pairs[0].rows == 0 and "empty" in report.pairs[0].notes[0]
    _, report = load_candles(crafted, ["BAD/USDT"], "1h", timerange="20240101-20240102")
    rep = report.pairs[0]
    assert rep.rows == 24 and "zero_volume" in rep.problems and not rep.gaps


def test_human_table_names_each_problem(crafted, tmp_path):
    done = run_ftml("data", "check", "--datadir", str(crafted), "--timeframe", "1h",
                    "--pairs", "all", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for word in ("BAD/USDT", "zero_volume", "ohlc_inconsistent", "gap", "issues found"):
        assert word in done.stdout
    strict = run_ftml("data", "check", "--datadir", str(crafted), "--timeframe", "1h",
                      "--pairs", "GOOD/USDT", "--fail-on-issues", cwd=tmp_path)
    assert strict.returncode == 0
    strict = run_ftml("data", "check", "--datadir", str(crafted), "--timeframe", "1h",
                      "--pairs", "BAD/USDT", "--fail-on-issues", cwd=tmp_path)
    assert strict.returncode == 1


def test_missing_datadir_is_a_clear_user_error(tmp_path):
    done = run_ftml("data", "check", "--datadir", str(tmp_path / "nope"), "--timeframe", "1h",
                    "--pairs", "A/B", cwd=tmp_path)
    assert done.returncode == 2 and "download-data" in done.stderr


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared test data not present")
def test_real_binance_5m_pairs_load_and_report_their_gaps():
    pairs = available_pairs(SHARED_DATA, "5m")
    assert len(pairs) == 10
    frames, report = load_candles(SHARED_DATA, pairs, "5m")
    assert len(frames) == 10
    for rep in report.pairs:
        raw = pd.read_feather(SHARED_DATA / f"{rep.pair.replace('/', '_')}-5m.feather")
        step = pd.Timedelta("5min")
        expected_missing = int(((raw["date"].diff() / step).fillna(1) - 1).clip(lower=0).sum())
        assert rep.rows == len(raw)
        assert rep.missing_candles == expected_missing, rep.pair
    assert sum(r.missing_candles for r in report.pairs) > 0  # real data has gaps; we report them
