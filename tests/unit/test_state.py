"""State files on the host: atomic JSON per service, corrupt files reported then replaced."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ops.agent.state import StateStore, expand, write_json_atomic


def test_save_and_load_round_trip_with_an_update_time(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path))

    store.save("svc", {"name": "svc", "pid": 42})

    data = store.load("svc")
    assert data["pid"] == 42 and data["updated_at"] > 0
    assert store.service_path("svc") == str(tmp_path / "services" / "svc.json")


def test_write_is_atomic_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "d" / "x.json"

    write_json_atomic(str(path), {"a": 1})
    write_json_atomic(str(path), {"a": 2})

    assert json.loads(path.read_text()) == {"a": 2}
    assert os.listdir(path.parent) == ["x.json"]


def test_missing_state_is_none_and_corrupt_state_says_so(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path))
    assert store.load("svc") is None

    Path(store.service_path("svc")).parent.mkdir(parents=True)
    Path(store.service_path("svc")).write_text("{not json")

    assert store.load("svc") == {"corrupt": True}


def test_mark_updates_fields_and_replaces_a_corrupt_file(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path))
    store.save("svc", {"name": "svc", "pid": 42, "stopped": False})

    store.mark("svc", stopped=True)
    assert store.load("svc")["pid"] == 42 and store.load("svc")["stopped"] is True

    Path(store.service_path("svc")).write_text("{truncated")
    store.mark("svc", stopped=True)
    data = store.load("svc")
    assert "corrupt" not in data
    assert data["name"] == "svc" and data["stopped"] is True


def test_expand_takes_relative_paths_under_the_base(tmp_path: Path) -> None:
    assert expand("logs/x.log", str(tmp_path)) == str(tmp_path / "logs" / "x.log")
    assert expand("/abs/../abs/x") == "/abs/x"
    assert expand("~/x") == os.path.expanduser("~/x")
