"""Data quality: lenient reads that say what they could not map, and the per-stream counts a run reports.

A record read from WellSky is refused (dead-lettered) only when its primary key or replication timestamp is
missing or unusable. Any other gap — a field the source did not send, a code with no canonical equivalent, a
value that fails validation, a reference that cannot be resolved — leaves that field null and adds a flag
``{field, kind, reason}`` to the record's ``data_quality`` list. Reasons name the rule, never the value
(values are patient data).

:func:`finish` is the one place every normalizer (native REST, FHIR, HL7, exports) ends: it validates with the
entity's canonical model, repairs what fails into null + flag, and flags every *expected* field
(``CanonicalModel.expected``) that is still empty. :class:`QualityCounter` keeps the per-stream counts
(records, flagged, unmapped codes, validation failures, missing fields, unresolved references, dead-lettered,
skipped inputs by type) that the tap prints and writes as the ``data_quality`` JSON report.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import typing
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ValidationError

from .errors import NormalizationError
from .models import ENTITIES, CanonicalModel, DataQualityFlag
from .private_files import private_dir, state_root, write_private

if TYPE_CHECKING:
    from .config import WellSkyConfig

ExitCodeRule = Callable[[str, "BaseException | None"], int]
"""A face's rule from a report's status (and the exception that ended the run, if any) to its exit code."""
FlagKind = Literal["missing", "unmapped_code", "invalid", "unresolved_reference"]
KINDS: tuple[str, ...] = ("missing", "unmapped_code", "invalid", "unresolved_reference")
_MAX_REPAIRS = 64


def flag(field: str, kind: FlagKind, reason: str) -> dict[str, str]:
    """One data-quality flag (``reason`` must not quote the value)."""
    return {"field": field, "kind": kind, "reason": reason}


class Flags(list[dict[str, str]]):
    """The flags a normalizer collects for one record; ``add`` ignores a field flagged already."""

    def add(self, field: str, kind: FlagKind, reason: str) -> None:
        if not any(f["field"] == field for f in self):
            self.append(flag(field, kind, reason))

    def covers(self, path: str) -> bool:
        return any(path == f["field"] or path.startswith(f["field"] + ".") for f in self)


def _dotted(loc: Iterable[Any]) -> str:
    return ".".join(str(p) for p in loc)


def _repair(data: dict[str, Any], loc: tuple[Any, ...], seen: set[tuple[Any, ...]]) -> bool:
    """Null (or, for a list item or a field that cannot be null, remove) the value at ``loc``; False if gone."""
    parent: Any = data
    for step in loc[:-1]:
        try:
            parent = parent[step]
        except (KeyError, IndexError, TypeError):
            return False
    last = loc[-1]
    if isinstance(parent, list) and isinstance(last, int):
        if 0 <= last < len(parent):
            parent[last] = _REMOVED
            return True
        return False
    if not isinstance(parent, dict) or last not in parent:
        return False
    if loc in seen or parent[last] is None:
        del parent[last]  # a field that cannot be null falls back to its default
    else:
        parent[last] = None
    seen.add(loc)
    return True


class _Removed:
    """Placeholder for list items removed during repair (dropped before the next validation)."""


_REMOVED = _Removed()


def _drop_removed(value: Any) -> Any:
    if isinstance(value, list):
        return [_drop_removed(v) for v in value if v is not _REMOVED]
    if isinstance(value, dict):
        return {k: _drop_removed(v) for k, v in value.items()}
    return value


def _missing(model: BaseModel, prefix: str, flags: Flags) -> None:
    """Flag every expected field of ``model`` (and its nested models) that is empty."""
    expected, nested = _fields_of(type(model))
    values = model.__dict__
    for name in expected:
        if values.get(name) is None:
            path = prefix + name
            if not flags.covers(path):
                flags.append(flag(path, "missing", "not provided by the source"))
    for name in nested:
        value = values.get(name)
        if isinstance(value, BaseModel):
            _missing(value, f"{prefix}{name}.", flags)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    _missing(item, f"{prefix}{name}.{i}.", flags)


@functools.cache
def _fields_of(cls: type[BaseModel]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(expected fields, fields that can hold a model)`` of a model class, computed once: ``_missing`` runs for
    every record and every nested model, and looking into every field of every record (a getattr and two
    isinstance each) was a fifth of a record's normalization."""
    expected = cls.expected if issubclass(cls, CanonicalModel) else ()
    unknown = [name for name in expected if name not in cls.model_fields]
    if unknown:  # read from the model's values, so an expected name must be a field
        raise TypeError(f"{cls.__name__}.expected names no field: {unknown}")
    nested = tuple(
        name
        for name, info in cls.model_fields.items()
        if name != "data_quality" and _can_hold_model(info.annotation)
    )
    return tuple(expected), nested


def _can_hold_model(annotation: Any) -> bool:
    """Whether a field of this type can hold a model, directly or in a list (``X | None``, ``list[X]``...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    return any(_can_hold_model(arg) for arg in typing.get_args(annotation))


def finish(
    entity: str, data: dict[str, Any], flags: Iterable[Mapping[str, str]] = (), record_id: str | None = None
) -> dict[str, Any]:
    """Validate ``data`` as a canonical ``entity`` record, leniently; returns the JSON-ready record.

    Raises :class:`NormalizationError` only when the primary key or the replication key is unusable.
    """
    spec = ENTITIES[entity]
    refusing = {*spec.primary_key, spec.replication_key}
    collected = Flags(dict(f) for f in flags)
    work = dict(data)
    for item in work.pop("data_quality", None) or ():  # flags a mapper already attached (names or flags)
        if isinstance(item, str):
            collected.add(item, "missing", "left empty or unusable by the source")
        elif isinstance(item, Mapping) and isinstance(item.get("field"), str):
            collected.add(item["field"], item.get("kind", "invalid"), str(item.get("reason", "")))
    for key in refusing:
        if work.get(key) in (None, ""):
            raise NormalizationError(entity, key, "is missing; a record without it cannot be read", record_id=record_id)
    seen: set[tuple[Any, ...]] = set()
    for _ in range(_MAX_REPAIRS):
        try:
            model = spec.model.model_validate(work)
            break
        except ValidationError as exc:
            errors = exc.errors(include_input=False, include_url=False)
            # deepest and last list items first, so removing one never shifts another's index
            errors.sort(key=lambda e: [(-p if isinstance(p, int) else 0) for p in e["loc"]])
            repaired = False
            for err in errors:
                loc = tuple(err["loc"])
                if not loc or loc[0] in refusing:
                    field = _dotted(loc) or "record"
                    raise NormalizationError(entity, field, err["msg"], record_id=record_id) from None
                if err["type"] == "extra_forbidden":
                    work.pop(loc[0], None) if len(loc) == 1 else _repair(work, loc, {loc})
                    collected.add(_dotted(loc), "invalid", "not a canonical field")
                    repaired = True
                    continue
                if _repair(work, loc, seen):
                    collected.add(_dotted(loc), "invalid", err["msg"])
                    repaired = True
            work = _drop_removed(work)
            if not repaired:
                first = errors[0]
                raise NormalizationError(entity, _dotted(first["loc"]), first["msg"], record_id=record_id) from None
    else:  # pragma: no cover - a model that keeps failing after every field was repaired is a programming error
        raise NormalizationError(entity, "record", "cannot be repaired into a canonical record", record_id=record_id)
    _missing(model, "", collected)
    if collected and "data_quality" in type(model).model_fields:
        model.data_quality = [DataQualityFlag(**f) for f in collected]  # type: ignore[attr-defined]
    return model.model_dump(mode="json", by_alias=True)  # `_sdc_deleted_at`, the Singer name of a deletion


# -- per-run counts --------------------------------------------------------------------------------------------
def _covers(fields: Iterable[str], path: str) -> bool:
    return any(path == name or path.startswith(name + ".") for name in fields)


class QualityCounter:
    """Per-stream counts of one run; thread-safe. ``observe`` is called once per emitted record.

    Expectations, applied to the record's own ``data_quality`` list before it is counted (and emitted):
    ``ignore`` (the ``quality_ignore`` setting: stream -> fields) drops every flag of those fields; ``never_sent``
    (the product dialect's fields its API never sends, resolved once the product is known) drops their
    ``missing`` flags only: an empty field the API cannot send is no loss, a bad value in it still is.
    """

    def __init__(
        self,
        ignore: Mapping[str, Iterable[str]] | None = None,
        never_sent: Callable[[], Mapping[str, Iterable[str]]] | None = None,
    ) -> None:
        self._ignore = {stream: tuple(fields) for stream, fields in (ignore or {}).items()}
        self._never_sent_source = never_sent
        self._never_sent: dict[str, tuple[str, ...]] | None = None
        self._lock = threading.Lock()
        self.records: Counter[str] = Counter()
        self.flagged: Counter[str] = Counter()
        self.by_kind: dict[str, Counter[str]] = defaultdict(Counter)
        self.by_field: dict[str, Counter[str]] = defaultdict(Counter)
        self.dead_lettered: Counter[str] = Counter()
        self.skipped: dict[str, Counter[str]] = defaultdict(Counter)
        self.not_read: dict[str, str] = {}
        """Selected streams this configuration cannot read (``StreamRead.skip_reason``), with why and the fix:
        a stream of 0 records must not look like one the tenant has no records in."""

    def _expected(self, stream: str, item: Mapping[str, Any]) -> bool:
        """A flag the configuration or the product says to expect (not a data-quality problem)."""
        field = str(item.get("field", ""))
        if _covers(self._ignore.get(stream, ()), field):
            return True
        if self._never_sent is None:
            source = self._never_sent_source() if self._never_sent_source else {}
            self._never_sent = {k: tuple(v) for k, v in source.items()}
        return item.get("kind") == "missing" and _covers(self._never_sent.get(stream, ()), field)

    def observe(self, stream: str, record: dict[str, Any]) -> None:
        """Count one emitted record; flags the expectations cover are removed from the record first."""
        flags = record.get("data_quality")
        if flags and (self._ignore or self._never_sent_source):
            flags = [f for f in flags if not self._expected(stream, f)]
            record["data_quality"] = flags
        with self._lock:
            self.records[stream] += 1
            if flags:
                self.flagged[stream] += 1
                for f in flags:
                    self.by_kind[stream][f.get("kind", "invalid")] += 1
                    self.by_field[stream][f.get("field", "?")] += 1

    def add_dead_lettered(self, stream: str, count: int = 1) -> None:
        with self._lock:
            self.dead_lettered[stream] += count

    def add_skipped(self, source: str, kind: str, count: int = 1) -> None:
        """Inputs deliberately not read (e.g. an HL7 message type no stream carries), by type."""
        with self._lock:
            self.skipped[source][kind] += count

    def add_not_read(self, stream: str, reason: str) -> None:
        with self._lock:
            self.not_read[stream] = reason

    def merge(self, other: QualityCounter) -> None:
        """Add ``other``'s counts to this counter."""
        with other._lock:
            records, flagged = Counter(other.records), Counter(other.flagged)
            by_kind = {k: Counter(v) for k, v in other.by_kind.items()}
            by_field = {k: Counter(v) for k, v in other.by_field.items()}
            dead = Counter(other.dead_lettered)
            skipped = {k: Counter(v) for k, v in other.skipped.items()}
            not_read = dict(other.not_read)
        with self._lock:
            self.not_read.update(not_read)
            self.records.update(records)
            self.flagged.update(flagged)
            for k, v in by_kind.items():
                self.by_kind[k].update(v)
            for k, v in by_field.items():
                self.by_field[k].update(v)
            self.dead_lettered.update(dead)
            for k, v in skipped.items():
                self.skipped[k].update(v)

    def streams(self) -> list[str]:
        return sorted(set(self.records) | set(self.dead_lettered))

    def stream_report(self, stream: str) -> dict[str, Any]:
        kinds = self.by_kind.get(stream, Counter())
        records = self.records[stream]
        return {
            "records": records,
            "flagged": self.flagged[stream],
            "flagged_fraction": round(self.flagged[stream] / records, 6) if records else 0.0,
            "unmapped_codes": kinds["unmapped_code"],
            "validation_failures": kinds["invalid"],
            "missing_fields": kinds["missing"],
            "unresolved_references": kinds["unresolved_reference"],
            "dead_lettered": self.dead_lettered[stream],
            "flags_by_field": dict(sorted(self.by_field.get(stream, Counter()).items())),
        }

    def report(
        self,
        max_flagged_fraction: float | None = None,
        *,
        ended_by: BaseException | None = None,
        incomplete: Iterable[str] = (),
        exit_code: ExitCodeRule | None = None,
    ) -> dict[str, Any]:
        """The JSON report: per stream, totals, skipped inputs and the verdict, which is the run's exit code.

        ``ended_by``: the exception that ended the run, if any; the status is then ``aborted``. ``incomplete``:
        streams that failed while the run went on to the others (the Airbyte read); the status is then
        ``incomplete``. ``exit_code``: the face's rule from status to exit code (default: the Singer CLIs',
        :func:`singer_exit_code`); the report's ``exit_code`` is what the process exits with, so a report never
        says ``ok`` for a run that failed.
        """
        from .cli import exit_code_for

        with self._lock:
            streams = {s: self.stream_report(s) for s in self.streams()}
            skipped = {src: dict(sorted(c.items())) for src, c in self.skipped.items()}
            not_read = dict(sorted(self.not_read.items()))
        over = [
            s
            for s, r in streams.items()
            if max_flagged_fraction is not None and r["records"] and r["flagged_fraction"] > max_flagged_fraction
        ]
        unfinished = sorted(set(incomplete))
        dead = sum(r["dead_lettered"] for r in streams.values())
        if ended_by is not None and exit_code_for(ended_by) != 0:
            status = "aborted"
        elif unfinished:
            status = "incomplete"
        elif over:
            status = "failed"
        else:
            status = "completed_with_refusals" if dead else "ok"
        rule = exit_code or singer_exit_code
        return {
            "generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "status": status,
            "exit_code": rule(status, ended_by),
            "max_flagged_fraction": max_flagged_fraction,
            "streams_over_threshold": over,
            "incomplete_streams": unfinished,
            "totals": {
                "records": sum(r["records"] for r in streams.values()),
                "flagged": sum(r["flagged"] for r in streams.values()),
                "dead_lettered": dead,
                "skipped": sum(sum(c.values()) for c in skipped.values()),
            },
            "streams": streams,
            "skipped": skipped,
            "not_read": not_read,
        }


def singer_exit_code(status: str, ended_by: BaseException | None) -> int:
    """tap-wellsky's exit code for a verdict: 0 ok, 3 refusals, 4 over the flag threshold, 2 a stream that did not
    finish; an aborted run exits with its exception's code (``cli.exit_code_for``)."""
    from .cli import EXIT_FATAL, EXIT_QUALITY, EXIT_REFUSALS, exit_code_for

    if status == "aborted":
        return exit_code_for(ended_by)
    return {"ok": 0, "completed_with_refusals": EXIT_REFUSALS, "failed": EXIT_QUALITY}.get(status, EXIT_FATAL)


def default_report_path(config: WellSkyConfig | None = None) -> Path:
    """Where the report goes when ``data_quality_report_path`` is unset: never one file shared by every run.

    With the run's config: ``data_quality.json`` in that tenant's private state directory (each run of the tenant
    replaces its own report). Without: a file of its own per run under the private state root.
    """
    if config is not None:
        return config.private_state_dir() / "data_quality.json"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return private_dir(state_root() / "reports") / f"data_quality-{stamp}-{os.getpid()}.json"


def write_report(report: Mapping[str, Any], path: str | Path) -> Path:
    """Write the report atomically (a crash never leaves half a JSON file), private like every file we write."""
    target = Path(path).expanduser()
    private_dir(target.parent)
    return write_private(target, json.dumps(report, indent=2, sort_keys=False) + "\n")


def save_report(report: Mapping[str, Any], config: WellSkyConfig, logger: logging.Logger | None) -> Path | None:
    """Write a run's report where every face puts it (``data_quality_report_path``, else the tenant's private
    state directory); ``logger`` says where, or why it could not. ``None`` writes silently (a refused sign-in:
    the refusal stays the run's one line)."""
    path = config.data_quality_report_path or default_report_path(config)
    try:
        written = write_report(report, path)
    except OSError as exc:
        if logger is not None:
            logger.warning("could not write the data-quality report to %s (%s)", path, exc.strerror or exc)
        return None
    if logger is not None:
        logger.info("data-quality report written to %s", written)
    return written
