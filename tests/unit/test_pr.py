"""`inv pr` without SSH or a forge: the body's sections, the template, the gh argv, the rollback
lines from a host's deploy record (all pure, compared exactly)."""

from __future__ import annotations

import pytest

from ops import pr, report
from ops.errors import UsageError

HEAD = "276f86e" + "0" * 33
PREV = "2ecc29f" + "1" * 33
COMMITS = [
    {"id": "d8a3482", "subject": "app: add one.py"},
    {"id": "276f86e", "subject": "app: add two.py"},
]
VALUES = {
    "summary": report.pr_summary_text(COMMITS),
    "verification": "## Verification\n\n- ok\n\nAll 3 pre-flight checks passed.\n",
    "rollback": "## Rollback\n\n- box: x\n",
    "title": "T",
    "branch": "feature",
    "base": "main",
}


def test_gh_gets_the_branch_name_of_a_remote_base() -> None:
    assert pr.gh_base("origin/main", ["origin"]) == "main"
    assert pr.gh_base("origin/feature/parent", ["origin"]) == "feature/parent"  # a stacked PR
    assert pr.gh_base("parent", ["origin"]) == "parent"


def test_gh_argv_is_exact_and_the_body_travels_in_a_file() -> None:
    assert pr.gh_argv("gh", "main", "feature", "app: two", "/r/.git/b.md", False) == [
        "gh", "pr", "create", "--base", "main", "--head", "feature", "--title", "app: two",
        "--body-file", "/r/.git/b.md",
    ]
    assert pr.gh_argv("gh", "main", "f", "t", "b", True)[-1] == "--draft"


def test_default_title_is_the_single_commit_or_the_branch() -> None:
    assert pr.default_title(COMMITS[:1], "feature") == "app: add one.py"
    assert pr.default_title(COMMITS, "feat/tts-backend_v2") == "feat tts backend v2"


def test_the_default_body_is_summary_verification_rollback() -> None:
    assert report.pr_body_text(None, VALUES) == (
        "## Summary\n\n- app: add one.py (`d8a3482`)\n- app: add two.py (`276f86e`)\n\n"
        "## Verification\n\n- ok\n\nAll 3 pre-flight checks passed.\n\n"
        "## Rollback\n\n- box: x\n"
    )


def test_a_template_places_the_sections() -> None:
    tpl = "# {{title}}\n\nOn {{ base }} from {{branch}}.\n\n{{verification}}\n\n{{rollback}}\nThanks!\n"
    pr.check_template(tpl, "docs/t.md")
    assert report.pr_body_text(tpl, VALUES) == (
        "# T\n\nOn main from feature.\n\n## Verification\n\n- ok\n\nAll 3 pre-flight checks passed.\n\n"
        "## Rollback\n\n- box: x\nThanks!\n"
    )


def test_a_template_without_verification_or_with_an_unknown_placeholder_is_refused() -> None:
    with pytest.raises(UsageError) as info:
        pr.check_template("{{summary}}\n", "docs/t.md")
    assert info.value.message == "[preflight] body (docs/t.md) does not place {{verification}}"
    with pytest.raises(UsageError) as info:
        pr.check_template("{{verification}} {{tests}}", "docs/t.md")
    assert info.value.message == "[preflight] body (docs/t.md): unknown placeholder {{tests}}"
    assert "{{summary}}" in info.value.advice


def line(host, probe, error, head, cmd) -> str:
    """One host's rendered Rollback bullet, from its deploy record."""
    return report.pr_rollback_text([pr.rollback_fact(host, probe, error, head, cmd)]).splitlines()[2]


def test_rollback_names_the_previous_deploy_and_the_exact_command() -> None:
    cmd = pr.rollback_command("box", "/etc/ops/hosts.toml", "/src")
    assert cmd == "OPS_INVENTORY=/etc/ops/hosts.toml inv rollback --host box"
    assert pr.rollback_command("box", "/src/hosts.toml", "/src") == "inv rollback --host box"
    probe = {"record": {"current": HEAD, "previous": PREV}, "checkout": {"head": HEAD}}
    assert line("box", probe, None, HEAD, cmd) == (
        "- box: runs this branch (`276f86e`), deployed over `2ecc29f`. To go back to `2ecc29f`: "
        "`OPS_INVENTORY=/etc/ops/hosts.toml inv rollback --host box`"
    )


def test_rollback_says_when_there_is_nothing_to_go_back_to() -> None:
    first = {"record": {"current": HEAD}, "checkout": {"head": HEAD}}
    assert "no earlier deploy is recorded there" in line("box", first, None, HEAD, "c")
    by_hand = {"record": {}, "checkout": {"head": HEAD}}
    assert line("box", by_hand, None, HEAD, "c") == (
        "- box: no deploy is recorded there (its checkout is at `276f86e`, not put there by `inv deploy`): "
        "`inv rollback` has nothing to go back to"
    )
    other = {"record": {"current": PREV}, "checkout": {"head": PREV}}
    assert line("box", other, None, HEAD, "c") == (
        "- box: the last deploy recorded there is `2ecc29f`, not this branch (`276f86e`; the checkout is at "
        "`2ecc29f`): `inv rollback` would not undo this branch there"
    )
    assert "could not be read (box: refused)" in line("box", None, "box: refused", HEAD, "c")
    assert report.pr_rollback_text([]).startswith("## Rollback\n\n- No host runs remote checks")
