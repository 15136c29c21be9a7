"""SFTP plumbing shared by the batch channels (``hl7_sftp`` and ``export``).

Connection (:func:`connect_sftp`): the server's host key must match ``sftp_host_key`` (``ssh-ed25519 AAAA...``
or a known_hosts line) or an entry of the ``sftp_known_hosts`` file; with neither set, or on a mismatch, the
connection is refused before any credential is sent. Login with ``sftp_private_key`` (OpenSSH/PEM; Ed25519,
ECDSA or RSA) or ``sftp_password``.
"""

from __future__ import annotations

import base64
import io
import socket
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import paramiko

from ..errors import AuthError, ConfigError, WellSkyTransportError

if TYPE_CHECKING:
    from ..config import WellSkyConfig

SftpConnection = tuple[paramiko.Transport, paramiko.SFTPClient]

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
    try:  # our own socket: paramiko's connects without a timeout (a dropped SYN waited minutes) and raises
        # SSHException, not OSError, when the connection is refused (an internal error with a traceback)
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise WellSkyTransportError(
            "cannot connect to the SFTP server; check sftp_host and sftp_port, and that it is reachable from here",
            url=where, reason=type(exc).__name__,
        ) from None
    transport = paramiko.Transport(sock)
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


def list_files(
    sftp: paramiko.SFTPClient, directory: str, suffix: str, *, setting: str
) -> list[paramiko.SFTPAttributes]:
    """Regular files of ``directory`` ending in ``suffix``, sorted by name (feeds name files so they sort by time).

    ``setting`` is the config key that named the directory, for the error when it does not exist."""
    try:
        entries = sftp.listdir_attr(directory)
    except FileNotFoundError:
        raise ConfigError(setting, f"remote directory {directory} does not exist") from None
    return sorted(
        (
            e
            for e in entries
            if e.filename.endswith(suffix) and not e.filename.startswith(".") and stat.S_ISREG(e.st_mode or 0)
        ),
        key=lambda e: e.filename,
    )


def close_sftp(conn: SftpConnection | None) -> None:
    """Close an SFTP session and its SSH transport (None: nothing open)."""
    if conn is not None:
        conn[1].close()
        conn[0].close()
