"""The ``hl7_sftp`` channel: HL7 v2 batch files dropped on an SFTP server -> patients, appointments, encounters.

Connection (:func:`connect_sftp`, shared with the export channel): the server's host key must match
``sftp_host_key`` (``ssh-ed25519 AAAA...`` or a known_hosts line) or an entry of the ``sftp_known_hosts`` file;
with neither set, or on a mismatch, the connection is refused before any credential is sent. Login with
``sftp_private_key`` (OpenSSH/PEM; Ed25519, ECDSA or RSA) or ``sftp_password``.

Reading: every ``*.hl7`` file of ``sftp_hl7_dir`` whose mtime is at or after ``since`` (a file cannot hold a
change newer than the moment it was written) is downloaded, split into messages and normalized; the latest
version of each record wins (by ``updated_at``, then file and message order), and records with
``updated_at >= since`` are yielded in (updated_at, id) order. One pass over the files serves all three
entities. A message that does not parse goes to the dead-letter file with the file name, message index
(1-based) and reason; the rest of the file is still read. ``last_file`` / ``last_mtime`` expose the newest file
processed (a file bookmark). With ``sftp_after_read`` = ``archive`` (to ``archive_dir``) or ``delete``, the
files read are moved or removed on :meth:`close` — after the sync used them, never before.
"""

from __future__ import annotations

import base64
import io
import logging
import posixpath
import stat
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paramiko

from ..deadletter import DeadLetter
from ..errors import AuthError, ConfigError, NormalizationError, WellSkyTransportError
from ..normalize.hl7 import normalize_message, split_messages
from .base import Channel, LatestVersions

if TYPE_CHECKING:
    from ..config import WellSkyConfig
    from ..transport import WellSkyClient

log = logging.getLogger(__name__)

HL7_ENTITIES = ("patients", "appointments", "encounters")
_RSA_NAMES = ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]


def _pinned_key(config: WellSkyConfig, host: str, port: int) -> paramiko.PKey:
    """The host key the server must present, from ``sftp_host_key`` or ``sftp_known_hosts``."""
    if config.sftp_host_key:
        parts = config.sftp_host_key.split()
        for i in range(len(parts) - 1):
            try:
                blob = base64.b64decode(parts[i + 1], validate=True)
                return paramiko.PKey.from_type_string(parts[i], blob)
            except Exception:
                continue
        raise ConfigError("sftp_host_key", "is not a public key; use the 'ssh-ed25519 AAAA...' line of the server")
    if config.sftp_known_hosts:
        path = Path(config.sftp_known_hosts).expanduser()
        if not path.is_file():
            raise ConfigError("sftp_known_hosts", f"file {path} does not exist")
        keys = paramiko.HostKeys(str(path))
        lookup = host if port == 22 else f"[{host}]:{port}"
        entry = keys.lookup(lookup)
        if not entry:
            raise AuthError(
                f"SFTP host {lookup} is not in sftp_known_hosts; add its key (ssh-keyscan -p {port} {host}) "
                "after checking it with the provider",
                setting="sftp_known_hosts",
            )
        return next(iter(entry.values()))
    raise ConfigError(
        "sftp_host_key",
        "an SFTP server's host key must be pinned: set sftp_host_key ('ssh-ed25519 AAAA...') or sftp_known_hosts; "
        "unknown host keys are refused",
    )


def _private_key(secret: str) -> paramiko.PKey:
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key(io.StringIO(secret))
        except (paramiko.SSHException, ValueError):
            continue
    raise ConfigError("sftp_private_key", "is not an unencrypted OpenSSH/PEM Ed25519, ECDSA or RSA private key")


def connect_sftp(config: WellSkyConfig, timeout: float | None = None) -> tuple[paramiko.Transport, paramiko.SFTPClient]:
    """An authenticated SFTP session to ``sftp_host`` whose host key matched the pinned one."""
    if not config.sftp_host:
        raise ConfigError("sftp_host", "required for the hl7_sftp and export channels; set the SFTP server name")
    host, port = config.sftp_host, config.sftp_port
    expected = _pinned_key(config, host, port)
    timeout = timeout or config.timeout_seconds
    where = f"sftp://{host}:{port}"
    try:
        transport = paramiko.Transport((host, port))
    except OSError as exc:
        raise WellSkyTransportError("cannot connect to the SFTP server", url=where, reason=type(exc).__name__) from None
    try:
        name = expected.get_name()
        transport.get_security_options().key_types = _RSA_NAMES if name == "ssh-rsa" else [name]
        try:
            transport.start_client(timeout=timeout)
        except paramiko.IncompatiblePeer:
            raise AuthError(
                f"SFTP host key mismatch for {where}: the server offers no {name} host key, the type pinned. "
                "Refusing to connect; update sftp_host_key / sftp_known_hosts only after confirming the server's "
                "key with the provider",
                setting="sftp_host_key",
            ) from None
        except paramiko.SSHException as exc:
            raise WellSkyTransportError(
                "SSH handshake with the SFTP server failed", url=where, reason=type(exc).__name__
            ) from None
        presented = transport.get_remote_server_key()
        if presented.get_name() != name or presented.asbytes() != expected.asbytes():
            raise AuthError(
                f"SFTP host key mismatch for {where}: the server presented {presented.get_name()} "
                f"{presented.fingerprint}, not the pinned key. Refusing to connect (possible man-in-the-middle); "
                "update sftp_host_key / sftp_known_hosts only after confirming the new key with the provider",
                setting="sftp_host_key",
            )
        if not config.sftp_username:
            raise ConfigError("sftp_username", "required to log in to the SFTP server")
        try:
            if config.sftp_private_key is not None:
                transport.auth_publickey(config.sftp_username, _private_key(config.sftp_private_key.get_secret_value()))
            elif config.sftp_password is not None:
                transport.auth_password(config.sftp_username, config.sftp_password.get_secret_value())
            else:
                raise ConfigError("sftp_password", "set sftp_password or sftp_private_key to log in to the SFTP server")
        except paramiko.AuthenticationException:
            setting = "sftp_private_key" if config.sftp_private_key is not None else "sftp_password"
            raise AuthError(
                f"SFTP login refused by {where}; check sftp_username and {setting}", setting=setting
            ) from None
        sftp = paramiko.SFTPClient.from_transport(transport)
        if sftp is None:
            raise WellSkyTransportError("the SFTP server refused the sftp subsystem", url=where)
        sftp.get_channel().settimeout(timeout)
        return transport, sftp
    except BaseException:
        transport.close()
        raise


def list_files(sftp: paramiko.SFTPClient, directory: str, suffix: str) -> list[paramiko.SFTPAttributes]:
    """Regular files of ``directory`` ending in ``suffix``, sorted by name (feeds name files so they sort by time)."""
    try:
        entries = sftp.listdir_attr(directory)
    except FileNotFoundError:
        raise ConfigError(
            "sftp_hl7_dir" if suffix == ".hl7" else "sftp_export_dir", f"remote directory {directory} does not exist"
        ) from None
    return sorted(
        (
            e
            for e in entries
            if e.filename.endswith(suffix) and not e.filename.startswith(".") and stat.S_ISREG(e.st_mode or 0)
        ),
        key=lambda e: e.filename,
    )


class Hl7SftpChannel(Channel):
    """HL7 v2 files on SFTP; unordered across files, so the tap bookmarks only after a full read."""

    name = "hl7_sftp"
    ordered = False

    def __init__(
        self,
        *,
        config: WellSkyConfig,
        client: WellSkyClient | None = None,
        product: str | None = None,
        dead_letter: DeadLetter | None = None,
        archive_dir: str = "/archive",
    ) -> None:
        super().__init__(config=config, client=client, product=product, dead_letter=dead_letter)
        self.archive_dir = archive_dir
        self._conn: tuple[paramiko.Transport, paramiko.SFTPClient] | None = None
        self._cache: LatestVersions | None = None
        self._cache_since: float | None = None
        self._processed: list[str] = []
        self.last_file: str | None = None
        self.last_mtime: int | None = None
        self.files_read = 0
        self.messages_read = 0

    def supports(self, entity: str) -> bool:
        return entity in HL7_ENTITIES

    @property
    def sftp(self) -> paramiko.SFTPClient:
        if self._conn is None:
            self._conn = connect_sftp(self.config)
        return self._conn[1]

    def iter_records(self, entity: str, since: datetime | None) -> Iterator[dict[str, Any]]:
        if not self.supports(entity):
            raise ValueError(f"the hl7_sftp channel does not carry {entity}; use it for {', '.join(HL7_ENTITIES)}")
        floor = since.timestamp() if since is not None else float("-inf")
        if self._cache is None or self._cache_since is None or floor < self._cache_since:
            self._scan(floor)
        assert self._cache is not None
        yield from self._cache.records(entity, since)

    def _scan(self, floor: float) -> None:
        """Read every file that may hold changes at/after ``floor``; keep the newest version per record."""
        cache = LatestVersions()  # on disk: the newest version of each record, constant memory
        directory = self.config.sftp_hl7_dir
        processed: list[str] = []
        for file_no, attr in enumerate(list_files(self.sftp, directory, ".hl7")):
            if attr.st_mtime is not None and attr.st_mtime < floor:
                continue
            path = posixpath.join(directory, attr.filename)
            with self.sftp.open(path, "rb") as fh:
                fh.prefetch(attr.st_size)
                raw = fh.read()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")  # HL7 v2 default character set is ASCII/8859-1
            for index, message in enumerate(split_messages(text), start=1):
                self.messages_read += 1
                try:
                    entity, rec = normalize_message(message)
                except NormalizationError as exc:
                    self.dead_letter.write(
                        stage="read",
                        stream=exc.entity if exc.entity in HL7_ENTITIES else None,
                        reason=str(exc),
                        payload=message,
                        context={"channel": self.name, "file": attr.filename, "message_index": index},
                    )
                    continue
                cache.offer(entity, rec, (file_no, index))
            processed.append(path)
            self.files_read += 1
            if self.last_file is None or attr.filename >= self.last_file:
                self.last_file, self.last_mtime = attr.filename, attr.st_mtime
        if self.dead_letter.total:
            log.warning("hl7_sftp: %d message(s) dead-lettered", self.dead_letter.total)
        if self._cache is not None:
            self._cache.close()
        self._cache, self._cache_since, self._processed = cache, floor, processed

    def bookmark(self) -> dict[str, Any]:
        """The newest file read: ``{"file": name, "mtime": unix seconds}``."""
        return {"file": self.last_file, "mtime": self.last_mtime}

    def _after_read(self) -> None:
        mode = self.config.sftp_after_read
        if mode == "keep" or not self._processed or self._conn is None:
            return
        for path in self._processed:
            try:
                if mode == "delete":
                    self.sftp.remove(path)
                else:
                    self.sftp.rename(path, posixpath.join(self.archive_dir, posixpath.basename(path)))
            except OSError as exc:
                log.warning("hl7_sftp: could not %s %s (%s)", mode, posixpath.basename(path), type(exc).__name__)
        self._processed = []

    def close(self) -> None:
        try:
            self._after_read()
        finally:
            if self._conn is not None:
                self._conn[1].close()
                self._conn[0].close()
                self._conn = None
            if self._own_dead_letter:
                self.dead_letter.close()
            if self._cache is not None:
                self._cache.close()
                self._cache = None
