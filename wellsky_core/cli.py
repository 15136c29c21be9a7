"""Console entry points shared by tap-wellsky and target-wellsky: one error line, never a traceback.

singer-sdk's CLI lets a missing config file, a non-JSON state file or any of our own errors escape as a
Python traceback. ``run_singer_cli`` checks the input files first and turns every ``WellSkyError`` and SDK
config error into ``<name>: error: <what and how to fix>`` with exit code 2.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from singer_sdk.exceptions import ConfigValidationError

from .errors import WellSkyError

EXIT_FATAL = 2


def unreadable_input_file(argv: list[str]) -> str | None:
    """A --config/--state/--catalog file that is missing or not JSON, as one line naming it."""
    for flag, value in itertools.pairwise(argv):
        if flag in ("--config", "--state", "--catalog") and value != "ENV":
            try:
                json.loads(Path(value).read_text())
            except OSError as exc:
                return f"cannot read {flag} file {value}: {exc.strerror or exc}"
            except ValueError as exc:
                return f"{flag} file {value} is not valid JSON ({exc}); fix or regenerate it"
    return None


def fail(name: str, message: object) -> NoReturn:
    print(f"{name}: error: {message}", file=sys.stderr)
    sys.exit(EXIT_FATAL)


def run_singer_cli(name: str, command: Callable[[], Any]) -> Any:
    """Run a singer-sdk CLI callable; fatal problems become one actionable line and exit code 2."""
    problem = unreadable_input_file(sys.argv[1:])
    if problem:
        fail(name, problem)
    try:
        return command()
    except WellSkyError as exc:
        fail(name, exc)
    except ConfigValidationError as exc:
        fail(name, "; ".join(getattr(exc, "errors", []) or [str(exc)]))
