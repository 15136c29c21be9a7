"""Shared fixtures: real sandbox tenants on loopback ports (no mocks of the server)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Tests never touch the user's home directory: the default state root (``$XDG_STATE_HOME/tap-wellsky``: the
# data-quality report, per-tenant state, ledgers) points at a private temporary directory for this test process
# and, through the environment, every tap / target / source subprocess it starts. Set at import, before any
# test or fixture reads it; one directory per xdist worker, removed at exit.
TEST_STATE_HOME = Path(tempfile.mkdtemp(prefix="wellsky-tests-state-"))
os.environ["XDG_STATE_HOME"] = str(TEST_STATE_HOME)
atexit.register(shutil.rmtree, TEST_STATE_HOME, True)

from wellsky_core.models import ENTITIES  # noqa: E402
from wellsky_sandbox.testing import SandboxServer  # noqa: E402

_raw_truth = SandboxServer.truth


def _canonical_truth(self: SandboxServer, entity: str, updated_since: str | None = None) -> list[dict[str, Any]]:
    """The oracle in canonical form: the sandbox's logical records (it never imports the core) with the canonical
    fields added since (data_quality, status_code, tasks, rates...) at their defaults, exactly as a channel
    emits them for a modeled product."""
    records = _raw_truth(self, entity, updated_since)
    spec = ENTITIES.get(entity)
    return (
        records
        if spec is None
        else [spec.model.model_validate(r).model_dump(mode="json", by_alias=True) for r in records]
    )


SandboxServer.truth = _canonical_truth  # type: ignore[method-assign]


@pytest.fixture
def sandbox_factory(tmp_path: Path) -> Iterator[Callable[..., SandboxServer]]:
    """Start any number of tenants: ``sandbox_factory(product="hospice", mfa=True, scale=100)``."""
    started: list[SandboxServer] = []

    def make(**kw: Any) -> SandboxServer:
        kw.setdefault("scale", 100)
        kw.setdefault("data_dir", tmp_path / f"tenant-{len(started)}")
        server = SandboxServer(**kw).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.cleanup()


@pytest.fixture
def sandbox(sandbox_factory: Callable[..., SandboxServer]) -> SandboxServer:
    """A small home-health tenant (100 patients, about 1k records), fresh for each test."""
    return sandbox_factory()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Project tests and the generic singer-sdk suites (marker ``sdk_suite``) are reported apart."""
    counts: dict[str, Counter[str]] = {"project tests": Counter(), "singer-sdk suites": Counter()}
    for outcome in ("passed", "failed", "error", "skipped", "xfailed", "xpassed"):
        seen: set[str] = set()
        for report in terminalreporter.stats.get(outcome, []):
            nodeid = getattr(report, "nodeid", "")
            if not nodeid or nodeid in seen:
                continue
            seen.add(nodeid)
            kind = "singer-sdk suites" if "sdk_suite" in getattr(report, "keywords", {}) else "project tests"
            counts[kind][outcome] += 1
    for kind, counted in counts.items():
        if counted:
            detail = ", ".join(f"{n} {outcome}" for outcome, n in counted.items())
            terminalreporter.write_line(f"{kind}: {sum(counted.values())} ({detail})")


@pytest.fixture(autouse=True)
def _no_leaked_running_loop() -> Iterator[None]:
    """No test here runs inside an event loop; a library that left this thread marked as running one (seen in
    xdist workers) made Playwright's sync API refuse to start in a later test. Clear the stale marker."""
    import asyncio

    asyncio.events._set_running_loop(None)
    yield
