"""Tables derived from a Report: what the terminal and the Markdown summary show. Pure functions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..values import fmt_eps
from .schema import Report


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]


def fmt(value: float | int | None, digits: int = 3) -> str:
    """A measured number for a table: floats to `digits` places, '-' for none. Anything else is a bug upstream
    (load_report checks every field's type), never text to pass through into a page."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"fmt() takes a number or None, not {type(value).__name__}")
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def bound_symbol(bound: str) -> str:
    """How a verdict row's bound reads: '>=' for min, '<=' for max, else as recorded ('max drop')."""
    return {"min": ">=", "max": "<="}.get(bound, bound)


def attack_setting(row: dict[str, Any]) -> str:
    """'PGD linf, 10 steps' plus the target and restarts where they are set: what tells two attack runs apart."""
    steps = row["steps"]
    text = f"{row['method'].upper()} {row['norm']}, {steps} step{'s' if steps != 1 else ''}"
    if row.get("target") is not None:
        text += f", target {row['target']}"
    if row.get("restarts", 1) != 1:
        text += f", {row['restarts']} restarts"
    return text


SHORTCUT_ROWS = (  # (metric key, label shown)
    ("clean_accuracy", "accuracy, no shortcut"),
    ("aligned_accuracy", "accuracy, aligned"),
    ("conflicting_accuracy", "accuracy, conflicting"),
    ("gap", "gap (aligned - conflicting)"),
    ("worst_group_accuracy", "worst-group accuracy"),
    ("reliance", "reliance"),
    ("follow_rate_normalized", "follows shortcut (vs chance)"),
    ("swap_flip_rate", "flips when shortcut swapped"),
    ("remove_flip_rate", "flips when shortcut removed"),
    ("attribution_mass", "attribution inside shortcut"),
    ("attribution_chance", "chance level (shortcut's share of |x|)"),
    ("attribution_ratio", "attribution / chance"),
    ("mask_share", "shortcut's share of pixels"),
)


def shortcut_tables(section: dict[str, Any]) -> list[Table]:
    """One column per rho, one row per metric: narrow enough for a terminal whatever the sweep."""
    runs = section["rows"]
    columns = ["metric"] + [f"rho {fmt(r['rho'], 2)}" + (" (given model)" if r.get("training") is None else "") for r in runs]
    rows = [[label] + [fmt(r["metrics"][key]) for r in runs] for key, label in SHORTCUT_ROWS]
    rows.insert(5, ["worst group (label x shortcut)"] + [r["metrics"]["worst_group"] for r in runs])
    first = runs[0]["dataset"]
    title = f"Shortcut reliance: {first['shortcut']['tag']} on {first['base']}"
    return [Table(title, columns, rows)]


def attack_tables(section: dict[str, Any]) -> list[Table]:
    """One table per attack setting (method, norm, steps, target, restarts), one row per eps; an audit's rows also
    name their check. 'robust acc' is the per-sample worst case over every run at that eps; where sanity runs joined
    it, each run's own figure has a column."""
    tables = []
    runs: dict[str, list[dict[str, Any]]] = {}
    for r in section["rows"]:
        runs.setdefault(attack_setting(r), []).append(r)
    for setting, rows in runs.items():
        named = any("check" in r for r in rows)
        labels = list(dict.fromkeys(k for r in rows for k in r.get("robust_accuracy_per_attack", {})))
        own = labels if len(labels) > 1 else []
        columns = ["check"] * named + ["eps", "clean acc", "robust acc" + (" (worst)" if own else ""), *own,
                                       "success", "mean |d|", "max |d|", "time s", "img/s"]
        body = [
            [r.get("check", "-")] * named
            + [fmt_eps(r["eps"]), fmt(r["clean_accuracy"]), fmt(r["robust_accuracy"]),
               *(fmt(r["robust_accuracy_per_attack"].get(k)) for k in own), fmt(r["success_rate"]),
               fmt(r["mean_perturbation"], 4), fmt(r["max_perturbation"], 4), fmt(r["seconds"], 2),
               "-" if r["images_per_second"] is None else f"{r['images_per_second']:,.0f}"]
            for r in rows
        ]
        left_out = max(r.get("left_out", 0) for r in rows)
        images = f"{section['data']['n_test']} test images" + (
            f", {left_out} left out as label = target" if left_out else "")
        title = f"Robust accuracy: {setting} ({images}, model {section['model']})"
        tables.append(Table(title, columns, body))
    return tables


def _of_check(section: dict[str, Any]) -> str:
    return f" (check '{section['check']}')" if "check" in section else ""


def patch_tables(section: dict[str, Any]) -> list[Table]:
    target = "untargeted" if section["target"] is None else f"class {section['target']}"
    rows = [
        ["accuracy, clean", fmt(section["accuracy_clean"]), "-"],
        ["accuracy, with patch", fmt(section["accuracy_with_patch"]), fmt(section["accuracy_with_noise_patch"])],
        ["classified as target", fmt(section["target_success_rate"]), fmt(section["noise_target_success_rate"])],
    ]
    title = (f"Universal patch: {section['shape']} {section['size']:g} of the side, {target}, "
             f"{section['steps']} steps ({section['optimization_seconds']:.1f} s){_of_check(section)}")
    if section.get("images"):
        title += f"; {section['images']}"
    held_out = f"{section['n_scored']} held-out images" if "n_scored" in section else "held-out images"
    return [Table(title, [held_out, "adversarial patch", "noise patch (control)"], rows)]


def sensitivity_tables(section: dict[str, Any]) -> list[Table]:
    rows = [[v["tag_class"], fmt(v["flip_rate"]), fmt(v["toward_rate"]), fmt(v["accuracy_with_tag"]), v["top_destination"]]
            for v in section["variants"]]
    rows.append(["mean", fmt(section["flip_rate"]), fmt(section["toward_rate"]), "-", "-"])
    title = (f"Planted-tag sensitivity: {section['tag']} on {section['n']} images, model {section['model']} "
             f"(accuracy without the tag {fmt(section['accuracy_without_tag'])}){_of_check(section)}")
    return [Table(title, ["tag of class", "answers changed", "moved to the tag's class", "accuracy with tag",
                          "most changed to"], rows)]


def groups_tables(section: dict[str, Any]) -> list[Table]:
    summary = [
        ["accuracy", fmt(section["accuracy"])],
        ["worst-group accuracy", f"{fmt(section['worst_group_accuracy'])} ({section['worst_group']})"],
        ["accuracy, label = attribute's class", fmt(section["aligned_accuracy"])],
        ["accuracy, label != attribute's class", fmt(section["conflicting_accuracy"])],
        ["gap", fmt(section["gap"])],
        ["answers agreeing with the attribute's class", fmt(section["agreement_rate"])],
        ["attribute's class", ", ".join(f"{k}: {v}" for k, v in section["associated_class"].items())],
    ]
    groups = [[g["group"], str(g["n"]), fmt(g["accuracy"])] for g in sorted(section["groups"], key=lambda g: g["accuracy"])]
    title = (f"Groups by '{section['attribute']}' ({section['n']} annotated images, model {section['model']})"
             f"{_of_check(section)}")
    return [Table(title, ["metric", "value"], summary), Table("Accuracy per group (label x attribute)", ["group", "n", "accuracy"], groups)]


SECTION_TABLES: dict[str, Callable[[dict[str, Any]], list[Table]]] = {
    "shortcut": shortcut_tables, "attack": attack_tables, "patch": patch_tables,
    "sensitivity": sensitivity_tables, "groups": groups_tables,
}


def section_kind(key: str) -> str:
    """The kind of a results section: its key, or what comes before '/' in an audit's per-check key
    ('sensitivity/<check name>')."""
    return key.split("/", 1)[0]


def report_tables(report: Report) -> list[Table]:
    tables: list[Table] = []
    for name, section in report.results.items():
        kind = section_kind(name)
        if kind in SECTION_TABLES:
            tables.extend(SECTION_TABLES[kind](section))
    return tables
