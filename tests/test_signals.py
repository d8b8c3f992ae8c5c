"""Base signals survive bad candles: one NaN/inf close must not silence them for good."""

import numpy as np
import pytest

from ml.signals import SIGNALS
from ml.synth import simulate


@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_one_bad_close_does_not_silence_the_signal_for_the_rest_of_the_frame(name):
    frame, _ = simulate(8000, "1h", "planted", 3)
    clean = SIGNALS[name](frame).to_numpy()
    broken = frame.copy()
    broken.loc[2000, "close"] = np.nan  # TA-Lib carries a NaN forward through EMA/RSI for ever
    broken.loc[3000, "close"] = np.inf
    broken.loc[3500, "close"] = -1.0
    fired = SIGNALS[name](broken).to_numpy()
    assert not fired[[2000, 3000, 3500]].any()  # never on the broken candle itself
    later = slice(4000, None)
    assert clean[later].sum() > 50
    # Far from the bad candles the bridged indicators have forgotten them: same signal.
    assert (fired[later] == clean[later]).mean() > 0.99
