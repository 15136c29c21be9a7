"""A bulk output file counts as finished only once its line count matches the manifest (issue 29, escaped bug 3).

Written against behaviour only (fhir_bulk is being split into a package): a run whose download of a file stays
truncated stops; the next run resumes the same job and must download that file again, so no record of it is
lost. Planted bug: the file marked finished before its line count is checked. The run still stops, but the
resumed run takes the file as done (its rows already discarded) and silently loses its records.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from wellsky_core.errors import WellSkyTransportError

from .test_fhir_bulk_protocol import BASE, PATIENTS_1, FakeBulkServer, fixture, make, ndjson

FILE_1 = f"{BASE}/output/patient_file_1.ndjson"


@pytest.mark.parametrize("cut", ["at_a_line_end", "empty"])
def test_a_file_whose_line_count_never_matched_is_downloaded_again_on_resume(tmp_path: Path, cut: str) -> None:
    server = FakeBulkServer()
    manifest = json.loads(fixture("manifest.json"))
    manifest["output"][0]["count"] = 3  # patient_file_1 holds 3 patients
    server.status = [httpx.Response(200, json=manifest)]
    whole = ndjson(PATIENTS_1)
    short = whole[: whole.index(b"\n") + 1] if cut == "at_a_line_end" else b""  # parses, but 1 (or 0) of 3
    server.files[FILE_1] = [httpx.Response(200, content=short)]

    channel, client = make(server, tmp_path, max_retries=1)
    with pytest.raises(WellSkyTransportError, match="could not be downloaded completely"):
        list(channel.iter_records("patients", None))
    channel.close()
    client.close()
    fetched = server.count("GET", "patient_file_1")
    assert fetched == 2 and server.kickoffs == 1

    server.files[FILE_1] = [httpx.Response(200, content=whole)]  # the server serves it whole now
    channel, client = make(server, tmp_path, max_retries=1)
    ids = sorted(r["id"] for r in channel.iter_records("patients", None))
    channel.close()
    client.close()
    assert server.kickoffs == 1, "the same job was resumed"
    assert server.count("GET", "patient_file_1") == fetched + 1, "the truncated file was not downloaded again"
    assert ids == ["p1", "p2", "p3", "p4", "p5"]
