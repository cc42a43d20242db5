"""Start or join a Dask cluster for a run.

* Default: a ``distributed.LocalCluster`` on this machine: worker *processes* (one per core),
  one thread each, scheduler and dashboard bound to 127.0.0.1; the dashboard link is printed.
* ``scheduler="tcp://HOST:PORT"`` (or the ``DASK_SCHEDULER_ADDRESS`` environment variable, Dask's
  own convention) joins an existing cluster instead. Its workers must see the stores at the same
  paths (a shared file system) and have this package installed.

Numba safety. Numba's parallel kernels (``prange``) abort when several threads of one process
call them at once (default workqueue threading layer). The run therefore picks one level of
parallelism per worker process: :func:`kernel_parallel` allows the parallel kernel only when every
worker has exactly one thread *and* is alone on its host (then one task at a time uses every
core of the host); otherwise every task runs the serial kernel and the parallelism comes from
the worker processes. The local default (N single-threaded workers for N cores) is of the second
kind: serial kernels, one per core, no nested thread pools, and one worker's compression and
file writes overlap another's compute. The task re-checks on the worker that it has one thread
before running a parallel kernel.

GPU workers are workers that declare the Dask resource ``GPU`` (:func:`gpu_workers`): external ones
started with ``--resources GPU=1``, or, for a local cluster with ``backend`` auto/cuda on a machine
with NVIDIA GPUs (:func:`local_gpu_count`), dask-cuda's ``LocalCUDACluster`` (one worker per GPU,
imported only then) plus, for ``auto``, single-threaded CPU workers on the remaining cores
(:func:`add_workers`). ``pipeline.run`` routes the tasks (see its docstring).
"""

from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from kernels.errors import ATCUserError

__all__ = ["ClusterError", "ClusterInfo", "add_workers", "connect", "default_local_shape", "gpu_workers",
           "kernel_parallel", "local_gpu_count", "quiet_shutdown", "scheduler_address"]

DEFAULT_DASHBOARD = "127.0.0.1:8787"
CONNECT_TIMEOUT_S = 30
WAIT_WORKERS_S = 60


class ClusterError(ATCUserError):
    """The cluster cannot be started or reached, or the options do not fit together."""


@dataclass
class ClusterInfo:
    """A connected client and what it is connected to."""

    client: Any  # distributed.Client
    cluster: Any  # the LocalCluster we started, or None when joining an existing one
    address: str
    dashboard_link: str | None
    notice: str | None = None  # e.g. GPUs found but dask-cuda missing: the local cluster is CPU-only

    @property
    def local(self) -> bool:
        return self.cluster is not None

    def workers(self) -> dict[str, dict]:
        return dict(self.client.scheduler_info(n_workers=-1).get("workers", {}))

    def describe(self) -> str:
        ws = self.workers()
        threads = sorted({w.get("nthreads", 0) for w in ws.values()})
        kind = "local cluster" if self.local else "cluster"
        t = "/".join(str(x) for x in threads) or "?"
        gpus = len(gpu_workers(ws))
        with_gpu = f", {gpus} with resource GPU" if gpus else ""
        return f"{kind} {self.address}: {len(ws)} workers x {t} threads{with_gpu}"


def default_local_shape() -> tuple[int, int]:
    """(workers, threads per worker) of the default local cluster: one single-threaded worker
    process per core the process may use."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores), 1


def scheduler_address(explicit: str | None) -> str | None:
    """The scheduler to join: ``explicit``, else Dask's ``scheduler-address`` setting (the
    ``DASK_SCHEDULER_ADDRESS`` environment variable), else None (start a local cluster)."""
    if explicit:
        return explicit
    env = os.environ.get("DASK_SCHEDULER_ADDRESS")
    if env:
        return env
    import dask

    addr = dask.config.get("scheduler-address", None)
    return str(addr) if addr else None


def kernel_parallel(workers: dict[str, dict]) -> bool:
    """Whether tasks may run Numba's parallel kernel: only if every worker has one thread and no
    two workers share a host (see the module docstring)."""
    if not workers:
        return False
    hosts = []
    for addr, w in workers.items():
        if int(w.get("nthreads", 0)) != 1:
            return False
        hosts.append(w.get("host") or addr.rsplit(":", 1)[0])
    return len(set(hosts)) == len(hosts)


def gpu_workers(workers: dict[str, dict]) -> dict[str, int]:
    """The workers (address -> GPU tasks at once) that declare the Dask resource ``GPU``."""
    out = {}
    for addr, w in workers.items():
        n = (w.get("resources") or {}).get("GPU", 0)
        if n and n > 0:
            out[addr] = max(1, int(n))
    return out


def local_gpu_count() -> int:
    """NVIDIA GPUs on this machine that this process may use (``CUDA_VISIBLE_DEVICES`` applies),
    found with NVML (``pynvml``, a dask-cuda dependency) or ``nvidia-smi -L``: no numba.cuda
    import, no CUDA context. 0 when neither finds one; the CUDA simulator never counts."""
    n = None
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            n = int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no pynvml, no driver
        import shutil
        import subprocess

        smi = shutil.which("nvidia-smi")
        if smi:
            try:
                out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=False).stdout
                n = sum(1 for line in out.splitlines() if line.startswith("GPU "))
            except (OSError, subprocess.SubprocessError):
                n = None
    if not n:
        return 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return n
    ids = []
    for d in visible.split(","):  # CUDA stops at the first invalid entry ("", "-1")
        d = d.strip()
        if not d or d.startswith("-"):
            break
        ids.append(d)
    return min(n, len(ids))


#: Worker options of a local cluster's spec that a worker of another kind may share (not, e.g.,
#: dask-cuda's CUDA_VISIBLE_DEVICES, CUDA-context preload, device spilling or RMM plugins).
_SHARED_WORKER_OPTIONS = ("memory_limit", "host", "services", "dashboard_address", "dashboard", "interface",
                          "protocol", "security", "silence_logs")


def add_workers(cluster: Any, n: int, *, nthreads: int = 1, resources: dict[str, float] | None = None,
                prefix: str = "cpu", wait: bool = True) -> list[str]:
    """Start ``n`` more workers of another kind (``nthreads`` threads, ``resources``) on a running
    local cluster (a ``SpecCluster``: ``LocalCluster``, dask-cuda's ``LocalCUDACluster``): CPU
    workers beside GPU workers, or a worker with a fake ``GPU`` resource in tests. They share only
    the cluster's generic worker options and run in processes (a ``Nanny``) unless the cluster's
    workers are in-process. Returns their names."""
    from distributed import Nanny, Worker

    base = cluster.new_spec
    cls = Worker if base["cls"] is Worker else Nanny
    options = {k: v for k, v in base.get("options", {}).items() if k in _SHARED_WORKER_OPTIONS}
    options["nthreads"] = int(nthreads)
    if resources:
        options["resources"] = dict(resources)
    names = []
    i = 0
    while len(names) < n:
        name = f"{prefix}-{i}"
        i += 1
        if name in cluster.worker_spec:
            continue
        cluster.worker_spec[name] = {"cls": cls, "options": dict(options)}
        names.append(name)
    cluster.scale(len(cluster.worker_spec))  # starts the specs not running yet
    if wait and names:
        cluster.sync(cluster._correct_state)
    return names


def _gpu_cluster(n_gpu: int, n_cpu: int, threads: int, backend: str, dashboard_address: str | None,
                 notices: list[str]) -> Any:
    """dask-cuda's LocalCUDACluster (one single-threaded worker per GPU, resource GPU=1) plus
    ``n_cpu`` CPU workers; None (with a notice) when dask-cuda is missing and ``backend`` is auto."""
    try:
        from dask_cuda import LocalCUDACluster
    except Exception as exc:  # ImportError, or a dask-cuda built for another distributed
        if backend == "cuda":
            raise ClusterError(f"--backend cuda on a local cluster needs dask-cuda ({type(exc).__name__}: {exc}); "
                               "pip install dask-cuda, or join a cluster with GPU workers (--scheduler)") from None
        notices.append(f"{n_gpu} GPU(s) found but dask-cuda cannot be imported ({type(exc).__name__}); the local "
                       "cluster is CPU-only (pip install dask-cuda to use them)")
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCUDACluster(
            threads_per_worker=1,
            resources={"GPU": 1},
            host="127.0.0.1",
            dashboard_address=dashboard_address if dashboard_address else None,
            silence_logs=logging.ERROR,
        )
        try:
            if n_cpu:
                add_workers(cluster, n_cpu, nthreads=threads, prefix="cpu")
        except BaseException:
            cluster.close()
            raise
    return cluster


@contextmanager
def connect(
    scheduler: str | None = None,
    *,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    processes: bool = True,
    dashboard_address: str | None = DEFAULT_DASHBOARD,
    resources: dict[str, float] | None = None,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    backend: str = "cpu",
) -> Iterator[ClusterInfo]:
    """A client on a new local cluster, or on the existing cluster at ``scheduler``; both are
    closed on exit (a joined cluster itself keeps running).

    ``backend`` shapes a local cluster only: "cpu" starts CPU workers; "auto" starts, when this
    machine has NVIDIA GPUs, one GPU worker per GPU (dask-cuda) plus ``workers`` CPU workers (default:
    one per remaining core), else CPU workers; "cuda" starts only the GPU workers and refuses a
    machine without GPUs. A joined cluster is used as it is (its workers declare ``GPU`` or not)."""
    from distributed import Client, LocalCluster

    address = scheduler_address(scheduler)
    if backend not in ("auto", "cpu", "cuda"):
        raise ClusterError(f"backend must be one of auto, cpu, cuda, got {backend!r}")
    if address is not None:
        if workers is not None or threads_per_worker is not None:
            raise ClusterError("--workers and --threads-per-worker shape the local cluster; they do not apply "
                               f"when joining the cluster at {address}")
        try:
            client = Client(address, timeout=connect_timeout)
            _drop_sync_cancel_race()
        except (OSError, TimeoutError) as exc:
            raise ClusterError(f"cannot reach the Dask scheduler at {address} ({type(exc).__name__}: {exc})") from None
        try:
            try:
                client.wait_for_workers(1, timeout=WAIT_WORKERS_S)
            except TimeoutError:
                raise ClusterError(f"the Dask cluster at {address} has no workers (waited {WAIT_WORKERS_S} s)") from None
            yield ClusterInfo(client, None, address, _dashboard(client))
        except KeyboardInterrupt:
            quiet_shutdown()
            raise
        finally:
            client.close()
        return

    n_default, t_default = default_local_shape()
    n = n_default if workers is None else int(workers)
    t = t_default if threads_per_worker is None else int(threads_per_worker)
    if n < 1 or t < 1:
        raise ClusterError(f"--workers and --threads-per-worker must be >= 1, got {n} and {t}")
    n_gpu = local_gpu_count() if backend in ("auto", "cuda") else 0
    if backend == "cuda" and not n_gpu:
        raise ClusterError("--backend cuda: no NVIDIA GPU on this machine (NVML and nvidia-smi found none); use "
                           "--backend auto or cpu, or join a cluster with GPU workers (--scheduler)")
    if backend == "cuda" and workers is not None:
        raise ClusterError("--workers sets the CPU workers of a local cluster; --backend cuda runs only on "
                           "the GPU workers (one per GPU): use --backend auto for GPU and CPU workers")
    notices: list[str] = []
    cluster = None
    _quiet_resource_tracker()
    malloc_config = _keep_malloc_defaults()  # for the local workers; undone when the cluster closes
    mask = _block_sigint()  # the worker processes inherit the block: Ctrl-C is the client's alone
    try:
        if n_gpu:
            n_cpu = 0 if backend == "cuda" else (n if workers is not None else max(0, n_default - n_gpu))
            cluster = _gpu_cluster(n_gpu, n_cpu, t, backend, dashboard_address, notices)
        if cluster is None:
            kwargs: dict[str, Any] = {}
            if processes:  # in-process workers talk over inproc://, which has no host
                kwargs["host"] = "127.0.0.1"
            if resources:
                kwargs["resources"] = dict(resources)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. "Port 8787 is already in use": another port is used
                cluster = LocalCluster(
                    n_workers=n,
                    threads_per_worker=t,
                    processes=processes,
                    dashboard_address=dashboard_address if dashboard_address else None,
                    silence_logs=logging.ERROR,
                    **kwargs,
                )
    except BaseException:
        _restore_sigint(mask)
        malloc_config.__exit__(None, None, None)
        raise
    try:
        _restore_sigint(mask)  # a Ctrl-C pressed while the cluster started is delivered here
        client = Client(cluster)
        _drop_sync_cancel_race()
        if processes:
            client.register_plugin(_ignore_sigint_plugin(), name="atc-ignore-sigint")
        try:
            yield ClusterInfo(client, cluster, cluster.scheduler_address, _dashboard(client),
                              "; ".join(notices) or None)
        except KeyboardInterrupt:
            quiet_shutdown()
            raise
        finally:
            client.close()
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cluster.close()
        malloc_config.__exit__(None, None, None)


def _keep_malloc_defaults() -> Any:
    """Start local workers without distributed's ``MALLOC_TRIM_THRESHOLD_=65536`` (its
    ``distributed.nanny.pre-spawn-environ``); returns the ``dask.config.set`` to undo.

    Setting that variable turns off glibc's adaptive mmap threshold: every allocation over 128
    KiB is then a fresh mmap, unmapped again when freed, and its pages fault in anew. A task
    allocates ~1 GB in arrays of a few MiB (outputs, chunk copies, encode buffers), so a worker
    took 5x the page faults of the same tasks in-process. Measured, 2,000 x 5,000 float64 on a
    local cluster of 2 workers (load 6.5-8): 713,000 -> 122,000 page faults, 4.7 -> 2.4-2.9 worker
    system CPU seconds. Without the trim, a worker keeps freed memory for its next task (a few
    hundred MB per worker), which these short-lived clusters can afford."""
    import dask
    import distributed  # noqa: F401  (registers distributed's configuration defaults)

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    return dask.config.set({"distributed.nanny.pre-spawn-environ": env})


def _block_sigint() -> Any:
    """Block SIGINT while a local cluster starts its worker processes; returns the mask to restore.

    A terminal's Ctrl-C goes to the whole process group: without this, every worker process would
    die of its own KeyboardInterrupt and print a traceback, while the client is the one that should
    stop the run (cancel, close the cluster, say what was saved). The signal mask is inherited by
    the threads the cluster starts now (its event loop, which also starts any later worker) and
    kept across fork and exec, so the workers never receive SIGINT; the client unblocks it when the
    cluster is up, and a Ctrl-C pressed meanwhile is delivered then."""
    import signal
    import threading

    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        return None
    return signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def _ignore_sigint_plugin() -> Any:
    from distributed.diagnostics.plugin import WorkerPlugin

    class IgnoreSigint(WorkerPlugin):
        """A local worker process ignores SIGINT (a terminal's Ctrl-C reaches the whole process
        group; the client alone decides how the run stops). Registered on the client, so it also
        applies to workers started later (a restarted worker, `add_workers`); until it runs,
        :func:`_block_sigint` covers the start of the cluster."""

        def setup(self, worker: Any) -> None:
            import signal
            import threading

            if threading.current_thread() is threading.main_thread():  # a worker process, not a thread
                signal.signal(signal.SIGINT, signal.SIG_IGN)

    return IgnoreSigint()


def _quiet_resource_tracker() -> None:
    """Keep multiprocessing's resource tracker from warning about "leaked semaphore objects" when
    an interrupted run's worker processes are terminated mid-task: it cleans them up itself, and
    the warning (from its own process, which takes its warning filters from ``sys.warnoptions``
    when it starts) would be the only other text after the run's one-line interrupt message."""
    import sys

    rule = "ignore:resource_tracker:UserWarning"
    if rule not in sys.warnoptions:
        sys.warnoptions.append(rule)


def _restore_sigint(mask: Any) -> None:
    if mask is not None:
        import signal

        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


class _SyncCancelRace(logging.Filter):
    """Drops one known, harmless log record: distributed's ``sync()`` schedules ``cancel()`` on a
    Ctrl-C, and when the Ctrl-C arrives before the awaited call has started, ``cancel`` reads a
    ``future`` not yet assigned (distributed 2026.8 utils.py: ``NameError: cannot access free
    variable 'future'``), which tornado logs with a traceback. Nothing was running, so nothing is
    lost; the traceback would only break the one line an interrupted command prints."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, NameError) or "'future'" not in str(exc):
            return True
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        return tb is None or not tb.tb_frame.f_code.co_filename.endswith(os.path.join("distributed", "utils.py"))


def _drop_sync_cancel_race() -> None:
    log = logging.getLogger("tornado.application")
    if not any(isinstance(f, _SyncCancelRace) for f in log.filters):
        log.addFilter(_SyncCancelRace())


def quiet_shutdown() -> None:
    """Silence distributed's logging for an interrupted run's shutdown: closing a cluster with
    tasks in flight logs cancelled tasks and closed connections, which the user did not ask about."""
    prefixes = ("distributed", "tornado", "asyncio")
    names = [n for n in logging.root.manager.loggerDict if n.split(".")[0] in prefixes]  # e.g. tornado.application,
    for name in (*prefixes, *names):                                                    # which distributed sets to error
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def _dashboard(client: Any) -> str | None:
    try:
        if "dashboard" not in client.scheduler_info(n_workers=0).get("services", {}):
            return None
        link = client.dashboard_link
    except Exception:  # no dashboard (bokeh missing or disabled)
        return None
    return link or None
