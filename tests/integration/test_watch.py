"""verify.watch and verify.all's instance count against a real spawn loop (runbook 2): the
count of matching processes and MemAvailable sampled on the host, one agent call streaming a
sample per second; it fails on too many copies, a growing count, or memory below a floor."""

from __future__ import annotations

import time

from ops import verify
from tests.integration.rig import Rig, local_rig_fixture, rig_fixture, ssh_rig_fixture  # noqa: F401


def checks_of(report: verify.VerifyReport) -> dict[str, dict]:
    return {c["service"] or c["name"]: c for c in report.checks}


def test_watch_passes_on_the_demo_and_streams_one_sample_per_second(rig: Rig) -> None:
    rig.write(rig.verify_demo())
    with rig.session() as s:
        rig.start_ok(s)
        samples: list[dict] = []
        t = time.monotonic()
        report = verify.watch(s, seconds=2, on_event=lambda e: samples.append(e["sample"]))
        took = time.monotonic() - t
    assert report.ok, report.summary()
    assert 2 <= took < 4
    assert [round(x["t"]) for x in samples] == [0, 1, 2] and report.samples == samples
    assert [x["counts"] for x in samples] == [{"demo_daemon": 1, "demo_api": 1, "demo_worker": 1}] * 3
    assert all(x["mem_available"] > 0 for x in samples)
    c = checks_of(report)
    assert c["demo_worker"]["detail"] == "1 process(es) in 3 sample(s) (max_instances = 1)"
    assert c["memory"]["ok"] and "(no floor set)" in c["memory"]["detail"]


def test_inv_verify_watch_fails_on_a_spawn_loop_over_max_instances(rig: Rig) -> None:
    rig.write(rig.spawner(copies=4, every=0.2, max_instances=1))
    with rig.session() as s:
        rig.start_ok(s)
    t = time.monotonic()
    out = rig.inv_json("verify.watch", "--seconds", "3", code=1)
    assert time.monotonic() - t < 6
    host = out["hosts"][0]
    c = {x["service"] or x["name"]: x for x in host["checks"]}["loop_worker"]
    assert not c["ok"] and max(c["counts"]) > 1
    assert "more than max_instances = 1" in c["detail"]
    assert "processes match" in c["detail"] and "(watch stopped early" in c["detail"]
    assert [x["counts"]["loop_worker"] for x in host["samples"]] == c["counts"]
    # verify.all counts the instances once, and fails too
    out = rig.inv_json("verify.all", code=1)
    inst = [x for x in out["hosts"][0]["checks"] if x["name"] == "instances"][0]
    assert not inst["ok"] and "too many" in inst["detail"]


def test_watch_fails_when_the_count_keeps_growing(local_rig: Rig) -> None:
    rig = local_rig
    rig.write(rig.spawner(copies=20, every=0.25, max_instances=None))
    with rig.session() as s:
        rig.start_ok(s)
        report = verify.watch(s, seconds=4)
    c = checks_of(report)["loop_worker"]
    assert not c["ok"], c
    assert "the count keeps growing" in c["detail"]
    a, b, d = c["counts"][-3:]
    assert a < b < d
    assert len(report.samples) == 3  # stopped as soon as three samples grew


def test_watch_fails_when_available_memory_is_below_the_floor(local_rig: Rig) -> None:
    rig = local_rig
    floor = {"min_mem_available_mb": 10_000_000}  # 10 TB: no machine has it free
    rig.write(rig.verify_demo(), host_keys=floor)
    with rig.session() as s:
        rig.start_ok(s, "demo_worker")
        report = verify.watch(s, seconds=3)
    c = checks_of(report)["memory"]
    assert not c["ok"] and "below the floor of 10000000 MB" in c["detail"]
    assert len(report.samples) == 1
    plain = rig.inv_cmd("verify.watch", "--seconds", "1", "--min-mem-mb", "1")
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "MemAvailable" in plain.stdout and "(floor 1 MB)" in plain.stdout
