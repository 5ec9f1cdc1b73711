"""The check contract: a kind declares its typed settings, thresholds, needs and naming, measures a subject and
returns data; the registry maps kind names to kinds. The runner (runner.py) is the only caller of `measure`."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch
import torch.nn as nn

from ..checkpoint import Checkpoint
from ..data.controlled import ShortcutConfig
from ..errors import option
from ..io import sha256_file
from ..report.tables import Table
from ..subject import Subject, SubjectSpec

# How an audit file writes a setting (the words appear in error messages: "allowed: a finite number").
NUMBER, INTEGER, STRING, BOOLEAN = "a finite number", "an integer", "a string", "true or false"
NUMBERS = "a list of finite numbers"
_FILE_TYPES = {"float": NUMBER, "int": INTEGER, "str": STRING, "bool": BOOLEAN}

S = TypeVar("S")


def type_name(annotation: Any) -> str:
    """A settings field's type as written: 'float', 'int | None', 'list[float]' (annotations may be strings)."""
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


def cli_only() -> dict[str, Any]:
    """Field metadata of a setting a command's options set and an audit file does not take."""
    return {"file": None}


@dataclass
class CheckResult:
    """What one measurement returns. rows: tidy metric rows (report.schema.metric_row), without the check's name;
    section: its results section; pictures: tensors for the HTML page, keyed relative to the check; warnings:
    {"code", "message"}; files: output name -> a function writing that file or folder at the path it is given."""

    rows: list[dict[str, Any]]
    section: dict[str, Any]
    pictures: dict[str, torch.Tensor] = field(default_factory=dict)
    warnings: list[dict[str, str]] = field(default_factory=list)
    files: dict[str, Callable[[Path], Any]] = field(default_factory=dict)


@dataclass
class Context:
    """What a measurement may use besides its settings. subject: the model and data (None for kinds that build
    their own); out_dir: the final output folder (for paths a report records), None when nothing is kept."""

    subject: Subject | None
    subject_spec: SubjectSpec
    device: torch.device
    seed: int
    out_dir: Path | None = None
    progress: Callable[[str, int, int, dict[str, float]], None] | None = None  # (task, epoch, epochs, row)
    max_memory: int | None = None  # bytes a batch may take (None: memory.default_budget of the device)
    max_memory_name: str = "--max-memory"  # how the user wrote it (an audit file's key), for messages
    checkpoint: Checkpoint | None = None  # where this check saves its batches as it goes (saves_batches kinds)


class CheckKind(Generic[S]):
    """One kind of measurement. Subclasses set the class attributes and write `measure` and `tables`."""

    name: ClassVar[str]
    settings: ClassVar[type]  # a dataclass; its fields with defaults are optional, the others required
    thresholds: ClassVar[dict[str, tuple[str, str]]]  # audit-file key -> (metric, 'min' or 'max')
    ratio_thresholds: ClassVar[frozenset[str]] = frozenset()  # keys judging a ratio (any number >= 0), not a share
    needs_subject: ClassVar[bool] = True  # False: it builds its own data and model
    merged: ClassVar[bool] = False  # True: one results section holds the rows of every check of this kind
    # Warning codes that say this kind's figure may not be trusted (it may overstate what it measures): a gate fails
    # a check whose measurement carries one, unless the audit file lists it in the check's allow_warnings.
    unreliable_warnings: ClassVar[frozenset[str]] = frozenset()
    saves_batches: ClassVar[bool] = False  # True: it measures batch by batch and saves each (Context.checkpoint)
    section_schema: ClassVar[dict[str, Any]]  # its results section's fields, as report.schema checks them on reading

    # ------------------------------------------------------------ settings
    @classmethod
    def file_keys(cls) -> dict[str, str]:
        """Audit-file key -> how it is written (NUMBER, INTEGER, ...), from the settings' fields."""
        keys = {}
        for f in dataclasses.fields(cls.settings):
            base = type_name(f.type).split(" | ")[0].removeprefix("list[").removesuffix("]")
            written = f.metadata.get("file", _FILE_TYPES.get(base))
            if written is not None:
                keys[f.name] = written
        return keys

    @classmethod
    def required(cls) -> tuple[str, ...]:
        return tuple(
            f.name
            for f in dataclasses.fields(cls.settings)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        )

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        fields = dataclasses.fields(cls.settings)
        return {
            **{f.name: f.default_factory() for f in fields if f.default_factory is not dataclasses.MISSING},
            **{f.name: f.default for f in fields if f.default is not dataclasses.MISSING},
        }

    @classmethod
    def from_file(cls, key: str, value: Any, at: str) -> Any:
        """An audit file's value for `key` as the setting takes it ("03" -> "3"), before its type is checked."""
        return value

    def validate(self, settings: S, spec: SubjectSpec) -> None:
        """Every check that needs no data, before anything is trained or attacked."""

    def validate_thresholds(self, settings: S, thresholds: list[Any]) -> None:
        """What the check's thresholds (plan.Threshold) need of its settings, before anything runs (a threshold
        whose row the settings never produce is bad input, not a gate failure)."""

    def inputs(self, settings: S, ctx: Context) -> str | None:
        """What the result depends on besides the settings and the seed, as one digest: the subject's fingerprint
        and the content of every file a setting names. None: the result is never reused (see runner.check_key)."""
        parts = [ctx.subject.fingerprint if self.needs_subject and ctx.subject is not None else ""]
        for f in dataclasses.fields(self.settings):
            value = getattr(settings, f.name)
            if f.metadata.get("path") and value is not None:
                path = Path(value)
                parts.append(sha256_file(path) if path.is_file() else f"not a file: {value}")
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    # ------------------------------------------------------------ naming
    def title(self, settings: S) -> tuple[str, tuple[str, ...]]:
        """(the name's main part, the settings it shows)."""
        raise NotImplementedError

    def default_name(self, settings: S) -> str:
        """The main part, then every audit-file setting that differs from its default, so two checks that differ
        in one setting get two names."""
        main, shown = self.title(settings)
        defaults = self.defaults()
        extras = []
        for key in self.file_keys():
            value = _single(getattr(settings, key))
            if key in shown or value is None or value == _single(defaults.get(key)):
                continue
            extras.append(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}")
        return " ".join([main, *extras])

    def labels(self, settings: S) -> dict[str, Any]:
        """The labels of the metric rows this check's thresholds judge (see gate.find_row)."""
        return {}

    # ------------------------------------------------------------ measuring and describing
    def measure(self, settings: S, ctx: Context) -> CheckResult:
        raise NotImplementedError

    def section_key(self, name: str) -> str:
        """Where a named check's section goes in the report's results (a command's goes under the kind's name)."""
        return f"{self.name}/{name}"

    def picture_key(self, key: str, name: str | None, settings: S, ctx: Context) -> str | None:
        """Where a picture of this check goes in pictures.pt (None: not kept)."""
        return f"{self.name}/{name}/{key}" if name else f"{self.name}/{key}"

    def merge(self, into: dict[str, Any] | None, section: dict[str, Any], name: str) -> dict[str, Any]:
        """For a merged kind: the shared section with this named check's rows added (each stamped with the name)."""
        merged = into if into is not None else {"rows": []}
        merged["rows"] += [{**row, "check": name} for row in section["rows"]]
        return merged

    def tables(self, section: dict[str, Any]) -> list[Table]:
        raise NotImplementedError


UPPER_BATCH = 512  # images per batch at most when the batch size is chosen from memory (the default it always had)


def batch_size_for(
    ctx: Context, requested: int | None, *, upper: int = UPPER_BATCH, copies: int | None = None
) -> dict[str, Any]:
    """The images per batch of a pass over the subject's test images, as a report records it: `requested` when given,
    else the largest batch (at most `upper`) whose attack step fits the memory budget (ctx.max_memory, default
    memory.default_budget of the device), by a probe of the model (memory.choose_batch_size; `copies`: the image-sized
    working copies per image the measurement holds, default memory's). Under torchrun every process takes the first
    process's choice: their batches, and the random draws seeded by batch, must line up."""
    from ..memory import choose_batch_size, default_budget
    from ..runtime import object_from_first

    if requested is not None:
        return {"size": requested, "chosen_by": "given"}
    subject = ctx.subject
    assert subject is not None  # a pass over the test images needs the subject
    given = ctx.max_memory is not None
    budget = ctx.max_memory if ctx.max_memory is not None else default_budget(ctx.device)
    where = (
        ctx.max_memory_name
        if given
        else f"the default memory budget (a share of the free memory; set {option('--max-memory', 'run.max_memory')})"
    )
    extra = {} if copies is None else {"copies": copies}
    choice = choose_batch_size(
        subject.model, subject.data.test.shape, ctx.device, budget, upper=upper, where=where, **extra
    )
    chosen = {
        "size": choice.batch_size,
        "chosen_by": choice.limited_by,
        "budget_bytes": int(choice.budget),
        "per_image_bytes": int(choice.per_image),
    }
    return object_from_first(chosen)


def planted(settings: Any) -> ShortcutConfig:
    """The tag a check plants, from its settings' tag, size, opacity, position and target_class."""
    return ShortcutConfig(
        tag=settings.tag,
        size=settings.size,
        opacity=settings.opacity,
        position=settings.position,
        target_class=settings.target_class,
    )


def path_setting() -> dict[str, Any]:
    """Field metadata of a setting that names a file: an audit file's relative path is read from its folder."""
    return {"path": True}


def of_check(section: dict[str, Any]) -> str:
    """A table title's suffix naming the check whose section it draws (an audit's), or nothing (a command's)."""
    return f" (check '{section['check']}')" if "check" in section else ""


def _single(value: Any) -> Any:
    """A one-item list (an audit file's eps or rho) shown as its item."""
    return value[0] if isinstance(value, list) and len(value) == 1 else value


KINDS: dict[str, CheckKind[Any]] = {}
K = TypeVar("K", bound="type[CheckKind[Any]]")


def register(cls: K) -> K:
    """Class decorator: add the kind to KINDS; a duplicate name is an error."""
    if cls.name in KINDS:
        raise ValueError(f"check kind '{cls.name}' is registered twice")
    KINDS[cls.name] = cls()
    return cls


def first_layer_pictures(model: nn.Module, input_shape: torch.Size) -> dict[str, torch.Tensor]:
    """What the network learned first: an MLP's hidden units as input-sized maps (N, C, H, W), or a CNN's first
    convolution filters (N, C, k, k). Empty when the first learned layer is neither."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            weight = module.weight.detach().cpu()
            if weight.shape[1] == int(torch.tensor(input_shape).prod()):
                return {"first_layer": weight.view(-1, *input_shape)[:64], "first_layer_kind": torch.tensor(0)}
            return {}
        if isinstance(module, nn.Conv2d):
            return {"first_layer": module.weight.detach().cpu()[:64], "first_layer_kind": torch.tensor(1)}
    return {}
