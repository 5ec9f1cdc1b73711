"""The self-contained HTML report: one file, pictures embedded as data URIs, every user string escaped."""

from __future__ import annotations

import base64
from html import escape
from typing import Any

import torch

from ..values import fmt_eps
from . import plots
from .schema import Report
from .tables import Table, bound_symbol, fmt, report_tables

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#1d2430;padding:0 1rem}
h1{font-size:1.5rem} h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #dde} .meta{color:#566;font-size:.85rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.85rem} td,th{border:1px solid #ccd;padding:.25rem .55rem;text-align:left}
th{background:#f2f4f8} .pass{color:#0a7a2f;font-weight:600} .fail{color:#b3261e;font-weight:600}
.badge{display:inline-block;padding:.2rem .7rem;border-radius:1rem;color:#fff;font-weight:600}
.badge.pass{background:#0a7a2f;color:#fff} .badge.fail{background:#b3261e;color:#fff}
figure{display:inline-block;margin:.5rem 1rem .5rem 0;vertical-align:top} figcaption{font-size:.8rem;color:#566}
.warn{background:#fff7e0;border-left:4px solid #e0a800;padding:.4rem .8rem;margin:.3rem 0}
"""


def _img(png: bytes, alt: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{escape(alt)}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def _table(table: Table) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in table.rows)
    return f"<h3>{escape(table.title)}</h3><table><tr>{head}</tr>{body}</table>"


def _verdict(verdict: dict[str, Any]) -> str:
    rows = []
    for r in verdict["rows"]:
        result = '<span class="pass">pass</span>' if r["passed"] else '<span class="fail">FAIL</span>'
        cells = [r["check"], r["metric"], fmt(r["measured"]), f"{bound_symbol(r['bound'])} {fmt(r['threshold'])}"]
        rows.append(
            "<tr>"
            + "".join(f"<td>{escape(c)}</td>" for c in cells)
            + f"<td>{result}</td><td>{escape(r['note'])}</td></tr>"
        )
    return (
        "<table><tr><th>check</th><th>metric</th><th>measured</th><th>threshold</th><th>result</th><th>note</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _names(classes: list[str], indices: torch.Tensor) -> list[str]:
    return [classes[i] if 0 <= i < len(classes) else str(i) for i in indices.tolist()]


def _shortcut_figures(report: Report, pictures: dict[str, torch.Tensor], classes: list[str]) -> list[str]:
    out = []
    section = report.results.get("shortcut", {})
    rows = section.get("rows", [])
    by_tag: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        if "method" in row:  # mitigation rows: one curve per method (_mitigation_figures)
            continue
        xs, ys = by_tag.setdefault(row["dataset"]["shortcut"]["tag"], ([], []))
        xs.append(row["rho"])
        ys.append(row["metrics"]["reliance"])
    if any(len(xs) > 1 for xs, _ in by_tag.values()):
        out.append(
            _img(
                plots.line_plot(by_tag, "rho (training correlation)", "reliance", "Reliance against rho"),
                "reliance against rho",
                "Reliance: the share of accuracy lost when the shortcut points elsewhere.",
            )
        )
    prefixes = sorted({k.rsplit("/", 2)[0] for k in pictures if k.endswith("aligned/images")})
    for prefix in prefixes:
        grid_rows, overlays = [], {}
        for kind in ("aligned", "conflicting"):
            images = pictures.get(f"{prefix}/{kind}/images")
            if images is None:
                continue
            labels = _names(classes, pictures[f"{prefix}/{kind}/labels"])
            preds = _names(classes, pictures[f"{prefix}/{kind}/predictions"])
            captions = [f"y={y} pred={p}" for y, p in zip(labels, preds, strict=True)]
            grid_rows.append((kind, images, captions))
            grid_rows.append((f"{kind}: attribution", images, captions))
            overlays[len(grid_rows) - 1] = pictures[f"{prefix}/{kind}/attribution"]
        name = prefix.removeprefix("shortcut/").replace("/", ", ")
        if grid_rows:
            out.append(
                _img(
                    plots.image_grid(grid_rows, overlays),
                    f"shortcut examples {name}",
                    f"{name}: aligned and conflicting test images, and where |grad x input| attribution falls.",
                )
            )
        weights = pictures.get(f"{prefix}/first_layer")
        if weights is not None:
            out.append(
                _img(
                    plots.weight_grid(weights, "first-layer weights"),
                    "first-layer weights",
                    f"{name}: what the network learned first (hidden units or first filters).",
                )
            )
    return out


def _attack_figures(report: Report, pictures: dict[str, torch.Tensor], classes: list[str]) -> list[str]:
    from ..checks.attack import attack_setting  # the check kinds import the report package

    out = []
    rows = report.results.get("attack", {}).get("rows", [])
    series: dict[str, tuple[list[float], list[float]]] = {}
    for r in rows:
        xs, ys = series.setdefault(attack_setting(r), ([], []))
        xs.append(r["eps"])
        ys.append(r["robust_accuracy"])
    if any(len(xs) > 1 for xs, _ in series.values()):
        out.append(
            _img(
                plots.line_plot(
                    series, "eps (pixel units of [0, 1])", "robust accuracy", "Robust accuracy against eps"
                ),
                "robust accuracy against eps",
                "Robust accuracy against the attack radius.",
            )
        )
    prefixes = sorted({k.rsplit("/", 1)[0] for k in pictures if k.startswith("attack/") and k.endswith("/adversarial")})
    for prefix in prefixes:
        clean, adversarial = pictures[f"{prefix}/clean"], pictures[f"{prefix}/adversarial"]
        labels = _names(classes, pictures[f"{prefix}/labels"])
        preds = _names(classes, pictures[f"{prefix}/predictions"])
        grid = plots.image_grid(
            [
                ("original", clean, [f"y={y}" for y in labels]),
                ("adversarial", adversarial, [f"pred={p}" for p in preds]),
            ]
        )
        out.append(
            _img(
                grid,
                "adversarial examples",
                f"{prefix.removeprefix('attack/')}: originals and adversarial examples at the largest eps.",
            )
        )
    # keys: patch/<picture> (the attack command) or patch/<check name>/<picture> (an audit, one patch per check)
    for prefix in sorted({k.rsplit("/", 1)[0] for k in pictures if k.startswith("patch/") and k.endswith("/patch")}):
        name = prefix.removeprefix("patch").removeprefix("/")
        patch = pictures[f"{prefix}/patch"] * pictures[f"{prefix}/mask"]
        out.append(
            _img(
                plots.image_grid([("patch", patch[None], ["learned patch"])]),
                "learned patch",
                f"{name}: the universal patch." if name else "The universal patch.",
            )
        )
        if f"{prefix}/images" in pictures:
            preds = _names(classes, pictures[f"{prefix}/predictions"])
            out.append(
                _img(
                    plots.image_grid([("patched", pictures[f"{prefix}/images"], [f"pred={p}" for p in preds])]),
                    "patched images",
                    "Held-out images with the patch and the model's answers.",
                )
            )
    weights = pictures.get("model/first_layer")
    if weights is not None:
        out.append(
            _img(
                plots.weight_grid(weights, "first-layer weights"),
                "first-layer weights",
                "The audited model's first layer: hidden units drawn as images, or first filters.",
            )
        )
    return out


def _corruption_figures(report: Report, pictures: dict[str, torch.Tensor], classes: list[str]) -> list[str]:
    """Per corruption check: accuracy against severity (0: clean), one line per corruption, and the first test image
    clean then through every chosen corruption (rows) and severity (columns)."""
    from ..checks.corruption import accuracy_curves  # the check kinds import the report package

    out = []
    for key, section in report.results.items():
        if key.split("/", 1)[0] != "corruption" or not isinstance(section, dict):
            continue
        name = key.removeprefix("corruption").removeprefix("/")
        for family, series in accuracy_curves(section).items():
            title = f"Accuracy under {family} corruptions"
            out.append(
                _img(
                    plots.line_plot(series, "severity (0: clean)", "accuracy", title),
                    f"accuracy against severity, {family}",
                    f"{name}: accuracy against {family} corruption severity."
                    if name
                    else f"Accuracy against {family} corruption severity.",
                )
            )
        grid = pictures.get(f"{key}/grid")
        columns = len(section["severities"])
        if grid is None or len(grid) != 1 + columns * len(section["corruptions"]):
            continue
        rows = [("clean", grid[:1], ["clean"])]
        for i, corruption in enumerate(section["corruptions"]):
            images = grid[1 + i * columns : 1 + (i + 1) * columns]
            rows.append((corruption, images, [f"severity {s}" for s in section["severities"]]))
        out.append(_img(plots.image_grid(rows), "corrupted images", "The first test image under every corruption."))
    return out


def _discover_figures(report: Report, pictures: dict[str, torch.Tensor], classes: list[str]) -> list[str]:
    """The exemplars of the top slices of discover / discovery (keys <kind>[/<check>]/slice-<rank>/images)."""
    out = []
    prefixes = sorted(
        {k.rsplit("/", 1)[0] for k in pictures if k.startswith(("discover/", "discovery/")) and k.endswith("/images")}
    )
    for prefix in prefixes:
        labels = _names(classes, pictures[f"{prefix}/labels"])
        preds = _names(classes, pictures[f"{prefix}/predictions"])
        captions = [f"y={y} pred={p}" for y, p in zip(labels, preds, strict=True)]
        where, rank = prefix.rsplit("/slice-", 1)
        grid = plots.image_grid([(f"slice {rank}", pictures[f"{prefix}/images"], captions)])
        out.append(_img(grid, f"slice {rank} exemplars", f"{where}: slice {rank}, the images it holds most surely."))
    return out


def _mitigation_figures(report: Report, pictures: dict[str, torch.Tensor], classes: list[str]) -> list[str]:
    """With --mitigate and a --rho list: reliance and worst-group accuracy against rho, one curve per method (and
    tag, when an audit's checks plant several)."""
    rows = [r for r in report.results.get("shortcut", {}).get("rows", []) if "method" in r]
    tags = {r["dataset"]["shortcut"]["tag"] for r in rows}
    out = []
    for metric, label in (("reliance", "reliance"), ("worst_group_accuracy", "worst-group accuracy")):
        series: dict[str, tuple[list[float], list[float]]] = {}
        for r in rows:
            name = r["method"] if len(tags) == 1 else f"{r['dataset']['shortcut']['tag']} {r['method']}"
            xs, ys = series.setdefault(name, ([], []))
            xs.append(r["rho"])
            ys.append(r["metrics"][metric])
        for name, (xs, ys) in series.items():  # drawn left to right, whatever order --rho gave
            order = sorted(range(len(xs)), key=xs.__getitem__)
            series[name] = ([xs[i] for i in order], [ys[i] for i in order])
        if any(len(xs) > 1 for xs, _ in series.values()):
            out.append(
                _img(
                    plots.line_plot(series, "rho (training correlation)", label, f"{label.capitalize()} against rho"),
                    f"{label} against rho, per method",
                    f"{label.capitalize()} of each mitigation method's model against the training correlation.",
                )
            )
    return out


def _scan_figures(report: Report, pictures: dict[str, torch.Tensor], classes: list[str]) -> list[str]:
    """Each scan's heat map (lift per grid cell, over the mean scanned image) and its strongest region's exemplars."""
    out = []
    for key in sorted(k for k in pictures if k.startswith("scan/") and k.endswith("/heat")):
        prefix = key.removesuffix("/heat")
        heat, mean = pictures[key].float(), pictures.get(f"{prefix}/mean_image")
        if mean is None or heat.dim() != 2:
            continue
        size = tuple(mean.shape[-2:])
        overlay = torch.nn.functional.interpolate(heat[None, None].clamp(min=0), size=size, mode="nearest")[0]
        grid_rows = [("lift per cell", mean[:1], [f"max {float(heat.max()):.3f}"])]
        exemplars = pictures.get(f"{prefix}/exemplars")
        if exemplars is not None:
            labels = _names(classes, pictures[f"{prefix}/exemplar_labels"])
            grid_rows.append(("exemplars", exemplars[:16], [f"y={y}" for y in labels[:16]]))
        out.append(
            _img(
                plots.image_grid(grid_rows, {0: overlay}),
                f"scan heat map {prefix}",
                f"{prefix}: accuracy lift over chance per grid cell (brighter: the cell's statistics predict the "
                "label better), and images of each class its strongest region classifies most surely.",
            )
        )
    return out


def _classes(report: Report) -> list[str]:
    """Class names from whichever section recorded them (an index without a name is shown as the index)."""
    for section in report.results.values():
        if not isinstance(section, dict):
            continue
        if isinstance(section.get("data"), dict) and "classes" in section["data"]:
            return list(section["data"]["classes"])
        for row in section.get("rows", []):
            if isinstance(row, dict) and "classes" in row.get("dataset", {}):
                return list(row["dataset"]["classes"])
    return []


def to_html(report: Report, pictures: dict[str, torch.Tensor] | None = None) -> str:
    """The whole page as one string. `pictures` comes from the tensor file beside report.json."""
    pictures = pictures or {}
    env = report.environment
    verdict = report.results.get("verdict")
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>auditnn {escape(report.command)}: {escape(report.run_id)}</title><style>{STYLE}</style></head><body>",
        f"<h1>auditnn {escape(report.command)} <span class='meta'>{escape(report.run_id)}</span></h1>",
        f"<p class='meta'>seed {escape(str(report.seed))} · device {escape(str(env.get('device', '?')))} "
        f"({escape(str(env.get('device_name', '?')))}) · torch {escape(str(env.get('torch', '?')))} · "
        f"auditnn {escape(str(env.get('auditnn', '?')))} · {escape(report.created)}</p>",
    ]
    if verdict is not None:
        badge = "pass" if verdict["passed"] else "fail"
        parts.append(f"<h2>Verdict <span class='badge {badge}'>{'PASS' if verdict['passed'] else 'FAIL'}</span></h2>")
        parts.append(_verdict(verdict))
    if report.warnings:
        parts.append("<h2>Warnings</h2>")
        parts += [
            f"<div class='warn'><b>{escape(w['code'])}</b>: {escape(w['message'])}</div>" for w in report.warnings
        ]
    parts.append("<h2>Measurements</h2>")
    parts += [_table(t) for t in report_tables(report)]
    classes = _classes(report)
    figures = (
        _shortcut_figures(report, pictures, classes)
        + _mitigation_figures(report, pictures, classes)
        + _attack_figures(report, pictures, classes)
        + _corruption_figures(report, pictures, classes)
        + _discover_figures(report, pictures, classes)
        + _scan_figures(report, pictures, classes)
    )
    if figures:
        parts.append("<h2>Pictures</h2>")
        parts += figures
    parts.append(
        f"<p class='meta'>{escape(str(len(report.metrics)))} metrics in report.json and metrics.csv. "
        f"Radii such as {escape(fmt_eps(8 / 255))} are in pixel units of [0, 1].</p></body></html>"
    )
    return "\n".join(parts)
