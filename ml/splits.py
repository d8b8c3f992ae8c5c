"""Time-ordered splits that keep the future out of training.

Rows are identified by their timestamp (``times``), so a pooled multi-pair frame splits by
time, never by row number, and every pair's rows at one moment land in the same block.
Splitters return positional index arrays, like scikit-learn's; nothing is ever shuffled.

A label at time t depends on candles up to ``label_end[t]`` (t + horizon). Two purges
keep that future out of training:

* a training row is dropped when its label window reaches the validation block
  (``label_end >= block start``);
* a gap of ``horizon + embargo`` candles separates every training row from the block
  after it, so serial correlation just before the block cannot leak either.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ml.errors import FtmlError


class SplitError(FtmlError, ValueError):
    """Too little data to split honestly; the message has every number."""


def purge_gap(timeframe: str, horizon: int, embargo: int) -> pd.Timedelta:
    """The time that must separate a training row from the block after it."""
    return pd.Timedelta(timeframe) * (horizon + embargo)


def _as_ns(values) -> np.ndarray:
    return pd.to_datetime(pd.Series(values), utc=True).dt.tz_localize(None).to_numpy("datetime64[ns]")


def _train_mask(times, label_end, block_start, gap) -> np.ndarray:
    mask = times < block_start - gap
    if label_end is not None:
        mask &= label_end < block_start
    return mask


@dataclass(frozen=True)
class PurgedWalkForward:
    """Expanding-window walk-forward folds with purging and an embargo gap.

    The unique timestamps are cut into ``n_folds + 1`` equal blocks. Fold k validates on
    block k+1 and trains on everything before it, minus the purge and gap.
    """

    n_folds: int = 4
    gap: pd.Timedelta = pd.Timedelta(0)  # (horizon + embargo) candles
    min_train_rows: int = 50

    def split(self, times, label_end=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        t = _as_ns(times)
        end = None if label_end is None else _as_ns(label_end)
        unique = np.unique(t)
        if self.n_folds < 1:
            raise SplitError(f"n_folds must be >= 1, got {self.n_folds}")
        if len(unique) < 2 * (self.n_folds + 1):
            raise SplitError(
                f"Cannot make {self.n_folds} walk-forward folds from {len(unique)} timestamps "
                f"({len(t)} rows): need at least {2 * (self.n_folds + 1)}."
            )
        gap = np.timedelta64(self.gap.as_unit("ns").value, "ns")
        blocks = np.array_split(unique, self.n_folds + 1)
        for block in blocks[1:]:
            start, stop = block[0], block[-1]
            val = np.flatnonzero((t >= start) & (t <= stop))
            train = np.flatnonzero(_train_mask(t, end, start, gap))
            if len(train) < self.min_train_rows:
                raise SplitError(
                    f"A fold validating from {pd.Timestamp(start)} has {len(train)} training rows after "
                    f"purging a gap of {self.gap}; need {self.min_train_rows}. Use more data, "
                    f"fewer folds (now {self.n_folds}) or a shorter horizon/embargo."
                )
            yield train, val


@dataclass(frozen=True)
class FinalSplit:
    train: np.ndarray
    calib: np.ndarray
    test: np.ndarray


def chronological_split(
    times,
    calib_fraction: float,
    test_fraction: float,
    gap: pd.Timedelta,
    label_end=None,
    min_rows: int = 30,
) -> FinalSplit:
    """train | gap | calibration | gap | test, by time quantiles of the unique timestamps.

    Calibration rows are also purged against the test block, so the calibrator never sees
    a label that depends on test-period candles.
    """
    if not (0 < calib_fraction < 1 and 0 < test_fraction < 1 and calib_fraction + test_fraction < 1):
        raise SplitError(
            f"calib_fraction ({calib_fraction}) and test_fraction ({test_fraction}) must be in (0, 1) "
            "and sum to less than 1."
        )
    t = _as_ns(times)
    end = None if label_end is None else _as_ns(label_end)
    unique = np.unique(t)
    n = len(unique)
    test_start = unique[min(n - 1, int(np.floor(n * (1 - test_fraction))))]
    calib_start = unique[min(n - 1, int(np.floor(n * (1 - test_fraction - calib_fraction))))]
    g = np.timedelta64(gap.as_unit("ns").value, "ns")
    test = np.flatnonzero(t >= test_start)
    calib = np.flatnonzero((t >= calib_start) & _train_mask(t, end, test_start, g))
    train = np.flatnonzero(_train_mask(t, end, calib_start, g))
    sizes = {"train": len(train), "calibration": len(calib), "test": len(test)}
    small = {k: v for k, v in sizes.items() if v < min_rows}
    if small:
        raise SplitError(
            f"Too few rows to split honestly: {sizes} (need {min_rows} in each) from {len(t)} rows "
            f"over {n} timestamps with gaps of {gap}. Use a longer timerange or more pairs."
        )
    return FinalSplit(train, calib, test)
