"""The user's own models (the spec is parsed by spec.ModelSpec):

  factory:pkg.module:function   a function returning an nn.Module (weights from --weights, or its own)
  torchvision:NAME              a torchvision architecture with the user's weights (--weights)
  export:FILE.pt2               a torch.export program
  torchscript:FILE              a TorchScript module
  auditnn:DIR                   a model trained by auditnn (model.pt + model.json card)

Weights are read with torch.load(weights_only=True) or as safetensors: loading never unpickles arbitrary objects.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import AuditError, Interrupted, option
from ..formats import check_export_archive, read_bytes, read_safetensors, regular_file
from ..io import safe_torch_load
from ..spec import ModelSpec
from .load import PixelModel, load_model_dir


class ExportedModel(nn.Module):
    """A torch.export program as a module: its mode was fixed at export (train() is not supported on it), and a
    program exported with a fixed batch size runs in chunks of that size, the last one padded."""

    def __init__(self, program: Any) -> None:
        super().__init__()
        self.program = program.module()
        self.input_shape: list[int | None] | None = None  # None for a dimension exported as dynamic
        self.batch: int | None = None
        for node in program.graph.nodes:
            if node.op == "placeholder" and node.name in program.graph_signature.user_inputs:
                shape = node.meta["val"].shape
                self.input_shape = [int(d) if isinstance(d, int) else None for d in shape[1:]]
                self.batch = int(shape[0]) if isinstance(shape[0], int) else None
                break

    def train(self, mode: bool = True) -> ExportedModel:
        self.training = mode  # recorded only: the program's own behaviour was fixed when it was exported
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.batch is None or len(images) == self.batch:
            return self.program(images)
        outputs = []
        for begin in range(0, len(images), self.batch):
            chunk = images[begin : begin + self.batch]
            short = self.batch - len(chunk)
            if short:
                chunk = torch.cat([chunk, chunk[-1:].expand(short, *chunk.shape[1:])])
            outputs.append(self.program(chunk)[: self.batch - short])
        return torch.cat(outputs)


def _raised(exc: BaseException) -> str:
    """What user code raised, in a few words: 'SystemExit(0)', 'SyntaxError (invalid syntax, mod.py line 3)'."""
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r})"
    if isinstance(exc, SyntaxError):
        return f"SyntaxError ({exc.msg}, {Path(exc.filename or '?').name} line {exc.lineno})"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


@contextlib.contextmanager
def user_code(spec: str, action: str) -> Iterator[None]:
    """Run the user's own code so that nothing it raises decides auditnn's exit code: every BaseException
    (SystemExit, KeyboardInterrupt, GeneratorExit, its own subclasses) becomes an AuditError naming `action` and what
    was raised. Only Interrupted passes: a real SIGINT or SIGTERM, which auditnn's handler raises wherever the main
    thread is; a KeyboardInterrupt is code's, not a signal's. What the code prints is kept off the terminal, whose
    stdout may carry JSON; its last line is quoted when the code fails."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            yield
    except Interrupted:
        raise
    except BaseException as exc:
        lines = [line.strip() for line in printed.getvalue().splitlines() if line.strip()]
        said = f"; its last output: '{lines[-1]}'" if lines else ""
        raise AuditError(f"model '{spec}': {action} raised {_raised(exc)}{said}") from None


class _ExitGuard(nn.Module):
    """A factory-built network whose forward may call sys.exit or raise another BaseException (a KeyboardInterrupt,
    its own subclass): that becomes an AuditError, not auditnn's exit code. Its Exceptions keep their meaning (a
    shape mismatch is reported by the code that understands it), and Interrupted, a real signal, still interrupts."""

    def __init__(self, net: nn.Module, spec: str) -> None:
        super().__init__()
        self.net = net
        self.spec = spec

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        try:
            return self.net(images)
        except (Exception, Interrupted):
            raise
        except BaseException as exc:
            raise AuditError(f"model '{self.spec}': its forward raised {_raised(exc)}") from None


def _import_factory(arg: str, spec: str) -> nn.Module:
    module_name, function_name = arg.split(":")
    added = str(Path.cwd()) not in sys.path
    if added:  # a factory in the user's project folder imports as it would from `python -c` there
        sys.path.insert(0, str(Path.cwd()))
    try:
        with user_code(spec, f"importing module '{module_name}'"):
            module = importlib.import_module(module_name)
    finally:
        if added:
            sys.path.remove(str(Path.cwd()))
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise AuditError(f"model '{spec}': '{module_name}' has no function '{function_name}'")
    with user_code(spec, f"calling {module_name}.{function_name}()"):
        net = factory()
    if not isinstance(net, nn.Module):
        raise AuditError(f"model '{spec}': {function_name}() returned {type(net).__name__}; allowed: a torch.nn.Module")
    return net


def _torchvision(name: str, spec: str, num_classes: int) -> nn.Module:
    import torchvision.models as tvm

    if name not in tvm.list_models(module=tvm):
        raise AuditError(
            f"model '{spec}': torchvision has no classification model '{name}'; e.g. resnet18, mobilenet_v3_small"
        )
    return tvm.get_model(name, weights=None, num_classes=num_classes)


def _load_export(path: str, spec: str) -> ExportedModel:
    """Check the archive's bytes (check_export_archive), then give torch those same bytes: no second read of a
    file that could have changed in between."""
    raw = read_bytes(Path(path), f"model '{spec}': file", "give a .pt2 file written by torch.export.save")
    check_export_archive(raw, path)
    exporter_log = logging.getLogger("torch.export")
    level = exporter_log.level
    exporter_log.setLevel(logging.CRITICAL)  # torch logs a warning per failed attempt; the AuditError says it once
    try:
        return ExportedModel(torch.export.load(io.BytesIO(raw)))
    except Exception as exc:  # the loader raises many types for a file that is not a program
        raise AuditError(
            f"model '{spec}': '{path}' is not a torch.export program "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from None
    finally:
        exporter_log.setLevel(level)


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from .safetensors, or from a torch.save file read with weights_only=True."""
    path = regular_file(path, "weights", "give a .pt, .pth or .safetensors file")
    if path.suffix == ".safetensors":
        return read_safetensors(path, "weights")
    state = safe_torch_load(path, "weights")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # checkpoints that wrap the state_dict
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AuditError(f"weights '{path}' hold no state_dict (a dict of tensors); save model.state_dict()")
    return state


def load_weights(net: nn.Module, path: str | Path, spec: str) -> None:
    state = read_weights(path)
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise AuditError(
            f"weights '{path}' do not fit model '{spec}': missing keys {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected keys {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}"
        )
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if state[k].shape != v.shape]
    if wrong:
        raise AuditError(f"weights '{path}' do not fit model '{spec}': shape of {wrong[0]} in the model")
    net.load_state_dict(state)


def _normalization(values: Sequence[float] | None, channels: int, name: str, default: float) -> list[float]:
    if values is None:
        return [default] * channels
    values = list(values)
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise AuditError(
            f"--{name} has {len(values)} values but the data has {channels} channel(s); give 1 or {channels}"
        )
    return values


def load_user_model(spec: ModelSpec, *, num_classes: int, channels: int) -> tuple[PixelModel, dict[str, Any]]:
    """Build or load the model a spec names, wrapped so that it takes [0, 1] pixels. Returns (model, card); the
    card's input_shape is the model's declared input (C, H, W) when it has one, else None."""
    kind, arg = spec.kind, spec.arg
    if kind == "arch":
        raise AuditError(f"model '{spec.text}' is an architecture to train, not a model to load")
    if kind == "auditnn":
        model, card = load_model_dir(arg)
        if spec.weights is not None:
            raise AuditError(
                f"model '{spec.text}' carries its weights in model.pt; drop {option('--weights', 'model.weights')}"
            )
        if spec.mean is not None or spec.std is not None:
            raise AuditError(
                "an auditnn model carries its normalization in model.json; drop "
                f"{option('--mean/--std', 'model.mean/std')}"
            )
        return model, card
    input_shape = None
    if kind == "factory":
        net = _import_factory(arg, spec.text)
    elif kind == "torchvision":
        if spec.weights is None:
            raise AuditError(
                f"model '{spec.text}' needs {option('--weights', 'model.weights')} FILE (a state_dict for "
                "that architecture)"
            )
        net = _torchvision(arg, spec.text, num_classes)
    elif kind == "export":
        net = _load_export(arg, spec.text)
        input_shape = net.input_shape
    else:
        regular_file(arg, f"model '{spec.text}': file", "give a TorchScript file written by torch.jit.save")
        try:
            with warnings.catch_warnings():  # torch deprecates TorchScript; a user who names it has older models
                warnings.simplefilter("ignore", FutureWarning)
                net = torch.jit.load(arg, map_location="cpu")
        except Exception as exc:  # RuntimeError for a file that is not TorchScript
            raise AuditError(
                f"model '{spec.text}': '{arg}' is not a TorchScript file ({str(exc).splitlines()[0]})"
            ) from None
    if spec.weights is not None:
        if kind in ("export", "torchscript"):
            raise AuditError(
                f"model '{spec.text}' carries its own weights; drop {option('--weights', 'model.weights')}"
            )
        load_weights(net, spec.weights, spec.text)
    if kind == "factory":
        net = _ExitGuard(net, spec.text)
    mean = _normalization(spec.mean, channels, "mean", 0.0)
    std = _normalization(spec.std, channels, "std", 1.0)
    card = {
        "format": "auditnn.model",
        "format_version": 1,
        "architecture": {"name": spec.text, "weights": spec.weights},
        "classes": None,
        "input_shape": input_shape,
        "normalization": {"mean": mean, "std": std},
    }
    return PixelModel(net, mean, std).eval(), card
