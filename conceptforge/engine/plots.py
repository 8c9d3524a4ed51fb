"""Curves of a run drawn with matplotlib (Agg, no display): losses per step by
phase, mask IoU per E-step, mask area per concept. Each function returns PNG bytes."""

from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np

FIGSIZE = (4.3, 3.3)
DPI = 100


MARKERS = "osD^vP*Xph"


def _style(k: int) -> dict[str, Any]:
    """Line k's colour and marker; earlier lines are drawn wider, so equal curves stay visible under later ones."""
    return {"color": f"C{k % 10}", "marker": MARKERS[k % len(MARKERS)], "markersize": max(3.0, 7.0 - k), "linewidth": max(1.3, 3.0 - 0.6 * k)}


def _figure(title: str, xlabel: str, ylabel: str, figsize: tuple[float, float] = FIGSIZE):
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over `window` values (shorter at the start)."""
    v = np.asarray(values, np.float64)
    if window <= 1 or len(v) < 3:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def _legend(ax, n: int, handles: list | None = None) -> None:
    """The legend below the axes, in as many columns as fit."""
    if n:
        ax.figure.legend(handles=handles, fontsize=8, ncol=min(3, n), loc="outside lower center", frameon=False, handlelength=2.2)


def losses_png(steps: list[dict[str, Any]], estep_steps: Sequence[int] = ()) -> bytes:
    """Loss, diffusion and attention terms against the step, the joint phase drawn
    after the EM phase (a dashed line between them), smoothed lines over faint raw
    values, E-steps marked by dotted lines."""
    fig, ax = _figure("training losses", "step (EM, then joint)", "loss (log scale)")
    em_last = max((s["step"] for s in steps if s.get("phase") == "em"), default=0)
    colours = {"loss": "C0", "diffusion": "C1", "attention": "C2"}
    styles = {"em": "-", "joint": "--"}
    drawn = 0
    for phase in ("em", "joint"):
        rows = sorted((s for s in steps if s.get("phase") == phase), key=lambda s: s["step"])
        if not rows:
            continue
        x = np.array([s["step"] + (em_last if phase == "joint" else 0) for s in rows])
        window = max(1, len(rows) // 10)
        for key, colour in colours.items():
            vals = [s.get(key) for s in rows]
            if any(v is None for v in vals):
                continue
            y = np.maximum(np.asarray(vals, np.float64), 1e-8)
            ax.plot(x, y, color=colour, alpha=0.12, linewidth=0.7)
            ax.plot(x, _smooth(y, window), color=colour, linestyle=styles[phase], linewidth=1.8, label=f"{key} ({phase})")
            drawn += 1
    if drawn:
        from matplotlib.ticker import FuncFormatter, NullFormatter, NullLocator

        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 0.01, not 10^-2 in mathtext (slow to lay out)
        ax.yaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_minor_formatter(NullFormatter())
    else:
        ax.text(0.5, 0.5, "no training steps yet", ha="center", va="center", transform=ax.transAxes)
    for s in estep_steps:
        if s > 0:
            ax.axvline(s, color="0.5", linestyle=":", linewidth=0.8)
    if em_last and any(s.get("phase") == "joint" for s in steps):
        ax.axvline(em_last, color="black", linestyle="--", linewidth=1.0)
    _legend(ax, drawn)
    return _png(fig)


def iou_png(records: list[dict[str, Any]]) -> bytes:
    """Per concept (a colour): IoU with its GT mask (solid) and with the previous E-step's mask (dashed), against the step."""
    from matplotlib.lines import Line2D

    fig, ax = _figure("mask IoU per E-step", "step", "IoU")
    ax.set_ylim(-0.03, 1.03)
    handles, styles = [], set()
    for k, (key, pts) in enumerate(_series(records).items()):
        style = _style(k)
        colour = style["color"]
        gt = [(s, m["iou_gt"]) for s, m in pts if m.get("iou_gt") is not None]
        prev = [(s, m["iou_prev"]) for s, m in pts if m.get("iou_prev") is not None]
        if gt:
            ax.plot(*zip(*gt), **style)
            styles.add("gt")
        if prev:
            ax.plot(*zip(*prev), color=colour, marker="x", markersize=5, linewidth=1.1, linestyle="--")
            styles.add("prev")
        if gt or prev:
            handles.append(Line2D([], [], color=colour, marker=style["marker"], linewidth=3, label=key))
    if "gt" in styles:
        handles.append(Line2D([], [], color="black", linewidth=1.8, label="vs GT mask"))
    if "prev" in styles:
        handles.append(Line2D([], [], color="black", marker="x", markersize=5, linewidth=1.1, linestyle="--", label="vs previous E-step"))
    if not handles:
        ax.text(0.5, 0.5, "needs two E-steps or a GT mask", ha="center", va="center", transform=ax.transAxes)
    _legend(ax, len(handles), handles)
    return _png(fig)


def area_png(records: list[dict[str, Any]]) -> bytes:
    """Per concept: the share of its image its mask covers, against the step."""
    fig, ax = _figure("mask area per concept", "step", "area (% of image)")
    ax.set_ylim(-2, 102)
    series = _series(records)
    for k, (key, pts) in enumerate(series.items()):
        ax.plot([s for s, _ in pts], [100 * m["area"] for _, m in pts], label=key, **_style(k))
    if not series:
        ax.text(0.5, 0.5, "no E-step yet", ha="center", va="center", transform=ax.transAxes)
    _legend(ax, len(series))
    return _png(fig)


def iou_gt_png(concepts: list[dict[str, Any]], title: str, figsize: tuple[float, float] = FIGSIZE) -> bytes:
    """IoU with the GT mask against the step, one line per concept (`iou_curves` output)."""
    fig, ax = _figure(title, "step", "IoU with GT mask", figsize)
    ax.set_ylim(-0.03, 1.03)
    for k, c in enumerate(concepts):
        ax.plot(c["steps"], c["iou"], label=f"{c['image']} {c['token']}", **_style(k))
    if not concepts:
        ax.text(0.5, 0.5, "no concept has a GT mask", ha="center", va="center", transform=ax.transAxes)
    _legend(ax, len(concepts))
    return _png(fig)


def _series(records: list[dict[str, Any]]) -> dict[str, list[tuple[int, dict[str, Any]]]]:
    """'image token' -> [(step, mask record)] over the E-steps, in order."""
    out: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for rec in records:
        for m in rec.get("masks", []):
            out.setdefault(f"{m['image']} {m['token']}", []).append((rec["step"], m))
    return out
