"""The report page: one HTML document, pictures inline as data URIs, no script,
nothing fetched. Every text read from the project is escaped."""

from __future__ import annotations

import time
from html import escape
from typing import Any

from .. import pictures
from .cells import CELL, Pictures
from .checks import CHANGE_IOU, Finding, big_change
from .model import ConceptRow, ImageBlock, RunView

REFRESH_S = 30  # a running run's report reloads itself this often

CSS = """
:root { --fg: #1d2430; --muted: #5b6472; --line: #d9dee5; --warn: #f08c00; --bad: #c92a2a; --ok: #2b8a3e; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: var(--fg); margin: 0; background: #f6f7f9; }
main { max-width: 1500px; margin: 0 auto; padding: 16px 24px 40px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 28px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 15px; margin: 0 0 8px; }
code { font: 13px/1.3 ui-monospace, "DejaVu Sans Mono", monospace; }
.meta { color: var(--muted); }
.meta b { color: var(--fg); font-weight: 600; }
nav a { margin-right: 14px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600; color: white; background: var(--muted); vertical-align: middle; }
.badge.finished { background: var(--ok); } .badge.running { background: #1c7ed6; } .badge.failed, .badge.interrupted { background: var(--bad); }
.panel { background: white; border: 1px solid var(--line); border-radius: 6px; padding: 12px 14px; margin-bottom: 14px; }
.findings { margin: 0; padding-left: 20px; } .findings li { margin: 3px 0; }
.findings .kind { display: inline-block; min-width: 78px; font-weight: 600; color: var(--bad); }
.allgood { color: var(--ok); font-weight: 600; }
.curves { display: flex; flex-wrap: wrap; gap: 12px; }
.curves img { background: white; border: 1px solid var(--line); border-radius: 4px; }
.legend { color: var(--muted); margin: 0 0 12px; }
.legend .bar { display: inline-block; width: 90px; height: 10px; vertical-align: middle; border: 1px solid #888; background: linear-gradient(to right, HEAT); }
.legend .changed-key { display: inline-block; width: 14px; height: 14px; vertical-align: middle; border: 3px solid var(--warn); }
.block { display: flex; gap: 18px; align-items: flex-start; }
.head { flex: 0 0 auto; width: 196px; }
.head img { display: block; image-rendering: pixelated; border: 1px solid var(--line); }
.head p { margin: 6px 0 0; font-size: 13px; }
.scroll { overflow-x: auto; }
table.masks { border-collapse: separate; border-spacing: 6px 4px; }
table.masks th { font-weight: 600; text-align: center; vertical-align: bottom; }
table.masks th small { display: block; font-weight: 400; color: var(--muted); }
table.masks th.concept { text-align: left; vertical-align: middle; min-width: 120px; padding-right: 8px; font-weight: 400; }
.swatch { display: inline-block; width: 12px; height: 12px; border: 1px solid #444; vertical-align: middle; margin-right: 4px; }
.flag { color: var(--bad); font-weight: 600; }
td.cell { vertical-align: top; padding: 3px; border: 3px solid transparent; border-radius: 4px; background: white; }
td.cell.changed { border-color: var(--warn); }
td.cell img { display: block; width: CELLpx; height: CELLpx; object-fit: contain; image-rendering: pixelated; background: #222; }
td.cell img + img { margin-top: 3px; }
.vals { font-size: 12px; line-height: 1.3; text-align: center; margin-top: 3px; white-space: nowrap; }
.vals .bad { color: var(--bad); font-weight: 600; }
.missing { width: CELLpx; height: CELLpx; display: flex; align-items: center; justify-content: center; color: var(--muted); background: #eee; font-size: 12px; }
.samples { display: flex; flex-wrap: wrap; gap: 12px; }
.samples figure { margin: 0; width: 150px; }
.samples img { width: 128px; height: 128px; object-fit: contain; image-rendering: pixelated; border: 1px solid var(--line); }
.samples figcaption { font-size: 12px; overflow-wrap: anywhere; }
table.kv { border-collapse: collapse; }
table.kv td { padding: 2px 14px 2px 0; vertical-align: top; } table.kv td:first-child { color: var(--muted); }
.settings { columns: 3 260px; column-gap: 24px; }
.settings div { break-inside: avoid; padding: 1px 0; } .settings span { color: var(--muted); }
pre { font: 12px/1.35 ui-monospace, "DejaVu Sans Mono", monospace; background: #f6f7f9; padding: 8px; margin: 10px 0 0; white-space: pre-wrap; }
th.concept code { font-size: 15px; font-weight: 700; }
"""


def render(view: RunView, findings: list[Finding], pics: Pictures) -> str:
    """The whole page."""
    state = view.state
    status = str(state.get("status", "unknown"))
    title = f"conceptforge — run {view.run.id}"
    refresh = f'<meta http-equiv="refresh" content="{REFRESH_S}">' if status == "running" else ""
    heat = ", ".join(f"rgb{tuple(int(v) for v in pictures.HEAT_LUT[i])}" for i in range(0, 256, 32)) + f", rgb{tuple(int(v) for v in pictures.HEAT_LUT[255])}"
    css = CSS.replace("HEAT", heat).replace("CELL", str(CELL))
    body = "\n".join(
        [
            _header(view, status),
            _findings(findings),
            _curves(pics),
            _masks(view, findings, pics),
            _samples(view, pics),
            _settings(view),
            _timing(view),
        ]
    )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">{refresh}"
        f"<title>{escape(title)}</title><style>{css}</style></head>\n<body><main>\n{body}\n</main></body></html>\n"
    )


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _header(view: RunView, status: str) -> str:
    cfg, recs = view.config, view.records
    em_done = max((s["step"] for s in view.steps if s.get("phase") == "em"), default=0)
    joint_done = max((s["step"] for s in view.steps if s.get("phase") == "joint"), default=0)
    converged = bool(recs and recs[-1].get("converged"))
    parts = [
        f"project <b>{escape(str(view.root))}</b>",
        f"model <b>{escape(str(view.model))}</b>",
        f"masks <b>{escape(str(cfg.get('masks', '?')))}</b>",
        f"<b>{len(recs)}</b> E-step{'s' if len(recs) != 1 else ''}" + (" (converged)" if converged else ""),
        f"EM steps <b>{em_done}</b>/{escape(str(cfg.get('em_steps', '?')))}",
        f"joint steps <b>{joint_done}</b>/{escape(str(cfg.get('joint_steps', '?')))}",
    ]
    error = f'<p class="flag">error: {escape(str(view.state["error"]))}</p>' if view.state.get("error") and status != "finished" else ""
    written = time.strftime("%Y-%m-%d %H:%M:%S")
    return (
        f'<h1>Run {escape(view.run.id)} <span class="badge {escape(status)}">{escape(status)}</span></h1>'
        f'<p class="meta">{" · ".join(parts)}<br>report written {written}</p>{error}'
        '<nav><a href="#check">Concepts to check</a><a href="#curves">Curves</a><a href="#masks">Masks</a>'
        '<a href="#samples">Samples</a><a href="#settings">Settings</a><a href="#timing">Timing</a></nav>'
    )


def _findings(findings: list[Finding]) -> str:
    if not findings:
        inner = '<p class="allgood">Nothing looks wrong at the latest E-step: no overlapping, empty, image-filling or switching masks.</p>'
    else:
        items = "".join(f'<li><span class="kind">{escape(f.kind)}</span><a href="#{escape(f.anchor)}">{escape(f.text)}</a></li>' for f in findings)
        inner = f'<ul class="findings">{items}</ul>'
    return f'<h2 id="check">Concepts to check</h2><div class="panel">{inner}</div>'


def _curves(pics: Pictures) -> str:
    imgs = "".join(f'<img src="{uri}" alt="{escape(title)}" title="{escape(title)}">' for title, uri in pics.curves())
    return f'<h2 id="curves">Curves</h2><div class="curves">{imgs}</div>'


def _masks(view: RunView, findings: list[Finding], pics: Pictures) -> str:
    legend = (
        '<p class="legend">Each cell: above, the mask, outlined, with the rest of the image darkened; below, the soft map '
        '<span class="bar"></span> (dark 0, bright 1). Under it: the mask\'s area, its IoU with the previous E-step (prev) and with the GT mask (GT). '
        f'<span class="changed-key"></span> the mask changed a lot (IoU with the previous E-step &lt; {CHANGE_IOU}).</p>'
    )
    if not view.records:
        return '<h2 id="masks">Masks</h2><div class="panel">No E-step yet.</div>'
    blocks = "".join(_image_block(view, block, findings, pics) for block in view.images if block.rows)
    return f'<h2 id="masks">Masks</h2>{legend}{blocks}'


def _image_block(view: RunView, block: ImageBlock, findings: list[Finding], pics: Pictures) -> str:
    if block.path is None:
        return f'<div class="panel"><h3>{escape(block.file)}</h3><p class="flag">The image file is missing.</p></div>'
    colour = pics.colour(block.path)
    concepts = ", ".join(f"<code>{escape(r.token)}</code>" + (" (background)" if r.background else "") for r in block.rows)
    head = (
        f'<div class="head"><h3>{escape(block.file)}</h3><img src="{pics.image(block.path)}" alt="{escape(block.file)}">'
        f'<p class="meta">concepts: {concepts}<br>'
        f'outline <span class="swatch" style="background: rgb{colour}"></span> picked to stand out on this image</p></div>'
    )
    iterations = [r["iteration"] for r in view.records]
    steps = {r["iteration"]: r["step"] for r in view.records}
    header = "".join(f"<th>E-step {it}<small>step {steps[it]}</small></th>" for it in iterations)
    rows = "".join(_concept_row(block, row, iterations, findings, pics) for row in block.rows)
    table = f'<div class="scroll"><table class="masks"><thead><tr><th></th>{header}</tr></thead><tbody>{rows}</tbody></table></div>'
    return f'<div class="panel block">{head}{table}</div>'


def _concept_row(block: ImageBlock, row: ConceptRow, iterations: list[int], findings: list[Finding], pics: Pictures) -> str:
    flags = [f for f in findings if row.token in f.tokens and f.image == row.image]
    flag = f'<div class="flag" title="{escape(" ".join(f.text for f in flags))}">⚠ {escape(", ".join(sorted({f.kind for f in flags})))}</div>' if flags else ""
    details = []
    if row.init:
        details.append(f"init {escape(row.init)}")
    if row.background:
        details.append("background concept")
    details.append("GT mask" if row.has_gt else "no GT mask")
    label = f'<th class="concept" id="{escape(row.anchor)}"><code>{escape(row.token)}</code><div class="meta">{"<br>".join(details)}</div>{flag}</th>'
    by_iter = {c.iteration: c for c in row.cells}
    cells = []
    for it in iterations:
        cell = by_iter.get(it)
        if cell is None:
            cells.append('<td class="cell"><div class="missing">no record</div></td>')
            continue
        changed = big_change(cell.iou_prev)
        pics_html = "".join(
            f'<img src="{uri}" alt="{escape(what)} of {escape(row.token)} at E-step {it}">' if uri else f'<div class="missing">{escape(what)} file missing</div>'
            for what, uri in (("mask", pics.mask(block.path, cell)), ("soft map", pics.heat(block.path, cell)))
        )
        prev = _fmt(cell.iou_prev)
        if changed:
            prev = f'<span class="bad">{prev}</span>'
        gt = f" · GT {_fmt(cell.iou_gt)}" if cell.iou_gt is not None else ""
        area = "–" if cell.area is None else f"{cell.area:.1%}"
        tip = f' title="IoU with the previous E-step {cell.iou_prev:.2f} &lt; {CHANGE_IOU}"' if changed else ""
        cells.append(
            f'<td class="cell{" changed" if changed else ""}"{tip}>{pics_html}'
            f'<div class="vals">step {cell.step} · area {area}<br>prev {prev}{gt}</div></td>'
        )
    return f"<tr>{label}{''.join(cells)}</tr>"


def _samples(view: RunView, pics: Pictures) -> str:
    if not view.samples:
        return '<h2 id="samples">Samples</h2><div class="panel">No samples yet: <code>conceptforge generate DIR "PROMPT"</code> writes them to samples/.</div>'
    figs = []
    for s in view.samples:
        other = f"<br>run {escape(s.run)}" if s.run and s.run != view.run.id else ""
        seed = f" · seed {escape(s.seed)}" if s.seed is not None else ""
        figs.append(
            f'<figure><img src="{pics.image(s.path, CELL)}" alt="{escape(s.path.name)}">'
            f'<figcaption><code>{escape(s.prompt or s.path.name)}</code>{seed}{other}</figcaption></figure>'
        )
    return f'<h2 id="samples">Samples</h2><div class="panel"><div class="samples">{"".join(figs)}</div></div>'


def _settings(view: RunView) -> str:
    if not view.config:
        return '<h2 id="settings">Settings</h2><div class="panel">No config.yaml in this run.</div>'
    scalars = {k: v for k, v in view.config.items() if not isinstance(v, (dict, list))}
    nested = {k: v for k, v in view.config.items() if isinstance(v, (dict, list))}
    items = "".join(f"<div><span>{escape(str(k))}</span> <code>{escape(_value(v))}</code></div>" for k, v in scalars.items())
    more = ""
    if nested:
        import yaml

        text = yaml.safe_dump(nested, sort_keys=False, allow_unicode=True, default_flow_style=None, width=120)
        more = f"<pre>{escape(text)}</pre>"
    return f'<h2 id="settings">Settings</h2><div class="panel"><div class="settings">{items}</div>{more}</div>'


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "null" if value is None else str(value)


def _timing(view: RunView) -> str:
    state = view.state
    created = state.get("created") if isinstance(state.get("created"), (int, float)) else None
    metrics = view.run.metrics_path
    last = metrics.stat().st_mtime if metrics.is_file() else None
    rows: list[tuple[str, str]] = []
    if created is not None:
        rows.append(("started", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))))
    if last is not None:
        rows.append(("last metrics written", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last))))
    if created is not None and last is not None and last >= created:
        rows.append(("elapsed", _duration(last - created)))
    timing = state.get("timing")
    if isinstance(timing, dict):
        for phase in ("em", "joint"):
            secs, n = timing.get(f"{phase}_seconds"), timing.get(f"{phase}_steps_timed")
            if isinstance(secs, (int, float)) and isinstance(n, (int, float)) and n:
                rows.append((f"{phase} training", f"{_duration(secs)} for {int(n)} steps ({secs / n:.3f} s/step)"))
        if isinstance(timing.get("estep_seconds"), (int, float)):
            rows.append(("later E-steps", _duration(timing["estep_seconds"])))
    if created is not None:
        for rec in view.records:
            folder = view.run.iteration_dir(rec["iteration"])
            if folder.is_dir():
                rows.append((f"E-step {rec['iteration']} written", f"+{_duration(max(0.0, folder.stat().st_mtime - created))} (step {rec['step']})"))
    if not rows:
        return '<h2 id="timing">Timing</h2><div class="panel">No timing recorded.</div>'
    table = "".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in rows)
    return f'<h2 id="timing">Timing</h2><div class="panel"><table class="kv">{table}</table></div>'


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"
