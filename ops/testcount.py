"""Read test counts out of a test runner's output: pytest's summary line, or any regex.

pytest ends a run with one summary line, e.g. (with ``-q``)::

    17 passed, 1 failed in 0.31s
    38 passed, 2 skipped, 1 deselected in 3.20s
    1 failed, 17 passed, 3 warnings in 1.02s
    2 errors in 0.12s
    no tests ran in 0.01s

or, without ``-q``, the same text between ``=`` fences (and wrapped in colour codes when forced).
The LAST such line wins: a test that prints "3 passed" itself cannot fool the count, because pytest's
own line comes after everything the tests print. ``-qq`` prints no summary at all (say so, do not
guess). Pure functions only: no processes, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# pytest's words -> our field names (singular and plural forms both occur)
_WORDS = {
    "passed": "passed",
    "failed": "failed",
    "error": "errors",
    "errors": "errors",
    "skipped": "skipped",
    "deselected": "deselected",
    "xfailed": "xfailed",
    "xpassed": "xpassed",
    "warning": "warnings",
    "warnings": "warnings",
    "rerun": "rerun",
    "reruns": "rerun",
}
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_PART = re.compile(r"^(\d+) ([a-z]+)$")
_DURATION = re.compile(r"\s+in\s+[\d.]+s(?:\s+\([\d:]+\))?$")


@dataclass(frozen=True)
class TestCounts:
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    deselected: int = 0
    xfailed: int = 0
    xpassed: int = 0
    warnings: int = 0
    rerun: int = 0
    no_tests: bool = False  # "no tests ran"
    line: str = ""  # the summary line as pytest printed it (colours and fences removed)

    __test__ = False  # not a pytest test class, despite its name

    @property
    def ran(self) -> int:
        """Tests that ran to a verdict: passed + failed + errors (skips and deselections excluded)."""
        return self.passed + self.failed + self.errors

    @property
    def summary(self) -> str:
        """The counts without the duration, e.g. '17 passed, 1 failed'."""
        return _DURATION.sub("", self.line)


def _clean(line: str) -> str:
    text = _ANSI.sub("", line).strip()
    text = text.strip("=").strip()
    return text


def parse_summary_line(line: str) -> TestCounts | None:
    """One line -> counts, or None if it is not a pytest summary line."""
    text = _clean(line)
    if not text:
        return None
    body = _DURATION.sub("", text)
    if body == "no tests ran":
        return TestCounts(no_tests=True, line=text)
    counts: dict[str, int] = {}
    for part in body.split(", "):
        m = _PART.match(part)
        if m is None or m.group(2) not in _WORDS:
            return None
        key = _WORDS[m.group(2)]
        if key in counts:
            return None
        counts[key] = int(m.group(1))
    return TestCounts(**counts, line=text)


def parse_pytest(output: str) -> TestCounts | None:
    """The counts from pytest's output (stdout, or stdout + stderr), or None if it has no summary line.

    A line with a duration ("... in 0.31s") is pytest's own; a bare "3 passed" line is accepted only if
    no line with a duration exists (some wrappers strip it).
    """
    timed: TestCounts | None = None
    bare: TestCounts | None = None
    for line in output.splitlines():
        counts = parse_summary_line(line)
        if counts is None:
            continue
        if _DURATION.search(counts.line):
            timed = counts
        else:
            bare = counts
    return timed or bare


@dataclass(frozen=True)
class RegexMatch:
    text: str  # what the regex matched
    count: int | None  # the first capture group as an integer, when there is one


def parse_regex(output: str, pattern: str) -> RegexMatch | None:
    """The LAST match of ``pattern`` (multiline) in the output; its first group read as the count.

    For runners other than pytest, e.g. ``OK \\((\\d+) tests\\)`` or ``Ran (\\d+) tests``.
    """
    last = None
    for m in re.finditer(pattern, output, re.MULTILINE):
        last = m
    if last is None:
        return None
    count = None
    if last.re.groups >= 1 and last.group(1) is not None:
        try:
            count = int(last.group(1))
        except ValueError:
            count = None
    return RegexMatch(text=last.group(0), count=count)
