"""Mean reversion, gated by the production model 'mean_reversion' (see ml.strategy).

    ftml freqtrade --offline backtesting -c config.json --strategy-list MeanReversionML MeanReversion
"""

from ml.strategy import MLGatedStrategy


class MeanReversionML(MLGatedStrategy):
    signal_name = "mean_reversion"
