"""The tenant's SFTP server (paramiko, server side): the HL7 feed and nightly exports, as agencies receive them.

Tree (rooted at ``<data-dir>/sftp``)::

    /outbound/hl7/*.hl7        read-only HL7 v2 batch files (see hl7.py); removable
    /outbound/exports/*.csv    read-only nightly CSV exports (see exports.py); removable
    /archive/                  rename a file here to archive it; removable

Listing an outbound directory first renders whatever changed in the tenant since the last listing, so a
``/_sandbox/advance`` shows up as new files. Archive/delete are recorded in the tenant's SQLite file
(``feed_files.state``) as well as on disk, so a restart keeps them. Logins: the tenant user's password, or a
public key registered with :func:`add_authorized_key` (``POST /_sandbox/sftp/authorized-keys``). The host key
is generated once per data dir and reused, so clients can pin it (``SftpServer.host_key_line``).
"""

from __future__ import annotations

import base64
import errno
import hmac
import logging
import os
import posixpath
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .hl7 import BatchFeeds, feeds_for

if TYPE_CHECKING:
    from .tenant import Tenant

log = logging.getLogger("wellsky_sandbox.sftp")

KEYS_SCHEMA = """
CREATE TABLE IF NOT EXISTS sftp_authorized_keys (
    username TEXT NOT NULL, key_type TEXT NOT NULL, key_b64 TEXT NOT NULL,
    PRIMARY KEY (username, key_type, key_b64)
) WITHOUT ROWID;
"""
FEED_DIRS = {"/outbound/hl7": "hl7", "/outbound/exports": "exports"}
VIRTUAL_DIRS = {"/": ("outbound", "archive"), "/outbound": ("hl7", "exports")}


class _QuietDisconnects(logging.Filter):
    """A client hanging up without a goodbye is normal for a server; paramiko logs it as an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("Socket exception", "EOF in transport thread"))


logging.getLogger("wellsky_sandbox.sftp.transport").addFilter(_QuietDisconnects())


def add_authorized_key(tenant: Tenant, public_key: str, username: str | None = None) -> None:
    """Let ``public_key`` (an OpenSSH ``authorized_keys`` line) log in as ``username`` (default: tenant user)."""
    parts = public_key.strip().split()
    if len(parts) < 2:
        raise ValueError("public_key must be an OpenSSH line such as 'ssh-ed25519 AAAA... comment'")
    try:
        blob = base64.b64decode(parts[1], validate=True)
        key = paramiko.PKey.from_type_string(parts[0], blob)
    except Exception as exc:
        raise ValueError(f"public_key is not a valid {parts[0]} key ({type(exc).__name__})") from None
    fdb = feeds_for(tenant).fdb
    with fdb.lock:
        fdb.db.executescript(KEYS_SCHEMA)
        fdb.db.execute(
            "INSERT OR IGNORE INTO sftp_authorized_keys VALUES (?, ?, ?)",
            (username or tenant.security.username, key.get_name(), key.get_base64()),
        )


def load_host_key(path: Path) -> paramiko.PKey:
    """The server's Ed25519 host key, created on first use (owner-only file) and stable across restarts."""
    if not path.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
    return paramiko.Ed25519Key.from_private_key_file(str(path))


class _Auth(paramiko.ServerInterface):
    """Password (the tenant user's) or registered public key; one session channel for the sftp subsystem."""

    def __init__(self, tenant: Tenant, feeds: BatchFeeds) -> None:
        self.tenant = tenant
        self.feeds = feeds

    def get_allowed_auths(self, username: str) -> str:
        return "password,publickey"

    def check_auth_password(self, username: str, password: str) -> int:
        sec = self.tenant.security
        ok = hmac.compare_digest(username.encode(), sec.username.encode()) & hmac.compare_digest(
            password.encode(), sec.password.encode()
        )
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        fdb = self.feeds.fdb
        with fdb.lock:
            fdb.db.executescript(KEYS_SCHEMA)
            row = fdb.db.execute(
                "SELECT 1 FROM sftp_authorized_keys WHERE username = ? AND key_type = ? AND key_b64 = ?",
                (username, key.get_name(), key.get_base64()),
            ).fetchone()
        return paramiko.AUTH_SUCCESSFUL if row else paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED


class _Handle(paramiko.SFTPHandle):
    def __init__(self, path: Path) -> None:
        super().__init__(os.O_RDONLY)
        self.filename = str(path)
        self.readfile = open(path, "rb")  # noqa: SIM115 - closed by SFTPHandle.close

    def stat(self) -> paramiko.SFTPAttributes | int:
        try:
            return paramiko.SFTPAttributes.from_stat(os.fstat(self.readfile.fileno()))
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno)


class _Tree(paramiko.SFTPServerInterface):
    """The virtual tree above, mapped onto ``<data-dir>/sftp`` with every write except archive/remove refused."""

    def __init__(self, server: Any, feeds: BatchFeeds, *args: Any, **kwargs: Any) -> None:
        super().__init__(server, *args, **kwargs)
        self.feeds = feeds
        self.root = feeds.root

    # -- paths ----------------------------------------------------------------------------------------
    def canonicalize(self, path: str) -> str:
        text = path if isinstance(path, str) else path.decode()
        norm = posixpath.normpath("/" + text)
        return "/" if norm in ("", ".") else norm.replace("//", "/")

    def _real(self, path: str) -> Path:
        return self.root / self.canonicalize(path).lstrip("/")

    @staticmethod
    def _feed_of(path: str) -> tuple[str | None, str]:
        parent, name = posixpath.split(path)
        return FEED_DIRS.get(parent), name

    # -- reads ----------------------------------------------------------------------------------------
    def list_folder(self, path: str) -> list[paramiko.SFTPAttributes] | int:
        vpath = self.canonicalize(path)
        if vpath in FEED_DIRS:
            try:
                self.feeds.refresh()
            except Exception:
                log.exception("rendering the batch feeds failed")
                return paramiko.SFTP_FAILURE
        real = self._real(vpath)
        if vpath in VIRTUAL_DIRS:
            for d in VIRTUAL_DIRS[vpath]:
                (real / d).mkdir(parents=True, exist_ok=True)
        if not real.is_dir():
            return paramiko.SFTP_NO_SUCH_FILE
        out = []
        for entry in sorted(os.scandir(real), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            out.append(paramiko.SFTPAttributes.from_stat(entry.stat(), entry.name))
        return out

    def stat(self, path: str) -> paramiko.SFTPAttributes | int:
        vpath = self.canonicalize(path)
        real = self._real(vpath)
        if vpath in VIRTUAL_DIRS or vpath in FEED_DIRS:
            real.mkdir(parents=True, exist_ok=True)
        if posixpath.basename(vpath).startswith("."):
            return paramiko.SFTP_NO_SUCH_FILE
        try:
            return paramiko.SFTPAttributes.from_stat(real.stat(), posixpath.basename(vpath))
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno)

    lstat = stat

    def open(self, path: str, flags: int, attr: paramiko.SFTPAttributes) -> paramiko.SFTPHandle | int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC):
            return paramiko.SFTP_PERMISSION_DENIED
        vpath = self.canonicalize(path)
        real = self._real(vpath)
        if posixpath.basename(vpath).startswith(".") or not real.is_file():
            return paramiko.SFTP_NO_SUCH_FILE
        try:
            return _Handle(real)
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno)

    # -- the only writes: archive and remove -----------------------------------------------------------
    def rename(self, oldpath: str, newpath: str) -> int:
        src, dst = self.canonicalize(oldpath), self.canonicalize(newpath)
        feed, name = self._feed_of(src)
        if feed is None or posixpath.dirname(dst) != "/archive" or not posixpath.basename(dst):
            return paramiko.SFTP_PERMISSION_DENIED
        target = self._real(dst)
        if target.exists():
            return paramiko.SFTPServer.convert_errno(errno.EEXIST)
        try:
            os.rename(self._real(src), target)
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno)
        with self.feeds.fdb.lock:
            self.feeds.fdb.set_state(feed, name, "archived")
        return paramiko.SFTP_OK

    posix_rename = rename

    def remove(self, path: str) -> int:
        vpath = self.canonicalize(path)
        feed, name = self._feed_of(vpath)
        if feed is None and posixpath.dirname(vpath) != "/archive":
            return paramiko.SFTP_PERMISSION_DENIED
        try:
            os.remove(self._real(vpath))
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno)
        if feed is not None:
            with self.feeds.fdb.lock:
                self.feeds.fdb.set_state(feed, name, "deleted")
        return paramiko.SFTP_OK

    def mkdir(self, path: str, attr: paramiko.SFTPAttributes) -> int:
        return paramiko.SFTP_PERMISSION_DENIED

    def rmdir(self, path: str) -> int:
        return paramiko.SFTP_PERMISSION_DENIED

    def chattr(self, path: str, attr: paramiko.SFTPAttributes) -> int:
        return paramiko.SFTP_PERMISSION_DENIED

    def symlink(self, target_path: str, path: str) -> int:
        return paramiko.SFTP_PERMISSION_DENIED


class SftpServer:
    """Loopback SFTP server of one tenant: an accept thread, one paramiko Transport per connection."""

    def __init__(self, tenant: Tenant, host: str = "127.0.0.1", port: int = 0) -> None:
        self.tenant = tenant
        self.host = host
        self._want_port = port
        self.port = 0
        self.feeds = feeds_for(tenant)
        self.host_key = load_host_key(Path(tenant.config.data_dir) / "sftp_host_ed25519_key")
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._transports: list[paramiko.Transport] = []
        self._lock = threading.Lock()
        self.connections = 0

    @property
    def host_key_line(self) -> str:
        """``ssh-ed25519 AAAA...``: what a client pins (``sftp_host_key``)."""
        return f"{self.host_key.get_name()} {self.host_key.get_base64()}"

    def known_hosts_line(self) -> str:
        host = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        return f"{host} {self.host_key_line}"

    def start(self) -> SftpServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._want_port))
        sock.listen(64)
        sock.settimeout(0.2)
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._want_port = self.port  # a restart comes back on the same port
        self._stopping.clear()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name=f"wellsky-sftp-{self.port}")
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            conn.settimeout(None)
            try:
                transport = paramiko.Transport(conn)
                transport.set_log_channel("wellsky_sandbox.sftp.transport")
                transport.add_server_key(self.host_key)
                transport.set_subsystem_handler("sftp", paramiko.SFTPServer, _Tree, self.feeds)
                transport.start_server(event=threading.Event(), server=_Auth(self.tenant, self.feeds))
            except Exception:
                log.warning("SFTP connection setup failed", exc_info=True)
                conn.close()
                continue
            with self._lock:
                self.connections += 1
                self._transports = [t for t in self._transports if t.is_active()] + [transport]

    def stop(self) -> None:
        self._stopping.set()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            transports, self._transports = self._transports, []
        for transport in transports:
            transport.close()
        for transport in transports:
            transport.join(timeout=5)

    def __enter__(self) -> SftpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
