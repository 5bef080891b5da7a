"""The progress bars of the commands and the training loop: tqdm, built whole even when Ctrl-C or SIGTERM
arrives meanwhile.

A signal that interrupts ``tqdm.__init__`` leaves a half-built bar whose ``__del__`` later prints an
"Exception ignored ... no attribute 'pos'" traceback after the command's one clean "cancelled" line. So the
two signals the commands turn into a clean stop are held back while the bar is built and re-raised, to the
command's own handlers, right after: the bar exists whole, or not at all. (Held at the Python level, not with
a signal mask: in a process with other threads, torch's among them, the kernel hands a blocked signal to
another thread and Python would still raise it in the main one.)
"""

from __future__ import annotations

import signal
import threading

from tqdm import tqdm

_HELD = (signal.SIGINT, signal.SIGTERM)


def progress_bar(**options) -> tqdm:
    """``tqdm(**options)``, with SIGINT and SIGTERM held back while it is built, then delivered."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread handles signals
        return tqdm(**options)
    held: list[int] = []
    previous = {}
    for signum in _HELD:
        handler = signal.getsignal(signum)
        if handler is not None:  # None: installed outside Python; leave it alone
            previous[signum] = signal.signal(signum, lambda number, _frame: held.append(number))
    try:
        bar = tqdm(**options)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    for signum in held[:1]:
        signal.raise_signal(signum)  # now handled as usual: KeyboardInterrupt / Terminated, the bar whole
    return bar
