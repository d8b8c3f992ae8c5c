"""ml.trade_copy: the fast copy of a backtest trade that a strategy's callbacks get in a
label backtest is what freqtrade's deepcopy gives, and the label trades do not change."""

import contextlib
import copy

import pandas as pd
import pytest

import ml.trade_labels as trade_labels
from ml import trade_copy
from tests.conftest import REPO, strategy_project

pytestmark = pytest.mark.slow
PAIRS = ["ETH/BTC", "LTC/BTC"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    # TrendPullback: a custom_exit, so every open trade is copied for it on every candle
    root = tmp_path_factory.mktemp("copy")
    strategy_project(root, PAIRS, 6000, "planted", 2, strategy="TrendPullback")
    cfg = (root / "config.json").read_text().replace(str(REPO / "tests" / "strategies"), str(REPO / "strategies"))
    (root / "config.json").write_text(cfg)
    return root


def labels(root) -> pd.DataFrame:
    return trade_labels.strategy_trades(root / "config.json", "TrendPullback", use_cache=False).trades


@pytest.fixture(scope="module")
def runs(project):
    """The label trades with deepcopy and with the fast copies; the first 300 copies made in
    the fast run, each next to deepcopy's copy of the same trade at the same moment."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FTML_LABEL_WORKERS", "1")  # in this process, so the spy below sees the copies
        patch.setattr(trade_labels, "fast_trade_copies", contextlib.nullcontext)
        deep = labels(project)
        patch.undo()
        patch.setenv("FTML_LABEL_WORKERS", "1")
        seen, original = [], trade_copy.copy_for_callback

        def spy(obj, memo=None):
            if len(seen) < 300:
                seen.append((obj, copy.deepcopy(obj), original(obj)))
            return original(obj, memo)

        patch.setattr(trade_copy, "copy_for_callback", spy)
        fast = labels(project)
    return deep, fast, seen


def test_label_trades_are_the_same_as_with_deepcopy(runs):
    deep, fast, _ = runs
    assert len(fast) > 100
    pd.testing.assert_frame_equal(fast, deep)


def plain(obj) -> dict:
    return {k: v for k, v in vars(obj).items() if k not in ("orders", "_sa_instance_state", "_trade_bt")}


def test_each_copy_equals_deepcopys_and_is_as_independent(runs):
    seen = runs[2]
    assert len(seen) == 300
    for trade, deep, fast in seen:
        assert fast is not trade and type(fast) is type(deep)
        assert plain(fast) == plain(deep)  # (the engine's trade has moved on since)
        assert len(fast.orders) == len(deep.orders) >= 1
        for mine, theirs in zip(fast.orders, deep.orders, strict=True):
            assert plain(mine) == plain(theirs) and mine._trade_bt is fast and theirs._trade_bt is deep
        rate = deep.open_rate * 1.013
        assert fast.calc_profit_ratio(rate) == deep.calc_profit_ratio(rate)
        assert fast.nr_of_successful_entries == deep.nr_of_successful_entries
        assert fast.to_json() == deep.to_json()
        # what a careless callback might do to its copy never reaches the engine's trade
        before, orders_before = plain(trade), [plain(o) for o in trade.orders]
        fast.open_rate, fast.stop_loss = 1.0, 0.5
        fast.orders[0].price = 123.0
        fast.orders.append(fast.orders[0])
        assert plain(trade) == before and [plain(o) for o in trade.orders] == orders_before


def test_a_trade_holding_anything_else_is_deep_copied(runs):
    trade = runs[2][0][0]
    trade.notes = ["a list the strategy could change"]
    copied = trade_copy.copy_for_callback(trade)
    assert copied.notes == trade.notes and copied.notes is not trade.notes
    assert trade_copy.copy_for_callback({"a": [1]}) == {"a": [1]}
