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
"""

from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from kernels.errors import ATCUserError

__all__ = ["ClusterError", "ClusterInfo", "connect", "default_local_shape", "kernel_parallel", "scheduler_address"]

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
        return f"{kind} {self.address}: {len(ws)} workers x {t} threads"


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
) -> Iterator[ClusterInfo]:
    """A client on a new local cluster, or on the existing cluster at ``scheduler``; both are
    closed on exit (a joined cluster itself keeps running)."""
    from distributed import Client, LocalCluster

    address = scheduler_address(scheduler)
    if address is not None:
        if workers is not None or threads_per_worker is not None:
            raise ClusterError("--workers and --threads-per-worker shape the local cluster; they do not apply "
                               f"when joining the cluster at {address}")
        try:
            client = Client(address, timeout=connect_timeout)
        except (OSError, TimeoutError) as exc:
            raise ClusterError(f"cannot reach the Dask scheduler at {address} ({type(exc).__name__}: {exc})") from None
        try:
            try:
                client.wait_for_workers(1, timeout=WAIT_WORKERS_S)
            except TimeoutError:
                raise ClusterError(f"the Dask cluster at {address} has no workers (waited {WAIT_WORKERS_S} s)") from None
            yield ClusterInfo(client, None, address, _dashboard(client))
        finally:
            client.close()
        return

    n_default, t_default = default_local_shape()
    n = n_default if workers is None else int(workers)
    t = t_default if threads_per_worker is None else int(threads_per_worker)
    if n < 1 or t < 1:
        raise ClusterError(f"--workers and --threads-per-worker must be >= 1, got {n} and {t}")
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
    try:
        client = Client(cluster)
        try:
            yield ClusterInfo(client, cluster, cluster.scheduler_address, _dashboard(client))
        finally:
            client.close()
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cluster.close()


def _dashboard(client: Any) -> str | None:
    try:
        if "dashboard" not in client.scheduler_info(n_workers=0).get("services", {}):
            return None
        link = client.dashboard_link
    except Exception:  # no dashboard (bokeh missing or disabled)
        return None
    return link or None
