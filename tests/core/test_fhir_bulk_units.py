"""fhir_bulk's parts one at a time, in-process and fast (for ``scripts/mutate fhir_bulk``): the spool and job
directory (tmp_path), the downloader and the Bulk Data server calls against ``httpx.MockTransport``."""

from __future__ import annotations

import gzip
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from wellsky_core.channels.fhir_bulk.download import Downloader, Stopped, Truncated, entity_of, ndjson_lines
from wellsky_core.channels.fhir_bulk.export import BulkServer, JobGone, _percent, job_failed
from wellsky_core.channels.fhir_bulk.spool import (
    JOB_FILE,
    SPOOL_FILE,
    STALE_AFTER_SECONDS,
    ByRef,
    ExportJob,
    Spool,
    job_root,
    prune,
)
from wellsky_core.config import WellSkyConfig
from wellsky_core.errors import NormalizationError, RemoteError, WellSkyTransportError
from wellsky_core.http.client import WellSkyClient

BASE = "https://example.com"
STATUS = f"{BASE}/status/job-1"
CREDENTIALS = {
    "auth_method": "oauth_client_credentials",
    "client_id": "bulk-client",
    "client_secret": "bulk-secret",
    "token_url": f"{BASE}/token",
}
KICKOFF = {"level": "system", "types": ["Patient"], "since": None, "type_filter": [], "entities": ["patients"]}


def body(kind: str, rid: str, **extra: Any) -> bytes:
    return orjson.dumps({"resourceType": kind, "id": rid, **extra})


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# -- spool ----------------------------------------------------------------------------------------------------


def test_spool_put_get_of_type_and_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite")
    spool.put("u1", [("Patient", "b", None, body("Patient", "b")), ("Patient", "a", None, body("Patient", "a"))])
    spool.put("u2", [("Goal", "g", "Patient/a", body("Goal", "g"))])
    assert [r["id"] for r in spool.of_type("Patient")] == ["a", "b"]  # ordered by id
    assert [r["id"] for r in spool.of_type("Goal")] == ["g"]
    assert spool.get("Patient/a") == {"resourceType": "Patient", "id": "a"}
    assert spool.get("Patient/zz") is None and spool.get("Goal/a") is None
    assert ByRef(spool)["Goal/g"]["id"] == "g"
    with pytest.raises(KeyError) as missing:
        ByRef(spool)["Goal/none"]
    assert missing.value.args == ("Goal/none",)
    assert len(ByRef(spool)) == 0 and list(ByRef(spool)) == []
    assert spool.done_files() == set()
    spool.commit_file("u1", "Patient", 2)
    assert spool.done_files() == {"u1"}
    spool.discard_unfinished()  # u2 never completed: its rows go
    assert spool.get("Goal/g") is None and spool.get("Patient/a") is not None
    spool.put("u2", [("Goal", "g", None, body("Goal", "g"))])
    spool.discard_file("u2")
    assert spool.get("Goal/g") is None and spool.get("Patient/b") is not None
    spool.put("u1", [("Patient", "a", None, body("Patient", "a", active=False))])  # replaces, no duplicate
    assert [r.get("active") for r in spool.of_type("Patient")] == [False, None]
    spool.clear()
    assert list(spool.of_type("Patient")) == [] and spool.done_files() == set()
    spool.close()


def test_spool_children_of_several_parents_without_duplicates(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite")
    spool.put(
        "u",
        [
            ("Goal", "g2", "Encounter/e1", body("Goal", "g2")),
            ("Goal", "g1", "Encounter/e1", body("Goal", "g1")),
            ("Condition", "c1", "Encounter/e1", body("Condition", "c1")),
            ("Goal", "g3", "key-e1", body("Goal", "g3")),
            ("Goal", "g9", "Encounter/other", body("Goal", "g9")),
        ],
    )
    kids = spool.children("Encounter/e1", "key-e1", "Encounter/e1")
    assert [g["id"] for g in kids["Goal"]] == ["g1", "g2", "g3"]
    assert [c["id"] for c in kids["Condition"]] == ["c1"]
    assert spool.children("Encounter/none") == {}
    spool.close()


def test_spool_reads_from_several_threads_and_close_closes_them(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite")
    spool.put("u", [("Patient", "a", None, body("Patient", "a"))])
    seen: list[str] = []
    thread = threading.Thread(target=lambda: seen.extend(r["id"] for r in spool.of_type("Patient")))
    thread.start()
    thread.join()
    assert seen == ["a"] and spool.get("Patient/a") is not None and spool.get("Patient/a") is not None
    assert list(spool.of_type("Patient")) and spool.children("x") == {}
    assert len(spool._all_readers) == 2  # one read connection per thread, reused
    spool.close()
    assert spool._all_readers == []


def test_job_files_are_private_and_resume_only_the_same_kickoff(tmp_path: Path) -> None:
    directory = tmp_path / "jobs" / "j1"
    job = ExportJob(directory, KICKOFF)
    assert job.state == {"kickoff": KICKOFF} and not job.dead and job.entities_left == {"patients"}
    job.state.update(status_url=STATUS, manifest={"transactionTime": "2026-01-02T03:04:05Z", "output": []})
    job.spool.put("u", [("Patient", "a", None, body("Patient", "a"))])
    job.spool.commit_file("u", "Patient", 1)
    job.save()
    assert mode(directory) == 0o700 and mode(directory / JOB_FILE) == 0o600 and mode(directory / SPOOL_FILE) == 0o600
    assert str(job.transaction_time) == "2026-01-02 03:04:05+00:00"
    job.spool.close()

    again = ExportJob(directory, dict(KICKOFF))
    assert again.state["status_url"] == STATUS and again.spool.done_files() == {"u"}
    again.forget_server_job()
    assert again.state["status_url"] is None and again.state["manifest"] is None
    assert again.spool.done_files() == set() and again.spool.get("Patient/a") is None
    assert orjson.loads((directory / JOB_FILE).read_bytes())["status_url"] is None
    again.state["status_url"] = STATUS
    again.save()
    again.spool.close()

    other = ExportJob(directory, {**KICKOFF, "since": "2026-01-01"})
    assert other.state == {"kickoff": {**KICKOFF, "since": "2026-01-01"}}
    other.remove()
    assert not directory.exists()
    other.remove()  # already gone (another run pruned it): not an error


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'{"no": "kickoff"}'])
def test_an_unreadable_or_foreign_job_file_starts_afresh(tmp_path: Path, content: bytes) -> None:
    directory = tmp_path / "j"
    directory.mkdir(mode=0o700)
    (directory / JOB_FILE).write_bytes(content)
    job = ExportJob(directory, KICKOFF)
    assert job.state == {"kickoff": KICKOFF}
    job.spool.close()


def test_a_symlinked_job_file_is_not_read(tmp_path: Path) -> None:
    directory = tmp_path / "j"
    directory.mkdir(mode=0o700)
    elsewhere = tmp_path / "planted.json"
    elsewhere.write_bytes(orjson.dumps({"kickoff": KICKOFF, "status_url": "https://evil.example/x"}))
    (directory / JOB_FILE).symlink_to(elsewhere)
    job = ExportJob(directory, KICKOFF)
    assert job.state == {"kickoff": KICKOFF}
    job.spool.close()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (12, None),
        ("not a time", None),
        ("2026-01-02T03:04:05", "2026-01-02 03:04:05+00:00"),
        ("2026-01-02T03:04:05+02:00", "2026-01-02 03:04:05+02:00"),
    ],
)
def test_transaction_time(tmp_path: Path, value: Any, expected: str | None) -> None:
    job = ExportJob(tmp_path / "j", KICKOFF)
    job.state["manifest"] = {"transactionTime": value}
    assert (str(job.transaction_time) if job.transaction_time else None) == expected
    job.state["manifest"] = None
    assert job.transaction_time is None
    job.spool.close()


def test_job_root_is_private_under_the_state_dir_or_where_configured(tmp_path: Path) -> None:
    settings = {"base_url": BASE, "product": "home_health", "source": "fhir_bulk", **CREDENTIALS}
    config = WellSkyConfig.load({**settings, "state_dir": str(tmp_path / "state")}, env={})
    assert job_root(config) == tmp_path / "state" / "fhir-bulk" and mode(job_root(config)) == 0o700
    config = WellSkyConfig.load({**settings, "fhir_bulk_job_dir": str(tmp_path / "jobs")}, env={})
    assert job_root(config) == tmp_path / "jobs" and mode(tmp_path / "jobs") == 0o700


def test_prune_drops_stale_jobs_and_never_follows_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    old = time.time() - STALE_AFTER_SECONDS - 60
    stale, fresh, plain = root / "stale", root / "fresh", root / "file"
    stale.mkdir()
    (stale / JOB_FILE).write_text("{}")
    fresh.mkdir()
    plain.write_text("x")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("x")
    (root / "link").symlink_to(victim)
    for path in (stale, plain, victim):
        os.utime(path, (old, old))
    os.utime(root / "link", (old, old), follow_symlinks=False)
    prune(root)
    assert not stale.exists() and fresh.exists() and plain.exists()
    assert (victim / "keep").exists() and (root / "link").is_symlink()

    linked_root = tmp_path / "linked-root"
    linked_root.symlink_to(victim)
    os.utime(victim / "keep", (old, old))
    sub = victim / "sub"
    sub.mkdir()
    os.utime(sub, (old, old))
    prune(linked_root)  # a symlinked root is never walked
    assert sub.exists()
    prune(tmp_path / "absent")  # nothing to do


# -- downloads ------------------------------------------------------------------------------------------------


def make_client(handler: Callable[[httpx.Request], httpx.Response], **extra: Any) -> WellSkyClient:
    config = WellSkyConfig.load(
        {
            "base_url": BASE,
            **CREDENTIALS,
            "product": "home_health",
            "source": "fhir_bulk",
            "max_requests_per_second": 0,
            "backoff_base_seconds": 0.01,
            "backoff_max_seconds": 0.02,
            **extra,
        },
        env={},
    )

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            return httpx.Response(200, json={"access_token": "tok", "token_type": "Bearer", "expires_in": 300})
        return handler(request)

    client = WellSkyClient(config, sleep=SLEEPS.append)
    client._http._transport = httpx.MockTransport(answer)
    client._http._mounts = {}
    return client


SLEEPS: list[float] = []


@pytest.fixture(autouse=True)
def _no_sleeps() -> None:
    SLEEPS.clear()


class Files:
    """A file host: each URL answers its list of responses in turn (the last one repeats)."""

    def __init__(self, files: dict[str, list[httpx.Response]]) -> None:
        self.files = files
        self.calls: list[httpx.Request] = []
        self.threads: set[str] = set()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request)
        self.threads.add(threading.current_thread().name)
        answers = self.files[str(request.url)]
        return answers.pop(0) if len(answers) > 1 else answers[0]


def downloader(
    files: Files, rejects: list[Any] | None = None, issues: list[Any] | None = None, **extra: Any
) -> Downloader:
    client = make_client(files, **extra)
    loader = Downloader(
        client,
        client.config,
        trusted=client.trusted_url,
        on_reject=lambda *args: (rejects if rejects is not None else []).append(args),
        on_issue=lambda res: (issues if issues is not None else []).append(res) or [i["code"] for i in res["issue"]],
    )
    return loader


def lines(*resources: bytes) -> bytes:
    return b"".join(r + b"\n" for r in resources)


def test_download_counts_lines_files_children_and_rejects_resources_without_id(tmp_path: Path) -> None:
    url = f"{BASE}/out/1.ndjson"
    content = lines(
        body("Patient", "p1"),
        b"",
        body("Encounter", "e1"),
        body("Goal", "g1", encounter={"reference": "Encounter/e1"}),
        orjson.dumps({"resourceType": "Patient"}),
        orjson.dumps({"id": "p2"}),
    )
    files = Files({url: [httpx.Response(200, content=content)]})
    rejects: list[Any] = []
    loader = downloader(files, rejects)
    job = ExportJob(tmp_path / "j", KICKOFF)
    loader.fetch_file(job, url, "Patient", 5, True)
    assert job.spool.done_files() == {url}
    assert [r["id"] for r in job.spool.of_type("Patient")] == ["p1", "p2"]  # the file's type when none is given
    assert job.spool.children("Encounter/e1")["Goal"][0]["id"] == "g1"
    assert len(rejects) == 1
    entity, error, resource = rejects[0]
    assert entity == "patients" and isinstance(error, NormalizationError) and resource == {"resourceType": "Patient"}
    assert (error.entity, error.field, error.reason) == ("patients", "id", "missing in a bulk-exported resource")
    assert files.calls[0].headers["accept"] == "application/fhir+ndjson"
    assert files.calls[0].headers["authorization"] == "Bearer tok"
    job.spool.close()


@pytest.mark.parametrize(
    ("content", "count", "reason"),
    [
        (lines(body("Patient", "p1")) + b'{"resourceType": "Pat', 2, "Truncated: a line is not JSON (truncated file?)"),
        (lines(body("Patient", "p1"), b"[1]"), 2, "Truncated: a line is not a JSON object"),
        (lines(body("Patient", "p1")), 2, "Truncated: 1 of 2 lines"),
        (gzip.compress(lines(body("Patient", "p1")), mtime=0)[:-12], 1, "Truncated: the gzip stream ended early"),
    ],
)
def test_a_short_or_bad_file_is_downloaded_again_then_fails_with_its_reason(
    tmp_path: Path, content: bytes, count: int, reason: str
) -> None:
    url = f"{BASE}/out/1.ndjson"
    files = Files({url: [httpx.Response(200, content=content)]})
    loader = downloader(files, max_retries=1)
    job = ExportJob(tmp_path / "j", KICKOFF)
    with pytest.raises(WellSkyTransportError) as caught:
        loader.fetch_file(job, url, "Patient", count, True)
    assert f"({reason})" in str(caught.value) and caught.value.reason == "download" and caught.value.attempts == 2
    assert caught.value.url == url
    assert len(files.calls) == 2 and len(SLEEPS) == 1
    assert job.spool.get("Patient/p1") is None and job.spool.done_files() == set()  # rows of a failed file go
    job.spool.close()


def test_a_file_that_keeps_failing_names_the_status(tmp_path: Path) -> None:
    url = f"{BASE}/out/1.ndjson"
    loader = downloader(Files({url: [httpx.Response(503)]}), max_retries=1)
    job = ExportJob(tmp_path / "j", KICKOFF)
    with pytest.raises(WellSkyTransportError, match=r"completely \(503\)"):
        loader.fetch_file(job, url, "Patient", None, True)
    job.spool.close()


def test_a_retried_file_honours_retry_after_and_succeeds(tmp_path: Path) -> None:
    url = f"{BASE}/out/1.ndjson"
    good = gzip.compress(lines(body("Patient", "p1"), body("Patient", "p2")))
    files = Files(
        {
            url: [
                httpx.Response(503, headers={"Retry-After": "7"}),
                httpx.Response(200, content=lines(body("Patient", "p1"))),  # one line short
                httpx.Response(200, content=good),
            ]
        }
    )
    loader = downloader(files, max_retries=2)
    job = ExportJob(tmp_path / "j", KICKOFF)
    loader.fetch_file(job, url, "Patient", 2, True)
    assert SLEEPS[0] == 7 and len(SLEEPS) == 2 and len(files.calls) == 3
    assert [r["id"] for r in job.spool.of_type("Patient")] == ["p1", "p2"]
    job.spool.close()


@pytest.mark.parametrize(("status", "error"), [(404, JobGone), (410, JobGone), (403, RemoteError)])
def test_a_file_that_is_gone_or_refused_is_not_retried(tmp_path: Path, status: int, error: type) -> None:
    url = f"{BASE}/out/1.ndjson"
    files = Files({url: [httpx.Response(status, json={"resourceType": "OperationOutcome"})]})
    loader = downloader(files)
    job = ExportJob(tmp_path / "j", KICKOFF)
    with pytest.raises(error, match=str(status) if error is JobGone else "a bulk output file could not be downloaded"):
        loader.fetch_file(job, url, "Patient", None, True)
    assert len([c for c in files.calls if c.url.path != "/token"]) <= 2 and SLEEPS == []
    job.spool.close()


def test_a_file_without_token_is_fetched_anonymously_on_any_host(tmp_path: Path) -> None:
    url = "https://files.other.example/out/1.ndjson"
    files = Files({url: [httpx.Response(200, content=lines(body("Patient", "p1")))]})
    loader = downloader(files)
    job = ExportJob(tmp_path / "j", KICKOFF)
    loader.fetch_file(job, url, "Patient", None, False)
    assert "authorization" not in files.calls[0].headers and job.spool.done_files() == {url}
    job.spool.close()


def test_error_files_are_counted_by_code_and_not_spooled(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = f"{BASE}/out/err.ndjson"
    outcome = orjson.dumps({"resourceType": "OperationOutcome", "id": "o1", "issue": [{"code": "processing"}]})
    other = orjson.dumps({"resourceType": "OperationOutcome", "issue": [{"code": "not-found"}, {"code": "processing"}]})
    files = Files({url: [httpx.Response(200, content=lines(outcome, outcome, other))]})
    issues: list[Any] = []
    loader = downloader(files, issues=issues)
    job = ExportJob(tmp_path / "j", KICKOFF)
    loader.fetch_file(job, url, "OperationOutcome", 3, True, errors=True)
    assert "reported 4 problem(s) in its error file (not-found x1, processing x3)" in caplog.text
    assert len(issues) == 3 and job.spool.get("OperationOutcome/o1") is None and job.spool.done_files() == {url}
    job.spool.close()


def manifest_job(tmp_path: Path, manifest: dict[str, Any]) -> ExportJob:
    job = ExportJob(tmp_path / "j", {**KICKOFF, "types": ["Patient", "Encounter"]})
    job.state["manifest"] = manifest
    return job


@pytest.mark.parametrize("workers", [1, 3])
def test_download_takes_the_wanted_unfinished_files_of_the_manifest(tmp_path: Path, workers: int) -> None:
    out = {name: f"{BASE}/out/{name}.ndjson" for name in ("p", "e", "o", "done", "err")}
    files = Files(
        {
            out["p"]: [httpx.Response(200, content=lines(body("Patient", "p1")))],
            out["e"]: [httpx.Response(200, content=lines(body("Encounter", "e1")))],
            out["err"]: [httpx.Response(200, content=lines(orjson.dumps({"issue": [{"code": "x"}]})))],
        }
    )
    issues: list[Any] = []
    loader = downloader(files, issues=issues, fhir_bulk_parallel_downloads=workers)
    job = manifest_job(
        tmp_path,
        {
            "output": [
                {"type": "Patient", "url": out["p"], "count": 1},
                {"type": "Encounter", "url": out["e"]},
                {"type": "Observation", "url": out["o"]},  # not asked for
                {"type": "Patient", "url": out["done"]},  # finished by an earlier run
                {"type": "Patient"},
                "junk",
            ],
            "error": [{"url": out["err"], "count": 1}, {"nourl": 1}],
        },
    )
    job.spool.put(out["done"], [("Patient", "old", None, body("Patient", "old"))])
    job.spool.commit_file(out["done"], "Patient", 1)
    job.spool.put("unfinished", [("Patient", "half", None, body("Patient", "half"))])
    loader.download(job)
    assert job.spool.done_files() == {out["p"], out["e"], out["done"], out["err"]}
    assert sorted(str(c.url) for c in files.calls) == sorted([out["p"], out["e"], out["err"]])
    assert job.spool.get("Patient/half") is None and job.spool.get("Patient/old") is not None
    assert len(issues) == 1
    assert all(c.headers["authorization"] == "Bearer tok" for c in files.calls)  # requiresAccessToken by default
    if workers == 1:
        assert files.threads == {threading.current_thread().name}
    else:
        assert files.threads and all(name.startswith("wellsky-bulk") for name in files.threads)
    job.spool.close()


def test_files_without_token_and_error_files_with_a_wrong_count(tmp_path: Path) -> None:
    out, err = "https://files.other.example/p.ndjson", f"{BASE}/err.ndjson"
    files = Files(
        {
            out: [httpx.Response(200, content=lines(body("Patient", "p1")))],
            err: [httpx.Response(200, content=lines(orjson.dumps({"issue": []})))],
        }
    )
    loader = downloader(files, max_retries=0)
    manifest = {"requiresAccessToken": False, "output": [{"type": "Patient", "url": out}], "error": []}
    job = manifest_job(tmp_path, manifest)
    loader.download(job)
    assert "authorization" not in files.calls[0].headers and job.spool.done_files() == {out}
    job.state["manifest"] = {"output": [], "error": [{"url": err, "count": 2}]}
    with pytest.raises(WellSkyTransportError, match="1 of 2 lines"):
        loader.download(job)
    job.spool.close()


def test_file_urls_foreign_ones_refused_with_the_token_relative_ones_resolved(tmp_path: Path) -> None:
    files = Files({f"{BASE}/out/rel.ndjson": [httpx.Response(200, content=lines(body("Patient", "p1")))]})
    loader = downloader(files)
    job = ExportJob(tmp_path / "j", KICKOFF)
    with pytest.raises(RemoteError, match="a bulk file URL"):
        loader.fetch_file(job, "https://evil.example/out.ndjson", "Patient", None, True)
    assert files.calls == []
    loader.fetch_file(job, "/out/rel.ndjson", "Patient", 1, False)
    assert job.spool.done_files() == {"/out/rel.ndjson"}
    job.spool.close()


def test_one_failing_download_stops_the_others_and_is_raised(tmp_path: Path) -> None:
    good, bad = f"{BASE}/out/good.ndjson", f"{BASE}/out/bad.ndjson"
    files = Files(
        {good: [httpx.Response(200, content=lines(body("Patient", "p1")))], bad: [httpx.Response(403, json={})]}
    )
    loader = downloader(files, fhir_bulk_parallel_downloads=2)
    job = manifest_job(tmp_path, {"output": [{"type": "Patient", "url": bad}, {"type": "Patient", "url": good}]})
    with pytest.raises(RemoteError):
        loader.download(job)
    job.spool.close()


def test_a_stopped_download_gives_up_at_its_next_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from wellsky_core.channels.fhir_bulk import download

    monkeypatch.setattr(download, "BATCH", 2)
    url = f"{BASE}/out/1.ndjson"
    files = Files({url: [httpx.Response(200, content=lines(*(body("Patient", f"p{i}") for i in range(5))))]})
    loader = downloader(files)
    job = ExportJob(tmp_path / "j", KICKOFF)
    stop = threading.Event()
    stop.set()
    with pytest.raises(Stopped):
        loader.fetch_file(job, url, "Patient", 5, True, stop=stop)
    assert job.spool.get("Patient/p0") is None
    loader.fetch_file(job, url, "Patient", 5, True, stop=threading.Event())
    assert len(list(job.spool.of_type("Patient"))) == 5
    job.spool.close()


def test_batches_are_exactly_batch_rows_and_a_bad_file_loses_the_batches_it_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wellsky_core.channels.fhir_bulk import download

    monkeypatch.setattr(download, "BATCH", 2)
    two, bad = f"{BASE}/out/two.ndjson", f"{BASE}/out/bad.ndjson"
    files = Files(
        {
            two: [httpx.Response(200, content=lines(body("Patient", "p1"), body("Patient", "p2")))],
            bad: [httpx.Response(200, content=lines(body("Patient", "b1"), body("Patient", "b2"), b"{cut"))],
        }
    )
    loader = downloader(files, max_retries=0)
    job = ExportJob(tmp_path / "j", KICKOFF)
    stop = threading.Event()
    stop.set()
    with pytest.raises(Stopped):  # a full batch is where a stopped download notices
        loader.fetch_file(job, two, "Patient", 2, True, stop=stop)
    with pytest.raises(WellSkyTransportError):
        loader.fetch_file(job, bad, "Patient", None, True)
    assert job.spool.get("Patient/b1") is None  # written in the first batch, then discarded with its file
    job.spool.close()


def test_ndjson_lines_across_chunks_and_gzip_without_content_encoding() -> None:
    raw = b'{"a": 1}\n\n  {"b": 2}  \n{"c": 3}'
    chunks = [raw[:3], raw[3:12], raw[12:]]
    got = list(ndjson_lines(httpx.Response(200, content=iter(chunks)), max_line=100, grace=60))
    assert got == [b'{"a": 1}', b'{"b": 2}', b'{"c": 3}']
    packed = gzip.compress(raw)
    parts = [packed[:5], packed[5:]]
    assert list(ndjson_lines(httpx.Response(200, content=iter(parts)), max_line=100, grace=60))[-1] == b'{"c": 3}'
    with pytest.raises(Truncated):
        list(ndjson_lines(httpx.Response(200, content=packed[:-10]), max_line=100, grace=60))


def test_entity_of() -> None:
    assert entity_of("Patient") == "patients"
    assert entity_of("Goal") != "Goal"  # a child type belongs to its parent's stream
    assert entity_of("Unknown") == "Unknown"


# -- the Bulk Data server ---------------------------------------------------------------------------------------


class Status:
    """A status URL answering its list in turn (the last one repeats); records kick-offs and deletes."""

    def __init__(self, answers: list[httpx.Response], kickoff: httpx.Response | None = None) -> None:
        self.answers = answers
        self.kickoff = kickoff or httpx.Response(202, headers={"Content-Location": STATUS})
        self.calls: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request)
        if request.url.path.endswith("$export"):
            return self.kickoff
        if request.method == "DELETE":
            return self.answers[0]
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


MANIFEST = {"transactionTime": "2026-01-02T03:04:05Z", "output": [], "error": []}


@pytest.mark.parametrize(
    ("kickoff", "path", "query"),
    [
        (KICKOFF, "/fhir/$export", {"_outputFormat": ["application/fhir+ndjson"], "_type": ["Patient"]}),
        (
            {**KICKOFF, "level": "patient", "types": ["Patient", "Goal"], "since": "2026-01-01T00:00:00Z"},
            "/fhir/Patient/$export",
            {
                "_outputFormat": ["application/fhir+ndjson"],
                "_type": ["Patient,Goal"],
                "_since": ["2026-01-01T00:00:00Z"],
            },
        ),
        (
            {**KICKOFF, "level": "group", "group": "g1", "type_filter": ["Patient?active=true", "Goal?x=1"]},
            "/fhir/Group/g1/$export",
            {
                "_outputFormat": ["application/fhir+ndjson"],
                "_type": ["Patient"],
                "_typeFilter": ["Patient?active=true", "Goal?x=1"],
            },
        ),
    ],
)
def test_kickoff_parameters(kickoff: dict[str, Any], path: str, query: dict[str, list[str]]) -> None:
    status = Status([httpx.Response(200, json=MANIFEST)])
    client = make_client(status)
    assert BulkServer(client, client.config).kickoff(kickoff) == STATUS
    request = status.calls[0]
    assert request.method == "GET" and request.url.path == path
    params = request.url.params
    assert {k: params.get_list(k) for k in params} == query
    assert request.headers["prefer"] == "respond-async" and request.headers["accept"] == "application/fhir+json"


@pytest.mark.parametrize(
    "answer",
    [httpx.Response(202), httpx.Response(202, headers={"Content-Location": "https://evil.example/status"})],
)
def test_a_kickoff_without_a_trusted_status_url_is_refused(answer: httpx.Response) -> None:
    client = make_client(Status([], kickoff=answer))
    with pytest.raises(RemoteError) as caught:
        BulkServer(client, client.config).kickoff(KICKOFF)
    if "content-location" in answer.headers:
        assert "the bulk status URL" in str(caught.value)
    else:
        assert (caught.value.status, caught.value.code) == (202, "no_content_location")
        assert caught.value.url == f"{BASE}/fhir/$export"


def test_poll_waits_retry_after_capped_and_reports_progress(caplog: pytest.LogCaptureFixture) -> None:
    status = Status(
        [
            httpx.Response(202, headers={"Retry-After": "3", "X-Progress": "Patient 10% done, Mrs Shaw"}),
            httpx.Response(202, headers={"Retry-After": "9999", "X-Progress": "10%"}),
            httpx.Response(202),
            httpx.Response(503, headers={"Retry-After": "4"}),
            httpx.Response(202),
            httpx.Response(200, json=MANIFEST),
        ]
    )
    client = make_client(status, max_retries=1)
    caplog.set_level("INFO", logger="wellsky_core.channels.fhir_bulk.export")
    assert BulkServer(client, client.config).poll(STATUS) == MANIFEST
    assert SLEEPS == [3, 120.0, 4.0, 4, 16.0]  # Retry-After, capped; else doubling with the poll count
    text = caplog.text
    assert text.count("10% complete") == 1 and "Shaw" not in text
    assert all(c.headers["accept"] == "application/json" for c in status.calls)


def test_poll_gives_up_after_max_retries_consecutive_transient_errors() -> None:
    status = Status(
        [
            httpx.Response(502),
            httpx.Response(500, json={"resourceType": "OperationOutcome", "issue": [{"code": "transient"}]}),
        ]
    )
    client = make_client(status, max_retries=2)
    with pytest.raises(WellSkyTransportError) as caught:
        BulkServer(client, client.config).poll(STATUS)
    assert caught.value.attempts == 3 and len(SLEEPS) == 2
    assert caught.value.status == 500 and caught.value.url == STATUS


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (httpx.Response(404), JobGone),
        (httpx.Response(410), JobGone),
        (httpx.Response(500, json={"resourceType": "OperationOutcome", "issue": [{"code": "exception"}]}), RemoteError),
        (httpx.Response(400, json={"resourceType": "OperationOutcome"}), RemoteError),
        (httpx.Response(200, json={"output": "no list"}), RemoteError),
        (httpx.Response(200, content=b"not json"), RemoteError),
        (httpx.Response(200, json=[1]), RemoteError),
    ],
)
def test_poll_errors(answer: httpx.Response, error: type) -> None:
    client = make_client(Status([answer]))
    with pytest.raises(error) as caught:
        BulkServer(client, client.config).poll(STATUS)
    assert SLEEPS == []
    if error is JobGone:
        assert str(caught.value) == f"status URL answered {answer.status_code}"
    elif answer.status_code == 200:
        assert (caught.value.status, caught.value.code) == (200, "unexpected_shape")
        assert "the bulk status URL answered 200 without a manifest" in str(caught.value)
    else:
        assert "the bulk export failed on the server; start it again or check the server" in str(caught.value)


def test_poll_refused_credentials_name_the_status_url() -> None:
    client = make_client(Status([httpx.Response(401, json={"resourceType": "OperationOutcome"})]))
    with pytest.raises(RemoteError, match="the bulk status URL refused the credentials") as caught:
        BulkServer(client, client.config).poll(STATUS)
    assert caught.value.status == 401


def test_poll_refuses_a_foreign_status_url_before_sending_the_token() -> None:
    status = Status([httpx.Response(200, json=MANIFEST)])
    client = make_client(status)
    with pytest.raises(RemoteError, match="the bulk status URL"):
        BulkServer(client, client.config).poll("https://evil.example/status")
    BulkServer(client, client.config).delete("https://evil.example/status")  # logged, never sent
    assert status.calls == []


def test_poll_timeout_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from wellsky_core.channels.fhir_bulk import export

    class Clock:  # time passes only while the poller sleeps
        @staticmethod
        def monotonic() -> float:
            return 1000.0 + sum(SLEEPS)

    monkeypatch.setattr(export, "time", Clock)
    client = make_client(Status([httpx.Response(202)]), fhir_bulk_poll_timeout_seconds=7.5)
    with pytest.raises(WellSkyTransportError) as caught:
        BulkServer(client, client.config).poll(STATUS)
    assert caught.value.reason == "poll_timeout" and caught.value.attempts == 5
    assert caught.value.status == 202 and caught.value.url == STATUS
    assert SLEEPS == [1.0, 2.0, 4.0, 0.5]  # the last wait is cut to the time left
    SLEEPS.clear()
    client = make_client(Status([httpx.Response(202)]), fhir_bulk_poll_timeout_seconds=100)
    with pytest.raises(WellSkyTransportError):
        BulkServer(client, client.config).poll(STATUS)
    assert SLEEPS == [1.0, 2.0, 4.0, 8.0, 16.0, 16.0, 16.0, 16.0, 16.0, 5.0]  # doubling stops at 16 s


@pytest.mark.parametrize("code", [200, 202, 204, 404, 410, 500])
def test_delete_never_fails(code: int, caplog: pytest.LogCaptureFixture) -> None:
    status = Status([httpx.Response(code)])
    client = make_client(status, max_retries=0)
    BulkServer(client, client.config).delete(STATUS)
    assert status.calls[-1].method == "DELETE" and str(status.calls[-1].url) == STATUS
    assert ("could not be deleted" in caplog.text) == (code == 500)


def test_job_failed_and_percent() -> None:
    def outcome(*codes: str) -> httpx.Response:
        return httpx.Response(500, json={"resourceType": "OperationOutcome", "issue": [{"code": c} for c in codes]})

    assert job_failed(outcome("exception")) and job_failed(outcome())
    assert not job_failed(outcome("exception", "transient"))
    assert not job_failed(httpx.Response(500, json={"resourceType": "Bundle"}))
    assert not job_failed(httpx.Response(500, content=b"oops"))
    assert _percent("Patient 42.5% done") == "42.5% complete"
    assert _percent("about half") is None and _percent(None) is None


class Endless:
    """An endless body, chunk after chunk, counting what was served."""

    def __init__(self, chunk: bytes) -> None:
        self.chunk, self.served = chunk, 0

    def __iter__(self) -> Iterator[bytes]:
        while True:
            self.served += len(self.chunk)
            yield self.chunk


def test_a_line_that_never_ends_is_cut_at_max_response_bytes_without_a_retry(tmp_path: Path) -> None:
    """A bulk file whose line never ends (no newline, ever) was gathered in memory until the process died, each
    chunk copying the whole line so far. A line is one resource: past max_response_bytes it is refused at once,
    naming the setting (downloading the file again would serve the same line)."""
    url = f"{BASE}/out/1.ndjson"
    endless = Endless(b"x" * 65536)
    files = Files({url: [httpx.Response(200, content=endless)]})
    loader = downloader(files, max_retries=2, max_response_bytes=1_000_000)
    job = ExportJob(tmp_path / "j", KICKOFF)
    with pytest.raises(WellSkyTransportError) as caught:
        loader.fetch_file(job, url, "Patient", None, True)
    assert caught.value.reason == "too_large" and "max_response_bytes" in str(caught.value), str(caught.value)
    assert endless.served < 1_000_000 + 2 * 65536, endless.served
    assert job.spool.done_files() == set()
    job.spool.close()


def test_a_gzip_bomb_is_inflated_piece_by_piece_and_cut_at_max_response_bytes(tmp_path: Path) -> None:
    """50 MB of one line gzipped to ~50 kB: inflating a chunk whole held all of it at once."""
    import tracemalloc

    url = f"{BASE}/out/1.ndjson.gz"
    bomb = gzip.compress(b"x" * 50_000_000, mtime=0)
    loader = downloader(Files({url: [httpx.Response(200, content=bomb)]}), max_response_bytes=1_000_000)
    job = ExportJob(tmp_path / "j", KICKOFF)
    tracemalloc.start()
    try:
        with pytest.raises(WellSkyTransportError) as caught:
            loader.fetch_file(job, url, "Patient", None, True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.reason == "too_large", str(caught.value)
    assert peak < 10_000_000, f"peak {peak / 1e6:.0f} MB traced"
    job.spool.close()


def test_a_file_longer_than_its_manifest_count_is_cut_there(tmp_path: Path) -> None:
    """The manifest's ``count`` was compared once the file had ended: an endless file of valid lines went into
    the spool on disk until the disk was full. Past the count, the file is cut and downloaded again, then failed."""
    url = f"{BASE}/out/1.ndjson"
    page = lines(*(body("Patient", f"p{i}") for i in range(100)))
    served = [Endless(page), Endless(page)]  # one body per attempt
    loader = downloader(Files({url: [httpx.Response(200, content=e) for e in served]}), max_retries=1)
    job = ExportJob(tmp_path / "j", KICKOFF)
    with pytest.raises(WellSkyTransportError) as caught:
        loader.fetch_file(job, url, "Patient", 3, True)
    assert "more than the manifest's 3 lines" in str(caught.value) and caught.value.attempts == 2, str(caught.value)
    assert all(e.served == len(page) for e in served), [e.served for e in served]
    assert job.spool.done_files() == set() and job.spool.get("Patient/p1") is None
    job.spool.close()


class Dripping:
    """A body whose every chunk (one valid line) arrives ``seconds`` after the last, on a clock the test owns."""

    def __init__(self, clock: list[float], seconds: float) -> None:
        self.clock, self.seconds, self.served = clock, seconds, 0

    def __iter__(self) -> Iterator[bytes]:
        while True:
            self.clock[0] += self.seconds
            self.served += 1
            yield body("Patient", f"p{self.served}") + b"\n"


def test_a_bulk_file_sent_a_line_a_second_is_cut_and_downloaded_again_then_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``timeout_seconds`` bounds each read only: a host sending a short line a second held the run as long as it
    liked. Past ``request_deadline_seconds`` a download must average 16 KiB/s; a slower one is retried, then fails
    in one line naming the setting."""
    from wellsky_core.http import bodies

    clock = [1000.0]
    monkeypatch.setattr(bodies, "_now", lambda: clock[0])
    url = f"{BASE}/out/1.ndjson"
    drips = [Dripping(clock, 1.0), Dripping(clock, 1.0)]
    loader = downloader(Files({url: [httpx.Response(200, content=d) for d in drips]}), max_retries=1,
                        request_deadline_seconds=30)
    job = ExportJob(tmp_path / "j", KICKOFF)
    with pytest.raises(WellSkyTransportError) as caught:
        loader.fetch_file(job, url, "Patient", None, True)
    assert "request_deadline_seconds (30 s)" in str(caught.value), str(caught.value)
    assert [d.served for d in drips] == [31, 31]  # cut about 30 s in, each time
    assert job.spool.done_files() == set()
    job.spool.close()


def test_a_slow_but_working_download_is_not_cut(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The grace, then 16 KiB/s on average: a link at 20 KiB/s finishes a file however long it takes."""
    from wellsky_core.http import bodies

    clock = [1000.0]
    monkeypatch.setattr(bodies, "_now", lambda: clock[0])
    url = f"{BASE}/out/1.ndjson"
    page = lines(*(body("Patient", f"p{i}") for i in range(200)))

    def slow() -> Iterator[bytes]:
        for start in range(0, len(page), 1024):
            clock[0] += 1024 / (20 * 1024)
            yield page[start : start + 1024]

    loader = downloader(Files({url: [httpx.Response(200, content=slow())]}), request_deadline_seconds=1)
    job = ExportJob(tmp_path / "j", KICKOFF)
    loader.fetch_file(job, url, "Patient", 200, True)
    assert job.spool.done_files() == {url}
    job.spool.close()
