"""Reading test counts from pytest's summary line (every form it prints) and from a generic regex."""

from __future__ import annotations

import pytest

from ops.testcount import TestCounts, parse_pytest, parse_regex, parse_summary_line


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("40 passed in 1.20s", TestCounts(passed=40)),
        ("40 passed", TestCounts(passed=40)),
        ("17 passed, 1 failed in 0.31s", TestCounts(passed=17, failed=1)),
        ("1 failed, 17 passed, 3 warnings in 1.02s", TestCounts(passed=17, failed=1, warnings=3)),
        (
            "38 passed, 2 skipped, 1 deselected in 3.2s",
            TestCounts(passed=38, skipped=2, deselected=1),
        ),
        ("1 passed, 1 warning in 0.01s", TestCounts(passed=1, warnings=1)),
        ("2 errors in 0.12s", TestCounts(errors=2)),
        ("1 error in 0.12s", TestCounts(errors=1)),
        ("3 failed, 5 passed, 1 error in 0.50s", TestCounts(passed=5, failed=3, errors=1)),
        ("1 xfailed, 2 xpassed, 4 passed in 0.10s", TestCounts(passed=4, xfailed=1, xpassed=2)),
        ("5 passed, 2 rerun in 0.10s", TestCounts(passed=5, rerun=2)),
        ("120 passed in 75.02s (0:01:15)", TestCounts(passed=120)),
        ("no tests ran in 0.01s", TestCounts(no_tests=True)),
    ],
)
def test_summary_line_forms_are_counted(line: str, expected: TestCounts) -> None:
    got = parse_summary_line(line)
    assert got is not None
    assert got.line == line
    assert {k: v for k, v in vars(got).items() if k != "line"} == {
        k: v for k, v in vars(expected).items() if k != "line"
    }


def test_fenced_and_coloured_summary_line_is_read() -> None:
    line = (
        "\x1b[31m========== \x1b[31m\x1b[1m1 failed\x1b[0m, "
        "\x1b[32m17 passed\x1b[0m\x1b[31m in 0.05s\x1b[0m =========="
    )
    got = parse_summary_line(line)
    assert got is not None
    assert (got.passed, got.failed) == (17, 1)
    assert got.line == "1 failed, 17 passed in 0.05s"
    assert got.summary == "1 failed, 17 passed"


@pytest.mark.parametrize(
    "line",
    [
        "",
        "==================== FAILURES ====================",
        "FAILED tests/test_x.py::test_flag - AssertionError: flag set",
        "collected 18 items",
        "tests/test_x.py ..................                [100%]",
        "17 passed, 17 passed in 0.1s",  # a key twice: not pytest's line
        "3 bananas in 0.1s",
        "about 3 passed",
    ],
)
def test_other_lines_are_not_summaries(line: str) -> None:
    assert parse_summary_line(line) is None


def test_ran_counts_passed_failed_and_errors_but_not_skips() -> None:
    c = TestCounts(passed=17, failed=1, errors=2, skipped=3, deselected=4)
    assert c.ran == 20


def test_the_last_timed_summary_line_wins_over_lines_the_tests_print() -> None:
    output = "\n".join(
        [
            "..F...",
            "3 passed",  # printed by a test itself
            "=================================== FAILURES ===================================",
            "17 passed, 1 failed in 0.31s",
            "",
        ]
    )
    got = parse_pytest(output)
    assert got is not None and (got.passed, got.failed) == (17, 1)


def test_a_bare_count_is_used_only_when_no_timed_line_exists() -> None:
    got = parse_pytest("noise\n5 passed\nmore noise\n")
    assert got is not None and got.passed == 5


def test_quiet_quiet_output_has_no_summary() -> None:
    # pytest -qq prints only the progress dots
    assert parse_pytest("..................                                     [100%]\n") is None
    assert parse_pytest("") is None


def test_collection_errors_are_counted() -> None:
    out = (
        "==================================== ERRORS ====================================\n"
        "___________________ ERROR collecting tests/test_broken.py ____________________\n"
        "!!!!!!!!!!!!!!!!!!!! Interrupted: 1 error during collection !!!!!!!!!!!!!!!!!!!!\n"
        "1 error in 0.09s\n"
    )
    got = parse_pytest(out)
    assert got is not None and got.errors == 1 and got.passed == 0


def test_regex_reads_the_first_group_of_the_last_match() -> None:
    out = "Ran 3 tests\nOK (3 tests)\n...\nRan 12 tests in 0.5s\nOK (12 tests)\n"
    m = parse_regex(out, r"OK \((\d+) tests\)")
    assert m is not None and m.count == 12 and m.text == "OK (12 tests)"


def test_regex_without_group_only_matches() -> None:
    m = parse_regex("all good\nPASS\n", r"^PASS$")
    assert m is not None and m.count is None and m.text == "PASS"


def test_regex_with_no_match_is_none() -> None:
    assert parse_regex("FAIL\n", r"^PASS$") is None


def test_regex_group_that_is_not_a_number_gives_no_count() -> None:
    m = parse_regex("result: many\n", r"result: (\w+)")
    assert m is not None and m.count is None
