"""One check for every numeric command-line option: finite numbers only, seeds in range.

Applied to the whole parser at once (:func:`guard_numbers`), so an option added later is covered too:
``nan`` or ``inf`` would otherwise pass ``type=float`` and end up in comparisons that are always False
and in provenance.json (where NaN is not valid JSON), and a seed of 2^64 would fail deep in torch.
"""

from __future__ import annotations

import argparse
import math
from typing import Callable

#: seeds are given to torch generators; sample n uses SEED + n, which must stay below 2^64
MAX_SEED = 2**63 - 1
SEED_OPTIONS = ("seed",)


def _non_finite(value) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return any(_non_finite(v) for v in value)
    return False


def _guarded(convert: Callable, seed: bool) -> Callable:
    def parse(text: str):
        value = convert(text)
        if _non_finite(value):
            raise argparse.ArgumentTypeError(f"'{text}' is not a finite number; give a finite value")
        if seed and isinstance(value, int) and not 0 <= value <= MAX_SEED:
            raise argparse.ArgumentTypeError(f"seed {text} is out of range; give a seed from 0 to {MAX_SEED}")
        return value

    parse.__name__ = getattr(convert, "__name__", "value")  # argparse names the type in some messages
    return parse


def guard_numbers(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Wrap the ``type`` of every option of ``parser`` and its sub-commands with the checks above."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                guard_numbers(sub)
        elif callable(action.type) and not getattr(action.type, "_guarded", False):
            action.type = _guarded(action.type, action.dest in SEED_OPTIONS)
            action.type._guarded = True
    return parser
