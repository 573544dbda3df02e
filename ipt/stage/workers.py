"""Worker processes that do not outlive the stage that started them."""

from __future__ import annotations

import os
import threading
import time

POLL_SECONDS = 0.5


def exit_with_parent() -> None:
    """Call in a worker: it exits within POLL_SECONDS once its parent dies, even by SIGKILL.

    A pool's workers otherwise wait forever on a queue whose writer is gone (seen with
    `ipt tokenize`: killing the main process left every worker running)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
