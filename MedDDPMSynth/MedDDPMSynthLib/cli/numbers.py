"""One check for every numeric command-line option (finite numbers only, seeds in range), and the one
parser of number lists (``--grid 64,64,32``, ``--vector 10,0,-5``...) every sub-command uses.

Applied to the whole parser at once (:func:`guard_numbers`), so an option added later is covered too:
``nan`` or ``inf`` would otherwise pass ``type=float`` and end up in comparisons that are always False
and in provenance.json (where NaN is not valid JSON), and a seed of 2^64 would fail deep in torch.
"""

from __future__ import annotations

import argparse
import math
import re
from typing import Callable

#: seeds are given to torch generators; sample n uses SEED + n, which must stay below 2^64
MAX_SEED = 2**63 - 1
SEED_OPTIONS = ("seed",)


def number_list(text: str, cast=float, separators: str = ",", skip_empty: bool = False) -> tuple | None:
    """The numbers of an option value separated by any of ``separators`` (e.g. ",x" for 64x64x32), or None
    when a part is not a number of type ``cast``; callers say what they expected in their own message."""
    parts = [p.strip() for p in re.split(f"[{re.escape(separators)}]", text)]
    try:
        return tuple(cast(p) for p in parts if p or not skip_empty)
    except ValueError:
        return None


def int_list(text: str) -> tuple[int, ...]:
    """``argparse`` type: integers separated by commas or x ('' is the empty list)."""
    values = number_list(text, int, ",x", skip_empty=True)
    if values is None:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers")
    return values


def float_list(text: str) -> tuple[float, ...]:
    """``argparse`` type: numbers separated by commas or x ('' is the empty list)."""
    values = number_list(text, float, ",x", skip_empty=True)
    if values is None:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of numbers")
    return values


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
