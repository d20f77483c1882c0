"""How the threads of one process share a state dir, before its flock.

flock on this thread's own lock blocks forever (each open() is a new lock owner), so a nested
transaction or snapshot must fail loudly instead of hanging a VM start: each thread keeps the
state dirs it holds (the watcher's metrics server reads the claims from other threads while
the main thread writes). Threads take turns on a state dir before its flock: each waits its
bounded turn here instead of polling the flock against a sibling.

Its own module so that a process of one thread (the qemu hook) never imports ``threading``
(2-4 % of the hook's ``release end``): a store imports it on its first lock unless it was made
with ``one_thread`` (StateStore, whose stand-in gives the same two answers). The import runs
this module once, whatever the race.
"""

import threading

_local = threading.local()
_guard = threading.Lock()
_turns = {}


def held():
    """The keys of the state dirs this thread holds locked (a set it may change)."""
    keys = getattr(_local, "held", None)
    if keys is None:
        keys = _local.held = set()
    return keys


def turn(key):
    """The lock this process's threads take, one at a time, before the flock of *key*."""
    with _guard:
        return _turns.setdefault(key, threading.Lock())
