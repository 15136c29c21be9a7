"""Every file the connector writes holds PHI or secrets: it is created 0600, in a 0700 directory we own.

The one home of that rule. Spools, job files, ledgers, audit logs, dead letters, quality reports, webhook
queues and portal state all go through :func:`private_dir` and :func:`open_private` /
:func:`write_private` / :func:`private_sqlite`, never through ``open()`` or ``Path.write_text``:

- directories are created 0700, and an existing one must be a real directory (not a symlink) owned by this
  user; one that others can read is narrowed to 0700 (we own it) rather than used as it is;
- files are opened with ``O_NOFOLLOW`` (a planted symlink is refused, never followed) and created 0600; an
  existing file with wider bits is narrowed before anything is written to it;
- SQLite databases are created 0600 before SQLite opens them, so its ``-wal`` / ``-shm`` / ``-journal``
  files inherit 0600 (SQLite gives them the database file's mode).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sqlite3
import stat
import threading
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

DIR_MODE = 0o700
FILE_MODE = 0o600
APP_DIR = "tap-wellsky"


class UnsafePathError(OSError):
    """A path the connector refuses to write PHI through (a symlink, another user's directory, not a file)."""


def state_root() -> Path:
    """``$XDG_STATE_HOME/tap-wellsky`` (``~/.local/state/tap-wellsky`` when unset): the default state root."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / APP_DIR


def tenant_slug(product: str | None, base_url: str | None) -> str:
    """A directory name for one tenant: product and host (the port of a loopback sandbox is left out)."""
    host = (urlsplit(base_url).hostname or "local") if base_url else "embedded-sandbox"
    if host in ("127.0.0.1", "localhost", "::1"):
        host = "loopback"
    raw = f"{product or 'unknown'}-{host}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", raw)[:120]


def account_slug(base_url: str | None, identity: str | None) -> str:
    """A file name for one account of one tenant (its URL and the user or client id) that shows neither."""
    return hashlib.sha256(f"{(base_url or '').rstrip('/')}\0{identity or ''}".encode()).hexdigest()[:16]


def private_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` as a directory only this user can enter (created 0700 with its missing parents).

    Refused (``UnsafePathError``): a symlink, something that is not a directory, a directory of another user.
    """
    target = Path(path)
    missing: list[Path] = []
    probe = target
    while not os.path.lexists(probe):
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, DIR_MODE)
    info = os.lstat(target)
    if stat.S_ISLNK(info.st_mode):
        raise UnsafePathError(f"{target} is a symbolic link; point the state directory at a real directory")
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafePathError(f"{target} is not a directory")
    if info.st_uid != os.geteuid():
        raise UnsafePathError(f"{target} belongs to another user (uid {info.st_uid}); use a directory you own")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(target, DIR_MODE)
    return target


def _flags(mode: str) -> int:
    base = os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    if mode.startswith("a"):
        return base | os.O_WRONLY | os.O_APPEND
    if mode.startswith("w"):
        return base | os.O_WRONLY | os.O_TRUNC
    if mode.startswith("r+"):
        return base | os.O_RDWR
    raise ValueError(f"open_private: mode {mode!r} (use w, a or r+, with b for bytes)")


def open_private(path: str | os.PathLike[str], mode: str = "w", *, make_parent: bool = True) -> IO[Any]:
    """Open ``path`` for writing as a 0600 file, never through a symlink; the parent made private when new."""
    target = Path(path)
    if make_parent:
        parent = target.parent
        if not parent.exists():
            private_dir(parent)
    try:
        fd = os.open(target, _flags(mode), FILE_MODE)
    except OSError as exc:
        if os.path.islink(target):
            raise UnsafePathError(f"{target} is a symbolic link; refusing to write through it") from None
        raise exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafePathError(f"{target} is not a regular file")
        if stat.S_IMODE(info.st_mode) & 0o077:
            os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    text = "b" not in mode
    return os.fdopen(fd, mode if mode != "r+" else "r+", encoding="utf-8" if text else None)


def read_no_follow(path: str | os.PathLike[str]) -> bytes | None:
    """A file's bytes, never through a symbolic link (a planted one must not point us elsewhere); None when it is
    absent. A link or an unreadable file raises :class:`OSError`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def write_private(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Replace ``path`` atomically with ``data`` (a 0600 temporary file beside it, then a rename)."""
    target = Path(path)
    # per process and thread: two threads saving one file (streams read in parallel) never share a temporary
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open_private(tmp, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, target)
    except BaseException:  # a failed save leaves the old file and no temporary one
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target


def private_sqlite(path: str | os.PathLike[str], **kwargs: Any) -> sqlite3.Connection:
    """A SQLite connection on ``path`` whose database and journal files are all 0600."""
    target = Path(path)
    open_private(target, "ab").close()
    for suffix in ("-wal", "-shm", "-journal"):
        side = target.with_name(target.name + suffix)
        if os.path.lexists(side):
            if os.path.islink(side):
                raise UnsafePathError(f"{side} is a symbolic link; refusing to open the database")
            os.chmod(side, FILE_MODE)
    return sqlite3.connect(str(target), **kwargs)


__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "UnsafePathError",
    "open_private",
    "private_dir",
    "private_sqlite",
    "state_root",
    "tenant_slug",
    "write_private",
]
