"""Failure handling shared by `atc run` and `atc sweep`: a task's exception becomes a small record
on the worker (:func:`guarded`), the client turns records and Dask's own errors into
:class:`TaskFailure` s (:func:`task_failure`) and reports them, one line each on the terminal and
the tracebacks in a log beside the store (:func:`report_failures`)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from kernels.errors import ATCUserError
from pipeline import results as rs

__all__ = ["PricesChangedError", "RunError", "TaskFailure", "failure_log_path", "guarded", "report_failures",
           "task_failure"]


class RunError(ATCUserError):
    """Some chunks failed; the finished ones are saved and a rerun computes the rest.

    ``prices_changed``: a task found another price store than the run started from, so a plain
    rerun would be refused (other fingerprint) and only a rerun with overwrite helps; the CLI uses
    it to print the exact command. ``log``: the file with every failure's traceback."""

    def __init__(self, message: str, *, prices_changed: bool = False, log: Path | None = None):
        super().__init__(message)
        self.prices_changed = prices_changed
        self.log = log


class PricesChangedError(ATCUserError, ValueError):
    """The price store was replaced or appended to while a run was reading it."""


@dataclass(frozen=True)
class TaskFailure:
    """One failed task as the client reports it: a line for the terminal, the traceback for the log."""

    index: int  # chunk (run) or task (sweep) index
    message: str  # "OSError: disk on fire"
    details: str = ""  # the worker's traceback, when the task itself raised
    prices_changed: bool = False


def guarded(fn: Callable[[Any], dict[str, Any]], task: Any) -> dict[str, Any]:
    """Run a task and turn its exception into a small record. A task that raises makes every Dask
    worker log a many-line "Compute Failed" report straight to the user's terminal (on a joined
    cluster too, where we cannot quiet its logging); the client reports failures itself instead:
    one line each, the traceback in a log file."""
    import traceback

    try:
        return fn(task)
    except Exception as exc:
        return {"failed": True, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(),
                "prices_changed": isinstance(exc, PricesChangedError)}


def task_failure(future: Any) -> TaskFailure | None:
    """The failure of a finished future: a :func:`guarded` task's error record, or an error Dask
    itself raised (a worker lost too often, a task that could not be unpickled); None on success."""
    if future.status == "error":
        exc = future.exception()
        return TaskFailure(-1, f"{type(exc).__name__}: {exc}")
    rec = future.result()
    if isinstance(rec, dict) and rec.get("failed"):
        return TaskFailure(-1, rec["error"], rec.get("traceback", ""), bool(rec.get("prices_changed")))
    return None


def failure_log_path(store: Path) -> Path:
    """Where a run's failure details go: beside the store (``results.zarr`` -> ``results.zarr.errors.log``),
    where the user looks for the store, and outside it, so the store's contents stay only data."""
    return store.with_name(store.name + ".errors.log")


def report_failures(failures: list[TaskFailure], store: Path, describe: Callable[[int], str], *,
                    verbose: bool = False) -> Path:
    """Write every failure's details to the log beside ``store`` and print one line per failed
    chunk or task on stderr (with ``verbose``, its traceback below it). Returns the log's path."""
    log = failure_log_path(store)
    with open(log, "w", encoding="utf-8") as fh:
        fh.write(f"# {rs.utc_now()}: {len(failures)} failed in {store}\n")
        for f in failures:
            fh.write(f"\n## {describe(f.index)}: {f.message}\n{f.details or '(no traceback: Dask reported it)'}\n")
    for f in failures:
        line = f"{describe(f.index)} failed: {f.message} (details: {log})"
        if verbose and f.details:
            line += "\n" + f.details.rstrip()
        to_stderr(line)
    return log


def to_stderr(message: str) -> None:
    print(message, file=sys.stderr)
