"""Child processes that die with their parent, even when the parent is killed with SIGKILL.

``specdec up`` starts the services and Redis as children in sessions of their own (Ctrl-C
reaches only ``up``), so nothing else would stop them if ``up`` itself died without cleaning up.
``die_with_parent()`` gives a ``preexec_fn`` for ``subprocess.Popen`` that asks Linux for a
parent-death signal (``prctl(PR_SET_PDEATHSIG, SIGKILL)``, kept across ``exec``), then checks that
the parent is still the process that forked the child: one that died in between would never send
the signal, so the child kills itself instead.

The kernel sends the signal when the *thread* that forked the child ends: start children from a
thread that lives as long as the parent (``up`` starts and restarts them from its main thread).
On other systems ``die_with_parent()`` returns None and children may outlive their parent.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` binding the child's life to this process (None off Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it
    parent = os.getpid()
    kill = int(signal.SIGKILL)

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, kill)
        if os.getppid() != parent:  # the parent died before the call: no signal will come
            os.kill(os.getpid(), kill)

    return preexec
