"""The first run on a host: `inv start` before any deploy says there is no checkout yet and to run
`inv deploy` first (not "cannot read env_file .../checkout/..."), on the local host and over SSH;
with the checkout there, the same inventory starts."""

from __future__ import annotations

from tests.integration.rig import Rig, rig_fixture  # noqa: F401


def test_start_before_any_deploy_says_run_deploy_first(rig: Rig) -> None:
    missing = rig.root / "not-deployed-yet"
    services = rig.demo()
    services["demo_daemon"]["env_file"] = "secrets/demo.env"  # relative: inside the checkout
    rig.write(services, host_keys={"path": str(missing)})
    r = rig.inv_cmd("start")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"no checkout at {missing} on this host yet: run `inv deploy` first" in r.stdout
    assert "cannot read env_file" not in r.stdout
    assert not missing.exists()
    assert not rig.running()

    (rig.checkout / "secrets").mkdir()
    (rig.checkout / "secrets" / "demo.env").write_text(rig.env_file.read_text())
    rig.write(services)  # the healthy twin: the checkout is there
    try:
        r = rig.inv_cmd("start")
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        assert rig.inv_cmd("stop").returncode == 0
