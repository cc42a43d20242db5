"""Planning a run: symbols per task (:func:`default_chunk_symbols`, aligned with the price store's
chunks) and the routing of tasks to worker kinds (:func:`route_kinds`, :func:`plan_routes`,
:class:`Feed`); see :mod:`pipeline.run`'s docstring for GPU routing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from pipeline import results as rs
from pipeline.chunk_task import ChunkTask

__all__ = ["BACKENDS", "BACKEND_SUBMIT", "GPU_TASK_SYMBOL_BARS", "Route", "default_chunk_symbols", "plan_routes",
           "price_chunk", "route_kinds"]

#: backend name -> extra ``client.submit`` keywords for its tasks.
BACKEND_SUBMIT: dict[str, dict[str, Any]] = {"cpu": {}, "cuda": {"resources": {"GPU": 1}}}
#: What a run accepts: "auto" picks per worker kind (see pipeline/run.py's docstring).
BACKENDS = ("auto", "cpu", "cuda")
#: Default size of a GPU task, in symbol-bars (rounded down to whole store chunks, at least one):
#: ~1.9 GB of float64 inputs and outputs on the GPU worker's host side.
GPU_TASK_SYMBOL_BARS = 1 << 24


def price_chunk(ds: Any) -> int:
    """Symbols per chunk of the price store ``ds`` (its ``close`` encoding, else the store's
    ``chunk_symbols`` attribute, else all symbols): what tasks align with."""
    enc = ds["close"].encoding.get("chunks") or ds["close"].encoding.get("preferred_chunks", {})
    if isinstance(enc, Mapping):
        k = enc.get("symbol")
    else:
        k = enc[0] if enc else None
    if not k:
        k = ds.attrs.get("chunk_symbols") or ds.sizes["symbol"]
    return max(1, int(k))



def default_chunk_symbols(price_k: int, n_symbols: int, slots: int, min_symbols: int = 16) -> int:
    """Symbols per task when not given.

    Preferred: the price store's chunk, or its largest divisor (>= ``min_symbols``) that gives
    every worker thread at least two tasks, so that tasks read whole price chunks. When even that
    leaves some of the ``slots`` worker threads without a task (a small store: 25 symbols in one
    price chunk on 2 workers would be one task), ``n_symbols // slots`` instead: every thread gets
    one, and tasks read parts of a price chunk (each still writes whole results-store chunks).
    """
    n = max(1, int(n_symbols))
    slots = max(1, int(slots))
    price_k = max(1, min(int(price_k), n))
    want = 2 * slots
    best = price_k
    for d in range(price_k, 0, -1):
        if price_k % d:
            continue
        if d < min_symbols:
            break
        best = d
        if -(-n // d) >= want:
            break
    if -(-n // best) >= min(slots, n):
        return best
    return max(1, n // slots)

def check_alignment(k: int, price_k: int) -> None:
    if k < 1:
        raise rs.ResultsError(f"--chunk-symbols must be >= 1, got {k}")
    if k % price_k and price_k % k:
        raise rs.ResultsError(f"--chunk-symbols {k} is not aligned with the price store's chunks of {price_k} "
                              f"symbols: use a multiple or a divisor of {price_k}")


@dataclass(frozen=True)
class Route:
    """How one kind of task is submitted: its backend, store chunks per task, how many may be in
    flight at once (None: all at once) and its extra ``client.submit`` keywords."""

    backend: str
    chunks_per_task: int = 1
    in_flight: int | None = None
    submit: Mapping[str, Any] = field(default_factory=dict)
    from_back: bool = False  # takes chunks from the end of the to-do list (CPU beside GPU)


def route_kinds(backend: str, workers: Mapping[str, Mapping]) -> tuple[list[str], str | None]:
    """The task backends a run uses on these workers, and a notice for the user (or None).
    Raises ``ATCBackendError`` for "cuda" without a GPU worker."""
    from kernels.api import ATCBackendError
    from pipeline.cluster import gpu_workers

    if backend == "cpu":
        return ["cpu"], None
    gpus = gpu_workers(dict(workers))
    if not gpus:
        if backend == "cuda":
            raise ATCBackendError(f"--backend cuda: none of the cluster's {len(workers)} workers has the resource "
                                  "GPU (start GPU workers with --resources GPU=1, or use --backend auto or cpu)")
        return ["cpu"], "no GPU worker in the cluster (none declares the resource GPU): every task runs on the CPU"
    if backend == "cuda" or len(gpus) == len(workers):
        return ["cuda"], None
    return ["cuda", "cpu"], None


def plan_routes(backend: str, workers: Mapping[str, Mapping], *, n_todo: int, chunk_symbols: int, n_time: int,
                gpu_chunk_symbols: int | None = None) -> tuple[list[Route], str | None]:
    """Routes of a run (see the module docstring) and its notice. GPU tasks cover
    ``gpu_chunk_symbols // chunk_symbols`` store chunks (default: about GPU_TASK_SYMBOL_BARS
    symbol-bars, and at most half of the to-do chunks per GPU so that every GPU gets two tasks)."""
    from pipeline.cluster import gpu_workers

    kinds, notice = route_kinds(backend, workers)
    if kinds == ["cpu"]:
        return [Route("cpu", 1, None, dict(BACKEND_SUBMIT["cpu"]))], notice
    gpus = gpu_workers(dict(workers))
    slots = sum(gpus.values())
    if gpu_chunk_symbols is not None:
        g = gpu_group(gpu_chunk_symbols, chunk_symbols)
    else:
        g = max(1, GPU_TASK_SYMBOL_BARS // max(1, chunk_symbols * n_time))
        g = max(1, min(g, n_todo // (2 * slots)))
    if kinds == ["cuda"]:
        return [Route("cuda", g, None, dict(BACKEND_SUBMIT["cuda"]))], notice
    cpus = {a: w for a, w in workers.items() if a not in gpus}
    cpu_threads = sum(max(1, int(w.get("nthreads", 1))) for w in cpus.values())
    return [Route("cuda", g, slots, dict(BACKEND_SUBMIT["cuda"])),
            Route("cpu", 1, 2 * cpu_threads,
                  {**BACKEND_SUBMIT["cpu"], "workers": sorted(cpus), "allow_other_workers": True}, from_back=True),
            ], notice


def gpu_group(gpu_chunk_symbols: int, chunk_symbols: int) -> int:
    g = int(gpu_chunk_symbols)
    if g < 1 or g % chunk_symbols:
        raise rs.ResultsError(f"--gpu-chunk-symbols {gpu_chunk_symbols} must be a multiple of the results store's "
                              f"chunk of {chunk_symbols} symbols")
    return g // chunk_symbols


class Feed:
    """The chunks still to submit, handed out per route: a GPU route takes runs of up to
    ``chunks_per_task`` consecutive chunks from the front, a CPU route beside it single chunks from
    the back (a single route takes them in order)."""

    def __init__(self, todo: list[int], routes: list[Route], make_task: Callable[[str, list[int]], ChunkTask]):
        from collections import deque

        self.todo = deque(sorted(todo))
        self.routes = routes
        self.n_chunks = len(self.todo)
        self._make = make_task

    def next(self, route: Route) -> ChunkTask | None:
        if not self.todo:
            return None
        if route.from_back:
            chunks = [self.todo.pop()]
        else:
            chunks = [self.todo.popleft()]
            while len(chunks) < route.chunks_per_task and self.todo and self.todo[0] == chunks[-1] + 1:
                chunks.append(self.todo.popleft())
        return self._make(route.backend, chunks)
