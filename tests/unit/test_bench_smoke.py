"""The benchmark's pure parts (bench/stats.py, bench/run.py, bench/rig.py): statistics, formatting,
the A/B alternation order, the tables and the RESULTS.md splice. No timing is asserted here: the
benchmark itself is run by hand (python bench/run.py) and its output kept in bench/RESULTS.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import run, stats
from bench.rig import HostSpec, inventory_text


def test_median_and_spread_of_odd_and_even_samples():
    assert stats.median([3.0, 1.0, 2.0]) == 2.0
    assert stats.median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert stats.spread([0.3, 0.1, 0.2]) == (0.1, 0.3)
    with pytest.raises(ValueError):
        stats.median([])
    with pytest.raises(ValueError):
        stats.spread([])


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.00042, "0.4 ms"),
        (0.0042, "4.2 ms"),
        (0.042, "42 ms"),
        (0.4249, "425 ms"),
        (1.234, "1.23 s"),
        (12.5, "12.50 s"),
        (-0.0063, "-6.3 ms"),
    ],
)
def test_times_are_printed_in_the_unit_a_person_reads(seconds, text):
    assert stats.fmt_time(seconds) == text


def test_min_max_range_text():
    assert stats.fmt_range([0.5, 0.25, 1.5]) == "250 ms – 1.50 s"


def test_ratio_formatting_and_a_zero_baseline_is_refused():
    assert stats.fmt_ratio(1.3, 1.0) == "1.30x"
    assert stats.fmt_ratio(0.5, 1.0) == "0.50x"
    assert stats.fmt_ratio(14.2, 1.0) == "14x"
    with pytest.raises(ValueError):
        stats.ratio(1.0, 0.0)


def test_alternation_interleaves_the_commands_after_the_warm_up():
    assert stats.alternation(["A", "B"], runs=2, warmup=1) == [
        ("A", True),
        ("B", True),
        ("A", False),
        ("B", False),
        ("A", False),
        ("B", False),
    ]
    assert stats.alternation(["A", "B", "C"], runs=1, warmup=0) == [("A", False), ("B", False), ("C", False)]
    with pytest.raises(ValueError):
        stats.alternation(["A"], runs=0)


def test_per_unit_is_the_paired_difference_per_extra_unit():
    assert stats.per_unit([2.2, 2.4], [0.2, 0.4], 20) == pytest.approx([0.1, 0.1])
    with pytest.raises(ValueError):
        stats.per_unit([1.0], [1.0, 2.0], 20)


def _case() -> stats.CaseResult:
    return stats.CaseResult(
        "deploy",
        "t",
        rows=[
            stats.Row("floor", [1.0, 1.2, 0.9]),
            stats.Row("ops", [1.1, 1.3, 1.2], baseline="floor", note="n"),
        ],
        targets=[stats.Target("ops / floor <= 1.3", "1.10x", True), stats.Target("x", "pending", None)],
        notes=["a note"],
    )


def test_the_results_table_has_median_range_and_ratio_against_the_baseline():
    assert stats.results_table([_case()]).splitlines() == [
        "| case | what | n | median | min – max | vs baseline |",
        "|---|---|---:|---:|---:|---:|",
        "| deploy | floor | 3 | 1.00 s | 900 ms – 1.20 s | baseline |",
        "| deploy | ops (n) | 3 | 1.20 s | 1.10 s – 1.30 s | 1.20x |",
    ]


def test_a_skipped_case_says_why_and_targets_say_met_missed_or_pending():
    skipped = stats.CaseResult("fanout", "t", skipped="no sshd")
    assert stats.results_table([skipped]).splitlines()[-1] == "| fanout | skipped: no sshd | | | | |"
    case = _case()
    case.targets.append(stats.Target("y", "2x", False))
    assert stats.targets_table([case]).splitlines()[2:] == [
        "| deploy | ops / floor <= 1.3 | 1.10x | yes |",
        "| deploy | x | pending | pending |",
        "| deploy | y | 2x | **NO** |",
    ]
    assert stats.notes_text([case]) == "- deploy: a note"


def test_cases_are_chosen_by_name_or_comma_list_and_unknown_ones_refused():
    assert run.parse_cases(None) == list(run.CASES)
    assert run.parse_cases(["gate,phase", "startup"]) == ["gate", "phase", "startup"]
    with pytest.raises(SystemExit, match="unknown case nope"):
        run.parse_cases(["nope"])


def test_write_results_replaces_only_the_text_between_the_markers(tmp_path: Path):
    path = tmp_path / "RESULTS.md"
    path.write_text(f"# R\n\nanalysis above\n\n{run.BEGIN}\nold\n{run.END}\n\nanalysis below\n")
    run.write_results("new table", path)
    assert (
        path.read_text() == f"# R\n\nanalysis above\n\n{run.BEGIN}\nnew table\n{run.END}\n\nanalysis below\n"
    )


def test_the_bench_inventory_gives_each_host_its_own_checkout_state_and_port(tmp_path: Path):
    hosts = [
        HostSpec("a", "opstest-a", tmp_path / "a", tmp_path / "sa", ["s"], {"s": 1234}),
        HostSpec("b", "", tmp_path / "b", tmp_path / "sb", ["s"]),
    ]
    text = inventory_text(tmp_path / "ssh_config", hosts, '[services.s]\ncmd = "x"\n')
    assert text == (
        f'[ssh]\nconfig = "{tmp_path / "ssh_config"}"\n\n'
        f'[hosts.a]\nssh = "opstest-a"\npath = "{tmp_path / "a"}"\nstate_dir = "{tmp_path / "sa"}"\n'
        'connect_timeout = 5\nservices = ["s"]\noverrides.s.port = 1234\n\n'
        f'[hosts.b]\nlocal = true\npath = "{tmp_path / "b"}"\nstate_dir = "{tmp_path / "sb"}"\n'
        'connect_timeout = 5\nservices = ["s"]\n[services.s]\ncmd = "x"\n'
    )


def test_the_bench_inventory_is_one_ops_accepts(tmp_path: Path):
    from ops import inventory

    hosts = [
        HostSpec(f"h{i}", f"opstest-h{i}", tmp_path / f"c{i}", tmp_path / f"s{i}", ["tiny"]) for i in range(3)
    ]
    path = tmp_path / "hosts.toml"
    (tmp_path / "ssh_config").write_text("")  # [ssh] config must name an existing file
    path.write_text(inventory_text(tmp_path / "ssh_config", hosts, '[services.tiny]\ncmd = "sh tiny.sh"\n'))
    inv = inventory.load(path)
    assert sorted(inv.hosts) == ["h0", "h1", "h2"]
    assert inv.hosts["h1"].ssh == "opstest-h1" and [s.name for s in inv.hosts["h1"].services] == ["tiny"]
