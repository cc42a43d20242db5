"""`atc plot`: one symbol of a results store, or a metric of a sweep store, as a picture.

Static images (PNG, SVG, PDF) are drawn with matplotlib (the `[viz]` extra), imported only when a
plot is asked for so that `atc --help` stays fast. Interactive HTML is drawn with bokeh: it is
already a dependency (Dask's dashboard needs it), so `--out x.html` works without any extra.

Long histories stay fast because no series is ever drawn point by point: each one is cut into
about one bucket per horizontal pixel, and a line keeps the minimum and the maximum of every
bucket (`pipeline.inspect.minmax_decimate`), which covers exactly the pixels the full line would;
colour bands (signals) show each bucket's mean. Stores are read by `pipeline.inspect`; this module
only draws.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Mapping, Optional

import numpy as np
import typer

from kernels.errors import ATCUserError

__all__ = ["PlotError", "direction_changes", "plot", "plot_symbol", "plot_sweep", "drawdown",
           "symbol_figure", "symbol_html", "sweep_figure", "sweep_html", "plot_walk_forward", "walk_forward_figure"]

WIDTH_IN, DPI = 13.0, 100
N_BUCKETS = 1200
"""Buckets per series: about the width in pixels of a panel's plotting area at WIDTH_IN x DPI."""
MARKER_BUCKETS = N_BUCKETS // 8
"""At most one marker per direction per this many buckets (~8 px): denser markers hide the price."""
STATIC = (".png", ".svg", ".pdf")
SIGNAL_CMAP = "RdYlGn"
FAMILY_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


class PlotError(ATCUserError, ValueError):
    """A plot that cannot be drawn as asked (missing matplotlib, bad output name, wrong options)."""


def _figure_class():
    """matplotlib's Figure, created without pyplot: no global state, no GUI backend (a saved
    Figure renders with Agg); in a notebook the returned figure still displays inline."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError("matplotlib is not installed: pip install 'atc-pipeline[viz]' "
                        "(or write --out FILE.html, drawn with bokeh)") from None
    return Figure


# --------------------------------------------------------------------------------------------
# Series derived for display
# --------------------------------------------------------------------------------------------

def direction_changes(avg: np.ndarray, long_threshold: float, short_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Bars where the trading direction flips, and the new direction (+1 / -1), by the backtest's
    own rule (`kernels.backtest.simulate`, fee 0, long and short), so markers agree with positions.
    The direction starts flat at the first bar shown, so the first crossing shown is always marked."""
    from kernels.backtest import simulate

    avg = np.ascontiguousarray(avg, dtype=np.float64)
    n = avg.size
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    pos, ret, eq = np.zeros(n), np.zeros(n), np.zeros(n)
    simulate(avg, np.ones(n), n, float(long_threshold), float(short_threshold), False, 0.0, pos, ret, eq)
    idx = np.flatnonzero(np.diff(pos) != 0) + 1
    return idx, pos[idx]


def thin_events(idx: np.ndarray, direction: np.ndarray, n: int, n_buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """At most one marker per direction per bucket (the first): a minute-bar history can flip
    direction 100,000 times, and as many markers would cost seconds and hide the price."""
    if idx.size <= n_buckets:
        return idx, direction
    size = -(-max(n, 1) // max(1, n_buckets))
    _, first = np.unique((idx // size) * 2 + (direction > 0), return_index=True)
    return idx[first], direction[first]


def drawdown(equity: np.ndarray) -> np.ndarray:
    """1 - equity / running peak (a positive fraction; NaN bars do not move the peak)."""
    e = np.asarray(equity, dtype=np.float64)
    peak = np.fmax.accumulate(np.where(np.isnan(e), -np.inf, e))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.isfinite(e) & (peak > 0), 1.0 - e / peak, np.nan)


def _bucket_edges(t: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Time edges of index buckets starting at `starts` (the last one ends one bar after the end)."""
    step = t[-1] - t[-2] if t.size > 1 else np.timedelta64(1, "D")
    return np.concatenate([t[starts], [t[-1] + step]])


def _lines(view) -> dict[str, Any]:
    """Everything a symbol plot draws, decimated: shared by the matplotlib and bokeh renderers."""
    from kernels.params import EQUITY_NAMES, SIGNAL_NAMES
    from pipeline.inspect import bucket_mean, minmax_decimate

    t = view.time
    s = view.series
    out: dict[str, Any] = {"t": t}

    def dec(y):
        i, v = minmax_decimate(y, N_BUCKETS)
        return t[i], v

    out["close"] = dec(view.close)
    starts, avg_mean = bucket_mean(s["Average_Signal"], N_BUCKETS)
    out["edges"] = _bucket_edges(t, starts) if t.size else t
    out["avg_band"] = avg_mean
    out["layer1"] = np.vstack([bucket_mean(s[n], N_BUCKETS)[1] for n in SIGNAL_NAMES]) if t.size else None
    out["layer2"] = {n: dec(s[n]) for n in EQUITY_NAMES}
    p = view.params
    idx, d = direction_changes(s["Average_Signal"], p.get("long_threshold", 0.1), p.get("short_threshold", -0.1))
    out["n_changes"] = (int((d > 0).sum()), int((d < 0).sum()))
    idx, d = thin_events(idx, d, t.size, MARKER_BUCKETS)
    out["changes"] = (t[idx], view.close[idx], d)
    if view.backtested:
        # both rebased to 1 at the first bar shown, so a --start window compares like with like
        eq = s["equity"] / s["equity"][0] if view.close.size else s["equity"]
        bh = view.close / view.close[0] if view.close.size else view.close
        out["equity"] = dec(eq)
        out["buy_hold"] = dec(bh)
        out["dd"] = dec(drawdown(eq))
        out["dd_bh"] = dec(drawdown(bh))
    return out


def _title(view) -> str:
    from pipeline.inspect import _time_text

    span = f"{_time_text(view.time[0])} .. {_time_text(view.time[-1])}" if view.time.size else "no bars"
    st = "" if view.status == "ok" else f"; status {view.status}" + (f" ({view.reason})" if view.reason else "")
    return f"{view.symbol}: {view.time.size:,} bars, {span}{st}"


# --------------------------------------------------------------------------------------------
# matplotlib
# --------------------------------------------------------------------------------------------

def symbol_figure(view):
    """Close with the Average_Signal band and direction changes; Layer-1 signals (one row per
    family); Layer-2 equities; with a backtest, strategy equity vs buy-and-hold and drawdown."""
    Figure = _figure_class()
    import matplotlib.dates as mdates

    from kernels.params import FAMILIES

    d = _lines(view)
    heights = [3.0, 1.4, 2.0] + ([2.0, 1.2] if view.backtested else [])
    h = 1.0 + sum(heights)
    fig = Figure(figsize=(WIDTH_IN, h), dpi=DPI)  # fixed margins: constrained layout costs ~1 s per save
    axes = fig.subplots(len(heights), 1, sharex=True, gridspec_kw={"height_ratios": heights})
    fig.subplots_adjust(left=0.075, right=0.99, top=1 - 0.35 / h, bottom=0.45 / h, hspace=0.32)
    num = lambda x: mdates.date2num(np.asarray(x, dtype="datetime64[ns]"))  # noqa: E731
    ax = axes[0]
    tc, c = d["close"]
    ax.plot(num(tc), c, color="black", lw=0.9, label="close")
    if view.time.size:
        lo, hi = np.nanmin(view.close), np.nanmax(view.close)
        pad = 0.04 * (hi - lo or abs(hi) or 1.0)
        ax.set_ylim(lo - pad, hi + pad)
        ax.pcolormesh(num(d["edges"]), np.array(ax.get_ylim()), d["avg_band"][None, :], cmap=SIGNAL_CMAP,
                      vmin=-1, vmax=1, alpha=0.35, shading="flat", zorder=0, rasterized=True)
    tt, yy, dd = d["changes"]
    up = dd > 0
    n_up, n_down = d["n_changes"]
    thinned = " (thinned: one marker per ~8 px)" if n_up + n_down > tt.size else ""
    ax.scatter(num(tt[up]), yy[up], marker="^", s=28, color="#1a9641", edgecolor="black", lw=0.4, zorder=3,
               label=f"turns long ({n_up:,})")
    ax.scatter(num(tt[~up]), yy[~up], marker="v", s=28, color="#d7191c", edgecolor="black", lw=0.4, zorder=3,
               label=f"turns short ({n_down:,}){thinned}")
    ax.set_ylabel("close")
    ax.legend(loc="best", fontsize=8, ncols=3)
    ax.set_title(_title(view) + " (background: Average_Signal, red -1 .. green +1)", fontsize=10, loc="left")

    ax = axes[1]
    if d["layer1"] is not None:
        ax.pcolormesh(num(d["edges"]), np.arange(len(FAMILIES) + 1) - 0.5, d["layer1"], cmap=SIGNAL_CMAP,
                      vmin=-1, vmax=1, shading="flat", rasterized=True)
    ax.set_yticks(range(len(FAMILIES)), [f"{f}_Signal" for f in FAMILIES], fontsize=7)
    ax.set_ylim(len(FAMILIES) - 0.5, -0.5)
    ax.set_title("Layer-1 family signals (red -1 .. green +1)", fontsize=9, loc="left")

    ax = axes[2]
    for (name, (tx, y)), col in zip(d["layer2"].items(), FAMILY_COLORS):
        ax.plot(num(tx), y, lw=0.8, color=col, label=name)
    _maybe_log(ax, [y for _, y in d["layer2"].values()])
    ax.set_ylabel("equity")
    ax.legend(loc="upper left", fontsize=7, ncols=6)
    ax.set_title("Layer-2 family equities", fontsize=9, loc="left")

    if view.backtested:
        ax = axes[3]
        te, e = d["equity"]
        tb, b = d["buy_hold"]
        ax.plot(num(te), e, color="#2166ac", lw=0.9, label="strategy equity")
        ax.plot(num(tb), b, color="grey", lw=0.9, label="buy and hold")
        _maybe_log(ax, [e, b])
        bt = view.backtest or {}
        ax.set_title(f"backtest, rebased to 1 at the first bar shown (fee {bt.get('fee_bps', '?')} bps, "
                     f"long_only {bt.get('long_only', '?')})",
                     fontsize=9, loc="left")
        ax.legend(loc="upper left", fontsize=8)
        ax = axes[4]
        tdd, dd_ = d["dd"]
        ax.fill_between(num(tdd), -dd_, 0, color="#d6604d", alpha=0.6, lw=0, label="strategy drawdown")
        tbb, bb = d["dd_bh"]
        ax.plot(num(tbb), -bb, color="grey", lw=0.7, label="buy and hold drawdown")
        ax.set_ylabel("drawdown")
        ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
        ax.legend(loc="lower left", fontsize=8)
    axes[-1].xaxis_date()
    axes[-1].xaxis.set_major_formatter(mdates.ConciseDateFormatter(axes[-1].xaxis.get_major_locator()))
    return fig


def _maybe_log(ax, ys: list[np.ndarray]) -> None:
    """Log scale for equities that span more than a factor of 10 (compounding reads as slopes
    there); plain numbers on the ticks either way."""
    from matplotlib.ticker import FuncFormatter

    y = np.concatenate([np.asarray(v, dtype=float) for v in ys]) if ys else np.zeros(0)
    y = y[np.isfinite(y)]
    if y.size and y.min() > 0 and y.max() / y.min() > 10:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _sel_text(sel: Mapping[str, Any], pooled: list[str]) -> str:
    parts = []
    if sel:
        parts.append(", ".join(f"{k}={_fmt(v)}" for k, v in sel.items()))
    parts.append("across symbols" + (" and " + ", ".join(pooled) if pooled else ""))
    return "; ".join(parts)


def sweep_figure(result, fixed: Mapping[str, Any] | None = None):
    """A heatmap (`SweepSurface`) with the best cell boxed, or a robustness curve (the dict of
    `sweep_curve`): median with the interquartile band."""
    Figure = _figure_class()
    from matplotlib.patches import Rectangle

    from pipeline.inspect import SweepSurface

    fig = Figure(figsize=(8.5, 6.0), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    foot = ("fixed: " + ", ".join(f"{k}={_fmt(v)}" for k, v in fixed.items())) if fixed else ""
    if isinstance(result, SweepSurface):
        s = result
        cmap = "viridis" if s.higher_is_better else "viridis_r"
        im = ax.imshow(s.values, origin="lower", cmap=cmap, aspect="auto")
        fig.colorbar(im, ax=ax, label=f"{s.agg} {s.metric}")
        ax.set_xticks(range(len(s.x_values)), [_fmt(v) for v in s.x_values])
        ax.set_yticks(range(len(s.y_values)), [_fmt(v) for v in s.y_values])
        ax.set_xlabel(s.x)
        ax.set_ylabel(s.y)
        if s.values.size <= 400:  # the numbers themselves, while they fit in their cells
            for (r, c), v in np.ndenumerate(s.values):
                rgba = im.cmap(im.norm(v)) if np.isfinite(v) else (1, 1, 1, 1)
                dark = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2] < 0.5
                ax.text(c, r, f"{v:.3g}", ha="center", va="center", fontsize=8, color="white" if dark else "black",
                        fontweight="bold" if s.best == (r, c) else "normal")
        if s.best is not None:
            r, c = s.best
            box = Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, ec="red", lw=3,
                            label=f"best: {s.x}={_fmt(s.x_values[c])}, {s.y}={_fmt(s.y_values[r])} "
                                  f"({s.agg} {s.metric} {s.values[r, c]:.4g})")
            ax.add_patch(box)
            ax.legend(handles=[box], loc="upper left", bbox_to_anchor=(0, -0.1), fontsize=8)
        ax.set_title(f"{s.agg} {s.metric} ({_sel_text(s.sel, s.pooled)})", fontsize=10)
    else:
        c = result
        xs = c["x_values"]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in xs)
        xpos = np.asarray(xs, dtype=float) if numeric else np.arange(len(xs))
        ax.fill_between(xpos, c["q25"], c["q75"], color="#92c5de", alpha=0.6, lw=0, label="interquartile range")
        ax.plot(xpos, c["median"], marker="o", color="#2166ac", label="median")
        med = np.where(np.isnan(c["median"]), -np.inf, c["median"] if c["higher_is_better"] else -c["median"])
        if np.isfinite(med).any():
            b = int(np.argmax(med))
            ax.plot([xpos[b]], [c["median"][b]], marker="*", ms=16, color="red", ls="none",
                    label=f"best median: {c['x']}={_fmt(xs[b])}")
        if not numeric:
            ax.set_xticks(xpos, [_fmt(v) for v in xs])
        ax.set_xlabel(c["x"])
        ax.set_ylabel(c["metric"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"{c['metric']} vs {c['x']} ({_sel_text(c['sel'], c['pooled'])})", fontsize=10)
    if foot:
        fig.text(0.01, 0.0, _wrap(foot, 150), fontsize=6.5, color="dimgray", va="bottom")
        fig.get_layout_engine().set(rect=(0, 0.06, 1, 0.94))
    return fig


def walk_forward_figure(view):
    """The stitched out-of-sample equity of a sweep's walk-forward (`pipeline.walk_forward`): test
    windows shaded by the combination chosen for them (labels where the choice changes), each
    window's choice in sample over its training window (grey, scaled to end where the stitched
    equity starts its test window, so its slope compares with the test window's), and below the
    Sharpe ratio of each window in and out of sample."""
    Figure = _figure_class()
    from matplotlib.patches import Patch

    import matplotlib.dates as mdates

    from pipeline.walk_forward import WF_METRICS

    t = mdates.date2num(np.asarray(view.times, dtype="datetime64[ns]"))  # days, for spans and bar widths
    fig = Figure(figsize=(WIDTH_IN, 7.5), dpi=DPI, layout="constrained")
    ax, bx = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    used = [w for w in range(len(view.selected)) if view.selected[w] >= 0]
    distinct = sorted({int(view.selected[w]) for w in used},
                      key=lambda c: (-int(np.sum(view.selected == c)), c))
    colors = {c: f"C{k % 10}" for k, c in enumerate(distinct)}
    label = {int(view.selected[w]): view.labels[w] for w in used}
    eq = view.oos_equity
    prev = None
    for w in used:
        a0, a1, b0, b1 = (int(v) for v in view.bounds[w])
        c = int(view.selected[w])
        ax.axvspan(t[b0], t[min(b1, len(t) - 1)], color=colors[c], alpha=0.12, lw=0)
        ax.axvline(t[b0], color="gray", lw=0.5, ls=":")
        if c != prev:
            ax.annotate(view.labels[w], (t[b0], 0.01), xycoords=("data", "axes fraction"), rotation=90,
                        fontsize=6.5, va="bottom", ha="left", color=colors[c])
        prev = c
        seg = view.is_equity[w, a0:a1]
        start = eq[b0 - 1] if b0 > 0 and np.isfinite(eq[b0 - 1]) else 1.0
        last = seg[np.isfinite(seg)]
        if last.size:
            ax.plot(t[a0:a1], seg * (start / last[-1]), color="gray", lw=0.7, alpha=0.6,
                    label="in sample: each window's choice on its training window" if w == used[0] else None)
    ok = np.isfinite(eq)
    m = view.oos_metrics
    ax.plot(t[ok], eq[ok], color="black", lw=1.6,
            label=f"stitched out of sample (Sharpe {m.get('sharpe', np.nan):.2f}, "
                  f"max drawdown {m.get('max_drawdown', np.nan):.1%})")
    if view.portfolio_equity is not None and np.isfinite(view.portfolio_equity).any():
        pe = view.portfolio_equity
        ax.plot(t[np.isfinite(pe)], pe[np.isfinite(pe)], color="#2166ac", lw=1.2, ls="--",
                label=f"portfolio per combination, its own walk-forward stitched out of sample (Sharpe "
                      f"{(view.portfolio_metrics or {}).get('sharpe', np.nan):.2f})")
    ax.set_ylabel("equity")
    ax.grid(alpha=0.3)
    h, lab = ax.get_legend_handles_labels()
    h += [Patch(color=colors[c], alpha=0.3) for c in distinct[:8]]
    lab += [label[c] for c in distinct[:8]]
    ax.legend(h, lab, fontsize=7, loc="upper left", ncol=2)
    _maybe_log(ax, [eq[ok]])
    k = WF_METRICS.index("sharpe")
    starts = np.array([t[int(view.bounds[w, 2])] for w in used])
    if len(used):
        widths = np.array([t[min(int(view.bounds[w, 3]), len(t) - 1)] - t[int(view.bounds[w, 2])] for w in used])
        bx.bar(starts, view.window_metrics[used, 0, k], width=widths * 0.45, align="edge", color="gray",
               label="in sample (training window)")
        bx.bar(starts + widths * 0.5, view.window_metrics[used, 1, k], width=widths * 0.45, align="edge",
               color="black", label="out of sample (test window)")
    bx.axhline(0, color="gray", lw=0.5)
    bx.xaxis_date()
    bx.set_ylabel("Sharpe per window")
    bx.legend(fontsize=7, loc="upper left")
    bx.grid(alpha=0.3)
    ax.set_title(f"walk-forward {view.spec}: {len(used)} windows, {len(distinct)} distinct combinations chosen "
                 f"(equal-weight average of the symbols)", fontsize=10)
    return fig


def plot_walk_forward(sweep: str | Path, out: str | Path | None = None):
    """Draw the stitched walk-forward of a sweep store (`walk_forward_figure`); returns the Figure
    and writes it to `out` if given (.png, .svg or .pdf)."""
    from pipeline.walk_forward import read_walk_forward

    out = Path(out) if out is not None else None
    ext = _check_out(out)
    if ext == ".html":
        raise PlotError("--walk-forward is drawn with matplotlib: use --out FILE.png, .svg or .pdf")
    _figure_class()
    fig = walk_forward_figure(read_walk_forward(sweep))
    if out is not None:
        _write(fig, out)
    return fig


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


# --------------------------------------------------------------------------------------------
# bokeh (interactive HTML)
# --------------------------------------------------------------------------------------------

def _palette(n: int = 256) -> list[str]:
    from bokeh.palettes import RdYlGn11

    return list(reversed(RdYlGn11))  # bokeh lists it green -> red; -1 must be red


def _html(layout, title: str) -> str:
    """A self-contained page (bokeh's JavaScript inlined): it opens without network access."""
    from bokeh.embed import file_html
    from bokeh.resources import INLINE

    return file_html(layout, INLINE, title)


def symbol_html(view) -> str:
    """The same panels as `symbol_figure`, zoomable, with a shared time axis."""
    from bokeh.layouts import column
    from bokeh.models import ColumnDataSource, HoverTool, LinearColorMapper
    from bokeh.plotting import figure

    from kernels.params import FAMILIES

    d = _lines(view)
    mapper = LinearColorMapper(palette=_palette(), low=-1, high=1)
    kw = dict(x_axis_type="datetime", sizing_mode="stretch_width", tools="xpan,xwheel_zoom,box_zoom,reset,save")
    p1 = figure(height=320, title=_title(view) + " (background: Average_Signal)", **kw)
    edges = d["edges"]
    if view.time.size:
        lo, hi = float(np.nanmin(view.close)), float(np.nanmax(view.close))
        p1.quad(left="left", right="right", bottom=lo, top=hi, fill_alpha=0.35, line_alpha=0,
                fill_color={"field": "v", "transform": mapper},
                source=ColumnDataSource({"left": edges[:-1], "right": edges[1:], "v": d["avg_band"]}))
    tc, c = d["close"]
    r = p1.line(tc, c, color="black", line_width=1.2, legend_label="close")
    p1.add_tools(HoverTool(renderers=[r], tooltips=[("time", "@x{%F %T}"), ("close", "@y{0.0000}")],
                           formatters={"@x": "datetime"}, mode="vline"))
    tt, yy, dd = d["changes"]
    p1.scatter(tt[dd > 0], yy[dd > 0], marker="triangle", size=8, color="#1a9641", legend_label="turns long")
    p1.scatter(tt[dd < 0], yy[dd < 0], marker="inverted_triangle", size=8, color="#d7191c", legend_label="turns short")
    p1.legend.location = "top_left"
    kw["x_range"] = p1.x_range
    p2 = figure(height=170, title="Layer-1 family signals", y_range=[f"{f}_Signal" for f in reversed(FAMILIES)], **kw)
    if d["layer1"] is not None:
        src = {"left": [], "right": [], "fam": [], "v": []}
        for k, f in enumerate(FAMILIES):
            src["left"].append(edges[:-1])
            src["right"].append(edges[1:])
            src["fam"].append(np.full(edges.size - 1, f"{f}_Signal", dtype=object))
            src["v"].append(d["layer1"][k])
        src = {k: np.concatenate(v) for k, v in src.items()}
        p2.hbar(y="fam", left="left", right="right", height=1.0, line_alpha=0, source=ColumnDataSource(src),
                fill_color={"field": "v", "transform": mapper})
    p3 = figure(height=220, title="Layer-2 family equities", **kw)
    for (name, (tx, y)), col in zip(d["layer2"].items(), FAMILY_COLORS):
        p3.line(tx, y, color=col, legend_label=name)
    p3.legend.location = "top_left"
    p3.legend.click_policy = "hide"
    panels = [p1, p2, p3]
    if view.backtested:
        p4 = figure(height=220, title="strategy equity vs buy and hold (rebased to 1 at the first bar shown)", **kw)
        p4.line(*d["equity"], color="#2166ac", legend_label="strategy equity")
        p4.line(*d["buy_hold"], color="grey", legend_label="buy and hold")
        p4.legend.location = "top_left"
        p5 = figure(height=150, title="drawdown", **kw)
        tdd, dd_ = d["dd"]
        p5.varea(x=tdd, y1=-dd_, y2=0, color="#d6604d", alpha=0.6, legend_label="strategy")
        p5.line(d["dd_bh"][0], -d["dd_bh"][1], color="grey", legend_label="buy and hold")
        p5.legend.location = "bottom_left"
        panels += [p4, p5]
    return _html(column(*panels, sizing_mode="stretch_width"), f"atc plot {view.symbol}")


def sweep_html(result, fixed: Mapping[str, Any] | None = None) -> str:
    """The heatmap (cells with hover values, best cell outlined) or the robustness curve, in bokeh."""
    from bokeh.layouts import column
    from bokeh.models import ColorBar, ColumnDataSource, Div, HoverTool, LinearColorMapper
    from bokeh.palettes import Viridis256
    from bokeh.plotting import figure

    from pipeline.inspect import SweepSurface

    if isinstance(result, SweepSurface):
        s = result
        xs, ys = [_fmt(v) for v in s.x_values], [_fmt(v) for v in s.y_values]
        p = figure(x_range=xs, y_range=ys, width=700, height=520, x_axis_label=s.x, y_axis_label=s.y,
                   title=f"{s.agg} {s.metric} ({_sel_text(s.sel, s.pooled)})", tools="hover,save,reset")
        finite = s.values[np.isfinite(s.values)]
        pal = Viridis256 if s.higher_is_better else list(reversed(Viridis256))
        mapper = LinearColorMapper(palette=pal, low=float(finite.min()) if finite.size else 0,
                                   high=float(finite.max()) if finite.size else 1, nan_color="lightgrey")
        rr, cc = np.meshgrid(range(len(ys)), range(len(xs)), indexing="ij")
        src = ColumnDataSource({"x": [xs[c] for c in cc.ravel()], "y": [ys[r] for r in rr.ravel()],
                                "v": s.values.ravel(), "n": s.samples.ravel()})
        p.rect("x", "y", 1, 1, source=src, fill_color={"field": "v", "transform": mapper}, line_color=None)
        p.select_one(HoverTool).tooltips = [(s.x, "@x"), (s.y, "@y"), (s.metric, "@v{0.0000}"), ("samples", "@n")]
        if s.best is not None:
            r, c = s.best
            p.rect([xs[c]], [ys[r]], 1, 1, fill_alpha=0, line_color="red", line_width=3,
                   legend_label=f"best: {s.x}={xs[c]}, {s.y}={ys[r]}")
        p.add_layout(ColorBar(color_mapper=mapper, title=s.metric), "right")
    else:
        c = result
        xs = c["x_values"]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in xs)
        xv = [float(v) for v in xs] if numeric else [_fmt(v) for v in xs]
        p = figure(width=800, height=450, x_axis_label=c["x"], y_axis_label=c["metric"],
                   title=f"{c['metric']} vs {c['x']} ({_sel_text(c['sel'], c['pooled'])})",
                   **({} if numeric else {"x_range": xv}))
        p.varea(x=xv, y1=c["q25"], y2=c["q75"], color="#92c5de", alpha=0.6, legend_label="interquartile range")
        p.line(xv, c["median"], color="#2166ac", line_width=2, legend_label="median")
        p.scatter(xv, c["median"], color="#2166ac", size=7)
    parts = [p]
    if fixed:
        parts.append(Div(text="fixed: " + ", ".join(f"{k}={_fmt(v)}" for k, v in fixed.items())))
    return _html(column(*parts), "atc plot sweep")


# --------------------------------------------------------------------------------------------
# Python entry points (notebooks) and the command
# --------------------------------------------------------------------------------------------

def _check_out(out: Path | None) -> str:
    if out is None:
        return ".png"
    ext = out.suffix.lower()
    if ext not in STATIC + (".html",):
        raise PlotError(f"--out {out}: unknown image type {ext or '(none)'!r}; use .png, .svg, .pdf or .html")
    return ext


def _write(fig_or_html: Any, out: Path) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(fig_or_html, str):
            out.write_text(fig_or_html, encoding="utf-8")
        else:
            fig_or_html.savefig(out, dpi=DPI)
    except OSError as exc:
        raise PlotError(f"--out {out}: cannot write ({exc.strerror or exc})") from None


def plot_symbol(results: str | Path, symbol: str, start: Any = None, end: Any = None,
                prices: str | Path | None = None, out: str | Path | None = None):
    """Draw one symbol of a results store; returns the matplotlib Figure (or the HTML text when
    `out` ends in .html) and writes it to `out` if given."""
    from pipeline.inspect import read_symbol

    out = Path(out) if out is not None else None
    ext = _check_out(out)
    if ext != ".html":
        _figure_class()  # fail before reading anything
    view = read_symbol(results, symbol, start, end, prices)
    made = symbol_html(view) if ext == ".html" else symbol_figure(view)
    if out is not None:
        _write(made, out)
    return made


def plot_sweep(sweep: str | Path, metric: str = "sharpe", x: str | None = None, y: str | None = None,
               agg: str = "median", sel: Mapping[str, Any] | list[str] | None = None,
               out: str | Path | None = None):
    """Heatmap of `metric` over `x` and `y` (or, without `y`, its median and IQR against `x`);
    `sel` fixes other swept parameters (a mapping or `["key=value", ...]`). Returns the Figure
    (or HTML text for an .html `out`)."""
    from pipeline.inspect import AGGREGATIONS, parse_sel, sweep_curve, sweep_setup, sweep_surface

    out = Path(out) if out is not None else None
    ext = _check_out(out)
    if agg not in AGGREGATIONS:
        raise PlotError(f"--agg must be one of {', '.join(AGGREGATIONS)}, got {agg!r}")
    dims, _, fixed = sweep_setup(sweep)
    if x is None:
        raise PlotError(f"a sweep plot needs --x (and --y for a heatmap), among the swept parameters: {', '.join(dims)}")
    if isinstance(sel, (list, tuple)) or sel is None:
        sel = parse_sel(sel, sweep)
    if ext != ".html":
        _figure_class()
    result = sweep_surface(sweep, metric, x, y, agg, sel) if y is not None else sweep_curve(sweep, metric, x, sel)
    made = sweep_html(result, fixed) if ext == ".html" else sweep_figure(result, fixed)
    if out is not None:
        _write(made, out)
    return made


def _default_out(store: Path, *parts: str) -> Path:
    stem = "-".join([store.name.removesuffix(".zarr"), *parts])
    return Path(re.sub(r"[^A-Za-z0-9._=-]+", "_", stem) + ".png")


def plot(
    store: Annotated[Path, typer.Argument(help="A results store (atc run) or a sweep store (atc sweep).",
                                          show_default=False, metavar="STORE")],
    symbol: Annotated[Optional[str], typer.Option("--symbol", help="Results store: the symbol to draw.")] = None,
    start: Annotated[Optional[str], typer.Option("--start", help="Results store: first time shown (e.g. 2021-01-01).")] = None,
    end: Annotated[Optional[str], typer.Option("--end", help="Results store: last time shown.")] = None,
    prices: Annotated[Optional[Path], typer.Option("--prices", help="Results store: its price store, if it "
                                                   "moved (default: the path recorded in the store).")] = None,
    metric: Annotated[str, typer.Option("--metric", help="Sweep store: the metric shown.")] = "sharpe",
    x: Annotated[Optional[str], typer.Option("--x", help="Sweep store: swept parameter on the x axis.")] = None,
    y: Annotated[Optional[str], typer.Option("--y", help="Sweep store: swept parameter on the y axis (heatmap); "
                                             "without it, a robustness curve against --x.")] = None,
    agg: Annotated[str, typer.Option("--agg", help="Sweep heatmap: median, mean, q25 or q75 over symbols "
                                     "(and over swept parameters not on an axis nor fixed by --sel).")] = "median",
    sel: Annotated[Optional[list[str]], typer.Option("--sel", help="Sweep store: fix a swept parameter, "
                                                     "key=value (repeatable).")] = None,
    walk_forward: Annotated[bool, typer.Option("--walk-forward", help="Sweep store: the stitched out-of-sample "
                                               "equity of its walk-forward (atc sweep --walk-forward).")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", help="Output file: .png, .svg, .pdf (matplotlib) or "
                                                ".html (interactive, bokeh). Default: STORE-name.png here.")] = None,
) -> None:
    """Draw a results store's symbol (close with Average_Signal band and direction changes, Layer-1
    signals, Layer-2 equities, and with a backtest the equity vs buy-and-hold and the drawdown), or
    a sweep store's metric as a heatmap over two parameters (best cell marked) or against one
    (median and interquartile band across symbols), or with --walk-forward a sweep's stitched
    out-of-sample equity. Long histories are decimated per pixel."""
    from pipeline.inspect import store_kind

    kind = store_kind(store)
    _check_out(out)
    if kind == "atc-results":
        if symbol is None:
            raise PlotError(f"{store} is a results store: give --symbol SYMBOL")
        extra = [o for o, v in (("--x", x), ("--y", y), ("--sel", sel), ("--walk-forward", walk_forward)) if v]
        if extra:
            raise PlotError(f"{', '.join(extra)} apply to sweep stores; {store} is a results store")
        out = out or _default_out(store, symbol)
        plot_symbol(store, symbol, start, end, prices, out)
    elif kind == "atc-sweep":
        extra = [o for o, v in (("--symbol", symbol), ("--start", start), ("--end", end), ("--prices", prices)) if v]
        if extra:
            raise PlotError(f"{', '.join(extra)} apply to results stores; {store} is a sweep store")
        if walk_forward:
            extra = [o for o, v in (("--x", x), ("--y", y), ("--sel", sel)) if v]
            if extra:
                raise PlotError(f"{', '.join(extra)} do not apply to --walk-forward")
            out = out or _default_out(store, "walk-forward")
            plot_walk_forward(store, out)
        else:
            out = out or _default_out(store, metric, *(v for v in (x, y) if v))
            plot_sweep(store, metric, x, y, agg, sel, out)
    else:
        raise PlotError(f"{store} is a price store: plot a results store (atc run) or a sweep store (atc sweep)")
    typer.echo(f"wrote {out}")
