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

try:  # typer >= 0.26 raises the exceptions of its bundled click
    from typer._click import ClickException
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import ClickException

from kernels.errors import ATCUserError

app = typer.Typer(
    name="atc",
    help="Adaptive Trend Classification for whole markets: compute, store, backtest, scan.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Benchmarks (throughput in symbol-bars per second).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


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


def _register() -> None:
    from flows import bench_cmd, store_cmd

    bench_app.command("kernel")(bench_cmd.bench_kernel)
    app.command("synth")(store_cmd.synth)
    app.command("ingest")(on_interrupt(_ingest_interrupted)(store_cmd.ingest))

    from flows import bench_pipeline_cmd, run_cmd

    app.command("run")(run_cmd.run)
    app.command("demo")(run_cmd.demo)
    bench_app.command("pipeline")(bench_pipeline_cmd.bench_pipeline)

    from flows import sweep_cmd

    app.command("sweep")(sweep_cmd.sweep)
    bench_app.command("sweep")(sweep_cmd.bench_sweep)

    from flows import plot_cmd, show_cmd

    app.command("plot")(plot_cmd.plot)
    app.command("show")(show_cmd.show)

    from flows import bench_stream_cmd, update_cmd

    bench_app.command("stream")(bench_stream_cmd.bench_stream)
    app.command("update")(update_cmd.update)
    app.command("scan")(update_cmd.scan)

    from flows import trades_cmd

    app.command("trades")(trades_cmd.trades)


_register()


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
    except ATCUserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # without standalone mode typer returns, not raises, the status of a typer.Exit, and turns a
    # KeyboardInterrupt it catches into the status 130
    if rv == EXIT_INTERRUPTED:
        print("interrupted", file=sys.stderr)
    return rv if isinstance(rv, int) and not isinstance(rv, bool) else 0


if __name__ == "__main__":
    sys.exit(main())
