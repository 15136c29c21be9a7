"""The one rule for files the connector writes: 0600 files in 0700 directories, never through a symlink."""

from __future__ import annotations

import os
import stat

import pytest

from wellsky_core.private_files import (
    UnsafePathError,
    open_private,
    private_dir,
    private_sqlite,
    tenant_slug,
    write_private,
)


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_new_directories_and_files_are_private(tmp_path):
    root = private_dir(tmp_path / "a" / "b")
    assert mode(tmp_path / "a") == 0o700 and mode(root) == 0o700
    with open_private(root / "x.json", "w") as handle:
        handle.write("{}")
    assert mode(root / "x.json") == 0o600
    write_private(root / "y.json", "{}")
    assert mode(root / "y.json") == 0o600
    assert not [p for p in os.listdir(root) if p.endswith(".tmp")]


def test_wide_existing_modes_are_narrowed(tmp_path):
    wide = tmp_path / "wide"
    wide.mkdir(mode=0o755)
    os.chmod(wide, 0o755)
    private_dir(wide)
    assert mode(wide) == 0o700
    f = wide / "f"
    f.write_text("old")
    os.chmod(f, 0o644)
    with open_private(f, "a") as handle:
        handle.write("new")
    assert mode(f) == 0o600 and f.read_text() == "oldnew"


def test_symlinks_are_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(UnsafePathError):
        private_dir(link)
    victim = tmp_path / "victim"
    victim.write_text("keep")
    planted = real / "planted"
    planted.symlink_to(victim)
    with pytest.raises(UnsafePathError):
        open_private(planted, "w")
    assert victim.read_text() == "keep"


def test_sqlite_and_its_journal_are_private(tmp_path):
    db = private_sqlite(tmp_path / "s" / "spool.sqlite")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (x)")
    db.execute("INSERT INTO t VALUES (1)")
    db.commit()
    for name in os.listdir(tmp_path / "s"):
        assert mode(tmp_path / "s" / name) == 0o600, name
    db.close()


def test_tenant_slug_names_product_and_host_only():
    slug = tenant_slug("personal_care", "https://connect.clearcareonline.com")
    assert slug == "personal_care-connect.clearcareonline.com"
    assert tenant_slug("hospice", "http://127.0.0.1:5555") == "hospice-loopback"
    assert "/" not in tenant_slug("x/../y", None)


def test_two_threads_saving_one_file_at_once_both_succeed_and_one_whole_version_wins(tmp_path, monkeypatch):
    """Streams read in parallel save one shared file (a bulk export's job file): each thread's temporary file is
    its own. Both threads have written their temporary file before either renames it (a barrier in the rename),
    so a temporary name shared by the process would be renamed away under the second thread."""
    import threading

    target = tmp_path / "job.json"
    both_written = threading.Barrier(2, timeout=10)
    replace = os.replace

    def replace_after_both(src, dst):  # type: ignore[no-untyped-def]
        both_written.wait()
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_after_both)
    errors: list[BaseException] = []

    def save(text: str) -> None:
        try:
            write_private(target, text)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(text,)) for text in ('{"a": 1}', '{"b": 2}')]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert target.read_text() in ('{"a": 1}', '{"b": 2}') and mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["job.json"], "no temporary file left behind"
