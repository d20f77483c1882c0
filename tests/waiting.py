"""Waiting for an outcome, never timing it (tests/README.md: no timing assertions).

WAIT is a deadline generous enough for a shared, loaded machine; it only bounds a test that
would otherwise hang. VFPICK_TEST_WAIT overrides it.
"""

import os
import time

WAIT = float(os.environ.get("VFPICK_TEST_WAIT", "60"))


def wait_until(condition, what, timeout=WAIT, interval=0.02):
    """condition()'s first true value; AssertionError naming `what` after timeout seconds.
    what may be a callable, called only on failure (e.g. to show a log)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("not within %.0f s: %s" % (timeout, what() if callable(what) else what))
        time.sleep(interval)
