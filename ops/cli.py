"""The command line around the tasks: the `ops` console script, and the same behaviour adopted by
invoke's own `inv` program (tasks.py calls ``adopt()`` when invoke loads it):

- a parse error (`--hots`, a misspelt task, a missing positional, a flag without its value) exits 2,
  this tool's code for bad arguments (invoke's own is 1, which here means "a check failed"), with a
  suggestion ("did you mean --host?");
- value flags show a placeholder that says what they take (`--timeout=SECONDS`, not `=STRING`);
- shell completion (`inv --print-completion-script bash`) also completes host, group and service
  names from the inventory after `--host`/`-H`, `--service` and a task's SERVICE argument;
- output cut short by a closed pipe (`inv --list | head -1`) ends quietly, without a traceback;
- tasks are OpsTask objects: `-H` is --host, and invoke's core `-R/--dry` is a dry run or refused.

Nothing heavy is imported here: `inv --list` must stay fast.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import sys
import types
from collections.abc import Callable, Iterable
from typing import Any

from invoke import Argument, Exit, ParseError, Program, Task
from invoke import task as invoke_task

# What each value flag takes, shown in --help instead of invoke's STRING.
METAVARS = {
    "host": "HOST", "service": "SERVICE", "timeout": "SECONDS", "seconds": "SECONDS",
    "interval": "SECONDS", "lock-wait": "SECONDS", "serial": "N", "max-fail": "N", "n": "N",
    "min-mem-mb": "MB", "ref": "REF", "base": "REF", "signal": "SIGNAL", "commits": "N",
    "expect": "IDS", "repo": "PATH", "inventory": "PATH",
}
HOST_FLAGS = ("--host", "-H")
SERVICE_FLAGS = ("--service",)
PIPE_CLOSED = 141  # what a shell reports for a command ended by SIGPIPE


def _closest(word: str, choices: Iterable[str]) -> str | None:
    found = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return found[0] if found else None


def _task_of(context: Any) -> str | None:
    name = getattr(context, "name", None)
    return name or None


def explain(error: ParseError, task_names: Iterable[str], core_flags: Iterable[str], binary: str,
            task_flags: dict[str, list[str]] | None = None) -> str:
    """A parse error as one line saying what was wrong, what was probably meant, and where to look."""
    text = str(error)
    context = getattr(error, "context", None)
    task = _task_of(context)
    flags = list(getattr(context, "flags", {}) or {}) if task else []
    where = f"`{binary} {task} --help`" if task else f"`{binary} --list`"
    unknown = re.fullmatch(r"No idea what '(.*)' is!", text)
    if unknown:
        token = unknown.group(1)
        if token.startswith("-"):
            other = {} if task else (task_flags or {})  # before any task: maybe a task's flag
            guess = _closest(token, [*flags, *core_flags, *(f for fs in other.values() for f in fs)])
            what = f"unknown flag {token}" + (f" for {task}" if task else "")
            owner = next((t for t, fs in sorted(other.items()) if guess in fs), None)
            if guess and owner and guess not in core_flags:
                guess = f"{guess} after a task name (`{binary} {owner} {guess} ...`)"
        else:
            guess = _closest(token, task_names)
            what = f"unknown task or argument {token!r}"
        hint = f"; did you mean {guess}?" if guess else ""
        return f"error: {what}{hint}\n  -> see {where}"
    missing = re.fullmatch(r"'(.*)' did not receive required positional arguments: (.*)", text)
    if missing:
        args = missing.group(2).replace("'", "").upper()
        return (f"error: {missing.group(1)} needs {args}\n"
                f"  -> e.g. `{binary} {missing.group(1)} {args.split(',')[0].strip()}`; see {where}")
    needed = re.fullmatch(r"Flag (?:'-*([^']*)'|<Argument: ([\w-]+)[^>]*>) needed value and was not "
                          r"given one!", text)
    if needed:
        name = needed.group(1) or needed.group(2)
        flag = ("-" if len(name) == 1 else "--") + name
        metavar = METAVARS.get(flag.lstrip("-"), "VALUE")
        return f"error: {flag} needs a value ({flag} {metavar})\n  -> see {where}"
    return f"error: {text}\n  -> see {where}"


def _core_flags(program: Program) -> list[str]:
    return list(program.initial_context.flags)


def _task_names(program: Program) -> list[str]:
    collection = getattr(program, "collection", None)
    if collection is None:
        return []
    names = list(collection.task_names)
    for aliases in collection.task_names.values():
        names.extend(aliases)
    return names


# --- tasks: -H and -R/--dry ----------------------------------------------------------------------


SHORT_FLAGS = {"host": "H"}  # Fabric's habit; -h stays help


def _core_dry(c: Any) -> bool:
    run = getattr(getattr(c, "config", None), "run", None)
    return bool(getattr(run, "dry", False)) if run is not None else False


class OpsTask(Task):
    """A task with this tool's conventions: `-H` for --host, and invoke's core `-R/--dry` (which
    only affects invoke's own `c.run`, never used here) made true: for a task with a plan it means
    --dry-run; one that would act without a plan refuses it (exit 2); one that changes nothing
    just runs."""

    def __init__(self, body: Callable[..., Any], dry: str = "harmless", **kwargs: Any) -> None:
        super().__init__(body, **kwargs)
        assert dry in ("plan", "harmless", "refuse"), dry
        self.dry = dry

    def get_arguments(self, ignore_unknown_help: bool | None = None):  # type: ignore[no-untyped-def]
        args = super().get_arguments(ignore_unknown_help)
        for arg in args:
            short = SHORT_FLAGS.get(arg.name)
            if short and short not in arg.names:
                arg.names = (*arg.names, short)
        return args

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if args and _core_dry(args[0]):
            if self.dry == "plan":
                kwargs["dry_run"] = True
            elif self.dry == "refuse":
                raise Exit(f"error: -R/--dry: `{self.name}` acts on the host and has no dry run; nothing "
                           "was done\n  -> `inv deploy --dry-run` shows a plan; run without -R to act",
                           code=2)
        return super().__call__(*args, **kwargs)


def task(*args: Any, **kwargs: Any) -> Any:
    """invoke's @task, making OpsTask objects (no automatic short flags: -h is help)."""
    kwargs.setdefault("auto_shortflags", False)
    return invoke_task(*args, klass=OpsTask, **kwargs)


# --- completion ----------------------------------------------------------------------------------


def completion_words(tokens: list[str], inventory: Callable[[], Any], positional: dict[str, list[str]]
                     ) -> list[str] | None:
    """Host or service names to complete after ``tokens`` (the command line so far without the
    program name; its last item is the word being typed, "" for a new one), or None when invoke's
    own completion applies. ``positional`` maps a task name to its positional argument names."""
    if not tokens:
        return None
    last, before = tokens[-1], (tokens[-2] if len(tokens) > 1 else "")
    if last.startswith("-"):
        return None  # a flag being typed: invoke completes flags
    if before in HOST_FLAGS:
        inv = inventory()
        return [*inv.hosts, *getattr(inv, "groups", {}), "all"] if inv else []
    if before in SERVICE_FLAGS:
        return _service_names(inventory())
    if "service" in positional.get(before, [])[:1]:  # `inv logs <TAB>`, `inv logs dem<TAB>`
        return _service_names(inventory())
    return None


def _service_names(inv: Any) -> list[str]:
    if not inv:
        return []
    return sorted({s.name for h in inv.hosts.values() for s in h.services})


def _quiet_inventory() -> Any:
    try:
        from ops.tasks import _inventory

        return _inventory()
    except Exception:  # completion never prints an error into the user's shell
        return None


# --- the behaviour, shared by OpsProgram and an adopted `inv` program --------------------------


def _binary(self: Program) -> str:
    return (self.binary or "inv").replace("[oke]", "")


def _complete(self: Program) -> bool:
    """Print host/service candidates when the word being completed is one; True if it did."""
    remainder = self.core.remainder if self.core is not None else ""
    try:
        tokens = shlex.split(remainder)
    except ValueError:
        return False
    if tokens and tokens[0] in (*self.binary_names, "ops", "inv", "invoke"):
        tokens = tokens[1:]
    if remainder.endswith(" "):
        tokens.append("")  # a new word is being started
    positional = {name: list(task.positional) for name, task in _all_tasks(self.collection)}
    words = completion_words(tokens, _quiet_inventory, positional)
    if words is None:
        return False
    for word in words:
        print(word)
    return True


def _all_tasks(collection: Any) -> Iterable[tuple[str, Any]]:
    for name in collection.task_names:
        yield name, collection[name]


def help_tuples(ctx: Any) -> list[tuple[str, str | None]]:
    """invoke's help lines for a task, with a placeholder saying what each value flag takes
    (`-H HOST, --host=HOST`, `--timeout=SECONDS`, `--service=SERVICE` for a repeatable one)."""
    out = []
    for spec, text in ctx.help_tuples():
        names = [f"{d}{n}" for d, n in re.findall(r"(?:^|, )(-{1,2})(?:\[no-\])?([\w-]+)", spec)]
        flag = next((n for n in names if n.startswith("--")), names[0] if names else "")
        arg = ctx.flags.get(flag)
        if arg is not None and arg.takes_value:
            metavar = METAVARS.get(arg.names[0].replace("_", "-"), "VALUE")
            spec = ", ".join(sorted((f"{n} {metavar}" if len(n.strip("-")) == 1 else f"{n}={metavar}"
                                     for n in ctx.names_for(flag)), key=len))
            if arg.kind is list:
                text = f"{text} (repeatable)" if text and "repeatable" not in text else text
        out.append((spec, text))
    return out


def _end_on_closed_pipe(fn: Callable[[], None]) -> None:
    try:
        fn()
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader went away (`| head -1`): stop writing, and let the interpreter's last flush
        # go to /dev/null instead of printing a traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise Exit(code=PIPE_CLOSED) from None


def _usage(program: Program, exc: ParseError) -> Exit:
    collection = getattr(program, "collection", None)
    task_flags = ({name: list(ctx.flags) for name, ctx in ((c.name, c) for c in collection.to_contexts())}
                  if collection is not None else {})
    text = explain(exc, _task_names(program), _core_flags(program), _binary(program), task_flags)
    if "needs SERVICE" in text.split("\n", 1)[0]:
        services = _service_names(_quiet_inventory())
        if services:
            text = text.replace("needs SERVICE", f"needs SERVICE (one of: {', '.join(services)})", 1)
    return Exit(text, code=2)


class _Behaviour:
    """Methods bound onto a Program instance (OpsProgram's own, or invoke's `inv`)."""

    @staticmethod
    def install(program: Program) -> None:
        if getattr(program, "_ops_adopted", False):
            return
        program._ops_adopted = True  # type: ignore[attr-defined]
        parse_tasks, parse_cleanup = program.parse_tasks, program.parse_cleanup
        print_task_help, execute = program.print_task_help, program.execute

        def new_parse_tasks(self: Program) -> None:
            try:
                parse_tasks()
            except ParseError as exc:
                raise _usage(self, exc) from None

        def new_parse_cleanup(self: Program) -> None:
            if self.args.complete.value and _complete(self):
                raise Exit
            try:
                _end_on_closed_pipe(parse_cleanup)
            except ParseError as exc:  # `inv --help stauts`
                raise _usage(self, exc) from None

        def new_print_task_help(self: Program, name: str) -> None:
            ctx = self.parser.contexts[name]
            tuples = help_tuples(ctx)
            ctx.help_tuples = lambda: tuples
            print_task_help(name)

        def new_execute(self: Program) -> None:
            _end_on_closed_pipe(execute)

        program.parse_tasks = types.MethodType(new_parse_tasks, program)  # type: ignore[method-assign]
        program.parse_cleanup = types.MethodType(new_parse_cleanup, program)  # type: ignore[method-assign]
        program.print_task_help = types.MethodType(new_print_task_help, program)  # type: ignore[method-assign]
        program.execute = types.MethodType(new_execute, program)  # type: ignore[method-assign]


def adopt() -> None:
    """Give invoke's running `inv` program this tool's command-line behaviour (called by tasks.py
    when invoke loads it; a no-op when tasks.py is imported by anything else)."""
    main = sys.modules.get("invoke.main")
    program = getattr(main, "program", None)
    if isinstance(program, Program):
        _Behaviour.install(program)


class OpsProgram(Program):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _Behaviour.install(self)

    def core_args(self) -> list[Argument]:
        return [
            *super().core_args(),
            Argument(
                names=("inventory",), help="path to hosts.toml (default: $OPS_INVENTORY or ./hosts.toml)"
            ),
        ]

    def parse_core(self, argv):  # type: ignore[no-untyped-def]
        super().parse_core(argv)
        path = self.args.inventory.value
        if path:
            os.environ["OPS_INVENTORY"] = os.path.abspath(path)


def main(argv: list[str] | None = None) -> None:
    from ops.tasks import ns

    OpsProgram(name="ops", binary="ops", namespace=ns, version="0.1.0").run(
        argv if argv is not None else sys.argv
    )
