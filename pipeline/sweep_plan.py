"""Block planning for a sweep: how many combinations one task covers, and which.

A task is one symbol chunk x one block of combinations (a hyper-rectangle of the grid); blocks
are chosen so that tasks cost the same (`block_shape_for`), and stores written before even tasks
keep their block rule (`legacy_block_shape_for`) so that they resume.
"""

from __future__ import annotations

import itertools
import math

__all__ = ["DEFAULT_COMBOS_PER_TASK", "MA_PASS_COST", "SIGNAL_BUDGET_BYTES", "block_shape_for",
           "legacy_block_shape_for", "plan_blocks"]

DEFAULT_COMBOS_PER_TASK = 256
SIGNAL_BUDGET_BYTES = 64 * 2**20
"""With --save-signals, combinations per task are capped so that a task's cube stays below this."""


def legacy_block_shape_for(shape: tuple[int, ...], combos_per_task: int) -> tuple[int, ...]:
    """The block rule of stores written before even tasks: whole trailing dims while they fit in
    `combos_per_task`, then part of the next dim, 1 for the leading ones."""
    out = [1] * len(shape)
    prod = 1
    budget = max(1, int(combos_per_task))
    for i in reversed(range(len(shape))):
        if prod * shape[i] <= budget:
            out[i] = shape[i]
            prod *= shape[i]
        else:
            out[i] = max(1, budget // prod)
            break
    return tuple(out)


MA_PASS_COST = 2.5
"""Cost of one set of lengths' crossover pass in a task, in combinations: docs/BACKTEST.md measures
a whole `compute_atc` at ~225 ms and a new La or De at ~68 ms on the same panel, so the moving
averages and states are ~2.3 combinations. A block that repeats a set of lengths already in
another block pays it again."""
_MAX_CANDIDATES = 200_000


def block_shape_for(shape: tuple[int, ...], combos_per_task: int, *, dims: tuple[str, ...] | None = None,
                    chunk_sizes: tuple[int, ...] = (1,), slots: int = 1) -> tuple[int, ...]:
    """Block of combinations per task (a hyper-rectangle of at most `combos_per_task`), chosen so
    that the tasks cost the same.

    A task's cost is (combinations + `MA_PASS_COST` x the sets of lengths among them) x the symbols
    of its chunk (`chunk_sizes`, one per symbol chunk). Per dim, a block size is one of
    `ceil(n / m)` (m pieces); among the shapes within the budget the one with the smallest
    estimated wall time on `slots` cores wins: rounds of tasks (`ceil(tasks / slots)`) x the
    largest task, which is the wall time of equal tasks and penalises a short last block along a
    dim (the old rule's (3, 100) grid in blocks of 200 gave tasks of 200 and 100 side by side);
    ties go to less total work, then fewer blocks. Large grids (too many shapes to try) fall back
    to `legacy_block_shape_for`.
    """
    budget = max(1, int(combos_per_task))
    d = len(shape)
    if d == 0:
        return ()
    dims = tuple(dims) if dims is not None else ("",) * d
    from kernels.sweep import LENGTH_PARAMS

    is_len = [name in LENGTH_PARAMS for name in dims]
    cands = [sorted({-(-n // m) for m in range(1, n + 1)}) for n in shape]
    if math.prod(len(c) for c in cands) > _MAX_CANDIDATES:
        return legacy_block_shape_for(shape, budget)
    chunks = [int(c) for c in chunk_sizes if c > 0] or [1]
    n_chunks, big_chunk, sum_chunks = len(chunks), max(chunks), sum(chunks)
    slots = max(1, int(slots))
    best_key, best = None, None
    for b in itertools.product(*cands):
        if math.prod(b) > budget:
            continue
        # per dim: q full pieces of b and maybe one remainder r; blocks are products of the pieces
        pieces = [[(bi, n // bi)] + ([(n % bi, 1)] if n % bi else []) for n, bi in zip(shape, b)]
        n_blocks = math.prod(sum(c for _, c in p) for p in pieces)
        total = big = 0.0
        for combo in itertools.product(*pieces):
            size = math.prod(sz for sz, _ in combo)
            sets = math.prod(sz for (sz, _), ln in zip(combo, is_len) if ln)
            cost = size + MA_PASS_COST * sets
            count = math.prod(c for _, c in combo)
            total += cost * count
            big = max(big, cost)
        n_tasks = n_blocks * n_chunks
        wall = math.ceil(n_tasks / slots) * big * big_chunk
        key = (round(wall, 6), round(total * sum_chunks, 6), n_blocks, tuple(-x for x in reversed(b)))
        if best_key is None or key < best_key:
            best_key, best = key, b
    return tuple(best) if best is not None else (1,) * d


def plan_blocks(shape: tuple[int, ...], bshape: tuple[int, ...]) -> list[tuple[tuple[int, int], ...]]:
    """The blocks of a grid, as ((start, stop) per dim), in C order."""
    ranges = [[(lo, min(lo + b, n)) for lo in range(0, n, b)] for n, b in zip(shape, bshape)]
    return list(itertools.product(*ranges))
