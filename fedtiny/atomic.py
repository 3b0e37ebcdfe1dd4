"""Atomic file output: readers see the old file or the new one, never a torn one, and a kill
leaves no temporary behind for long.

Each write goes to a uniquely named temporary in the target's directory (".<name>.ft-XXXX.tmp"),
is fsynced, renamed over the target with os.replace, and the directory is fsynced so the rename
survives a power cut. An exception removes the temporary; a SIGKILL cannot, so writers call
`remove_stale` for their targets before writing again (the aggregator's state directory and
`fedtiny simulate --out` both do).
"""
from __future__ import annotations

import os
import re
import tempfile

_TMP_MARK = ".ft-"


def atomic_write(path: str, data: bytes) -> None:
    """Write bytes to path atomically (same-directory temporary, fsync, rename, fsync the directory)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + _TMP_MARK, suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself must survive a power cut
    finally:
        os.close(dir_fd)


def remove_stale(directory: str, names=None) -> list[str]:
    """Delete temporaries that a killed atomic_write left in directory (only for these target
    names, or for any target when names is None); returns what was removed."""
    if not os.path.isdir(directory):
        return []
    wanted = None if names is None else {str(n) for n in names}
    pattern = re.compile(r"^\.(.+)" + re.escape(_TMP_MARK) + r"[^/]+\.tmp$")
    removed = []
    for entry in os.listdir(directory):
        m = pattern.match(entry)
        if m and (wanted is None or m.group(1) in wanted):
            try:
                os.unlink(os.path.join(directory, entry))
                removed.append(entry)
            except FileNotFoundError:
                pass
    return removed


__all__ = ["atomic_write", "remove_stale"]
