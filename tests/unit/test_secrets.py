"""Secrets are read on the host from files and redacted from anything sent back."""

from __future__ import annotations

from pathlib import Path

from ops.agent.secrets import Secrets, parse_env_file


def test_parse_env_file_reads_key_values_quotes_exports_and_skips_junk() -> None:
    text = "\n".join(
        [
            "# a comment",
            "",
            "PLAIN=value-1",
            "export EXPORTED=value-2",
            'DOUBLE="quoted value"',
            "SINGLE='single'",
            "  SPACED = padded  ",
            "EMPTY=",
            "no equals sign",
            "1BAD=starts with a digit",
            "BAD-KEY=dash",
            "URL=http://x/?a=b",
        ]
    )

    assert parse_env_file(text) == {
        "PLAIN": "value-1",
        "EXPORTED": "value-2",
        "DOUBLE": "quoted value",
        "SINGLE": "single",
        "SPACED": "padded",
        "EMPTY": "",
        "URL": "http://x/?a=b",
    }


def test_env_file_values_are_remembered_and_redacted(tmp_path: Path) -> None:
    env = tmp_path / "svc.env"
    env.write_text("TOKEN=tok-123456\nSHORT=ab\n")
    secrets = Secrets()

    values, err = secrets.env_file(str(env))

    assert err is None and values == {"TOKEN": "tok-123456", "SHORT": "ab"}
    assert secrets.redact("using tok-123456 now") == "using *** now"
    assert secrets.redact("ab stays: too short to be a secret") == "ab stays: too short to be a secret"


def test_env_file_that_cannot_be_read_is_an_error_naming_it(tmp_path: Path) -> None:
    values, err = Secrets(str(tmp_path)).env_file("missing.env")

    assert values == {}
    assert err == f"cannot read env_file {tmp_path / 'missing.env'}: No such file or directory"


def test_relative_secret_paths_are_taken_under_the_checkout(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "token").write_text("  tok-abcdef \n")

    assert Secrets(str(tmp_path)).read_file("secrets/token") == "tok-abcdef"
    assert Secrets(str(tmp_path)).read_file("secrets/nope") is None


def test_redact_replaces_the_longest_value_first() -> None:
    secrets = Secrets()
    secrets.values.update({"abcd", "abcdefgh"})

    assert secrets.redact("x abcdefgh y abcd") == "x *** y ***"
    assert secrets.redact(None) is None


def test_redact_obj_redacts_every_string_in_a_result() -> None:
    secrets = Secrets()
    secrets.values.add("tok-123456")
    result = {
        "detail": "log line matched: tok-123456",
        "gates": [{"name": "log", "ok": True, "detail": "tok-123456!"}],
        "log_tail": ["a", "b tok-123456"],
        "pid": 42,
        "tok-123456": None,
    }

    assert secrets.redact_obj(result) == {
        "detail": "log line matched: ***",
        "gates": [{"name": "log", "ok": True, "detail": "***!"}],
        "log_tail": ["a", "b ***"],
        "pid": 42,
        "***": None,
    }


def test_load_spec_remembers_env_file_and_header_file_values(tmp_path: Path) -> None:
    (tmp_path / "svc.env").write_text("DEMO_TOKEN=tok-from-env\n")
    (tmp_path / "header.token").write_text("tok-from-header\n")
    spec = {
        "env_file": "svc.env",
        "health": {"url": "http://x/", "header_files": {"X-Token": "header.token"}},
    }

    secrets = Secrets(str(tmp_path)).load_spec(spec)

    assert secrets.redact("tok-from-env tok-from-header") == "*** ***"
    # unreadable files are not an error here: the step that needs them reports it
    assert Secrets(str(tmp_path)).load_spec({"env_file": "gone.env", "health": None}).values == set()
