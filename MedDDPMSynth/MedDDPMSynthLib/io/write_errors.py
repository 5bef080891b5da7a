"""What to tell the user when writing a file fails: the advice depends on why.

A full disk needs space freed; a read-only file system or a folder without write permission needs
another folder (freeing space would not help). SimpleITK and ``torch.save`` report failed writes as
RuntimeError without an errno, so their message text is read as well.
"""

from __future__ import annotations

import errno

_NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
_READ_ONLY = (errno.EROFS,)
_NO_PERMISSION = (errno.EACCES, errno.EPERM)


def _kind(exc: BaseException) -> str:
    code = getattr(exc, "errno", None)
    text = str(exc).lower()
    if code in _NO_SPACE or "no space left" in text or "disk quota" in text:
        return "space"
    if code in _READ_ONLY or "read-only file system" in text:
        return "read-only"
    if code in _NO_PERMISSION or "permission denied" in text or "operation not permitted" in text:
        return "permission"
    if code == errno.ENAMETOOLONG or "file name too long" in text:
        return "name"
    return "other"


def write_advice(exc: BaseException) -> str:
    """The fix for a failed write, e.g. 'free disk space or choose another output folder'."""
    return {
        "space": "the disk is full; free disk space or choose another output folder",
        "read-only": "the file system is read-only; choose an output folder on a writable disk",
        "permission": "no permission to write there; choose another output folder or fix its permissions",
        "name": "the file name is too long for the file system; choose a shorter output name",
        "other": "check the output folder, free disk space or choose another output folder",
    }[_kind(exc)]


def short_reason(exc: BaseException) -> str:
    """One line of the underlying error (OSError's strerror, else the last line of the message)."""
    reason = getattr(exc, "strerror", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
    return str(reason)[:160]
