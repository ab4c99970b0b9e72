"""A progress bar for long work in one process (benches, autotune), drawn on a terminal
only: in logs and captured output it stays silent."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm import tqdm


def progress(items: Iterable, what: str) -> Iterable:
    return tqdm(items, desc=what, disable=None, leave=False, file=sys.stderr)
