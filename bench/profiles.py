"""Summaries of py-spy's collapsed stacks (``py-spy record -f raw``): where the time went.

``python -m bench.profiles FILE [N]`` prints the top N frames by inclusive and by self time.
Inclusive time answers "how much would removing this call save"; self time points at the
code that actually burns the CPU. Line numbers are dropped so one function is one row.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_LINE = re.compile(r":\d+\)$")
_SITE = re.compile(r"/(?:site-packages|lib/python3\.\d+)/")


def _frame(raw: str) -> str:
    """``func (path/to/file.py:123)`` without the line number and the environment's prefix."""
    frame = _LINE.sub(")", raw.strip())
    match = _SITE.search(frame)
    if match:
        start = frame.rfind("(", 0, match.start())
        frame = frame[: start + 1] + frame[match.end() :]
    return frame.replace("/work/main/", "")


@dataclass(frozen=True)
class Summary:
    samples: int
    inclusive: list[tuple[str, int]]
    self_time: list[tuple[str, int]]

    def render(self) -> str:
        def block(title: str, rows: list[tuple[str, int]]) -> list[str]:
            lines = [f"{title} ({self.samples} samples)"]
            lines += [f"  {100 * n / self.samples:5.1f}%  {name}" for name, n in rows]
            return lines

        return "\n".join(block("inclusive", self.inclusive) + block("self", self.self_time))


def summarize(path: Path, top: int = 40, thread_filter: str | None = None) -> Summary:
    inclusive: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        if thread_filter and thread_filter not in stack:
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")]
        samples += count
        for name in set(frames):
            inclusive[name] += count
        self_time[frames[-1]] += count
    return Summary(samples, inclusive.most_common(top), self_time.most_common(top))


def shares(path: Path, parts: dict[str, str]) -> dict[str, float]:
    """Percent of samples whose stack has a frame containing each part's substring.

    Frames are compared as :func:`summarize` names them: ``func (pkg/module.py)``.
    """
    hits = dict.fromkeys(parts, 0)
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = ";".join(_frame(f) for f in stack.split(";"))
        for label, needle in parts.items():
            if needle in frames:
                hits[label] += count
    return {label: round(100 * n / samples, 1) if samples else 0.0 for label, n in hits.items()}


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m bench.profiles FILE.raw [N]", file=sys.stderr)
        return 2
    top = int(argv[2]) if len(argv) > 2 else 40
    print(summarize(Path(argv[1]), top).render())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
