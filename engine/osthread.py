"""Engine threads named for the operating system too.

Python names its threads for itself only: `top -H`, `ps -L`, `/proc/<pid>/task/*/comm` and
`perf` show every engine thread as `python`. An operator looking at a busy engine (or a
benchmark splitting its CPU per thread, bench/intake.py) then cannot tell the journal writer
from its indexer. `NamedThread` gives the kernel the thread's name (its first 15 bytes, the
kernel's limit) when it starts; where the call is unavailable (not Linux) the thread simply
keeps the name `python`.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Callable

_PR_SET_NAME = 15  # linux/prctl.h
_KERNEL_NAME_BYTES = 15  # TASK_COMM_LEN (16) less the terminating NUL

_prctl: Callable[..., int] | None
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # pragma: no cover - not Linux
    _prctl = None


def set_os_name(name: str) -> None:
    """Name the calling thread for the kernel (truncated to 15 bytes); never raises."""
    if _prctl is None:  # pragma: no cover - not Linux
        return
    encoded = name.encode("ascii", "replace")[:_KERNEL_NAME_BYTES]
    _prctl(_PR_SET_NAME, ctypes.c_char_p(encoded), 0, 0, 0)


class NamedThread(threading.Thread):
    """A `threading.Thread` whose name the kernel also shows."""

    def run(self) -> None:
        set_os_name(self.name)
        super().run()
