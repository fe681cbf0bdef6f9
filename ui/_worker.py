"""The loop of a background worker process (ui/_background.py starts it). Standard library
only, so that a worker starts in milliseconds: it imports nothing of Streamlit.

The worker receives lists of (key, fn, args) on its pipe and sends (key, answer) back for
each, answer being ("ok", value) or ("error", message). It exits after IDLE_EXIT_S without
work, when its pipe closes, or when its parent (the fork server, which exits with the
app's server) is gone.
"""

from __future__ import annotations

import os
import threading
import time

IDLE_EXIT_S = 300         # a worker with nothing to do exits after this long
PARENT_CHECK_S = 0.5      # how often a worker checks that its parent is still there


def serve(conn) -> None:
    """The worker's loop: receive a list of (key, fn, args), send (key, answer) for each."""
    parent = os.getppid()         # the fork server, which exits when the app's server does

    def watch_parent():
        while True:
            time.sleep(PARENT_CHECK_S)
            if os.getppid() != parent:
                os._exit(0)
    threading.Thread(target=watch_parent, daemon=True).start()
    while conn.poll(IDLE_EXIT_S):
        try:
            calls = conn.recv()
        except (EOFError, OSError):
            return
        for key, fn, args in calls:
            try:
                answer = ("ok", fn(*args))
            except Exception as err:  # noqa: BLE001 - reported to the page as a message
                answer = ("error", f"{type(err).__name__}: {err}"[:500])
            try:
                conn.send((key, answer))
            except (BrokenPipeError, OSError):
                return
