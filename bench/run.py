"""Benchmark tap-wellsky / target-wellsky against the floor and a peer, on the same sandbox data, in one run.

Every measured thing runs as its own child process (the sandbox too), so wall time and CPU (user+sys) come
from that child's own rusage (``os.wait4``) and peak RSS from its own ``VmHWM`` (bench/peak_rss.py), not
from this driver:

1. floor          raw httpx paging of the 8 REST streams (limit 1000, keep-alive), orjson to /dev/null
2. tap            tap-wellsky full sync to /dev/null, and piped into target-jsonl (its own venv)
3. peer           tap-rest-api-msdk (generic singer-sdk REST tap, own venv) over the same endpoints
4. airbyte        optional (--airbyte): an airbyte-cdk declarative YAML source over the same endpoints
5. incremental    tap-wellsky with the state of (2) after ``POST /_sandbox/advance {"fraction": 0.01}``
6. target         target-wellsky writing new patients + appointments built from the sandbox truth, then the
                  same input again (every record an idempotent "unchanged" skip)

Run ``scripts/bench`` (default scale M) or ``python bench/run.py --scales S,M,L``. Results print as a table
and are written to ``bench/results/<timestamp>.json``. See bench/README.md for what each column means.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from peak_rss import vm_hwm_kb  # bench/ is this script's directory, first on sys.path

from wellsky_core.channels.rest import PATHS  # the modeled REST paths, stated once in the REST channel

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
VENVS = BENCH / ".venvs"
RESULTS = BENCH / "results"
BIN = Path(sys.executable).parent  # the project venv: tap-wellsky, target-wellsky, wellsky-sandbox
PEERS = {
    "msdk": ["tap-rest-api-msdk==1.4.2", "setuptools<70"],  # singer-sdk 0.40's `fs` still imports pkg_resources
    "jsonl": ["target-jsonl==0.1.4"],
    "airbyte": ["airbyte-cdk>=7,<8"],
    "tools": ["py-spy"],
}
CHILD_TIMEOUT_SECONDS = 3600.0
TARGETS_TEXT = {
    "tap_vs_peer": "tap full sync >= 3x the peer's records/s (scale M)",
    "tap_vs_floor": "tap full sync wall <= 1.3x the floor's wall (scale M)",
    "rss_flat": "tap peak RSS flat within +-20% from S to L",
    "incremental": "incremental run <= 5% of the full sync at 1% change",
    "target_rate": "target >= 500 writes/s",
    "target_rerun": "target re-run <= 5% of the first run's time",
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- child processes with their own rusage ------------------------------------------------------------------
@dataclass
class Measure:
    """One child process (or a pipeline of them): wall clock, CPU and peak RSS from its own rusage."""

    wall_s: float
    cpu_s: float
    rss_mb: float
    returncode: int
    stderr: str = ""
    parts: list[dict[str, Any]] = field(default_factory=list)


def _wait_all(procs: list[subprocess.Popen[bytes]], timeout: float) -> list[tuple[int, Any, float, float]]:
    """``os.wait4`` every process (so each one's CPU is its own); returns (status, rusage, end time, peak RSS MB).

    The peak is sampled from ``VmHWM`` (bench/peak_rss.py): ``ru_maxrss`` would carry this driver's own size in.
    """
    done: dict[int, tuple[int, Any, float, float]] = {}
    peaks = dict.fromkeys((p.pid for p in procs), 0)
    deadline = time.perf_counter() + timeout
    while len(done) < len(procs):
        for proc in procs:
            if proc.pid in done:
                continue
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                done[proc.pid] = (os.waitstatus_to_exitcode(status), usage, time.perf_counter(), peaks[pid] / 1024)
                proc.returncode = done[proc.pid][0]
            else:
                peaks[proc.pid] = max(peaks[proc.pid], vm_hwm_kb(proc.pid) or 0)
        if len(done) < len(procs):
            if time.perf_counter() > deadline:
                for proc in procs:
                    if proc.pid not in done:
                        proc.kill()
                raise TimeoutError(f"benchmark child did not finish within {timeout:.0f}s: {procs[0].args}")
            time.sleep(0.005)
    return [done[p.pid] for p in procs]


def run_pipeline(
    commands: list[list[str]],
    *,
    stdin_path: Path | None = None,
    stdout_path: Path | str = os.devnull,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Measure:
    """Run ``a | b | ...`` with the last stdout to ``stdout_path``; stderr of each part is kept for parsing."""
    procs: list[subprocess.Popen[bytes]] = []
    errs = [tempfile.TemporaryFile() for _ in commands]  # noqa: SIM115 - closed after reading
    stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL  # noqa: SIM115 - closed below
    stdout = open(stdout_path, "wb")  # noqa: SIM115 - closed below
    started = time.perf_counter()
    try:
        prev: Any = stdin
        for i, cmd in enumerate(commands):
            last = i == len(commands) - 1
            proc = subprocess.Popen(
                cmd,
                stdin=prev,
                stdout=stdout if last else subprocess.PIPE,
                stderr=errs[i],
                env=env,
                cwd=cwd,
            )
            if prev not in (stdin, subprocess.DEVNULL) and prev is not None:
                prev.close()  # the child owns the read end now
            prev = proc.stdout
            procs.append(proc)
        results = _wait_all(procs, CHILD_TIMEOUT_SECONDS)
    finally:
        stdout.close()
        if stdin_path:
            stdin.close()  # type: ignore[union-attr]
    ended = max(r[2] for r in results)
    parts = []
    stderr_texts = []
    for cmd, err, (code, usage, _, peak_mb) in zip(commands, errs, results, strict=True):
        err.seek(0)
        text = err.read().decode("utf-8", "replace")
        err.close()
        stderr_texts.append(text)
        parts.append(
            {
                "command": Path(cmd[0]).name if len(cmd) == 1 else " ".join(Path(c).name for c in cmd[:2]),
                "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
                "rss_mb": round(peak_mb, 1),
                "returncode": code,
            }
        )
    return Measure(
        wall_s=ended - started,
        cpu_s=sum(p["cpu_s"] for p in parts),
        rss_mb=max(p["rss_mb"] for p in parts),
        returncode=max((abs(p["returncode"]) for p in parts), default=0),
        stderr="\n".join(stderr_texts),
        parts=parts,
    )


def proc_cpu_seconds(pid: int) -> float:
    """utime+stime of a running process (the sandbox), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- virtual environments for the peers -----------------------------------------------------------------------
def ensure_venv(name: str) -> Path | None:
    """``bench/.venvs/<name>`` with the peer installed (uv venv + uv pip install); None if that fails."""
    spec = PEERS[name]
    venv = VENVS / name
    marker = venv / ".bench-spec"
    stamp = "\n".join([*spec, "byte-compiled"])
    if marker.exists() and marker.read_text() == stamp:
        return venv / "bin"
    uv = shutil.which("uv")
    if uv is None:
        log(f"{name}: uv not found on PATH; run scripts/bootstrap first (it installs uv)")
        return None
    log(f"{name}: installing {' '.join(spec)} into {venv.relative_to(ROOT)}")
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    try:
        if not (venv / "bin" / "python").exists():
            subprocess.run([uv, "venv", "-q", str(venv), "-p", python], check=True, capture_output=True)
        subprocess.run(
            [uv, "pip", "install", "-q", *spec],
            check=True,
            capture_output=True,
            env={**os.environ, "VIRTUAL_ENV": str(venv), "UV_COMPILE_BYTECODE": "1"},
        )
        # byte-compiled as pip installs it and as scripts/bootstrap leaves .venv (a venv made before uv compiled
        # is compiled here; a template that is not Python 3 is skipped): every start-up is measured installed
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "compileall", "-q", "-j0", str(venv / "lib")], capture_output=True
        )
    except subprocess.CalledProcessError as exc:
        tail = (exc.stderr or b"").decode("utf-8", "replace").strip().splitlines()[-3:]
        log(f"{name}: install failed, skipping it ({' | '.join(tail)})")
        return None
    marker.write_text(stamp)
    return venv / "bin"


# -- the sandbox, in its own process --------------------------------------------------------------------------
class Sandbox:
    """``wellsky-sandbox serve`` on a freshly generated data dir (advance() mutates it, so never reuse one)."""

    def __init__(self, scale: str, work: Path) -> None:
        self.scale = scale
        self.data_dir = work / f"data-{scale}"
        self.ready = work / f"ready-{scale}.json"
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}
        self.generate_s = 0.0
        self.counts: dict[str, int] = {}

    def start(self) -> Sandbox:
        shutil.rmtree(self.data_dir, ignore_errors=True)
        out = subprocess.run(
            [str(BIN / "wellsky-sandbox"), "generate", "--scale", self.scale, "--data-dir", str(self.data_dir)],
            check=True,
            capture_output=True,
            text=True,
        )
        generated = json.loads(out.stdout.strip().splitlines()[-1])
        self.generate_s, self.counts = generated["seconds"], generated["counts"]
        log(f"scale {self.scale}: generated {generated['records']} records in {self.generate_s:.1f}s")
        self.ready.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [
                str(BIN / "wellsky-sandbox"),
                "serve",
                "--scale",
                self.scale,
                "--port",
                "0",
                "--sftp-port",
                "0",
                "--data-dir",
                str(self.data_dir),
                "--ready-file",
                str(self.ready),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 120
        while not (self.ready.exists() and self.ready.read_text().strip()):
            if self.proc.poll() is not None:
                raise RuntimeError(f"sandbox exited: {self.proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                raise RuntimeError("sandbox did not write its ready file within 120 s")
            time.sleep(0.05)
        self.info = json.loads(self.ready.read_text())
        return self

    @property
    def base_url(self) -> str:
        return str(self.info["base_url"])

    def cpu(self) -> float:
        assert self.proc is not None
        return proc_cpu_seconds(self.proc.pid)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            self.base_url + path, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=600) as response:
            return json.loads(response.read() or b"null")

    def truth(self, entity: str) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.base_url}/_sandbox/truth/{entity}", timeout=600) as response:
            return json.loads(response.read())["data"]

    def bearer_token(self) -> str:
        form = urllib.parse.urlencode(
            {
                "grant_type": "client_credentials",
                "client_id": self.info["client_id"],
                "client_secret": self.info["client_secret"],
                "scope": "system/*.read",
            }
        ).encode()
        with urllib.request.urlopen(f"{self.base_url}/oauth/token", form, timeout=30) as response:
            return str(json.loads(response.read())["access_token"])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


# -- the floor (runs in a child: `python bench/run.py _floor <ready.json>`) -------------------------------------
def floor_child(ready_file: str) -> None:
    """Page every REST stream with plain httpx + orjson; print {records, pages, seconds} as JSON."""
    import httpx
    import orjson

    info = json.loads(Path(ready_file).read_text())
    started = time.perf_counter()
    records = pages = 0
    with httpx.Client(base_url=info["base_url"], timeout=60) as http, open(os.devnull, "wb") as sink:
        http.post("/sessions", json={"username": info["username"], "password": info["password"]}).raise_for_status()
        for path in PATHS.values():
            params: dict[str, Any] = {"limit": 1000}
            while True:
                response = http.get(path, params=params)
                response.raise_for_status()
                body = orjson.loads(response.content)
                pages += 1
                records += len(body["data"])
                sink.write(orjson.dumps(body["data"]))
                if not body.get("next_cursor"):
                    break
                params["cursor"] = body["next_cursor"]
    print(json.dumps({"records": records, "pages": pages, "seconds": time.perf_counter() - started}))


# -- parsing what the children report --------------------------------------------------------------------------
TAP_TOTAL = re.compile(r"total (\d+) records; (\d+) pages")
TAP_SECONDS = re.compile(r"tap-wellsky sync summary \(([\d.]+)s")
SDK_RECORD_COUNT = re.compile(r'"metric":\s*"record_count",\s*"value":\s*(\d+)')


def tap_records(stderr: str) -> tuple[int | None, float | None]:
    total, seconds = TAP_TOTAL.search(stderr), TAP_SECONDS.search(stderr)
    return (int(total[1]) if total else None), (float(seconds[1]) if seconds else None)


def fail_tail(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if "METRIC" not in ln]
    return " | ".join(lines[-4:])[-600:]


# -- configs --------------------------------------------------------------------------------------------------
def tap_config(sb: Sandbox) -> dict[str, Any]:
    return {
        "base_url": sb.base_url,
        "product": "home_health",
        "username": sb.info["username"],
        "password": sb.info["password"],
        "page_size": 1000,
        "max_requests_per_second": 0,  # 0 disables the client-side request window (wellsky_core/http/ratelimit.py)
    }


def msdk_config(sb: Sandbox) -> dict[str, Any]:
    """tap-rest-api-msdk as a user would set it up: records at $.data[*], cursor paging, updated_since filter.

    It authenticates with an OAuth2 bearer token from the sandbox's client-credentials grant (good for an hour,
    unlike a rotating session cookie pasted into a header). ``start_date`` is set because without it the tap
    sends ``sort``/``order_by`` query parameters, which the tenant rejects (400 unknown_parameter).
    """
    return {
        "api_url": sb.base_url,
        "auth_method": "bearer_token",
        "bearer_token": sb.bearer_token(),
        "pagination_request_style": "jsonpath_paginator",
        "pagination_response_style": "default",
        "next_page_token_path": "$.next_cursor",
        "pagination_next_page_param": "cursor",
        "records_path": "$.data[*]",
        "primary_keys": ["id"],
        "replication_key": "lastModified",
        "source_search_field": "updated_since",
        "source_search_query": "$last_run_date",
        "start_date": "2000-01-01T00:00:00Z",
        "params": {"limit": 1000},
        "streams": [{"name": name, "path": path} for name, path in PATHS.items()],
    }


AIRBYTE_RUNNER = """
import sys
from airbyte_cdk.entrypoint import AirbyteEntrypoint, launch
from airbyte_cdk.sources.declarative.yaml_declarative_source import YamlDeclarativeSource as Source

# airbyte-cdk 7 interpolates {{ config[...] }} from the config given to the constructor (as the connector
# template's run.py does): launched without it, every URL is "/patients" and each stream fails (MissingSchema)
args = sys.argv[2:]
catalog, config, state = (f(args) for f in (AirbyteEntrypoint.extract_catalog, AirbyteEntrypoint.extract_config,
                                             AirbyteEntrypoint.extract_state))
source = Source(
    path_to_yaml=sys.argv[1],
    catalog=Source.read_catalog(catalog) if catalog else None,
    config=Source.read_config(config) if config else None,
    state=Source.read_state(state) if state else None,
    config_path=config,
)
launch(source, args)
"""


def airbyte_manifest() -> str:
    """A low-code manifest: bearer auth, records at data, cursor pagination from next_cursor."""
    streams = []
    for name, path in PATHS.items():
        streams.append(
            f"""  - type: DeclarativeStream
    name: {name}
    primary_key: [id]
    schema_loader:
      type: InlineSchemaLoader
      schema: {{"type": "object", "additionalProperties": true, "properties": {{}}}}
    retriever:
      type: SimpleRetriever
      requester:
        type: HttpRequester
        url_base: "{{{{ config['base_url'] }}}}"
        path: "{path}"
        http_method: GET
        authenticator:
          type: BearerAuthenticator
          api_token: "{{{{ config['token'] }}}}"
        request_parameters:
          limit: "1000"
      record_selector:
        type: RecordSelector
        extractor:
          type: DpathExtractor
          field_path: [data]
      paginator:
        type: DefaultPaginator
        pagination_strategy:
          type: CursorPagination
          cursor_value: "{{{{ response.next_cursor }}}}"
          stop_condition: "{{{{ not response.next_cursor }}}}"
        page_token_option:
          type: RequestOption
          inject_into: request_parameter
          field_name: cursor
"""
        )
    checks = "[" + ", ".join(PATHS) + "]"
    # without a spec block airbyte-cdk looks for spec.yaml in a package and fails ("Unable to find spec.yaml"),
    # reported only as a TRACE message on stdout: the "empty message" failure of the earlier peer runs
    spec = (
        "spec:\n  type: Spec\n  connection_specification:\n    type: object\n    required: [base_url, token]\n"
        "    properties:\n      base_url: {type: string}\n      token: {type: string, airbyte_secret: true}\n"
    )
    return (
        'version: "6.0.0"\ntype: DeclarativeSource\ncheck:\n  type: CheckStream\n'
        f"  stream_names: {checks}\n{spec}streams:\n" + "".join(streams)
    )


def airbyte_error(stdout_file: Path) -> str:
    """An airbyte source reports its failure as a TRACE ERROR message on stdout, not on stderr: return it."""
    with stdout_file.open(errors="replace") as fh:
        for line in fh:
            if '"TRACE"' in line[:40] and '"ERROR"' in line:
                error = json.loads(line).get("trace", {}).get("error") or {}
                if error:
                    return f"{error.get('message', '')} ({error.get('internal_message', '')})"[:600]
    return ""


def airbyte_catalog() -> dict[str, Any]:
    return {
        "streams": [
            {
                "stream": {"name": n, "json_schema": {"type": "object"}, "supported_sync_modes": ["full_refresh"]},
                "sync_mode": "full_refresh",
                "destination_sync_mode": "overwrite",
            }
            for n in PATHS
        ]
    }


def target_input(sb: Sandbox, path: Path, total: int) -> dict[str, int]:
    """New patients and appointments derived from the sandbox truth, as a Singer stream for target-wellsky.

    Patients are truth patients with a fresh MRN and no id (→ created). Appointments are truth appointments with
    a fresh external_id, no id, and no payer (private pay): the tenant only checks authorizations for payer
    visits, and copying thousands of payer visits would exhaust their authorizations. So the speed run measures
    write + idempotency cost with ``authorization_policy: off`` and nothing to authorize.
    """
    n_patients = max(1, total // 5)  # the sandbox's own 1 patient : 4 visits ratio
    n_appointments = total - n_patients
    stamp = datetime.now(UTC).strftime("%H%M%S")
    patients, appointments = sb.truth("patients"), sb.truth("appointments")
    schemas = {s: json.loads((ROOT / "schemas" / f"{s}.json").read_text()) for s in ("patients", "appointments")}
    with path.open("w") as out:
        for stream, schema in schemas.items():
            out.write(json.dumps({"type": "SCHEMA", "stream": stream, "schema": schema, "key_properties": ["id"]}))
            out.write("\n")
        for i in range(n_patients):
            rec = {k: v for k, v in patients[i % len(patients)].items() if k not in ("id", "updated_at")}
            rec["mrn"] = f"BENCH{stamp}{i:07d}"
            out.write(json.dumps({"type": "RECORD", "stream": "patients", "record": rec}) + "\n")
        for i in range(n_appointments):
            rec = {k: v for k, v in appointments[i % len(appointments)].items() if k not in ("id", "updated_at")}
            rec["external_id"] = f"BENCH-{stamp}-{i:07d}"
            rec["payer_id"] = None
            out.write(json.dumps({"type": "RECORD", "stream": "appointments", "record": rec}) + "\n")
    return {"patients": n_patients, "appointments": n_appointments}


# -- one scale ------------------------------------------------------------------------------------------------
@dataclass
class Row:
    scale: str
    name: str
    records: int | None
    wall_s: float
    cpu_s: float
    rss_mb: float
    sync_s: float | None = None  # in-process time (without interpreter start-up), where the tool reports it
    server_cpu_s: float | None = None
    load_avg: float | None = None  # 1-min load average when the run started: >2 on 2 cores means contention
    note: str = ""
    parts: list[dict[str, Any]] = field(default_factory=list)
    ok: bool = True

    @property
    def rate(self) -> float | None:
        return self.records / self.wall_s if self.records and self.wall_s else None


def measured(sb: Sandbox, scale: str, name: str, commands: list[list[str]], **kwargs: Any) -> tuple[Row, Measure]:
    log(f"scale {scale}: {name} ...")
    cpu_before, load = sb.cpu(), os.getloadavg()[0]
    m = run_pipeline(commands, **kwargs)
    row = Row(
        scale=scale,
        name=name,
        records=None,
        wall_s=round(m.wall_s, 3),
        cpu_s=round(m.cpu_s, 3),
        rss_mb=m.rss_mb,
        server_cpu_s=round(sb.cpu() - cpu_before, 2),
        load_avg=round(load, 2),
        parts=m.parts,
        ok=m.returncode == 0,
    )
    if not row.ok:
        row.note = f"FAILED: {fail_tail(m.stderr)}"
        log(f"  {name} failed: {row.note}")
    return row, m


def bench_scale(scale: str, args: argparse.Namespace, work: Path, extra: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    sb = Sandbox(scale, work).start()
    extra.setdefault("sandbox", {})[scale] = {"generate_s": sb.generate_s, "counts": sb.counts}
    cfg_dir = work / f"cfg-{scale}"
    cfg_dir.mkdir(exist_ok=True)
    try:
        # 1. floor
        out_file = work / "floor.json"  # the floor child prints {records, pages, seconds} on stdout
        row, m = measured(
            sb,
            scale,
            "floor (httpx+orjson)",
            [[sys.executable, __file__, "_floor", str(sb.ready)]],
            stdout_path=out_file,
        )
        rows.append(row)
        if row.ok:
            floor = json.loads(out_file.read_text())
            row.records, row.sync_s = floor["records"], round(floor["seconds"], 3)
            row.note = f"{floor['pages']} pages, {floor['pages'] / floor['seconds']:.1f} sandbox pages/s"
            extra.setdefault("floor_pages_per_s", {})[scale] = round(floor["pages"] / floor["seconds"], 1)

        # 2. tap-wellsky full sync → /dev/null, then → target-jsonl (whose stdout is the final STATE)
        tap_cfg = cfg_dir / "tap.json"
        tap_cfg.write_text(json.dumps(tap_config(sb)))
        tap = [str(BIN / "tap-wellsky"), "--config", str(tap_cfg)]
        row, m = measured(sb, scale, "tap-wellsky -> /dev/null", [tap])
        row.records, row.sync_s = tap_records(m.stderr)
        rows.append(row)
        full_tap = row

        state_file = cfg_dir / "state.json"
        jsonl_bin = ensure_venv("jsonl")
        if jsonl_bin:
            jsonl_out = work / f"jsonl-{scale}"
            shutil.rmtree(jsonl_out, ignore_errors=True)
            jsonl_cfg = cfg_dir / "jsonl.json"
            jsonl_cfg.write_text(json.dumps({"destination_path": str(jsonl_out), "do_timestamp_file": False}))
            row, m = measured(
                sb,
                scale,
                "tap-wellsky -> target-jsonl",
                [tap, [str(jsonl_bin / "target-jsonl"), "--config", str(jsonl_cfg)]],
                stdout_path=state_file,
            )
            row.records = sum(1 for f in jsonl_out.glob("*.jsonl") for _ in f.open()) if jsonl_out.exists() else None
            row.sync_s = tap_records(m.stderr)[1]
            row.note = "; ".join(f"{p['command']}: {p['cpu_s']}s CPU, {p['rss_mb']} MB" for p in m.parts)
            rows.append(row)
            shutil.rmtree(jsonl_out, ignore_errors=True)
        lines = [ln for ln in state_file.read_text().splitlines() if ln.strip()] if state_file.exists() else []
        if not lines:
            # no target-jsonl: take the last STATE straight from a tap run written to a file
            raw = work / "tap-out.jsonl"
            run_pipeline([tap], stdout_path=raw)
            states = [ln for ln in raw.open() if ln.startswith('{"type":"STATE"') or '"type": "STATE"' in ln[:30]]
            state_file.write_text(json.dumps(json.loads(states[-1])["value"]) if states else "{}")
            raw.unlink()
        else:
            state_file.write_text(lines[-1])

        # 3. peer: tap-rest-api-msdk
        peer_row: Row | None = None
        if not args.skip_peer:
            msdk_bin = ensure_venv("msdk")
            if msdk_bin:
                peer_cfg = cfg_dir / "msdk.json"
                peer_cfg.write_text(json.dumps(msdk_config(sb)))
                row, m = measured(
                    sb,
                    scale,
                    "peer tap-rest-api-msdk -> /dev/null",
                    [[str(msdk_bin / "tap-rest-api-msdk"), "--config", str(peer_cfg)]],
                )
                row.records = sum(int(n) for n in SDK_RECORD_COUNT.findall(m.stderr)) or None
                rows.append(row)
                peer_row = row if row.ok else None

        # 4. optional: airbyte-cdk declarative source
        if args.airbyte:
            ab_bin = ensure_venv("airbyte")
            if ab_bin:
                manifest, runner = cfg_dir / "manifest.yaml", cfg_dir / "airbyte_runner.py"
                manifest.write_text(airbyte_manifest())
                runner.write_text(AIRBYTE_RUNNER)
                ab_cfg, ab_cat = cfg_dir / "airbyte.json", cfg_dir / "airbyte_catalog.json"
                ab_cfg.write_text(json.dumps({"base_url": sb.base_url, "token": sb.bearer_token()}))
                ab_cat.write_text(json.dumps(airbyte_catalog()))
                ab_out = work / "airbyte-out.jsonl"
                row, m = measured(
                    sb,
                    scale,
                    "peer airbyte-cdk declarative",
                    [
                        [
                            str(ab_bin / "python"),
                            str(runner),
                            str(manifest),
                            "read",
                            "--config",
                            str(ab_cfg),
                            "--catalog",
                            str(ab_cat),
                        ]
                    ],
                    stdout_path=ab_out,
                )
                with ab_out.open() as fh:
                    row.records = sum(1 for ln in fh if ln.startswith('{"type":"RECORD"') or '"RECORD"' in ln[:40])
                row.note = (row.note + " (stdout to a file to count records)").strip()
                error = airbyte_error(ab_out)
                if error or not row.records:
                    row.ok = False
                    row.note = f"FAILED: {error or fail_tail(m.stderr) or 'no error message on stdout or stderr'}"
                    log(f"  airbyte peer failed: {row.note}")
                ab_out.unlink()
                rows.append(row)

        # 5. incremental after 1% change
        changed = sb.post("/_sandbox/advance", {"fraction": 0.01})
        extra.setdefault("advance", {})[scale] = changed
        row, m = measured(sb, scale, "tap-wellsky incremental (1%)", [[*tap, "--state", str(state_file)]])
        row.records, row.sync_s = tap_records(m.stderr)
        if full_tap.wall_s:
            row.note = f"{100 * row.wall_s / full_tap.wall_s:.1f}% of full wall"
            if row.sync_s and full_tap.sync_s:
                row.note += f", {100 * row.sync_s / full_tap.sync_s:.1f}% of full sync time"
        rows.append(row)

        # 6. target-wellsky: first run, then the same input again
        if not args.skip_target:
            input_file = work / f"target-input-{scale}.jsonl"
            split = target_input(sb, input_file, args.target_records)
            ledger = cfg_dir / f"write-ledger-{scale}.sqlite"
            ledger.unlink(missing_ok=True)
            # the first run fills the write ledger; re-run 1 ignores it (every record compared with WellSky),
            # re-run 2 uses it (identical records skipped without a request, as reverse-ETL tools do)
            for label, use_ledger in (
                ("first run", True),
                ("re-run (compared with WellSky)", False),
                ("re-run (write ledger)", True),
            ):
                audit = cfg_dir / f"audit-{label.replace(' ', '-')}.jsonl"
                audit.unlink(missing_ok=True)
                tcfg = cfg_dir / "target.json"
                tcfg.write_text(
                    json.dumps(
                        {
                            **{k: v for k, v in tap_config(sb).items() if k != "page_size"},
                            "write_concurrency": args.write_concurrency,
                            "authorization_policy": "off",
                            "audit_log_path": str(audit),
                            "dead_letter_path": str(cfg_dir / "dead-letters.jsonl"),
                            **({"write_ledger_path": str(ledger)} if use_ledger else {}),
                        }
                    )
                )
                row, m = measured(
                    sb,
                    scale,
                    f"target-wellsky {label}",
                    [[str(BIN / "target-wellsky"), "--config", str(tcfg)]],
                    stdin_path=input_file,
                )
                actions: dict[str, int] = {}
                if audit.exists():
                    for ln in audit.open():
                        action = json.loads(ln).get("action", "?")
                        actions[action] = actions.get(action, 0) + 1
                row.records = sum(actions.values()) or None
                row.note = ", ".join(f"{k} {v}" for k, v in sorted(actions.items())) + (
                    f" (input: {split['patients']} patients + {split['appointments']} appointments)"
                )
                rows.append(row)
    finally:
        sb.stop()
    if peer_row is None:
        log(f"scale {scale}: no peer result, peer ratios left empty")
    return rows


# -- profile ----------------------------------------------------------------------------------------------------
def profile_tap(scale: str, work: Path) -> dict[str, Any] | None:
    """py-spy (own venv) over one tap-wellsky full sync; returns the top functions by self and inclusive time."""
    tools = ensure_venv("tools")
    if tools is None:
        return None
    sys.path.insert(0, str(BENCH))
    from profile_report import render, summarize

    sb = Sandbox(scale, work).start()
    try:
        cfg = work / "profile-tap.json"
        cfg.write_text(json.dumps(tap_config(sb)))
        raw = work / "tap.pyspy"
        log(f"profiling tap-wellsky at scale {scale} with py-spy ...")
        m = run_pipeline(
            [
                [
                    str(tools / "py-spy"),
                    "record",
                    "-r",
                    "250",
                    "-f",
                    "raw",
                    "-o",
                    str(raw),
                    "--",
                    str(BIN / "python"),
                    str(BIN / "tap-wellsky"),
                    "--config",
                    str(cfg),
                ]
            ]
        )
        if m.returncode or not raw.exists():
            log(f"py-spy failed: {fail_tail(m.stderr)}")
            return None
        summary = summarize(raw, top=30)
        print(render(summary), file=sys.stderr)
        return summary
    finally:
        sb.stop()


# -- report ----------------------------------------------------------------------------------------------------
def with_ratios(rows: list[Row]) -> list[dict[str, Any]]:
    out = []
    for scale in dict.fromkeys(r.scale for r in rows):
        at = [r for r in rows if r.scale == scale]
        floor = next((r for r in at if r.name.startswith("floor") and r.ok), None)
        peer = next((r for r in at if r.name.startswith("peer tap-rest") and r.ok), None)
        for r in at:
            d = asdict(r)
            d["records_per_s"] = round(r.rate, 1) if r.rate else None
            d["wall_vs_floor"] = round(r.wall_s / floor.wall_s, 2) if floor and r.ok else None
            full_read = not r.name.startswith(("target", "tap-wellsky incremental"))
            d["rate_vs_peer"] = round(r.rate / peer.rate, 2) if full_read and peer and peer.rate and r.rate else None
            out.append(d)
    return out


def judge(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each target: measured value, met or not (None when the run did not measure it)."""

    def find(scale: str, prefix: str) -> dict[str, Any] | None:
        return next((r for r in rows if r["scale"] == scale and r["name"].startswith(prefix) and r["ok"]), None)

    scales = list(dict.fromkeys(r["scale"] for r in rows))
    main = "M" if "M" in scales else scales[-1]
    verdicts: dict[str, dict[str, Any]] = {}
    tap, floor, peer = find(main, "tap-wellsky -> /dev/null"), find(main, "floor"), find(main, "peer tap-rest")
    if tap and peer and tap["rate_vs_peer"] is not None:
        verdicts["tap_vs_peer"] = {"scale": main, "value": tap["rate_vs_peer"], "met": tap["rate_vs_peer"] >= 3}
    if tap and floor:
        value = tap["wall_vs_floor"]
        sync_ratio = round(tap["sync_s"] / floor["sync_s"], 2) if tap["sync_s"] and floor["sync_s"] else None
        verdicts["tap_vs_floor"] = {"scale": main, "value": value, "met": value <= 1.3, "in_process_ratio": sync_ratio}
    rss = {s: r["rss_mb"] for s in scales if (r := find(s, "tap-wellsky -> /dev/null"))}
    if len(rss) >= 2:
        lo, hi = min(rss.values()), max(rss.values())
        verdicts["rss_flat"] = {
            "value": rss,
            "spread_pct": round(100 * (hi - lo) / lo, 1),
            "met": hi <= lo * 1.2,
            "complete": "S" in rss and "L" in rss,
        }
    inc = find(main, "tap-wellsky incremental")
    if tap and inc:
        pct = round(100 * inc["wall_s"] / tap["wall_s"], 1)
        sync_pct = round(100 * inc["sync_s"] / tap["sync_s"], 1) if inc["sync_s"] and tap["sync_s"] else None
        verdicts["incremental"] = {"scale": main, "value_pct": pct, "sync_pct": sync_pct, "met": pct <= 5}
    first, rerun = find(main, "target-wellsky first"), find(main, "target-wellsky re-run (write ledger)")
    compared = find(main, "target-wellsky re-run (compared")
    if first:
        verdicts["target_rate"] = {
            "scale": main,
            "value": first["records_per_s"],
            "met": (first["records_per_s"] or 0) >= 500,
        }
    if first and rerun:
        pct = round(100 * rerun["wall_s"] / first["wall_s"], 1)
        verdicts["target_rerun"] = {"scale": main, "value_pct": pct, "met": pct <= 5}
        if compared:
            verdicts["target_rerun"]["compared_with_wellsky_pct"] = round(100 * compared["wall_s"] / first["wall_s"], 1)
    return verdicts


def render_table(rows: list[dict[str, Any]], verdicts: dict[str, dict[str, Any]]) -> str:
    head = (
        f"{'scale':<6}{'run':<38}{'records':>9}{'rec/s':>10}{'wall s':>9}{'sync s':>8}{'CPU s':>8}"
        f"{'RSS MB':>8}{'srv CPU':>8}{'load':>6}{'x floor':>8}{'x peer':>8}  note"
    )
    lines = [head, "-" * len(head)]

    def fmt(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for r in rows:
        lines.append(
            f"{r['scale']:<6}{r['name'][:37]:<38}{fmt(r['records'], 'd'):>9}{fmt(r['records_per_s'], '.0f'):>10}"
            f"{r['wall_s']:>9.2f}{fmt(r['sync_s'], '.2f'):>8}{r['cpu_s']:>8.2f}{r['rss_mb']:>8.0f}"
            f"{fmt(r['server_cpu_s'], '.2f'):>8}{fmt(r['load_avg'], '.1f'):>6}"
            f"{fmt(r['wall_vs_floor'], '.2f'):>8}{fmt(r['rate_vs_peer'], '.2f'):>8}"
            f"  {r['note']}"
        )
    lines.append("")
    lines.append("targets:")
    for key, text in TARGETS_TEXT.items():
        v = verdicts.get(key)
        if v is None:
            lines.append(f"  [ n/a ] {text} (not measured in this run)")
            continue
        shown = {k: val for k, val in v.items() if k != "met"}
        lines.append(f"  [{'MET ' if v['met'] else 'MISS'}] {text}: {shown}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_floor"]:
        floor_child(argv[1])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", default="M", help="comma-separated sandbox scales (S, M, L or a patient count)")
    parser.add_argument("--scale", action="append", default=[], help="add one scale (e.g. --scale L)")
    parser.add_argument("--airbyte", action="store_true", help="also run an airbyte-cdk declarative source")
    parser.add_argument("--skip-peer", action="store_true", help="do not install/run tap-rest-api-msdk")
    parser.add_argument("--skip-target", action="store_true", help="do not run the target-wellsky write benchmark")
    parser.add_argument("--target-records", type=int, default=10_000, help="records written by the target run")
    parser.add_argument("--write-concurrency", type=int, default=8, help="target-wellsky write_concurrency")
    parser.add_argument("--profile", action="store_true", help="also py-spy the tap at the first scale")
    parser.add_argument("--work-dir", type=Path, default=None, help="scratch dir (default: a temp dir, removed)")
    wan = parser.add_argument_group("WAN-like scenario (bench/wan.py)")
    wan.add_argument("--latency", default="", help="e.g. 150ms: run the WAN-like scenario instead of loopback")
    wan.add_argument("--budget", type=int, default=100, help="requests/s the tenant asks for (sandbox soft limit)")
    wan.add_argument("--sources", default="rest,home_connect,fhir", help="rest, home_connect, fhir")
    wan.add_argument("--wan-scale", default="S", help="sandbox scale of the WAN-like scenario (default S)")
    wan.add_argument(
        "--defaults-only",
        action="store_true",
        help="only tap-wellsky with default settings per source and scale (the RSS S->L check: an L tenant read "
        "one stream at a time is ~10,000 serial requests)",
    )
    args = parser.parse_args(argv)
    if args.latency:
        sys.path.insert(0, str(BENCH))
        import wan as wan_scenario

        return wan_scenario.main(args)
    scales = list(dict.fromkeys([s.strip() for s in args.scales.split(",") if s.strip()] + args.scale))

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="wellsky-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    extra: dict[str, Any] = {}
    rows: list[Row] = []
    try:
        for scale in scales:
            rows += bench_scale(scale, args, work, extra)
        if args.profile:
            extra["profile"] = profile_tap(scales[0], work)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    table = with_ratios(rows)
    verdicts = judge(table)
    print(render_table(table, verdicts))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{datetime.now().strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(
        json.dumps(
            {
                "started_at": datetime.now(UTC).isoformat(),
                "seconds": round(time.perf_counter() - started, 1),
                "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": sys.platform},
                "scales": scales,
                "rows": table,
                "targets": verdicts,
                **extra,
            },
            indent=2,
        )
    )
    log(f"wrote {out.relative_to(ROOT)} ({time.perf_counter() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
