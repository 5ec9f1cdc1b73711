"""Data and model specs, parsed here only: a spec string becomes a typed value once, and nothing downstream re-splits it.

Data:   digits | shapes | torchvision:NAME | imagefolder:DIR | tensors:FILE, or a folder written by `auditnn data build`
Models: mlp | cnn | resnet18 (an architecture auditnn trains) | factory:pkg.module:function | torchvision:NAME |
        export:FILE.pt2 | torchscript:FILE | auditnn:DIR
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import AuditError, allowed
from .models.zoo import MODELS

TORCHVISION_SOURCES = ("mnist", "fashionmnist", "cifar10", "svhn")
SOURCE_KINDS = ("digits", "shapes", "torchvision", "imagefolder", "tensors")
SOURCE_FORMS = (
    "digits",
    "shapes",
    *(f"torchvision:{n}" for n in TORCHVISION_SOURCES),
    "imagefolder:DIR",
    "tensors:FILE",
)
USER_MODEL_KINDS = ("factory", "torchvision", "export", "torchscript", "auditnn")
USER_FORMS = ("factory:pkg.module:function", "torchvision:NAME", "export:FILE.pt2", "torchscript:FILE", "auditnn:DIR")
MODEL_FORMS = (*MODELS, *USER_FORMS)
FILE_KINDS = ("imagefolder", "tensors", "built", "export", "torchscript", "auditnn")  # an argument that is a path


def _resolved(arg: str, base: Path) -> str:
    path = Path(arg)
    return str(path if path.is_absolute() else base / path)


@dataclass(frozen=True)
class DataSpec:
    """kind: one of SOURCE_KINDS, or 'built' (a folder written by `auditnn data build`); arg: what follows the
    prefix (a dataset name or a path), or the folder."""

    text: str
    kind: str
    arg: str = ""

    @classmethod
    def source(cls, text: str) -> DataSpec:
        """A base source (digits, shapes, torchvision:NAME, imagefolder:DIR, tensors:FILE); anything else names the
        forms that exist."""
        kind, _, arg = text.partition(":")
        kind, arg = kind.strip().lower(), arg.strip()
        if (kind in ("digits", "shapes") and not arg) or (kind in ("torchvision", "imagefolder", "tensors") and arg):
            if kind == "torchvision" and arg.lower() not in TORCHVISION_SOURCES:
                raise AuditError(
                    f"data source '{text}' is unknown; allowed: torchvision:{{{','.join(TORCHVISION_SOURCES)}}}"
                )
            return cls(text, kind, arg.lower() if kind == "torchvision" else arg)
        raise AuditError(f"data source '{text}' is unknown; allowed: {allowed(SOURCE_FORMS)}")

    @classmethod
    def parse(cls, text: str) -> DataSpec:
        """What --data names: a source when its prefix is a source's (checked as one), else a built dataset folder."""
        if text.split(":", 1)[0].strip().lower() in SOURCE_KINDS:
            return cls.source(text)
        return cls(text, "built", text)

    @property
    def is_source(self) -> bool:
        return self.kind != "built"

    def relative_to(self, base: Path) -> DataSpec:
        """A relative path in the spec read from `base` (an audit file's folder); other specs unchanged."""
        if self.kind not in FILE_KINDS:
            return self
        arg = _resolved(self.arg, base)
        return DataSpec(arg if self.kind == "built" else f"{self.kind}:{arg}", self.kind, arg)


@dataclass(frozen=True)
class ModelSpec:
    """kind: 'arch' for an architecture auditnn trains, else one of USER_MODEL_KINDS; arg: the name, path or
    pkg.module:function. weights: a state dict for factory:/torchvision: models; mean/std: per channel, pixel units
    (default: the model card's, else none)."""

    text: str
    weights: str | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    kind: str = field(init=False, default="")
    arg: str = field(init=False, default="")

    def __post_init__(self) -> None:
        if self.text in MODELS:
            kind, arg = "arch", self.text
        else:
            kind, _, arg = self.text.partition(":")
            arg = arg.strip()
            if kind not in USER_MODEL_KINDS or not arg:
                raise AuditError(f"model '{self.text}' is unknown; allowed: {allowed(MODEL_FORMS)}")
            if kind == "factory" and arg.count(":") != 1:
                raise AuditError(
                    f"model '{self.text}' is not factory:pkg.module:function (module and function separated by ':')"
                )
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "arg", arg)

    @property
    def is_architecture(self) -> bool:
        return self.kind == "arch"

    def relative_to(self, base: Path) -> ModelSpec:
        """Relative paths (a model file or folder, the weights) read from `base` (an audit file's folder)."""
        text = f"{self.kind}:{_resolved(self.arg, base)}" if self.kind in FILE_KINDS else self.text
        weights = None if self.weights is None else _resolved(self.weights, base)
        return replace(self, text=text, weights=weights)
