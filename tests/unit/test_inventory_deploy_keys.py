"""hosts.toml keys for deploys: `build` (hosts and services), `layout`, `shared`, `keep`. Bad
values are refused naming the file, the table and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops import inventory
from ops.errors import InventoryError

BASE = ('[hosts.a]\nlocal = true\npath = "/srv/app"\nservices = ["s"]\n{host}\n'
        '[services.s]\ncmd = "sleep 1"\n{svc}\n')


def load(tmp_path: Path, host: str = "", svc: str = "") -> inventory.Inventory:
    p = tmp_path / "hosts.toml"
    p.write_text(BASE.format(host=host, svc=svc))
    return inventory.load(p)


def test_build_steps_run_host_first_then_services_with_defaults_and_substitution(tmp_path):
    h = load(tmp_path, host='build = ["make -C ${path}", { cmd = "x", timeout = 5, name = "X" }]',
             svc='build = ["pip install -r req.txt"]').hosts["a"]
    steps = h.build_steps()
    assert [(b.name, b.cmd, b.timeout, b.service) for b in steps] == [
        ("make -C /srv/app", "make -C /srv/app", 600.0, None),
        ("X", "x", 5.0, None),
        ("s: pip install -r req.txt", "pip install -r req.txt", 600.0, "s"),
    ]


@pytest.mark.parametrize("host, where, words", [
    ('build = [{ cmd = "x", timout = 5 }]', "[hosts.a.build[0]]", "did you mean 'timeout'"),
    ('build = [{ timeout = 5 }]', "[hosts.a.build[0]]", "missing or empty key 'cmd'"),
    ('build = [{ cmd = "x", timeout = 0 }]', "[hosts.a.build[0]]", "positive number"),
    ('build = "make"', "[hosts.a]", "a list of commands"),
    ('layout = "blue-green"', "[hosts.a]", 'must be "in-place" or "releases"'),
    ('shared = ["data"]', "[hosts.a]", 'need layout = "releases"'),
    ('layout = "releases"\nshared = ["../etc"]', "[hosts.a]", "without '..'"),
    ('layout = "releases"\nkeep = 0', "[hosts.a]", "1 or more"),
])
def test_bad_deploy_keys_are_refused_naming_table_and_key(tmp_path, host, where, words):
    with pytest.raises(InventoryError) as info:
        load(tmp_path, host=host)
    assert info.value.exit_code == 2
    assert where in info.value.message and words in info.value.message


def test_the_releases_layout_runs_services_in_current(tmp_path):
    h = load(tmp_path, host='layout = "releases"\nshared = [".venv", "data"]\nkeep = 3').hosts["a"]
    assert h.releases and h.root == "/srv/app" and h.path == "/srv/app/current"
    assert h.service("s").cwd == "/srv/app/current"
    assert h.shared == (".venv", "data") and h.keep == 3
    plain = load(tmp_path).hosts["a"]
    assert not plain.releases and plain.path == plain.root == "/srv/app"
