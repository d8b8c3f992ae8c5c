"""``ftml new-strategy --from MyStrategy``: write the one-line gated twin of a strategy."""

from __future__ import annotations

from pathlib import Path

from ml.errors import FtmlError

TEMPLATE = '''"""{name}, gated by the ML model trained on its own trades (written by ftml new-strategy).

    ftml train -c config.json --strategy {name}
    ftml registry validate {name} 1 -c config.json && ftml registry promote {name} 1 -c config.json
    ftml freqtrade --offline backtesting -c config.json --strategy-list {name}ML {name}
"""

from {module} import {name}

from ml.gate import MLGate


class {name}ML(MLGate, {name}):
    pass
'''


def write_gated_twin(config_path: str | Path, strategy: str, force: bool = False) -> Path:
    """Write ``<name>ML.py`` next to the strategy's own file; refuse to overwrite a file
    (unless ``force``) or to gate a strategy that is gated already."""
    from freqtrade.resolvers import StrategyResolver

    from ml.trade_labels import StrategyError, backtest_config, ungated_class

    config = backtest_config(config_path, strategy, None)
    try:
        loaded = StrategyResolver.load_strategy(config)
    except Exception as err:  # noqa: BLE001 - freqtrade's own errors name the problem
        raise StrategyError(f"freqtrade cannot load strategy {strategy!r}: "
                            f"{(str(err).strip().splitlines() or [''])[0]}") from err
    cls = ungated_class(type(loaded))
    if cls is not type(loaded):
        raise FtmlError(f"{strategy} is gated already (it is {cls.__name__} with MLGate).")
    source = Path(loaded.__file__)
    target = source.parent / f"{cls.__name__}ML.py"
    if target.exists() and not force:
        raise FtmlError(f"{target} exists; pass --force to overwrite it.")
    target.write_text(TEMPLATE.format(name=cls.__name__, module=source.stem))
    return target
