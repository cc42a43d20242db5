"""The `atc` command line. Each sub-command lives in its own flows module; this file only wires them.

User errors (bad files, parameters, data) end with a one-line message and exit code 2, never a
traceback: `main` catches `ATCUserError` around the whole app.
"""

from __future__ import annotations

import sys

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


def _register() -> None:
    from flows import bench_cmd, store_cmd

    bench_app.command("kernel")(bench_cmd.bench_kernel)
    app.command("synth")(store_cmd.synth)
    app.command("ingest")(store_cmd.ingest)

    from flows import bench_pipeline_cmd, run_cmd

    app.command("run")(run_cmd.run)
    app.command("demo")(run_cmd.demo)
    bench_app.command("pipeline")(bench_pipeline_cmd.bench_pipeline)

    from flows import sweep_cmd

    app.command("sweep")(sweep_cmd.sweep)
    bench_app.command("sweep")(sweep_cmd.bench_sweep)

    from flows import bench_stream_cmd

    bench_app.command("stream")(bench_stream_cmd.bench_stream)


_register()


def main(argv: list[str] | None = None) -> int:
    try:
        app(args=argv, standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except ClickException as exc:
        exc.show()
        return exc.exit_code
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 130
    except ATCUserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
