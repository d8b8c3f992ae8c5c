"""Splits: no training row within horizon + embargo of validation or test rows."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ml.splits import PurgedWalkForward, SplitError, chronological_split, purge_gap


def pooled_times(n_pairs: int, candles: int, seed: int) -> pd.Series:
    """Several pairs' candles pooled and shuffled in row order (time is what counts)."""
    rng = np.random.default_rng(seed)
    one = pd.date_range("2024-01-01", periods=candles, freq="1h", tz="UTC")
    times = np.concatenate([one[rng.integers(0, 3):] for _ in range(n_pairs)])
    return pd.Series(times[rng.permutation(len(times))])


@settings(max_examples=40, deadline=None)
@given(
    n_pairs=st.integers(1, 4), candles=st.integers(300, 900), seed=st.integers(0, 1000),
    horizon=st.integers(1, 30), embargo=st.integers(0, 20), folds=st.integers(2, 5),
)
def test_walk_forward_folds_keep_a_gap_before_validation(n_pairs, candles, seed, horizon, embargo, folds):
    times = pooled_times(n_pairs, candles, seed)
    label_end = times + pd.Timedelta("1h") * horizon
    gap = purge_gap("1h", horizon, embargo)
    seen_val = []
    for train, val in PurgedWalkForward(n_folds=folds, gap=gap, min_train_rows=1).split(times, label_end):
        t_train, t_val = times.iloc[train], times.iloc[val]
        assert t_train.max() < t_val.min() - gap  # strictly more than horizon + embargo apart
        assert label_end.iloc[train].max() < t_val.min()  # no label looks into validation
        seen_val.append(val)
    all_val = np.concatenate(seen_val)
    assert len(np.unique(all_val)) == len(all_val)  # validation blocks don't overlap


@settings(max_examples=40, deadline=None)
@given(
    n_pairs=st.integers(1, 4), candles=st.integers(400, 1500), seed=st.integers(0, 1000),
    horizon=st.integers(1, 30), embargo=st.integers(0, 20),
    calib=st.floats(0.1, 0.3), test=st.floats(0.1, 0.3),
)
def test_final_split_is_train_gap_calib_gap_test(n_pairs, candles, seed, horizon, embargo, calib, test):
    # A block shorter than the purge gap around it is left empty, which the split refuses
    # (test_impossible_splits_say_every_number); here only splits that can exist.
    assume(min(calib, test) * candles > 2 * (horizon + embargo) + 4)
    times = pooled_times(n_pairs, candles, seed)
    label_end = times + pd.Timedelta("1h") * horizon
    gap = purge_gap("1h", horizon, embargo)
    split = chronological_split(times, calib, test, gap, label_end, min_rows=1)
    tr, ca, te = (times.iloc[i] for i in (split.train, split.calib, split.test))
    assert tr.max() < ca.min() - gap and ca.max() < te.min() - gap and tr.max() < te.min() - gap
    assert label_end.iloc[split.train].max() < ca.min()
    assert label_end.iloc[split.calib].max() < te.min()
    # Every pair's rows at one timestamp land in the same block.
    for block in (split.train, split.calib, split.test):
        stamps = set(times.iloc[block])
        others = np.setdiff1d(np.arange(len(times)), block)
        assert not stamps & set(times.iloc[others])


def test_impossible_splits_say_every_number():
    times = pooled_times(1, 40, 0)
    with pytest.raises(SplitError, match=r"Too few rows.*'train': 0.*from 38 rows"):
        chronological_split(times, 0.2, 0.2, purge_gap("1h", 24, 12), min_rows=30)
    with pytest.raises(SplitError, match="need at least 12"):
        list(PurgedWalkForward(n_folds=5).split(times.iloc[:10]))
    with pytest.raises(SplitError, match="sum to less than 1"):
        chronological_split(times, 0.6, 0.5, purge_gap("1h", 1, 0))
