"""JSON output that strict readers (jq, JavaScript) accept: NaN and infinities become null."""

from __future__ import annotations

import json
import math
from typing import Any


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def dumps(value: Any, *, indent: int | None = 2) -> str:
    """``json.dumps`` with non-finite floats written as ``null`` (``allow_nan=False`` guards the rest)."""
    return json.dumps(_clean(value), indent=indent, allow_nan=False, default=str)
