"""A universal adversarial patch: fitted on one set of images, scored on held-out ones beside a noise patch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..attacks.patch import PatchConfig, fit_patch, save_patch_png, save_patch_tensors
from ..report.schema import DATA, INT, INT_OR_NULL, NUM, NUM_OR_NULL, STR, metric_row
from ..report.tables import Table, fmt
from ..subject import SubjectSpec
from .base import CheckKind, CheckResult, Context, of_check, register

ROW_METRICS = (
    "accuracy_clean",
    "accuracy_with_patch",
    "target_success_rate",
    "accuracy_with_noise_patch",
    "noise_target_success_rate",
    "optimization_seconds",
)


@dataclass
class PatchSettings:
    """size: the patch's side as a fraction of the image side, in (0, 1); target: the class it pushes towards
    (None: away from the label); steps: optimization steps."""

    size: float = 0.3
    shape: str = "square"
    target: int | None = 0
    steps: int = 300


def patch_config(settings: PatchSettings, seed: int) -> PatchConfig:
    return PatchConfig(
        size=settings.size, shape=settings.shape, target=settings.target, steps=settings.steps, seed=seed
    )


@register
class Patch(CheckKind[PatchSettings]):
    name = "patch"
    settings = PatchSettings
    thresholds = {
        "max_target_success_rate": ("target_success_rate", "max"),
        "min_accuracy_with_patch": ("accuracy_with_patch", "min"),
    }
    section_schema = {
        "target": INT_OR_NULL,
        "shape": STR,
        "size": NUM,
        "steps": INT,
        "optimization_seconds": NUM,
        "model": STR,
        "data?": DATA,
        "check?": STR,
        "images?": STR,
        **{k: NUM_OR_NULL for k in ROW_METRICS if k != "optimization_seconds"},
    }

    def validate(self, settings: PatchSettings, spec: SubjectSpec) -> None:
        patch_config(settings, 0).validate()

    def title(self, settings: PatchSettings) -> tuple[str, tuple[str, ...]]:
        return f"patch {settings.size:g} target={settings.target}", ("size", "target")

    def labels(self, settings: PatchSettings) -> dict[str, Any]:
        return {"method": "patch"}

    def measure(self, settings: PatchSettings, ctx: Context) -> CheckResult:
        subject = ctx.subject
        assert subject is not None  # needs_subject: the runner resolved it
        config = patch_config(settings, ctx.seed)
        config.validate(subject.data.num_classes)
        result = fit_patch(subject.model, subject.data, config, ctx.seed)
        summary = result.summary()
        rows = [metric_row("patch", name, summary[name], method="patch") for name in ROW_METRICS]
        section = {
            **summary,
            "size": config.size,
            "shape": config.shape,
            "model": subject.source,
            "data": {**subject.described, "n_test": result.n_scored},
        }
        pictures = {"patch": result.patch, "mask": result.mask, **result.examples}
        files = {
            "patch.png": lambda path: save_patch_png(result, path),
            "patch.pt": lambda path: save_patch_tensors(result, path),
        }
        return CheckResult(rows, section, pictures, files=files)

    def tables(self, section: dict[str, Any]) -> list[Table]:
        target = "untargeted" if section["target"] is None else f"class {section['target']}"
        rows = [
            ["accuracy, clean", fmt(section["accuracy_clean"]), "-"],
            ["accuracy, with patch", fmt(section["accuracy_with_patch"]), fmt(section["accuracy_with_noise_patch"])],
            ["classified as target", fmt(section["target_success_rate"]), fmt(section["noise_target_success_rate"])],
        ]
        title = (
            f"Universal patch: {section['shape']} {section['size']:g} of the side, {target}, "
            f"{section['steps']} steps ({section['optimization_seconds']:.1f} s){of_check(section)}"
        )
        if section.get("images"):
            title += f"; {section['images']}"
        held_out = f"{section['n_scored']} held-out images" if "n_scored" in section else "held-out images"
        return [Table(title, [held_out, "adversarial patch", "noise patch (control)"], rows)]
