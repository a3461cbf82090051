"""Shared entry-point behaviour: a user's mistake prints one line and exits 2, without a traceback.

Set TNL_DEBUG=1 to see the traceback anyway.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from tnl.errors import UserError


def run_or_exit(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except UserError as err:
        if os.environ.get("TNL_DEBUG") == "1":
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
