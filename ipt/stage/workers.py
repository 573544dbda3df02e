"""Worker processes that do not outlive the stage that started them."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
import time

POLL_SECONDS = 0.5


def exit_with_parent() -> None:
    """Call in a worker: it exits within POLL_SECONDS once its parent dies, even by SIGKILL.

    A pool's workers otherwise wait forever on a queue whose writer is gone (seen with
    `ipt tokenize`: killing the main process left every worker running). On Linux the kernel
    also kills it at once (PR_SET_PDEATHSIG): a worker inside a long native call may not run
    the watching thread for a while."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the thread below still works
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
