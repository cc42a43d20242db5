"""The `atc` command line. Each sub-command lives in its own flows module; this file only wires them.

User errors (bad files, parameters, data) end with a one-line message and exit code 2, never a
traceback: `main` catches `ATCUserError` around the whole app.

Ctrl-C ends every command with exit code 130 (so `atc run ... && publish` stops) and one line on
stderr. A command that knows what an interruption leaves behind raises :class:`Interrupted` with
that line (run, sweep: what is saved and that the same command resumes; ingest: see
:func:`_ingest_interrupted`); any other gets a generic line.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Callable

import typer
from typer.core import TyperGroup

try:  # typer >= 0.26 raises the exceptions of its bundled click
    from typer._click import ClickException
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import ClickException

#: Commands, each "module:function" in flows/ (with an optional wrapper name), imported only when
#: the command runs: `atc --help` and a typo then cost milliseconds, not the seconds numba, pandas,
#: xarray and dask take to import (every command module imports the kernels package).
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("store_cmd", "synth"),
    "ingest": ("store_cmd", "ingest"),
    "run": ("run_cmd", "run"),
    "demo": ("run_cmd", "demo"),
    "sweep": ("sweep_cmd", "sweep"),
    "plot": ("plot_cmd", "plot"),
    "show": ("show_cmd", "show"),
    "update": ("update_cmd", "update"),
    "scan": ("update_cmd", "scan"),
    "trades": ("trades_cmd", "trades"),
}
BENCH_COMMANDS: dict[str, tuple[str, str]] = {
    "kernel": ("bench_cmd", "bench_kernel"),
    "pipeline": ("bench_pipeline_cmd", "bench_pipeline"),
    "sweep": ("sweep_cmd", "bench_sweep"),
    "stream": ("bench_stream_cmd", "bench_stream"),
    "startup": ("bench_startup_cmd", "bench_startup"),
}


def _docstring(module: str, function: str) -> str:
    """A command's docstring read from its source (ast), for the command list of `--help`
    without importing the module."""
    import ast

    path = Path(__file__).with_name(f"{module}.py")
    doc = ""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            doc = ast.get_docstring(node) or ""
        elif (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Attribute)
              and node.targets[0].attr == "__doc__" and isinstance(node.targets[0].value, ast.Name)
              and node.targets[0].value.id == function):
            # a docstring built at import time (e.g. from tables): its first literal part, the summary
            first = next((n.value for n in ast.walk(node.value) if isinstance(n, ast.Constant)
                          and isinstance(n.value, str)), "")
            doc = first.split("\n\n")[0]
    return doc


class _LazyGroup(TyperGroup):
    """A command group whose commands are built from their module on first use (``lazy``: name ->
    (module, function)); listing them in a help page reads only their docstrings."""

    lazy: dict[str, tuple[str, str]] = {}
    _listing = False

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands) + [n for n, (module, _) in self.lazy.items()
                                      if n not in self.commands and _exists(module)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in self.commands or cmd_name not in self.lazy or not _exists(self.lazy[cmd_name][0]):
            return self.commands.get(cmd_name)
        module, function = self.lazy[cmd_name]
        if self._listing:
            import click

            return click.Command(cmd_name, help=_docstring(module, function))
        cmd = _build(cmd_name, module, function)
        self.commands[cmd_name] = cmd
        return cmd

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        """Typer suggests close command names from the commands built so far; offer every name."""
        try:
            return super().resolve_command(ctx, args)
        except Exception as exc:
            message = getattr(exc, "message", None)
            if isinstance(message, str) and args and "Did you mean" not in message:
                from difflib import get_close_matches

                matches = get_close_matches(args[0], self.list_commands(ctx))
                if matches:
                    exc.message = f"{message.rstrip('.')}. Did you mean {', '.join(repr(m) for m in matches)}?"
            raise

    def format_help(self, ctx: Any, formatter: Any) -> Any:
        self._listing = True
        try:
            return super().format_help(ctx, formatter)
        finally:
            self._listing = False


def _exists(module: str) -> bool:
    """Whether flows/<module>.py is there (a command whose module is missing is not offered)."""
    return not module or Path(__file__).with_name(f"{module}.py").is_file()


def _build(name: str, module: str, function: str) -> Any:
    """The click command typer makes of ``flows.<module>.<function>`` (wrapped as COMMAND_WRAPPERS says)."""
    import importlib

    fn = getattr(importlib.import_module(f"flows.{module}"), function)
    if name in _WRAPPERS:
        fn = _WRAPPERS[name](fn)
    one = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    one.command(name)(fn)
    cmd = typer.main.get_command(one)
    cmd.name = name
    return cmd


def _plain_coercion() -> None:
    """Give plain parameters (a path without checks, int, float, str, bool, an Enum, each maybe
    Optional) a coercion that does not build a Pydantic TypeAdapter, for every command.

    Typer 0.29 coerces every value through Pydantic: importing it and building the adapters cost
    ~0.3 s of every fresh `atc ...` process (2026-11-29), a sixth of `atc update`'s and a third of
    `atc scan`'s budget. The plain coercion gives the same value for a valid one (a path goes
    through typer's own path checks); an invalid value, or any other parameter, goes to typer's
    own coercion, so errors read exactly as before. Relies on typer's parameter internals
    (``_TyperParameter.get_runtime_param``, ``typer._coercion``): with another typer, nothing
    changes."""
    try:
        from dataclasses import dataclass

        from typer._coercion import RuntimeParam, build_runtime_param
        from typer.core import _TyperParameter
    except ImportError:  # pragma: no cover - another typer: its own coercion
        return
    if getattr(_TyperParameter, "_atc_plain", False) or not hasattr(_TyperParameter, "get_runtime_param"):
        return

    @dataclass(frozen=True)
    class _Plain(RuntimeParam):
        convert: Callable[..., Any]

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            try:
                return self.convert(value, param, ctx)
            except _Unplain:
                return build_runtime_param(param.type_descriptor)._coerce_value(value, param=param, ctx=ctx)

    typer_own = _TyperParameter.get_runtime_param

    def get_runtime_param(self: Any) -> Any:
        if getattr(self, "_runtime_param", None) is None:
            desc = self.type_descriptor
            convert = _plain_convert(desc)
            if convert is not None:
                self._runtime_param = _Plain(parameter_info=desc.parameter_info, annotation=desc.annotation,
                                             convert=convert)
        return typer_own(self)

    _TyperParameter.get_runtime_param = get_runtime_param
    _TyperParameter._atc_plain = True


class _Unplain(Exception):
    """A value the plain coercion leaves to typer's own."""


def _plain_convert(desc: Any) -> Callable[..., Any] | None:
    """The plain conversion of `_plain_coercion` for a parameter's type descriptor, or None."""
    import typing
    from enum import Enum

    ann, info = desc.annotation, desc.parameter_info
    args = typing.get_args(ann)
    if typing.get_origin(ann) is typing.Union and len(args) == 2 and type(None) in args:
        ann = args[0] if args[1] is type(None) else args[1]
    if (desc.file_annotation is not None or getattr(info, "parser", None) is not None
            or getattr(info, "click_type", None) is not None or getattr(info, "min", None) is not None
            or getattr(info, "max", None) is not None):
        return None
    if ann is Path and getattr(info, "path_type", None) in (None, Path):
        from typer._param_types import coerce_cli_path

        def path(v: Any, param: Any, ctx: Any) -> Any:
            if not isinstance(v, (str, Path)):
                raise _Unplain
            return coerce_cli_path(Path(v), info, path_type=Path, param=param, ctx=ctx)
        return path
    if ann in (int, float, str, bool):
        def plain(v: Any, param: Any, ctx: Any) -> Any:
            if type(v) is ann:
                return v
            if ann is float and type(v) is int:  # an int default of a float option, as Pydantic's lax mode
                return float(v)
            if ann is not bool and isinstance(v, str):
                try:
                    return ann(v)
                except ValueError:
                    pass
            raise _Unplain
        return plain
    if isinstance(ann, type) and issubclass(ann, Enum):
        sensitive = getattr(info, "case_sensitive", True)

        def choice(v: Any, param: Any, ctx: Any) -> Any:
            if isinstance(v, ann):
                return v
            for member in ann:
                if isinstance(v, str) and (str(member.value) == v if sensitive
                                           else str(member.value).casefold() == v.casefold()):
                    return member
            raise _Unplain
        return choice
    return None


class _AtcGroup(_LazyGroup):
    lazy = {**COMMANDS, "bench": ("", "")}

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name == "bench":
            return _bench_group()
        return super().get_command(ctx, cmd_name)


class _BenchGroup(_LazyGroup):
    lazy = BENCH_COMMANDS


@functools.lru_cache(maxsize=None)
def _bench_group() -> Any:
    return _BenchGroup(name="bench", help=BENCH_HELP, no_args_is_help=True)


BENCH_HELP = "Benchmarks (throughput in symbol-bars per second)."
_plain_coercion()

app = typer.Typer(
    name="atc",
    help="Adaptive Trend Classification for whole markets: compute, store, backtest, scan.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_AtcGroup,
)


@app.callback()
def _root() -> None:
    """Adaptive Trend Classification for whole markets: compute, store, backtest, scan."""


class Interrupted(Exception):
    """Ctrl-C, with the one line saying what the command saved and how to go on.

    Not a KeyboardInterrupt: typer turns those into a bare exit status before `main` sees them."""


def on_interrupt(line: Callable[..., str]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Wrap a command so that Ctrl-C raises :class:`Interrupted` with ``line(**its arguments)``;
    for commands whose module does not do it itself. functools.wraps keeps the signature that
    typer reads the options from."""
    def wrap(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            before = line(**kwargs)  # evaluated first: the line describes the state before the command
            try:
                return command(*args, **kwargs)
            except KeyboardInterrupt:
                raise Interrupted(before) from None
        return wrapper
    return wrap


def _ingest_interrupted(store: Path | None = None, **_: Any) -> str:
    """Ingest writes a whole new store beside the old one and renames it in only at the end
    (pipeline/atomic.py), so an interrupted ingest has changed nothing."""
    if store is not None and Path(store).exists():
        return (f"interrupted: atc ingest wrote nothing; {store} is unchanged (a store is replaced only when "
                "ingest completes)")
    return f"interrupted: atc ingest wrote nothing; no store was created at {store}"


#: Wrappers applied to a command when it is built (Ctrl-C handling of commands that do not do it themselves).
_WRAPPERS: dict[str, Callable[[Callable[..., Any]], Callable[..., Any]]] = {
    "ingest": lambda fn: on_interrupt(_ingest_interrupted)(fn),
}


#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


_argv: list[str] = []


def invoked_command() -> list[str]:
    """The command line being run, as the user typed it after `atc`: advice such as "rerun with
    --overwrite" can then name the exact command, whatever options it had."""
    return list(_argv)


def main(argv: list[str] | None = None) -> int:
    global _argv
    _argv = list(sys.argv[1:] if argv is None else argv)
    try:
        rv = app(args=argv, standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except ClickException as exc:
        exc.show()
        return exc.exit_code
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Interrupted as exc:
        print(exc, file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if not _is_user_error(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # without standalone mode typer returns, not raises, the status of a typer.Exit, and turns a
    # KeyboardInterrupt it catches into the status 130
    if rv == EXIT_INTERRUPTED:
        print("interrupted", file=sys.stderr)
    return rv if isinstance(rv, int) and not isinstance(rv, bool) else 0


def _is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an ATCUserError, without importing the kernels package (and numba) to
    find out: if kernels.errors was never imported, nothing raised one."""
    errors = sys.modules.get("kernels.errors")
    return errors is not None and isinstance(exc, errors.ATCUserError)


if __name__ == "__main__":
    sys.exit(main())
