"""JSON that every tool can read: NaN and infinities become null.

Python's json writes bare ``NaN``/``Infinity``, which is not JSON: jq, JavaScript and Go
refuse the whole document over one of them. Metrics are NaN often (an AUC with one class,
a mean over zero trades), so everything ftml writes for machines goes through here.
"""

from __future__ import annotations

import json
import math
from typing import Any


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (recursively)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` that never writes NaN (objects it cannot encode become strings)."""
    return json.dumps(json_safe(value), default=str, allow_nan=False, **kwargs)
