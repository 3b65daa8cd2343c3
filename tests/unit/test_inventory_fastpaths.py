"""[ssh] persist and [ssh] transport: parsed, defaulted, and bad values refused naming the key."""

from __future__ import annotations

import pytest

from ops import inventory
from ops.errors import InventoryError

HOST = '[hosts.box]\nssh = "box"\npath = "/srv/app"\nservices = ["s"]\n[services.s]\ncmd = "sleep 1"\n'


def test_persist_and_transport_default_to_off_and_paramiko():
    inv = inventory.parse(inventory.tomllib.loads(HOST), "hosts.toml")
    assert inv.persist == 0 and inv.transport == "paramiko"


def test_persist_and_transport_are_read():
    inv = inventory.parse(inventory.tomllib.loads('[ssh]\npersist = 60\ntransport = "openssh"\n' + HOST),
                          "hosts.toml")
    assert inv.persist == 60.0 and inv.transport == "openssh"


@pytest.mark.parametrize(("text", "message"), [
    ("persist = -1", "hosts.toml: [ssh] key 'persist' must be 0 (off) or a number of seconds, got -1"),
    ('persist = "60"', "hosts.toml: [ssh] key 'persist'"),
    ('transport = "telnet"', "hosts.toml: [ssh] key 'transport' must be one of 'paramiko', 'openssh', "
                             "got 'telnet'"),
])
def test_bad_values_are_refused_naming_the_file_table_and_key(text, message):
    with pytest.raises(InventoryError) as info:
        inventory.parse(inventory.tomllib.loads(f"[ssh]\n{text}\n" + HOST), "hosts.toml")
    assert str(info.value).startswith(message)
    assert info.value.exit_code == 2
