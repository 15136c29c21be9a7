"""``Connection.channel``: streams read in parallel (both faces) share one channel per source, opened once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import closing
from typing import Any

import pytest

from wellsky_core import connection as connection_module
from wellsky_core.config import TapConfig
from wellsky_core.connection import Connection, reads_in_any_thread
from wellsky_sandbox.testing import SandboxServer


def test_streams_opening_their_channel_at_once_share_one(
    sandbox_factory: Callable[..., SandboxServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first opener waits (up to 2 s) inside ``open_channel`` for a second one; with the connection's lock no
    second one gets there, without it two channels were opened (a bulk export's job saved by both at once)."""
    sb = sandbox_factory(scale=20, sftp_port=None)
    config = TapConfig.load(
        {"base_url": sb.base_url, "auth_method": "oauth_client_credentials", "client_id": sb.client_id,
         "client_secret": sb.client_secret, "product": sb.product},
        env={},
    )
    entered: list[int] = []
    second = threading.Event()
    original = connection_module.open_channel

    def slow_open(*args: Any, **kwargs: Any) -> Any:
        entered.append(1)
        if len(entered) == 1:
            second.wait(2)  # a second opener would end this wait at once; alone, it lasts 2 s
        else:
            second.set()
        return original(*args, **kwargs)

    monkeypatch.setattr(connection_module, "open_channel", slow_open)
    opened: list[Any] = []
    with closing(Connection(config)) as conn:
        threads = [
            threading.Thread(target=lambda s=s: opened.append(conn.channel(s))) for s in ("patients", "appointments")
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(opened) == 2 and opened[0] is opened[1] and len(entered) == 1


def test_which_streams_a_worker_thread_may_read_is_the_channels_word() -> None:
    """The portals' browser belongs to the thread that started it: both faces read such streams afterwards."""
    base = {"base_url": "http://127.0.0.1:9", "username": "u", "password": "p", "product": "home_health"}
    api = TapConfig.load(base, env={})
    portal = TapConfig.load({**base, "source": "portal", "totp_secret": "GEXOC5XZ6GK3ET3M",
                             "agency_timezone": "America/Chicago"}, env={})
    assert reads_in_any_thread(api, "patients") is True
    assert reads_in_any_thread(portal, "patients") is False
