"""ops.api's pure parts: Result, verdicts, typed confirmation, the task decorator's signature."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from invoke import Context

from ops import api


class Terminal(io.StringIO):
    """Typed input on a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "journal.jsonl"
    monkeypatch.setenv("OPS_JOURNAL", str(path))
    return path


def entries(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_result_is_ok_only_on_exit_0_in_time_and_summarises_a_failure_with_its_last_error_line() -> None:
    r = api.Result("box", "make test", 2, "out\n", "warning\nerror: no rule\n\n", 1.5)
    assert (r.ok, r.failed, r.return_code, bool(r)) == (False, True, 2, False)
    assert r.summary() == "`make test`: exit 2: error: no rule"
    assert r.tail(2) == ["warning", "error: no rule"]
    late = api.Result("box", "sleep 9", 0, "", "", 3.0, timed_out=True)
    assert not late.ok and late.summary() == "`sleep 9`: timed out after 3.0s"
    assert api.Result("box", "true", 0, "", "", 0.0).summary() == "`true`: exit 0"


def test_a_steps_verdict_comes_from_what_it_returned() -> None:
    assert api.judge(None) == (True, "")
    assert api.judge(False) == (False, "")
    assert api.judge("3 trees removed") == (True, "3 trees removed")
    assert api.judge(api.Check(False, "no file")) == (False, "no file")
    assert api.judge(api.Result("b", "x", 1, "", "bad\n", 0.1)) == (False, "`x`: exit 1: bad")


def test_confirm_accepts_the_typed_host_name_and_journals_who_what_and_where(journal: Path) -> None:
    err = io.StringIO()
    c = api.confirm("remove trees/gh-*", ["box"], stdin=Terminal("box\n"), stderr=err)
    assert (c.hosts, c.word, c.how) == (("box",), "box", "typed")
    assert "Type 'box' to confirm" in err.getvalue()
    [e] = entries(journal)
    assert (e["kind"], e["outcome"], e["hosts"], e["action"], e["how"]) == (
        "confirm", "confirmed", ["box"], "remove trees/gh-*", "typed")
    assert e["user"]


def test_confirm_refuses_a_wrong_answer_and_no_terminal_unless_yes(journal: Path) -> None:
    with pytest.raises(api.NotConfirmed, match="typed 'yes', not 'a,b': nothing done"):
        api.confirm("drop", ["a", "b"], stdin=Terminal("yes\n"), stderr=io.StringIO())
    with pytest.raises(api.ConfirmationRequired) as info:
        api.confirm("drop", ["a"], stdin=io.StringIO("a\n"))
    assert info.value.exit_code == 2 and "--yes" in info.value.advice
    c = api.confirm("drop", ["a"], stdin=io.StringIO(""), yes=True)
    assert c.how == "--yes"
    c = api.confirm("reset", ["a"], word="RESET", stdin=Terminal("RESET\n"), stderr=io.StringIO())
    assert c.word == "RESET"
    assert [(e["outcome"], e["how"]) for e in entries(journal)] == [
        ("refused", "typed"), ("refused", "no terminal"), ("confirmed", "--yes"), ("confirmed", "typed")]
    assert entries(journal)[0]["typed"] == "yes"


def test_task_adds_host_json_and_yes_flags_after_the_users_own() -> None:
    @api.task(help={"keep": "how many to keep"})
    def prune(c: api.TaskContext, keep: int = 0) -> None:
        """Prune things."""

    helps = {a.name: a.help for a in prune.get_arguments()}
    assert set(helps) == {"keep", "host", "json", "yes"}
    assert helps["host"] == api.HOST_HELP and helps["keep"] == "how many to keep"
    assert prune.__doc__ == "Prune things."


def test_task_refuses_a_parameter_it_provides_itself() -> None:
    with pytest.raises(TypeError, match="parameter 'host' is given by api.task"):
        @api.task
        def bad(c: api.TaskContext, host: str = "") -> None:
            pass


def test_a_task_turns_ops_errors_into_their_exit_code_and_message(capsys: pytest.CaptureFixture[str]) -> None:
    from invoke import Exit

    @api.task
    def broken(c: api.TaskContext) -> None:
        raise api.ConfirmationRequired("needs a terminal", "pass --yes")

    with pytest.raises(Exit) as info:
        broken(Context())
    assert info.value.code == 2
    assert capsys.readouterr().err == "error: needs a terminal\n  -> pass --yes\n"

    @api.task
    def says_no(c: api.TaskContext) -> bool:
        return False

    with pytest.raises(Exit) as info:
        says_no(Context())
    assert info.value.code == 1


def test_every_public_name_has_a_docstring_and_type_hints() -> None:
    import inspect

    missing: list[str] = []
    checked: list[str] = []
    for name in api.__all__:
        obj = getattr(api, name)
        if isinstance(obj, str) or obj.__module__ not in ("ops.remote", "ops.steps", "ops.apitask"):
            continue  # a help text, or re-exported (Host, OpsError...): documented at home
        checked.append(name)
        if not inspect.getdoc(obj):
            missing.append(name)
        members = inspect.getmembers(obj) if inspect.isclass(obj) else []
        for mname, member in members:
            if mname.startswith("_"):
                continue
            fn = member.fget if isinstance(member, property) else member
            if inspect.isfunction(fn) and fn.__qualname__.startswith(obj.__name__ + "."):
                if not inspect.getdoc(fn):
                    missing.append(f"{name}.{mname}")
                hints = fn.__annotations__
                if "return" not in hints:
                    missing.append(f"{name}.{mname} (return type)")
        if inspect.isfunction(obj) and "return" not in obj.__annotations__:
            missing.append(f"{name} (return type)")
    assert missing == []
    assert {"Session", "Result", "TaskContext", "task", "confirm", "run_step", "on_hosts"} <= set(checked)


def test_user_code_needs_no_internal_name() -> None:
    """The examples and the README example use ops.api (and ops.tasks.ns to add their tasks) only."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    texts = [(repo / "examples" / "custom" / "tasks.py").read_text(),
             (repo / "README.md").read_text().split("## Your own steps", 1)[1].split("## ", 1)[0]]
    for text in texts:
        for internal in ('.call("exec"', "tasks._inventory", "errors_to_exit", "HostSession", "ops.session"):
            assert internal not in text
