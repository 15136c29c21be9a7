"""Summarize a py-spy ``--format raw`` profile: inclusive and self share of samples per function.

Used by ``bench/run.py --profile`` so the "where the time goes" note is computed, not eyeballed.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def _frame_name(frame: str) -> str:
    """``func (path/to/file.py:123)`` → ``file.py:func`` with the site-packages prefix dropped."""
    match = FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match["file"].split("site-packages/")[-1]
    return f"{path}:{match['func']}"


def summarize(path: Path, top: int = 25) -> dict[str, object]:
    """Return total samples plus the top functions by inclusive and by self samples."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        for name in set(frames):
            inclusive[name] += count
        own[frames[-1]] += count

    def rows(counter: Counter[str]) -> list[dict[str, object]]:
        return [
            {"function": name, "samples": n, "percent": round(100.0 * n / total, 1)}
            for name, n in counter.most_common(top)
        ]

    return {"samples": total, "inclusive": rows(inclusive), "self": rows(own)}


def render(summary: dict[str, object]) -> str:
    lines = [f"{summary['samples']} samples"]
    for kind in ("self", "inclusive"):
        lines.append(f"-- top by {kind} time --")
        for row in summary[kind]:  # type: ignore[union-attr]
            lines.append(f"{row['percent']:>6.1f}%  {row['function']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    print(render(summarize(args.profile, args.top)))


if __name__ == "__main__":
    main()
