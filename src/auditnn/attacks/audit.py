"""The attack audit: resolve data and model, run FGSM/PGD over an eps list (or optimize a patch), build the Report."""

from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import AuditError, allowed
from ..io import atomic_torch_save, atomic_write_bytes
from ..models.load import first_layer_pictures
from ..report.schema import Report, metric_row
from ..runtime import compile_or_eager, resolve_device, seed_everything
from ..models.user import UserModelSpec
from ..subject import EvalData, check_model_spec, is_architecture, load_eval_data, resolve_model
from ..train import ProgressFn, TrainConfig
from .evaluate import AttackEvaluation, AttackSpec, evaluate_attack
from .patch import PatchConfig, PatchResult, optimize_patch

METHODS = ("fgsm", "pgd", "patch")


@dataclass
class AttackAuditConfig:
    method: str = "pgd"
    attack: AttackSpec = field(default_factory=AttackSpec)
    patch: PatchConfig = field(default_factory=PatchConfig)
    base: str = "digits"
    data_dir: str | None = None
    data_root: str | None = None
    download: bool = False
    test_per_class: int = 30
    model: str = "cnn"  # an architecture to train, or a model spec (factory:, torchvision:, export:, torchscript:, auditnn:)
    weights: str | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    strict: bool = False
    width: int | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    device: str = "auto"
    seed: int = 0
    compile: bool = False  # torch.compile the model for the attack (falls back with a warning)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise AuditError(f"method '{self.method}' is unknown; allowed: {allowed(METHODS)}")
        if self.method == "patch":
            self.patch.validate()
        else:
            if self.attack.method != self.method:
                raise AuditError(f"method '{self.method}' differs from attack.method '{self.attack.method}'; give the same")
            self.attack.validate()
        check_model_spec(self.model)
        self.train.validate()
        if self.test_per_class < 1:
            raise AuditError(f"test_per_class {self.test_per_class}; allowed: at least 1")


@dataclass
class AttackAuditResult:
    evaluation: AttackEvaluation | None
    patch: PatchResult | None
    model_source: str
    data: dict[str, Any]
    device: str
    seconds: float
    pictures: dict[str, torch.Tensor] = field(default_factory=dict)  # for the HTML report
    warnings: list[dict[str, str]] = field(default_factory=list)  # about the run itself (e.g. --compile fell back)


def run_attack_audit(
    config: AttackAuditConfig, *, train_progress: ProgressFn | None = None,
    attack_progress: Callable[[str], None] | None = None,
) -> AttackAuditResult:
    config.validate()
    device = resolve_device(config.device)
    start = time.perf_counter()
    data: EvalData = load_eval_data(
        base=config.base, data=config.data_dir, data_root=config.data_root, download=config.download,
        test_per_class=config.test_per_class, seed=config.seed, strict=config.strict,
        trains_model=is_architecture(config.model),
    )
    spec = UserModelSpec(config.model, config.weights, config.mean, config.std)
    model, _, source, data = resolve_model(spec, data, config.train, device, width=config.width, progress=train_progress)
    warnings: list[dict[str, str]] = []
    if config.compile:
        model, reason = compile_or_eager(model, data.test_images[:2].to(device))
        if reason:
            warnings.append({"code": "compile_unavailable", "message": reason})
    seed_everything(config.seed)
    evaluation = patch = None
    if config.method == "patch":
        config.patch.validate(data.num_classes)
        patch = fit_patch(model, data, config.patch, config.seed)
    else:
        evaluation = evaluate_attack(model, data.test_images, data.test_labels, config.attack, progress=attack_progress)
    pictures = {f"model/{k}": v for k, v in first_layer_pictures(model, data.test_images.shape[1:]).items()}
    if evaluation is not None:
        pictures.update({f"attack/{config.method}-{config.attack.norm}/{k}": v for k, v in evaluation.examples.items()})
    if patch is not None:
        pictures.update({"patch/patch": patch.patch, "patch/mask": patch.mask,
                         **{f"patch/{k}": v for k, v in patch.examples.items()}})
    described = {**data.description, "classes": data.classes, "n_test": len(data.test_labels)}
    return AttackAuditResult(evaluation, patch, source, described, str(device), time.perf_counter() - start, pictures,
                             warnings)


def _patch_plan(data: EvalData) -> tuple[bool, str]:
    """(halve the evaluation images?, which images the patch is fitted and scored on, in words). Fit and score use
    one kind of image: a controlled dataset's training images carry its planted shortcut, its test images do not."""
    if data.description.get("test") == "test_clean":
        return True, ("fitted on a seeded half of the stamp-free test images, scored on the other half "
                      "(the training images carry the planted shortcut)")
    if data.fitted_on_test:
        return True, "fitted on a seeded half of the evaluation images, scored on the other half (no training images)"
    return False, "fitted on the training images, scored on the held-out test images"


def patch_split(data: EvalData, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fit images, labels, held-out images, labels) for the patch: the training and test images when they are of
    one kind, else the evaluation images halved (seeded); never judged on the images it was fitted on."""
    if not _patch_plan(data)[0]:
        return data.train_images, data.train_labels, data.test_images, data.test_labels
    order = torch.randperm(len(data.test_labels), generator=torch.Generator().manual_seed(seed))
    half = len(order) // 2
    fit, held = order[:half], order[half:]
    return data.test_images[fit], data.test_labels[fit], data.test_images[held], data.test_labels[held]


def fit_patch(model: torch.nn.Module, data: EvalData, config: PatchConfig, seed: int) -> PatchResult:
    """optimize_patch on patch_split's images; the result says which images those were."""
    result = optimize_patch(model, *patch_split(data, seed), config)
    result.images = _patch_plan(data)[1]
    return result


def attack_report(result: AttackAuditResult, config: AttackAuditConfig, *, run_id: str, environment: dict[str, Any]) -> Report:
    rows: list[dict[str, Any]] = []
    results: dict[str, Any] = {}
    warnings: list[dict[str, str]] = list(result.warnings)
    if result.evaluation is not None:
        for r in result.evaluation.rows:
            # every setting that changes the figure is a label: the gate never judges a check by another setting's row
            labels = dict(method=r.method, norm=r.norm, eps=r.eps, steps=r.steps, target=r.target, restarts=r.restarts,
                          step_size=config.attack.step_size, sanity=config.attack.sanity)
            for name in ("clean_accuracy", "robust_accuracy", "success_rate", "mean_perturbation", "max_perturbation",
                         "seconds", "images_per_second"):
                rows.append(metric_row("attack", name, getattr(r, name), **labels))
        results["attack"] = {**result.evaluation.to_dict(), "model": result.model_source, "data": result.data}
        warnings = warnings + result.evaluation.warnings
    if result.patch is not None:
        summary = result.patch.summary()
        for name in ("accuracy_clean", "accuracy_with_patch", "target_success_rate", "accuracy_with_noise_patch",
                     "noise_target_success_rate", "optimization_seconds"):
            rows.append(metric_row("patch", name, summary[name], method="patch"))
        results["patch"] = {**summary, "size": config.patch.size, "shape": config.patch.shape,
                            "model": result.model_source, "data": {**result.data, "n_test": result.patch.n_scored}}
    return Report(
        command="attack", run_id=run_id, config=asdict(config), environment=environment, seed=config.seed,
        results=results, metrics=rows, timings={"total": result.seconds}, warnings=warnings,
    )


def png_bytes(image: torch.Tensor, scale: int = 1) -> bytes:
    """(C, H, W) in [0, 1] -> PNG bytes, nearest-neighbour upscaled by `scale`."""
    from PIL import Image

    array = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    array = array.repeat_interleave(scale, 1).repeat_interleave(scale, 2).permute(1, 2, 0).numpy()
    picture = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else np.ascontiguousarray(array))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def save_patch(result: PatchResult, out_dir: Path) -> list[Path]:
    """patch.png (masked outside a circle shows black) and patch.pt (patch and mask tensors)."""
    png = atomic_write_bytes(out_dir / "patch.png", png_bytes(result.patch * result.mask, scale=8))
    pt = atomic_torch_save(out_dir / "patch.pt", {"patch": result.patch, "mask": result.mask, "target": result.target})
    return [png, pt]
