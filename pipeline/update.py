"""`atc update`: extend a results store by the bars appended to its price store, exactly.

After `atc ingest --append`, the price store holds the old times plus new ones. The results store
keeps, in its `stream` group (pipeline/stream_store.py), the state each symbol's recurrences reached
at the old last time. An update advances that state over the new times (kernels.stream, one
compiled call per new time over all symbols) and writes only the new times' region, so the store
ends up equal, bit for bit, to a full `atc run` on the grown price store.

Some symbols cannot simply be advanced; they are recomputed from their whole history (the batch
kernel, with state capture) and named in the summary:

* revised: a past close changed in the price store (the per-symbol digest of the bars the state has
  seen differs);
* without a saved state: computed on a GPU, or too short to be computed at the last run (their
  early outputs change once they have enough bars, as a full run would give);
* no data or insufficient history before, with new bars now (their status changes).

Refused, with the command that works instead: an incomplete results store (`atc run` resumes it),
other parameters, dtype or code version, another symbol list, or a time axis that is not the old one
extended (`atc run ... --overwrite`). Updates run in-process (no cluster): they are small. The
results store's lock is held throughout; the outputs and backtest series of the new times (each
time chunk written once, then the time coordinate: `results_time.grow_time`), the trades, the state
and finally the root attributes (new price fingerprint) are written in that order, so an
interrupted update is finished by running it again.

What it reads: the price store's metadata and, of its close panel, only the times from the start of
the fingerprint block holding the old last time, when the price store's block digests before it
are those the state was computed from (`price_blocks` in the stream group; the per-symbol digests
cover the rest, see pipeline/stream_store.py), else the whole panel; whole rows for the symbols it
recomputes; the whole panel and `Average_Signal` for a backtest (its metrics cover every bar). So
a one-bar update of a 2,000 x 5,000 store costs about what process start-up and the imports cost.
It also carries the scan's newest values (the stream group's marks) over the new times.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kernels import status as st
from kernels.params import OUTPUT_NAMES, ATCParams
from pipeline import results as rs


class UpdateError(rs.ResultsError):
    """An update that cannot continue the results store (the message says what works instead)."""


@dataclass
class UpdateSummary:
    results: Path
    action: str  # "updated" or "up to date"
    n_symbols: int
    n_old: int
    n_new: int
    recomputed: dict[str, list[str]] = field(default_factory=dict)  # reason -> symbols
    seconds: float = 0.0

    def describe(self) -> str:
        if self.action == "up to date":
            return f"{self.results}: already up to date with its price store ({self.n_old} times)"
        lines = [f"{self.results}: {self.n_new - self.n_old} new time(s) for {self.n_symbols} symbols "
                 f"({self.n_old} -> {self.n_new} times) in {self.seconds:.2f} s"]
        for why, syms in self.recomputed.items():
            shown = ", ".join(syms[:10]) + (f" and {len(syms) - 10} more" if len(syms) > 10 else "")
            lines.append(f"  recomputed from their history ({why}): {shown}")
        return "\n".join(lines)


def _status_messages(res, index: np.ndarray) -> list[str]:
    """Reasons as `atc run` stores them, naming each symbol by its index in the whole store."""
    out = []
    for j in range(len(index)):
        code = int(res.status[j])
        msg = res.messages.get(j, "").replace(f"(index {j})", f"(index {int(index[j])})")
        out.append("" if code == st.OK else f"{st.STATUS_NAMES[code]}: {msg}")
    return out


def _open_price_group(prices: str | os.PathLike):
    """The price store as a Zarr group (its metadata and close panel are all an update reads; xarray
    is not needed), with the errors `open_prices` gives."""
    import zarr

    from pipeline.price_format import FORMAT_NAME, StoreError

    path = Path(prices)
    if not path.exists():
        raise StoreError(f"{prices}: no such price store")
    try:
        pg = zarr.open_group(str(path), mode="r", zarr_format=3, use_consolidated=False)
        fmt = pg.attrs.get("atc_format")
    except Exception as exc:  # noqa: BLE001 - any unreadable directory: say what it is not
        raise StoreError(f"{prices}: not a readable Zarr v3 store ({type(exc).__name__})") from None
    if fmt != FORMAT_NAME or "close" not in pg:
        raise StoreError(f"{prices}: not a price store (attribute atc_format is {fmt!r})")
    return pg


def update_results(prices: str | os.PathLike, results: str | os.PathLike) -> UpdateSummary:
    """Extend the complete results store `results` by the times its price store `prices` gained."""
    import contextlib
    from concurrent.futures import ThreadPoolExecutor

    # The store reads that do not need the kernels (the stream state, the closes, the blocks of the
    # outputs' last time chunks) run on threads while the main thread imports Numba and loads the
    # stream kernels: reading and decoding release the GIL, importing holds it (2026-11-29, 2 cores).
    with ThreadPoolExecutor(2) as pool, contextlib.ExitStack() as numba_scope:
        return _update(prices, results, pool, numba_scope)


def _update(prices, results, pool, numba_scope) -> UpdateSummary:
    import zarr

    from kernels.params import FAMILIES
    from pipeline import stream_store as ss
    from pipeline.price_format import FINGERPRINT_BLOCK
    from pipeline.results_time import grow_time, read_tail_blocks

    t_start = time.perf_counter()
    results_path = Path(results)
    if not results_path.exists():
        raise UpdateError(f"{results}: no such results store; create it with `atc run {prices} {results}`")
    with rs.ResultsLock(results_path):
        state_info = rs.read_state(results_path)
        attrs = state_info.attrs
        if not state_info.complete:
            raise UpdateError(f"{results} is not complete ({int((~state_info.chunk_done).sum())} chunks to go): "
                              f"finish it with `atc run {prices} {results}` (it resumes), then update")
        if attrs.get("code_version") != rs.code_version():
            raise UpdateError(f"{results} was computed by code version {attrs.get('code_version')!r}, this is "
                              f"{rs.code_version()!r}: recompute it with `atc run {prices} {results} --overwrite`")
        params = ATCParams(**json.loads(attrs["params"]))
        dtype = np.dtype(attrs["dtype"])
        pg = _open_price_group(prices)
        p_fp = str(pg.attrs.get("fingerprint"))
        p_symbols = [str(s) for s in pg["symbol"][:]]
        if p_fp == attrs.get("prices_fingerprint"):
            return UpdateSummary(results_path, "up to date", len(p_symbols), state_info.n_time, state_info.n_time)
        p_times = rs.time_values(pg).astype("datetime64[ns]")
        rg = zarr.open_group(str(results_path), mode="r", zarr_format=3, use_consolidated=False)
        r_symbols = [str(s) for s in rg["symbol"][:]]
        r_times = rs.time_values(rg).astype("datetime64[ns]")
        status_old = np.asarray(rg["status"][:], np.int8)
        n_sym = len(r_symbols)
        if p_symbols != r_symbols:
            added = sorted(set(p_symbols) - set(r_symbols))
            removed = sorted(set(r_symbols) - set(p_symbols))
            raise UpdateError(f"the symbols of {prices} changed ({len(added)} added, {len(removed)} removed"
                              + (", order changed" if not added and not removed else "")
                              + f"): recompute with `atc run {prices} {results} --overwrite`")
        have_stream = ss.has_stream(results_path)
        if have_stream:
            sg = zarr.open_group(str(results_path / ss.GROUP), mode="r", zarr_format=3, use_consolidated=False)
            sattrs, stored = dict(sg.attrs), set(sg.array_keys())
            n_old = int(sattrs["n_time"])
        else:
            sattrs, stored = {}, set()
            n_old = len(r_times)
        if (len(p_times) < len(r_times) or not np.array_equal(p_times[:len(r_times)], r_times)
                or n_old > len(r_times)):
            raise UpdateError(f"the time axis of {prices} is not the results store's with new times appended "
                              f"(bars inserted or removed in the past): recompute with "
                              f"`atc run {prices} {results} --overwrite`")
        n_new = len(p_times)

        # The digests cover the closes from `h0` on: from `head` when the price store's fingerprint
        # blocks before it are the ones the state was computed from (no close there changed), else
        # from 0. The closes read: from `h0`, or all of them for a backtest (metrics over the whole
        # history).
        head = ss.head_time(n_old)
        old_blocks, new_blocks = sattrs.get("price_blocks"), pg.attrs.get("fingerprint_blocks")
        nb = head // FINGERPRINT_BLOCK
        blocks_ok = ("hist_head" in stored and old_blocks is not None and new_blocks is not None
                     and len(old_blocks) >= nb and len(new_blocks) >= nb and list(old_blocks[:nb]) == list(new_blocks[:nb]))
        h0 = head if blocks_ok else 0
        start = 0 if attrs.get("backtest") else h0
        zclose = pg["close"]
        reading = {"close": pool.submit(lambda: np.asarray(zclose[:, start:], np.float64)),
                   "tails": pool.submit(read_tail_blocks, results_path, n_old, n_new)}
        if have_stream:
            reading["stream"] = pool.submit(ss.read_stream_arrays, results_path)
        from pipeline.kernel_load import cache_loads_without_registries, load_stream_kernels

        numba_scope.enter_context(cache_loads_without_registries())  # imports Numba: after the reads started
        from kernels.stream import StreamState, build_stream

        load_stream_kernels(params, dtype)  # meanwhile the threads read
        if have_stream:
            state, extras, sattrs = ss.stream_from_arrays(*reading["stream"].result())
            have = extras["have"]
            if sattrs.get("params") != json.dumps(params.to_dict(), sort_keys=True) or sattrs.get("dtype") != dtype.name:
                have[:] = False  # a state of other parameters cannot continue this store
            if sattrs.get("writing"):  # an update stopped while writing it: some symbols' state is newer
                have[:] = False
        else:
            state, extras = StreamState.empty(n_sym, params, dtype), {}
            have = np.zeros(n_sym, bool)
        hist_hash = extras.get("hist_hash", np.zeros(n_sym, np.uint64))
        state.status[~have & (status_old == st.BAD_DATA)] = st.BAD_DATA  # stays bad, as a full run says
        close = reading["close"].result()
        head_hash = np.array(extras["hist_head"], np.uint64) if blocks_ok else np.zeros(n_sym, np.uint64)

        new_bars = np.count_nonzero(~np.isnan(close[:, n_old - start:]), axis=1)
        # each time's closes are hashed once: the digests are wrapping sums over times, split at
        # n_old and at the new head (see stream_store.history_hashes)
        h1 = ss.head_time(n_new)
        cuts = sorted({h0, h1, n_old, n_new})  # h0 <= h1 < n_new, h0 <= n_old
        part = {(a, b): ss.history_hashes(close[:, a - start:b - start], a) for a, b in zip(cuts, cuts[1:])}

        def digest(a: int, b: int) -> np.ndarray:  # of the times [a, b), a and b among the cuts
            return sum((v for (c, d), v in part.items() if a <= c and d <= b), np.zeros(n_sym, np.uint64))

        revised = have & (head_hash + digest(h0, n_old) != hist_hash)
        was_short = (status_old != st.OK) & (status_old != st.BAD_DATA) & (new_bars > 0)
        why = {"revised past bars": revised, "no saved state": ~have & ~was_short & (status_old != st.BAD_DATA),
               "enough bars now or a first bar": was_short}
        recompute = np.zeros(n_sym, bool)
        for mask in why.values():
            recompute |= mask

        # every symbol advances over the new times (recomputed ones are overwritten below)
        k = n_new - n_old
        names = rs.stored_outputs(attrs)  # `atc run --outputs` may have kept fewer than the 13
        outs = np.empty((len(OUTPUT_NAMES), n_sym, k), dtype)
        for j in range(k):
            o = state.advance(close[:, n_old - start + j])
            for c, name in enumerate(OUTPUT_NAMES):
                outs[c, :, j] = o[name]
        fam_c = [OUTPUT_NAMES.index(f"{f}_Signal") for f in FAMILIES]
        old_marks = ({m: extras[m] for m in ss.MARKS} if set(ss.MARKS) <= set(extras)
                     else {m: np.full((n_sym,) + shape, fill, dt) for m, (dt, fill, shape) in ss.MARKS.items()})
        marks = ss.advance_marks(old_marks, outs[OUTPUT_NAMES.index("Average_Signal")], [outs[c] for c in fam_c],
                                 close[:, n_old - start:], params, n_old)
        idx = np.flatnonzero(recompute)
        rows = None
        if idx.size:
            full = close[idx] if start == 0 else np.asarray(zclose.get_orthogonal_selection((idx, slice(None))),
                                                            np.float64)
            res_r, st_r = build_stream(full, params, dtype=dtype, symbols=[r_symbols[i] for i in idx])
            for name in ("t", "xo", "x", "fam", "ring", "prev", "avg", "status"):
                getattr(state, name)[idx] = getattr(st_r, name)
            rows = res_r
            outs[:, idx, :] = np.stack([res_r[name][:, n_old:] for name in OUTPUT_NAMES])
            head_hash[idx] = ss.history_hashes(full[:, :h0])  # their head (0 when h0 is): read anyway
            rm = ss.newest_marks(res_r["Average_Signal"], [res_r[f"{f}_Signal"] for f in FAMILIES], full, params)
            for m in ss.MARKS:
                marks[m][idx] = rm[m]

        # write: the new times of every (symbol, time) variable with the time axis (each chunk once),
        # recomputed rows, per-symbol status; nothing is written while the threads still read
        tails = reading["tails"].result()
        if attrs.get("backtest"):  # a portfolio's series (on time alone) cannot follow the axis: recomputed below
            from pipeline.portfolio_store import drop_portfolio

            drop_portfolio(results_path, keep_settings=True)
        g = zarr.open_group(str(results_path), mode="r+", zarr_format=3, use_consolidated=False)
        values = {name: outs[c] for c, name in enumerate(OUTPUT_NAMES) if name in names}
        full = {name: rows[name] for name in values} if rows is not None else {}
        status_new = status_old.copy()
        if rows is not None:
            status_new[idx] = np.asarray(rows.status, np.int8)
        bt = None
        if attrs.get("backtest"):
            a = OUTPUT_NAMES.index("Average_Signal")
            avg = np.concatenate([np.asarray(g["Average_Signal"][:, :n_old]), outs[a]], axis=1)
            if rows is not None:
                avg[idx] = rows["Average_Signal"]
            bt = _backtest(avg, close, p_times, params, json.loads(attrs["backtest"]), status_new)
            for name in bt.series:
                values[name] = bt.series[name][:, n_old:]
                full[name] = bt.series[name][idx]
        grow_time(results_path, p_times, n_old, values, rows=(idx, full) if idx.size else None,
                  # finalize_results consolidates; the portfolio refresh reads it through xarray before
                  blocks=tails, consolidate=bool(attrs.get("backtest")))
        if rows is not None:
            g["status"].oindex[idx] = status_new[idx]
            g["reason"].oindex[idx] = np.array(_status_messages(rows, idx), dtype=object)
        identity = rs.RunIdentity(params, p_fp, dtype.name, rs.code_version(), attrs.get("backtest") or "",
                                  attrs.get("outputs", "all"))
        if bt is not None:
            for name, v in bt.metrics.items():
                g[name][:] = v
            from pipeline.trades_store import update_trades

            update_trades(results_path, close, bt.position, json.loads(attrs["backtest"])["fee_bps"], n_old, idx,
                          str(attrs.get("fingerprint")), identity.fingerprint())
        unknown = np.flatnonzero(marks["last_bar"] == -2)
        if unknown.size:  # a store written before the marks, or GPU-computed symbols: found once, by a walk
            from pipeline.scan import store_marks

            got = store_marks(g, unknown, params, zclose)
            for m in ss.MARKS:
                marks[m][unknown] = got[m]

        digests = {"hist_hash": head_hash + digest(h0, n_new), "hist_head": head_hash + digest(h0, h1)}
        extras_new = {"have": np.ones(n_sym, bool), **digests, **marks}
        sattrs_new = ss.stream_attrs(params, dtype.name, n_new, p_fp,
                                     list(new_blocks) if new_blocks is not None else None)
        if not have_stream:
            ss.create_stream_group(results_path, n_sym, state_info.chunk_symbols, params, dtype.name, n_new, p_fp)
        ss.write_stream(results_path, state, extras_new, sattrs_new)
        if attrs.get("backtest"):  # the portfolio from the grown store, before the attributes say it is done
            from pipeline.portfolio_store import refresh_after_update

            refresh_after_update(results_path, prices, identity.fingerprint())
        counts_by_name = {rs.STATUS_FLAGS[c]: int(np.count_nonzero(status_new == c))
                          for c in sorted(rs.STATUS_FLAGS) if c != rs.NOT_COMPUTED}
        rs.finalize_results(results_path, {
            "prices_fingerprint": p_fp, "fingerprint": identity.fingerprint(), "updated": rs.utc_now(),
            "status_counts": json.dumps(counts_by_name),
        })
        recomputed = {w: [r_symbols[i] for i in np.flatnonzero(m)] for w, m in why.items() if m.any()}
        return UpdateSummary(results_path, "updated", n_sym, n_old, n_new, recomputed,
                             time.perf_counter() - t_start)


@dataclass
class _Backtest:
    series: dict[str, np.ndarray]  # the BACKTEST_SERIES over the whole new axis
    metrics: dict[str, np.ndarray]
    position: np.ndarray


def _backtest(avg: np.ndarray, close: np.ndarray, times: np.ndarray, params: ATCParams, settings: dict,
              status: np.ndarray) -> _Backtest:
    """Positions, returns and equity over the whole extended signal ``avg`` (in memory), and every
    symbol's metrics over its whole history: the backtest a full run computes (its earlier bars
    cannot change: positions depend only on the past, so only the new times and recomputed rows
    of the series are written)."""
    from kernels.backtest import BACKTEST_SERIES, BacktestParams, run_backtest
    from kernels.metrics import periods_per_year_by_symbol

    ppy = settings.get("periods_per_year")
    if ppy is None:
        ppy = periods_per_year_by_symbol(times, close)
    bt = run_backtest(close, avg, params, BacktestParams(fee_bps=settings["fee_bps"], long_only=settings["long_only"]),
                      periods_per_year=ppy, ok=status == st.OK)
    return _Backtest({name: bt[name] for name in BACKTEST_SERIES}, dict(bt.metrics), np.asarray(bt["position"]))
