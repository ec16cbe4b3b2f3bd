"""Private temporary folders named after the process that made them, swept once it is gone.

``specdec up`` keeps its throw-away CA, the routers' session key and the embedded Redis's socket
in folders of /tmp (0700). It deletes them when it stops; after a kill -9 it cannot, so each
folder's name carries the pid of its maker (``specdec-<kind>-<pid>-<random>``) and the next
``specdec up`` deletes those whose maker is no longer running (only the current user's).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

_PREFIX = "specdec-"


def make(kind: str) -> Path:
    """A new private folder (mode 0700) for ``kind`` of this process."""
    return Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{kind}-{os.getpid()}-"))


def sweep(root: Path | None = None) -> list[Path]:
    """Delete the folders whose maker is gone; the ones deleted."""
    root = root or Path(tempfile.gettempdir())
    swept = []
    for folder in root.glob(f"{_PREFIX}*-*-*"):
        pid = _maker(folder)
        if pid is None or _running(pid):
            continue
        with contextlib.suppress(OSError):
            if folder.is_dir() and folder.stat().st_uid == os.getuid():
                shutil.rmtree(folder)
                swept.append(folder)
    return swept


def _maker(folder: Path) -> int | None:
    parts = folder.name.removeprefix(_PREFIX).split("-")
    return int(parts[1]) if len(parts) >= 3 and parts[1].isdigit() else None


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
