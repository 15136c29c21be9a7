"""Console entry points shared by tap-wellsky and target-wellsky: one error line, never a traceback.

singer-sdk's CLI lets a missing config file, a non-JSON state file or any of our own errors escape as a
Python traceback. ``run_singer_cli`` checks the input files first and turns every ``WellSkyError`` and SDK
config error (the type the caller passes) into ``<name>: error: <what and how to fix>`` with exit code 2.
"""

from __future__ import annotations

import gc
import itertools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from .disclosure import public_message, public_traceback
from .errors import ConfigError, LocalWriteFailed, RunNotClean, WellSkyError
from .private_files import UnsafePathError
from .redaction import redact, redact_config_message

EXIT_FATAL = 2
EXIT_INTERNAL = 1
EXIT_REFUSALS = 3
"""The run finished, but records were dead-lettered."""
EXIT_QUALITY = 4
"""The run finished, but a stream's share of flagged records exceeded ``max_flagged_fraction``."""


def unreadable_input_file(argv: list[str]) -> str | None:
    """A --config/--state/--catalog file that is missing or not JSON, or a config that is not an object (a
    traceback in singer-sdk), as one line naming it. The state and the catalog have their own shape checks."""
    for flag, value in itertools.pairwise(argv):
        if flag in ("--config", "--state", "--catalog") and value != "ENV":
            try:
                data = json.loads(Path(value).read_text())
            except OSError as exc:
                return f"cannot read {flag} file {value}: {exc.strerror or exc}"
            except ValueError as exc:
                return f"{flag} file {value} is not valid JSON ({exc}); fix or regenerate it"
            if flag == "--config" and not isinstance(data, dict):
                return (f"--config file {value} must hold a JSON object of settings, not a {type(data).__name__}, "
                        'e.g. {"product": "personal_care"}')
    return None


def fail(name: str, message: str | BaseException, code: int = EXIT_FATAL, label: str = "error") -> NoReturn:
    """One error line on stderr: an exception as its public message (never its text, which may quote the
    server), our own text redacted like every log line. Several configuration problems stay on one line."""
    text = public_message(message) if isinstance(message, BaseException) else redact(message)
    if isinstance(message, ConfigError) and len(message.problems) > 1:
        text = f"invalid configuration ({len(message.problems)} problems): " + "; ".join(
            redact_config_message(str(p)) for p in message.problems
        )
    print(f"{name}: {label}: {text}", file=sys.stderr, flush=True)
    sys.exit(code)


def exit_code_for(exc: BaseException | None) -> int:
    """The exit code a run ending with ``exc`` has (None: finished), so a report can say the same as the shell."""
    if exc is None:
        return 0
    if isinstance(exc, RunNotClean):
        return exc.exit_code
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_FATAL)
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, WellSkyError | UnsafePathError) or LocalWriteFailed.from_os_error(exc) is not None:
        return EXIT_FATAL
    return EXIT_INTERNAL


GC_THRESHOLDS = (100_000, 10, 10)
"""Cyclic-GC thresholds for a sync process (Python's default is 700, 10, 10). With parallel streams and windows
many pages are alive at once, so each young collection walks more survivors: a loopback FHIR M sync spent 0.27 s
in the collector at 20,000 and 0.10 s at 100,000, with the same peak RSS (176 MB; docs/benchmarks.md run 11)."""


def tune_gc() -> None:
    """Make the cyclic garbage collector run rarely and skip the objects imported at start.

    A sync decodes pages into millions of short-lived dicts and lists, none of them in a reference cycle (JSON
    cannot make one), all freed by reference counting. With the default thresholds every 700 allocations start
    a collection, and the older generations walk the whole heap again and again: on a loopback FHIR full sync at
    scale S that was about a fifth of the process's CPU (docs/benchmarks.md, run 6). Only *when* unreachable cycles
    are freed changes, never what the run reads or writes.
    """
    gc.freeze()  # what is alive now (modules, classes) is never garbage: keep it out of every later collection
    gc.set_threshold(*GC_THRESHOLDS)


def run_singer_cli(
    name: str, command: Callable[[], Any], *, config_errors: tuple[type[Exception], ...] = ()
) -> Any:
    """Run a singer-sdk CLI callable; fatal problems become one actionable line and exit code 2.

    ``config_errors``: the SDK's own config-validation exception types (passed in by the tap and target, so
    the core imports no singer-sdk); their ``errors`` list is printed as one line."""
    problem = unreadable_input_file(sys.argv[1:])
    if problem:
        fail(name, problem)
    try:
        return command()
    except RunNotClean as exc:
        fail(name, exc, exc.exit_code, exc.label)
    except (WellSkyError, UnsafePathError) as exc:  # a planted symlink or a foreign state directory: one line
        fail(name, exc)
    except config_errors as exc:
        fail(name, "; ".join(getattr(exc, "errors", []) or [str(exc)]))
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except Exception as exc:  # a bug: keep the frames for the report, with public messages only
        no_room = LocalWriteFailed.from_os_error(exc)  # a full volume is the machine's, not a bug: one line
        if no_room is not None:
            fail(name, no_room)
        print(f"{name}: internal error (please report it):\n{public_traceback(exc)}", file=sys.stderr)
        sys.exit(EXIT_INTERNAL)
