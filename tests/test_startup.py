"""Startup (issue 11): `atc --help` imports none of the heavy libraries, Numba's own NUMBA_CACHE_DIR
is honoured, a small demo runs in-process without distributed, the choice of path, and the
in-process executor keeps failures per task. Timings: `atc bench startup` (docs/PIPELINE.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("numba", "numpy", "pandas", "xarray", "zarr", "dask", "distributed", "bokeh", "kernels")


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT,
                          check=False, timeout=600)


@pytest.mark.parametrize("argv", [["--help"], ["bench", "--help"], []])
def test_help_imports_nothing_heavy(argv):
    code = ("import sys; from flows.cli import main; rc = main(sys.argv[1:]); "
            f"print('HEAVY', sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))")
    p = _python(code, *argv)
    assert "HEAVY []" in p.stdout, p.stdout + p.stderr
    if argv == ["bench", "--help"]:
        assert "startup" in p.stdout and "pipeline" in p.stdout
    else:
        assert "demo" in p.stdout and "run" in p.stdout and "ingest" in p.stdout  # every command listed


def test_command_help_and_typos_still_work():
    p = _python("import sys; from flows.cli import main; sys.exit(main(sys.argv[1:]))", "run", "--help")
    assert p.returncode == 0 and "--in-process" in p.stdout and "--cluster" in p.stdout
    p = _python("import sys; from flows.cli import main; sys.exit(main(sys.argv[1:]))", "rnu")
    assert p.returncode == 2 and "Did you mean 'run'?" in p.stderr


def test_plain_options_are_coerced_without_pydantic_and_bad_ones_as_typer_says():
    """Valid plain values (paths, numbers, choices) are coerced without Pydantic (~0.3 s of every
    fresh command); an invalid one gets typer's own message."""
    code = ("import sys; from flows.cli import _build\n"
            "cmd = _build('scan', 'update_cmd', 'scan')\n"
            "ctx = cmd.make_context('scan', ['r.zarr', '--top', '4', '--min-signal', '0.5', '--format', 'csv'])\n"
            "print('PARAMS', ctx.params['top'], ctx.params['min_signal'], ctx.params['fmt'].value, "
            "type(ctx.params['store']).__name__, 'pydantic' in sys.modules)\n"
            "try:\n    cmd.make_context('scan', ['r.zarr', '--top', 'x'])\nexcept Exception as e:\n"
            "    print('ERROR', e.format_message())")
    p = _python(code)
    assert "PARAMS 4 0.5 csv PosixPath False" in p.stdout, p.stdout + p.stderr
    assert "ERROR Invalid value for '--top': Input should be a valid integer" in p.stdout, p.stdout + p.stderr


def test_numba_cache_dir_is_honoured(tmp_path, monkeypatch):
    from kernels import jitcache

    monkeypatch.delenv("ATC_NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "nb"))
    assert jitcache.cache_root() == tmp_path / "nb" / "atc-pipeline"  # a subdirectory: old caches are pruned
    monkeypatch.setenv("ATC_NUMBA_CACHE_DIR", str(tmp_path / "own"))
    assert jitcache.cache_root() == tmp_path / "own"  # the project's own variable still overrides
    monkeypatch.delenv("ATC_NUMBA_CACHE_DIR")
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    assert jitcache.cache_root() == Path.home() / ".cache" / "atc-pipeline" / "numba"


def test_small_demo_runs_in_process(tmp_path):
    """`atc demo` (small) as a user runs it: no cluster, no dashboard line, no distributed import."""
    code = ("import sys; from flows.cli import main; rc = main(sys.argv[1:]); "
            "print('DIST', 'distributed' in sys.modules, 'bokeh' in sys.modules); sys.exit(rc)")
    d = tmp_path / "demo"
    p = _python(code, "demo", "--dir", str(d), "--symbols", "40", "--bars", "400", "--no-progress")
    assert p.returncode == 0, p.stderr
    assert "in-process: " in p.stdout and "dashboard" not in p.stdout and "local cluster" not in p.stdout
    assert "DIST False False" in p.stdout
    assert (d / "results.zarr").is_dir()


def test_in_process_choice_and_refusals():
    from flows.run_cmd import choose_in_process
    from kernels.errors import ATCUserError
    from pipeline.executor import IN_PROCESS_SYMBOL_BARS

    small, big = 50 * 1000, IN_PROCESS_SYMBOL_BARS + 1
    assert choose_in_process(small, False, None, None, backend="cpu")
    assert not choose_in_process(big, False, None, None, backend="cpu")
    assert choose_in_process(big, True, None, None, backend="cpu")  # nothing left to compute: no cluster
    assert not choose_in_process(small, False, None, "tcp://127.0.0.1:1", backend="cpu")
    assert not choose_in_process(small, False, False, None, backend="cpu")  # --cluster
    assert choose_in_process(big, False, True, None, backend="cpu")  # --in-process
    assert not choose_in_process(small, False, None, None, threads_per_worker=2, backend="cpu")
    with pytest.raises(ATCUserError, match="--scheduler need"):
        choose_in_process(small, False, True, "tcp://127.0.0.1:1")
    with pytest.raises(ATCUserError, match="--backend cuda"):
        choose_in_process(small, False, True, None, backend="cuda")


def test_run_tasks_reports_each_failure_and_keeps_the_rest():
    from dataclasses import dataclass

    from pipeline.executor import run_tasks

    @dataclass
    class T:
        index: int

    def fn(t):
        if t.index % 3 == 1:
            raise ValueError(f"bad {t.index}")
        return {"i": t.index}

    seen = []
    records, failures = run_tasks(fn, [T(i) for i in range(7)], threads=3, progress=False, on_record=seen.append)
    assert sorted(r["i"] for r in records) == [0, 2, 3, 5, 6] and len(seen) == 5
    assert [(f.index, f.message) for f in failures] == [(1, "ValueError: bad 1"), (4, "ValueError: bad 4")]
    assert all("Traceback" in f.details for f in failures)
