"""Load candles with freqtrade's own data handlers, and say what is wrong with them.

Bad rows are flagged (column ``bad_row`` plus the report), never silently dropped or
"fixed": a model trained on repaired prices would learn the repair. Freqtrade's public
loader de-duplicates, sorts and fills gaps, which would hide exactly what we want to
report, so we read through the storage layer of the same handler and check the raw rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from freqtrade.configuration import TimeRange
from freqtrade.data.history.datahandlers.idatahandler import get_datahandler
from freqtrade.enums import CandleType, TradingMode
from freqtrade.exchange import timeframe_to_seconds

from ml.errors import FtmlError
from ml.synth_marker import describe, synthetic_files

OHLCV = ["date", "open", "high", "low", "close", "volume"]
# Row-level defects, in the order the report lists them.
ROW_CHECKS = (
    "duplicate_date",
    "unsorted_date",
    "nan_or_inf",
    "non_positive_price",
    "ohlc_inconsistent",
    "zero_volume",
)
EXAMPLES_KEPT = 5


class DataError(FtmlError, ValueError):
    """Missing or unusable data; the message says what to do."""


@dataclass
class Gap:
    start: str  # last candle before the gap
    end: str  # first candle after it
    missing_candles: int


@dataclass
class PairReport:
    pair: str
    timeframe: str
    file: str
    rows: int = 0
    first: str | None = None
    last: str | None = None
    problems: dict[str, int] = field(default_factory=dict)  # check -> rows flagged
    examples: dict[str, list[str]] = field(default_factory=dict)  # check -> first dates
    gaps: list[Gap] = field(default_factory=list)
    missing_candles: int = 0
    notes: list[str] = field(default_factory=list)  # file-level: missing, empty, too short
    synthetic: str | None = None  # what wrote the file, when ftml data synth did (not a problem)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.gaps and not self.notes


@dataclass
class DataReport:
    datadir: str
    timeframe: str
    timerange: str | None
    pairs: list[PairReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.pairs)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        for rep, row in zip(self.pairs, out["pairs"], strict=True):
            row["ok"] = rep.ok
        return out


def _flag_rows(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """One boolean mask per row check. Vectorised; NaN comparisons count as not flagged."""
    prices = df[["open", "high", "low", "close"]].to_numpy(dtype="float64")
    volume = df["volume"].to_numpy(dtype="float64")
    dates = df["date"]
    finite = np.isfinite(prices).all(axis=1) & np.isfinite(volume)
    with np.errstate(invalid="ignore"):
        o, h, lo, c = prices.T
        inconsistent = (h < np.maximum(o, c)) | (lo > np.minimum(o, c)) | (h < lo)
        non_positive = (prices <= 0).any(axis=1)
    previous_max = dates.cummax().shift(1)
    return {
        "duplicate_date": dates.duplicated(keep="first").to_numpy(),
        "unsorted_date": (dates < previous_max).fillna(False).to_numpy(dtype=bool),
        "nan_or_inf": ~finite,
        "non_positive_price": non_positive,
        "ohlc_inconsistent": inconsistent & finite,
        "zero_volume": (volume <= 0) & np.isfinite(volume),
    }


def _find_gaps(dates: pd.Series, timeframe: str) -> list[Gap]:
    step = pd.Timedelta(seconds=timeframe_to_seconds(timeframe))
    ordered = dates.drop_duplicates().sort_values()
    delta = ordered.diff()
    gap_at = np.flatnonzero((delta > step).to_numpy())
    return [
        Gap(
            start=str(ordered.iloc[i - 1]),
            end=str(ordered.iloc[i]),
            missing_candles=int(delta.iloc[i] / step) - 1,
        )
        for i in gap_at
    ]


def check_frame(df: pd.DataFrame, report: PairReport, min_candles: int = 0) -> pd.DataFrame:
    """Validate one pair's raw frame; fill ``report``; return the frame with ``bad_row``."""
    missing = [c for c in OHLCV if c not in df.columns]
    if missing:
        raise DataError(f"{report.file}: missing columns {missing}; freqtrade OHLCV files have {OHLCV}")
    df = df.reset_index(drop=True).copy()
    report.rows = len(df)
    if df.empty:
        report.notes.append("empty: no candles in the file or timerange")
        df["bad_row"] = pd.Series(dtype=bool)
        return df
    report.first, report.last = str(df["date"].min()), str(df["date"].max())
    if len(df) < min_candles:
        report.notes.append(f"too short: {len(df)} candles, at least {min_candles} needed")
    bad = np.zeros(len(df), dtype=bool)
    for check, mask in _flag_rows(df).items():
        if mask.any():
            report.problems[check] = int(mask.sum())
            report.examples[check] = [str(d) for d in df["date"][mask].head(EXAMPLES_KEPT)]
            bad |= mask
    report.gaps = _find_gaps(df["date"], report.timeframe)
    report.missing_candles = sum(g.missing_candles for g in report.gaps)
    df["bad_row"] = bad
    return df


def _trim(df: pd.DataFrame, timerange: TimeRange | None) -> pd.DataFrame:
    if timerange is None or df.empty:
        return df
    keep = np.ones(len(df), dtype=bool)
    if timerange.starttype == "date":
        keep &= (df["date"] >= timerange.startdt).to_numpy()
    if timerange.stoptype == "date":
        keep &= (df["date"] < timerange.stopdt).to_numpy()
    return df[keep]


def newest_candle(ft: dict[str, Any]) -> pd.Timestamp:
    """The newest stored candle over the config's pairs (``ft``: ml.cli.freqtrade_settings)."""
    ends = [dates.max() for pair in ft["pairs"]
            if len(dates := candle_dates(ft["datadir"], pair, ft["timeframe"], ft["data_format"]))]
    if not ends:
        raise DataError(f"No {ft['timeframe']} candles ({ft['data_format']}) for {ft['pairs']} in {ft['datadir']}: "
                        "download them (`ftml retrain --download` or freqtrade download-data).")
    return pd.Timestamp(max(ends))


def available_pairs(datadir: str | Path, timeframe: str, data_format: str = "feather") -> list[str]:
    """Pairs that have a file for ``timeframe`` in ``datadir``."""
    handler = get_datahandler(Path(datadir), data_format)
    found = handler.ohlcv_get_available_data(Path(datadir), TradingMode.SPOT)
    return sorted({p for p, tf, _ in found if tf == timeframe})


def load_candles(
    datadir: str | Path,
    pairs: list[str],
    timeframe: str,
    timerange: str | None = None,
    data_format: str = "feather",
    min_candles: int = 0,
) -> tuple[dict[str, pd.DataFrame], DataReport]:
    """Raw candles per pair (with a ``bad_row`` column) and the validation report.

    Pairs whose file is missing are reported, not raised: the caller decides whether
    the rest is enough.
    """
    datadir = Path(datadir)
    if not datadir.is_dir():
        raise DataError(
            f"Data directory {datadir} does not exist. Download candles with "
            "`freqtrade download-data`, or write a synthetic market with `ftml data synth`."
        )
    handler = get_datahandler(datadir, data_format)
    parsed = TimeRange.parse_timerange(timerange) if timerange else None
    report = DataReport(str(datadir), timeframe, timerange)
    frames: dict[str, pd.DataFrame] = {}
    for pair in pairs:
        path = handler._pair_data_filename(datadir, pair, timeframe, CandleType.SPOT)
        rep = PairReport(pair, timeframe, str(path))
        report.pairs.append(rep)
        if not path.is_file():
            rep.notes.append(f"missing: no file {path.name}")
            continue
        raw = handler._ohlcv_load(pair, timeframe, None, CandleType.SPOT)
        frames[pair] = check_frame(_trim(raw, parsed), rep, min_candles)
    marked = synthetic_files(datadir, [Path(rep.file).name for rep in report.pairs])
    for rep in report.pairs:
        if Path(rep.file).name in marked:
            rep.synthetic = describe(marked[Path(rep.file).name])
    return frames, report


def candle_dates(datadir: str | Path, pair: str, timeframe: str, data_format: str = "feather") -> pd.Series:
    """The stored candle dates of one pair, in any format freqtrade writes (empty if no file).

    Callers that only need a data range (retrain's newest candle, the demo's split) must
    not assume feather: users keep parquet or json as freqtrade's ``dataformat_ohlcv`` says.
    """
    datadir = Path(datadir)
    handler = get_datahandler(datadir, data_format)
    if not handler._pair_data_filename(datadir, pair, timeframe, CandleType.SPOT).is_file():
        return pd.Series([], dtype="datetime64[ns, UTC]")
    return handler._ohlcv_load(pair, timeframe, None, CandleType.SPOT)["date"]
