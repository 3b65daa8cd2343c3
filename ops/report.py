"""The only module that renders. Rich tables on a terminal, plain lines when piped, JSON on demand.

rich is imported lazily, only when a terminal is rendered, so piping and `--json` stay light.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from ops.errors import OpsError

STATE_STYLE = {
    "running": "green",
    "stopped": "dim",
    "dead": "red",
    "unknown": "yellow",
    "unreachable": "red",
    "started": "green",
    "already-running": "green",
    "supervised": "green",
    "not-running": "dim",
    "failed": "bold red",
    "skipped": "yellow",
    "ok": "green",
}


def choose_format(as_json: bool = False, stream: TextIO | None = None) -> str:
    if as_json:
        return "json"
    stream = stream or sys.stdout
    return "rich" if stream.isatty() else "plain"


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


class Reporter:
    def __init__(self, fmt: str = "plain", out: TextIO | None = None, err: TextIO | None = None):
        self.fmt = fmt
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self._console = None

    # --- primitives ----------------------------------------------------------------------

    @property
    def console(self):
        if self._console is None:
            from rich.console import Console

            self._console = Console(file=self.out, highlight=False)
        return self._console

    def _table(
        self,
        title: str | None,
        columns: Sequence[str],
        rows: list[list[str]],
        styles: list[str | None] | None = None,
    ) -> None:
        if self.fmt == "rich":
            from rich.markup import escape
            from rich.table import Table

            # cells quote commands, log lines, regexes ("[gates: log]", "[p]hone"): never markup
            t = Table(title=escape(title) if title else None, title_justify="left", show_lines=False)
            for c in columns:
                t.add_column(c, overflow="fold")
            for i, r in enumerate(rows):
                t.add_row(*(escape(v) for v in r), style=(styles[i] if styles else None))
            self.console.print(t)
            return
        if title:
            print(title, file=self.out)
        widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
        widths[-1] = 0  # the last column is free-form
        print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip(), file=self.out)
        for r in rows:
            print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip(), file=self.out)

    def line(self, text: str, style: str | None = None) -> None:
        if self.fmt == "rich":
            self.console.print(text, style=style, markup=False)
        elif self.fmt == "plain":
            print(text, file=self.out, flush=True)

    def json(self, data: Any) -> None:
        print(json.dumps(data, indent=2, sort_keys=True, default=str), file=self.out)

    def error(self, exc: OpsError) -> None:
        print(f"error: {exc.render()}", file=self.err)

    def advice(self, outcomes) -> None:
        """What to do about each host's error (its OpsError's advice), under a table."""
        for o in outcomes:
            if o.error is not None and o.error.advice:
                self.line(f"{o.host}: -> {o.error.advice}")

    # --- inventory -----------------------------------------------------------------------

    def hosts(self, inv) -> None:
        if self.fmt == "json":
            self.json(
                {
                    "inventory": inv.path,
                    "hosts": [
                        {
                            "name": h.name,
                            "transport": "local" if h.local else "ssh",
                            "ssh": h.ssh,
                            "path": h.path,
                            "source": h.source,
                            "state_dir": h.state_dir,
                            "services": [s.to_agent() for s in h.services],
                        }
                        for h in inv.hosts.values()
                    ],
                    "groups": {k: list(v) for k, v in inv.groups.items()},
                }
            )
            return
        rows = []
        for h in inv.hosts.values():
            for i, s in enumerate(h.services or [None]):
                first = i == 0
                if s is None:
                    rows.append([h.name, "local" if h.local else h.ssh or "", h.path, "-", "", ""])
                    continue
                role = f"child of {s.supervised_by}" if s.supervised_by else (s.cmd or "")
                gates = [
                    g
                    for g, on in (("log", s.ready.log), ("port", s.ready.port), ("health", s.ready.health))
                    if on
                ]
                rows.append(
                    [
                        h.name if first else "",
                        ("local" if h.local else h.ssh or "") if first else "",
                        h.path if first else "",
                        s.name,
                        str(s.port or "-"),
                        f"{role}  [gates: {', '.join(gates) or 'none'}]",
                    ]
                )
        self._table(
            f"{inv.path}: {len(inv.hosts)} host(s), valid",
            ["host", "via", "path", "service", "port", "what"],
            rows,
        )
        for g, members in inv.groups.items():
            self.line(f"group {g}: {', '.join(members)}")

    # --- status --------------------------------------------------------------------------

    def status(self, outcomes) -> None:
        if self.fmt == "json":
            self.json(
                {
                    "hosts": [
                        {
                            "host": o.host,
                            "reachable": o.ok,
                            "error": o.error.message if o.error else None,
                            "services": o.value or [],
                        }
                        for o in outcomes
                    ]
                }
            )
            return
        rows, styles = [], []
        for o in outcomes:
            if not o.ok:
                rows.append([o.host, "-", "unreachable", "-", "-", "-", "-", o.error.message])
                styles.append("red")
                continue
            for s in o.value:
                port = "-"
                if s["port"]:
                    holders = s["port_holders"]
                    if s["port_ok"]:
                        port = f"{s['port']} (own)"
                    elif holders:
                        port = f"{s['port']} (held by pid {holders[0]['pid']}!)"
                    else:
                        port = f"{s['port']} (free)"
                h = s.get("health")
                health = "-" if h is None else ("ok" if h["ok"] else "FAIL")
                detail = s.get("detail") or ""
                if h is not None and not h["ok"]:
                    detail = (detail + "; " if detail else "") + h["detail"]
                elif s.get("supervised_by"):
                    detail = detail or f"child of {s['supervised_by']}"
                rows.append(
                    [
                        o.host,
                        s["name"],
                        s["state"],
                        str(s["pid"] or "-"),
                        _uptime(s["uptime"]),
                        port,
                        health,
                        detail,
                    ]
                )
                styles.append(STATE_STYLE.get(s["state"]))
        self._table(
            None,
            ["host", "service", "state", "pid", "uptime", "port", "health", "detail"],
            rows,
            styles if self.fmt == "rich" else None,
        )
        self.advice(outcomes)

    # --- phases (start / stop / restart) --------------------------------------------------

    def service_event(self, host: str, result: dict[str, Any], phase: str) -> None:
        """Live progress: one line as each service finishes (not for JSON)."""
        if self.fmt == "json":
            return
        outcome = result["outcome"]
        pid = f" pid {result['pid']}" if result.get("pid") else ""
        took = f" in {result['elapsed']:.2f}s" if result.get("elapsed") is not None else ""
        self.line(
            f"{host}: {phase} {result['name']}: {outcome}{pid}{took} - {result.get('detail', '')}",
            STATE_STYLE.get(outcome),
        )

    def phase(self, phase: str, outcomes) -> None:
        if self.fmt == "json":
            self.json(
                {
                    "phase": phase,
                    "ok": all(o.ok and o.value.ok for o in outcomes),
                    "hosts": [
                        {
                            "host": o.host,
                            "ok": bool(o.ok and o.value.ok),
                            "error": o.error.message if o.error else None,
                            "services": o.value.services if o.ok else [],
                        }
                        for o in outcomes
                    ],
                }
            )
            return
        rows, styles = [], []
        for o in outcomes:
            if not o.ok:
                rows.append([o.host, "-", "unreachable", "-", o.error.message])
                styles.append("red")
                continue
            for r in o.value.services:
                gates = ", ".join(
                    f"{g['name']} {'ok' if g['ok'] else 'FAILED'}"
                    + (f" @{g['elapsed']:.2f}s" if g.get("elapsed") is not None else "")
                    for g in r.get("gates") or []
                )
                detail = r.get("detail", "") + (f" [{gates}]" if gates else "")
                rows.append([o.host, r["name"], r["outcome"], str(r.get("pid") or "-"), detail])
                styles.append(STATE_STYLE.get(r["outcome"]))
        self._table(
            None,
            ["host", "service", "outcome", "pid", "detail"],
            rows,
            styles if self.fmt == "rich" else None,
        )
        self.advice(outcomes)
        for o in outcomes:
            if not o.ok:
                continue
            for r in o.value.services:
                if r["outcome"] == "failed" and r.get("log_tail") is not None:
                    code = r.get("exit_code")
                    self.line(
                        f"{o.host}: {r['name']} failed at gate '{r.get('failed_gate')}'"
                        + (f", exit code {code}" if code is not None else "")
                        + f"; last {len(r['log_tail'])} log lines:",
                        "bold red",
                    )
                    for ln in r["log_tail"]:
                        self.line(f"  | {ln}")
                    for child, lines in (r.get("child_log_tails") or {}).items():
                        self.line(f"{o.host}: last {len(lines)} lines of {child}'s log:", "bold red")
                        for ln in lines:
                            self.line(f"  | {ln}")

    # --- logs ----------------------------------------------------------------------------

    def log_lines(self, host: str, service: str, data: dict[str, Any]) -> None:
        if self.fmt == "json":
            self.json({"host": host, "service": service, **data})
            return
        if not data["exists"]:
            self.line(f"{host}: {service}: no log at {data['path']}")
            return
        for ln in data["lines"]:
            print(ln, file=self.out)

    def follow_line(self, text: str) -> None:
        if self.fmt == "json":
            print(json.dumps({"line": text}), file=self.out, flush=True)
        else:
            print(text, file=self.out, flush=True)


# --- deploy ------------------------------------------------------------------------------------

DEPLOY_STYLE = {"ok": "green", "planned": "cyan", "failed": "bold red", "rolled-back": "yellow",
                "rollback-failed": "bold red", "locked": "yellow", "unreachable": "red",
                "skipped": "dim"}


def _short(commit: str | None) -> str:
    return commit[:10] if commit else "-"


def deploy_step(rep: Reporter, host: str, step) -> None:
    """Live progress: one line per finished step, with its timing."""
    if rep.fmt == "json":
        return
    mark = "ok" if step.ok else "FAILED"
    rep.line(f"{host}: {step.name} {mark} ({step.duration:.2f}s) {step.detail}",
             None if step.ok else "bold red")


def deploy_summary(rep: Reporter, results) -> None:
    if rep.fmt == "json":
        rep.json({"ok": all(r.ok for r in results), "hosts": [
            {**r.journal_entry(""), "plan": r.plan} for r in results]})
        return
    if any(r.plan for r in results):
        for r in results:
            if r.plan:
                deploy_plan(rep, r.plan)
    rows = [[r.host, r.outcome, f"{_short(r.from_commit)} -> {_short(r.to_commit)}",
             f"{r.duration:.2f}s", r.error or ""] for r in results]
    rep._table("deploy summary", ["host", "outcome", "commits", "time", "detail"], rows,
               [DEPLOY_STYLE.get(r.outcome) for r in results] if rep.fmt == "rich" else None)
    for r in results:
        if r.advice:
            rep.line(f"{r.host}: -> {r.advice}")


def deploy_plan(rep: Reporter, plan: dict) -> None:
    rep.line(f"plan for {plan['host']} ({plan['source']} into {plan['checkout']}):", "bold")
    rep.line(f"  commits: {_short(plan['from'])} -> {_short(plan['to'])}"
             + (f"  {plan['subject']}" if plan.get("subject") else ""))
    if plan["checkout_dirty"]:
        rep.line(f"  WARNING: the host's checkout has local changes: {', '.join(plan['checkout_dirty'])}")
    if plan["lock"]:
        rep.line(f"  WARNING: a deploy lock is held: {plan['lock']}")
    rep.line("  1. take the deploy lock")
    rep.line("  2. deliver the commit, purge __pycache__ and *.pyc")
    rep.line(f"  3. stop (in order): {', '.join(plan['stop']) or '-'}")
    for s in plan["would_signal"]:
        rep.line(f"       would signal {s['service']} pid {s['pid']}: {s['signal']}")
    gates = "; ".join(f"{k} [{', '.join(v) or 'no gates'}]" for k, v in plan["gates"].items())
    rep.line(f"  4. start (in order): {gates or '-'}")
    rep.line("  5. verify; on failure roll back to the previous commit")
    running = ", ".join(f"{k}={v['state']}" + (f"({v['pid']})" if v["pid"] else "")
                        for k, v in plan["running"].items())
    rep.line(f"  now: {running or 'nothing declared'}")


def journal(rep: Reporter, host: str, entries: list[dict]) -> None:
    if rep.fmt == "json":
        rep.json({"host": host, "entries": entries})
        return
    rows = []
    for e in entries:
        failed = next((s for s in e.get("steps", []) if not s["ok"]), None)
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.get("started_at", 0)))
        rows.append([e.get("run_id", "?"), when, e.get("user", "?"), e.get("outcome", "?"),
                     f"{_short(e.get('from'))} -> {_short(e.get('to'))}", f"{e.get('duration', 0):.1f}s",
                     f"{failed['name']}: {failed['detail']}" if failed else ""])
    rep._table(f"deploy journal of {host}", ["run", "when", "user", "outcome", "commits", "time",
                                              "failed step"], rows)


# --- preflight ---------------------------------------------------------------------------------
# Rendering of ops.preflight's PreflightReport: a table (rich/plain), JSON, and the markdown
# "Verification" section for a PR body (deterministic: no timings, no pids).

PREFLIGHT_STYLE = {"pass": "green", "fail": "bold red", "skip": "yellow"}


def preflight_progress(rep: Reporter, result) -> None:
    """Live progress on a terminal (stderr, so stdout stays the table / JSON / markdown)."""
    if rep.fmt == "json" or not rep.err.isatty():
        return
    print(f"preflight: {result.name}: {result.status} ({result.duration:.1f}s)", file=rep.err, flush=True)


def preflight_starting(rep: Reporter, spec) -> None:
    """On a terminal, say when a slow check (a remote test run) starts."""
    if rep.fmt == "json" or spec.kind != "tests" or not rep.err.isatty():
        return
    print(f"preflight: {spec.name}: running (up to {spec.test.timeout:g}s) ...", file=rep.err, flush=True)


def preflight_plan(rep: Reporter, plan: list[tuple]) -> None:
    """--dry-run: the checks that would run, in order, and what each verifies. plan: (spec, what)."""
    if rep.fmt == "json":
        rep.json({"plan": [{"name": c.name, "kind": c.kind, "host": c.host, "what": what}
                           for c, what in plan]})
        return
    rows = [[str(i), c.name, what] for i, (c, what) in enumerate(plan, 1)]
    rep._table("pre-flight plan (nothing run)", ["#", "check", "verifies"], rows)


def _preflight_summary(report) -> str:
    n = len(report.checks)
    if report.ok:
        return f"All {n} pre-flight checks passed."
    failed = report.failures
    skipped = sum(c.status == "skip" for c in report.checks)
    first = failed[0] if failed else next(c for c in report.checks if c.status != "pass")
    return (
        f"Pre-flight FAILED: {len(failed)} of {n} checks failed"
        + (f", {skipped} not run" if skipped else "")
        + f". First failure: {first.name}: {first.detail}"
    )


def preflight(rep: Reporter, report) -> None:
    """The checks as a table (status, timing, detail), a failed run's output, then one summary line."""
    if rep.fmt == "json":
        rep.json(report.to_json())
        return
    rows = [[c.name, c.status.upper() if c.status == "fail" else c.status, f"{c.duration:.2f}s", c.detail]
            for c in report.checks]
    styles = [PREFLIGHT_STYLE.get(c.status) for c in report.checks]
    rep._table(f"pre-flight of {report.repo} over {report.base}", ["check", "status", "time", "detail"],
               rows, styles if rep.fmt == "rich" else None)
    for c in report.checks:
        if c.status == "fail" and c.facts.get("advice"):
            rep.line(f"{c.name}: -> {c.facts['advice']}")
        if c.status == "fail" and c.output:
            kept = f" (a longer tail is kept on {c.host}: {c.facts['saved']})" if c.facts.get("saved") else ""
            rep.line(f"{c.name}: last {len(c.output)} lines of output{kept}:", "bold red")
            for ln in c.output:
                rep.line(f"  | {ln}")
    rep.line(_preflight_summary(report), "green" if report.ok else "bold red")


def _code(text: str) -> str:
    """A markdown code span that survives backticks inside the text."""
    text = text.replace("\n", " ")
    fence = "`"
    while fence in text:
        fence += "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _verdict(c, passed_text: str) -> str:
    if c.status == "pass":
        return passed_text
    if c.status == "skip":
        # one word whether it was never started or ran alongside a failure on another host (timing
        # decides which): the section stays deterministic, and a skipped check is never a pass
        return "skipped"
    return f"**FAILED**: {c.detail}"


def _fetch_line(c, base: str) -> str | None:
    f = c.facts
    if c.status == "pass" and not f.get("remote"):
        return None  # a local base: nothing to say
    if c.status == "pass" and f.get("fetched"):
        return f"- Base {_code(base)} fetched from {_code(f['remote'])} before the checks"
    if c.status == "pass":
        return f"- Base {_code(base)} not fetched (--no-fetch): compared with the local ref"
    return f"- Fetch of {_code(base)}: {_verdict(c, '')}"


def preflight_markdown_text(report) -> str:
    """The "## Verification" section for a PR body: commits, diff stat, tests, health, verdict.

    Deterministic (no timings, pids or ages) and never green from a red run: a red run says so in
    its first line as well as its last, and every failed or skipped check says so in its line."""
    out = ["## Verification", ""]
    if not report.ok:
        out += [f"**{_preflight_summary(report).split('. First failure')[0]}: not ready for review.**", ""]
    for c in report.by_kind("git.fetch"):
        line = _fetch_line(c, report.base)
        if line:
            out.append(line)
    base = report.by_kind("git.base")
    if base:
        b = base[0]
        f = b.facts
        if b.status == "pass":
            where = f"Branch {_code(f['branch'])}" if f.get("branch") else "Detached HEAD"
            ahead, behind = f["ahead"], f["behind"]
            out.append(
                f"- {where} at {_code(f['head'][:7])}: {ahead} {'commit' if ahead == 1 else 'commits'} "
                f"ahead of {_code(report.base)}, {behind} behind (merge base {_code(f['merge_base'][:7])})"
            )
        else:
            out.append(f"- Base {_code(report.base)}: {_verdict(b, '')}")
    for c in report.by_kind("git.commits"):
        commits = c.facts.get("commits", [])
        head = f"- Commits ({len(commits)})" if c.status != "skip" else "- Commits"
        out.append(head + (":" if c.status == "pass" else f": {_verdict(c, '')}"))
        out.extend(f"  - {_code(x['id'])} {x['subject']}" for x in commits)
    for c in report.by_kind("git.diff"):
        stat = c.facts
        text = (
            f"{stat['files']} {'file' if stat['files'] == 1 else 'files'} changed, "
            f"{stat['insertions']} insertion{'' if stat['insertions'] == 1 else 's'}(+), "
            f"{stat['deletions']} deletion{'' if stat['deletions'] == 1 else 's'}(-)"
            if "files" in stat
            else ""
        )
        out.append(f"- Diff stat vs the merge base: {_verdict(c, text)}")
    for c in report.by_kind("git.files"):
        n = len(c.facts.get("files", []))
        globs = ", ".join(_code(g) for g in c.facts.get("expect_files", []))
        out.append(f"- Paths touched ({n}): {_verdict(c, f'all within {globs}, each at least once')}")
    for c in report.by_kind("git.clean"):
        out.append(f"- Working tree: {_verdict(c, 'clean')}")
    heads = report.by_kind("head")
    if heads:
        out.append("- Checkouts on the hosts:")
        for c in heads:
            at = _code(c.facts["remote_head"][:7]) if c.facts.get("remote_head") else "?"
            out.append(f"  - {c.host}: {_verdict(c, f'at {at}, the branch HEAD, clean tree')}")
    tests = report.by_kind("tests")
    if tests:
        out.append("- Tests:")
        for c in tests:
            f = c.facts
            cmd = f.get("cmd") or c.name.split(": test ", 1)[-1]
            where = f" (in {_code(f['cwd'])})" if f.get("cwd") not in (None, "", ".") else ""
            out.append(f"  - {c.host}: {_code(cmd)}{where} — {_verdict(c, str(f.get('result', 'passed')))}")
    health = report.by_kind("health")
    if health:
        out.append("- Health:")
        for c in health:
            f = c.facts
            svc = f.get("service") or c.name.split(": health ", 1)[-1]
            line = f.get("last_line")
            last = f"; last log line: {_code(line[:200])}" if line else ""
            passed = f"{f.get('result', 'healthy')}{last}"
            out.append(f"  - {c.host}: {svc} — {_verdict(c, passed)}")
    out += ["", f"**{_preflight_summary(report)}**" if not report.ok else _preflight_summary(report)]
    return "\n".join(out) + "\n"


def preflight_markdown(rep: Reporter, report) -> None:
    rep.out.write(preflight_markdown_text(report))
    rep.out.flush()


# --- pr ----------------------------------------------------------------------------------------


def pr_summary_text(commits) -> str:
    """The body's Summary: the commits ahead of the base, oldest first."""
    lines = ["## Summary", ""]
    lines += [f"- {c['subject']} (`{c['id']}`)" for c in commits] or ["- (no commits ahead of the base)"]
    return "\n".join(lines) + "\n"


def _rollback_line(f) -> str:
    host, head = f["host"], f["head"][:7]
    at = f"`{f['checkout'][:7]}`" if f.get("checkout") else "?"
    if f["state"] == "error":
        return f"- {host}: its deploy history could not be read ({f['error']}); check it with " \
               f"`inv journal --host {host}`"
    if f["state"] == "none":
        return (f"- {host}: no deploy is recorded there (its checkout is at {at}, not put there by "
                "`inv deploy`): `inv rollback` has nothing to go back to")
    if f["state"] == "other":
        return (f"- {host}: the last deploy recorded there is `{f['current'][:7]}`, not this branch "
                f"(`{head}`; the checkout is at {at}): `inv rollback` would not undo this branch there")
    if f["state"] == "first":
        return (f"- {host}: runs this branch (`{head}`); no earlier deploy is recorded there, so "
                "`inv rollback` has nothing to go back to")
    prev = f["previous"][:7]
    return (f"- {host}: runs this branch (`{head}`), deployed over `{prev}`. "
            f"To go back to `{prev}`: `{f['command']}`")


def pr_rollback_text(facts) -> str:
    """The body's Rollback: per host, the commit deployed before and the exact `inv rollback`."""
    lines = [_rollback_line(f) for f in facts]
    body = lines or ["- No host runs remote checks in this pre-flight: nothing deployed to roll back."]
    return "\n".join(["## Rollback", "", *body]) + "\n"


def pr_body_text(template: str | None, values: dict[str, str]) -> str:
    """The default body (Summary, Verification, Rollback), or the (checked) template filled."""
    from ops.pr import PLACEHOLDER

    if template is None:
        return "\n".join(values[k].rstrip("\n") + "\n" for k in ("summary", "verification", "rollback"))
    body = PLACEHOLDER.sub(lambda m: values[m.group(1)].rstrip("\n"), template)
    return body if body.endswith("\n") else body + "\n"


def pr(rep: Reporter, outcome) -> None:
    """`inv pr`: the pre-flight table, then the PR's URL (alone on the last line) or why it was not
    opened and where its body is to paste."""
    if rep.fmt == "json":
        rep.json(outcome.to_json())
        return
    preflight(rep, outcome.report)
    if outcome.opened:
        rep.line("pull request opened" + (" (draft)" if "--draft" in outcome.argv else "") + ":", "green")
        rep.line(outcome.url or "")
        return
    rep.line(f"no pull request opened: {outcome.problem}", "bold red")
    if outcome.advice:
        rep.line(f"-> {outcome.advice}")


def pr_plan(rep: Reporter, plan: list[tuple], argv: list[str]) -> None:
    """`inv pr --dry-run`: the pre-flight plan, then the gh command that would follow a green run."""
    import shlex

    if rep.fmt == "json":
        checks = [{"name": c.name, "kind": c.kind, "host": c.host, "what": what} for c, what in plan]
        rep.json({"plan": checks, "then": argv})
        return
    preflight_plan(rep, plan)
    rep.line("then, only if every check passed: " + shlex.join(argv))


# --- verify ------------------------------------------------------------------------------------


def _verify_time(c: dict[str, Any]) -> str:
    if c.get("ms") is not None:
        return f"{c['ms']:.1f}ms"
    if c.get("restart_time") is not None:
        return f"{c['restart_time']:.2f}s"
    return f"{c['elapsed']:.2f}s" if c.get("elapsed") is not None else "-"


def _mb(value: int | None) -> str:
    return "-" if value is None else f"{value // (1024 * 1024)} MB"


class VerifyProgress:
    """Live progress of a verify phase: a line per finished check or restart step, and the
    verify.watch samples as they arrive (a live table on a terminal, a line each when piped).
    Events come from one thread per host, hence the lock."""

    def __init__(self, rep: Reporter, checks: bool = False) -> None:
        import threading

        self.rep = rep
        self.checks = checks  # a line per finished check (for long phases such as verify.all)
        self.lock = threading.Lock()
        self.samples: list[tuple[str, dict[str, Any]]] = []
        self.live: Any = None

    def event(self, host: str, event: dict[str, Any]) -> None:
        if self.rep.fmt == "json":
            return
        kind = event.get("event")
        with self.lock:
            if kind == "sample":
                self._sample(host, event["sample"])
            elif kind == "check" and self.checks:
                c = event["check"]
                self.rep.line(
                    f"{host}: {c['service'] or '-'} {c['name']}: {'ok' if c['ok'] else 'FAILED'} "
                    f"({_verify_time(c)}) - {c['detail']}",
                    "green" if c["ok"] else "bold red",
                )
            elif kind == "progress":
                self.rep.line(f"{host}: {event.get('service') or '-'}: {event.get('message', '')}")

    def _sample_row(self, host: str, s: dict[str, Any]) -> list[str]:
        counts = "  ".join(f"{k}={v}" for k, v in s["counts"].items())
        return [host, f"{s['t']:.1f}s", _mb(s.get("mem_available")), counts]

    def _sample(self, host: str, sample: dict[str, Any]) -> None:
        self.samples.append((host, sample))
        if self.rep.fmt != "rich":
            self.rep.line("  ".join(self._sample_row(host, sample)))
            return
        from rich.live import Live

        if self.live is None:
            self.live = Live(self._samples_table(), console=self.rep.console, auto_refresh=False)
            self.live.start()
        self.live.update(self._samples_table(), refresh=True)

    def _samples_table(self):  # type: ignore[no-untyped-def]
        from rich.table import Table

        t = Table(title="verify.watch samples", title_justify="left")
        for col in ("host", "t", "MemAvailable", "processes matching each service"):
            t.add_column(col)
        for host, s in self.samples:
            t.add_row(*self._sample_row(host, s))
        return t

    def close(self) -> None:
        with self.lock:
            if self.live is not None:
                self.live.stop()
                self.live = None


def _evidence(rep: Reporter, host: str, c: dict[str, Any], shown: set[tuple[str, ...]]) -> None:
    """The process tree a check judged (like pstree -p) and the processes it blames."""
    tree = tuple(c.get("tree") or ())
    exp = c.get("expected_parent")
    head = f"{host}: {c['service'] or '-'} {c['name']}"
    if exp:
        where = f"pid {exp['pid']}" if exp.get("pid") else "not running"
        head += f" - expected parent: {exp['service']} ({where})"
    if tree or exp or c.get("offenders"):
        rep.line(head + (":" if tree else ""), None if c["ok"] else "bold red")
    if tree:
        if (host, *tree) in shown:
            rep.line("  (same tree as above)")
        else:
            shown.add((host, *tree))
            for ln in tree:
                rep.line("  " + ln)
    for o in c.get("offenders") or []:
        rep.line(f"  ! pid {o['pid']} (ppid {o['ppid']}): {o['cmd']}", "bold red")
        rep.line(f"    {o['reason']}")
    for g in c.get("gates") or []:
        took = f" @{g['elapsed']:.2f}s" if g.get("elapsed") is not None else ""
        rep.line(f"  gate {g['name']}: {'ok' if g['ok'] else 'FAILED'}{took} {g.get('detail') or ''}")


def verify_result(rep: Reporter, kind: str, outcomes) -> None:
    """The checks of a verify phase on every host: a table, then the evidence (trees, offenders)."""
    ok = all(o.ok and o.value.ok for o in outcomes)
    if rep.fmt == "json":
        rep.json(
            {
                "verify": kind,
                "ok": ok,
                "hosts": [
                    {**o.value.to_json(), "error": None}
                    if o.ok
                    else {"host": o.host, "ok": False, "error": o.error.message, "checks": []}
                    for o in outcomes
                ],
            }
        )
        return
    rows, styles = [], []
    for o in outcomes:
        if not o.ok:
            rows.append([o.host, "-", kind, "unreachable", "-", o.error.message])
            styles.append("red")
            continue
        if not o.value.checks:
            rows.append([o.host, "-", kind, "-", "-", "nothing to check on this host"])
            styles.append("dim")
        for c in o.value.checks:
            rows.append(
                [
                    o.host,
                    c["service"] or "-",
                    c["name"],
                    "ok" if c["ok"] else "FAILED",
                    _verify_time(c),
                    c["detail"],
                ]
            )
            styles.append("green" if c["ok"] else "bold red")
    rep._table(
        f"verify.{kind}",
        ["host", "service", "check", "result", "time", "detail"],
        rows,
        styles if rep.fmt == "rich" else None,
    )
    rep.advice(outcomes)
    shown: set[tuple[str, ...]] = set()
    for o in outcomes:
        for c in o.value.checks if o.ok else []:
            if kind in ("tree", "restart") or not c["ok"]:
                _evidence(rep, o.host, c, shown)
    checks = [c for o in outcomes if o.ok for c in o.value.checks]
    failed = sum(not c["ok"] for c in checks)
    unreachable = sum(not o.ok for o in outcomes)
    rep.line(
        f"verify.{kind}: {len(checks) - failed} passed, {failed} failed"
        + (f", {unreachable} host(s) unreachable" if unreachable else ""),
        "green" if ok else "bold red",
    )


class DeployProgress:
    """Steps per host as they finish: a live table on a terminal, one line per step when piped."""

    def __init__(self, rep: Reporter, hosts: list[str]) -> None:
        self.rep = rep
        self.steps: dict[str, list] = {h: [] for h in hosts}
        self.started = time.monotonic()
        self.live = None

    def _render(self):
        from rich.table import Table

        t = Table(title=f"deploy ({time.monotonic() - self.started:.1f}s)", title_justify="left")
        t.add_column("host")
        t.add_column("steps")
        for host, steps in self.steps.items():
            cells = [f"[{'green' if s.ok else 'bold red'}]{s.name} {'ok' if s.ok else 'FAILED'} "
                     f"{s.duration:.2f}s[/]" for s in steps]
            t.add_row(host, " · ".join(cells) or "[dim]connecting...[/]")
        return t

    def __enter__(self) -> DeployProgress:
        if self.rep.fmt == "rich":
            from rich.live import Live

            self.live = Live(self._render(), console=self.rep.console, refresh_per_second=8)
            self.live.__enter__()
        return self

    def step(self, host: str, step) -> None:
        self.steps.setdefault(host, []).append(step)
        if self.live is not None:
            self.live.update(self._render())
            if not step.ok:
                self.rep.console.print(f"{host}: {step.name} FAILED: {step.detail}", style="bold red",
                                       markup=False)
        else:
            deploy_step(self.rep, host, step)

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.update(self._render())
            self.live.__exit__(None, None, None)
