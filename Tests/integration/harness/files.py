"""Files the harness writes or reads: private files (keys, cookies), ownership, log tails."""
from __future__ import annotations

import os
from pathlib import Path


def write_private_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Writes data to path (replacing it in place if it exists) with the given mode."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames + filenames:
            try:
                os.chown(os.path.join(dirpath, n), uid, gid, follow_symlinks=False)
            except FileNotFoundError:
                pass


def tail(path: Path | str, lines: int = 60) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
        return "\n".join(data.splitlines()[-lines:])
    except OSError as e:
        return f"<{path}: {e}>"
