"""Memory-aware batch sizes: a memory budget (parsed from `--max-memory`, or a share of what the device has free), the
memory one image costs in an attack step (measured with a probe pass at two small batches), and the largest batch
whose estimate fits the budget. All figures are bytes.

Sizes are written as a number and a unit, case-insensitive: decimal units B, kB, MB, GB, TB (10**3 steps; `k`, `m`,
`g`, `t` alone mean the same) and binary units KiB, MiB, GiB, TiB (2**10 steps; `Ki`, `Mi`, `Gi`, `Ti` alone mean the
same). A bare number is refused: "4096" might mean bytes or megabytes, and a budget 10**6 times too small or too large
should not pass silently."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import AuditError
from .inference import eval_mode, frozen_parameters
from .runtime import is_out_of_memory

DECIMAL_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
BINARY_UNITS = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
UNITS = {
    **DECIMAL_UNITS,
    **{name[0]: scale for name, scale in DECIMAL_UNITS.items() if name != "b"},  # k, m, g, t
    **BINARY_UNITS,
    **{name[:2]: scale for name, scale in BINARY_UNITS.items()},  # ki, mi, gi, ti
}
_SIZE = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*([a-z]+)\s*", re.IGNORECASE)
_ALLOWED = "a number with a unit, e.g. 4GB or 512MB (units B, kB, MB, GB, TB or KiB, MiB, GiB, TiB)"

CPU_SHARE = 0.5  # of the free memory, on CPU: the kernel kills a process that overruns instead of raising an error
CUDA_SHARE = 0.8  # on CUDA: an overrun raises torch.OutOfMemoryError, and runtime.split_on_oom halves the batch
# Float32 copies of each image that an attack step keeps alive besides the input and input gradient that the probe
# counts. PGD, counted in attacks/base.py and attacks/pgd.py: the batch on the device, its clone (`adversarial`), the
# attacked subset, the best iterate, the clean start `x0`, this restart's best iterate and the previous step's
# gradient: 7; plus 1 for the random start's noise and the step's temporaries.
DEFAULT_COPIES = 8
# CPU probe: the backward's temporaries, in sizes of the largest tensor saved for backward: the gradient flowing in
# and the one being produced (a layer's backward holds both at once).
BACKWARD_TEMPORARIES = 2
PROBE_BATCHES = (1, 2)  # the two batch sizes the probe measures; the line through them gives per image and fixed
_NO_CGROUP_LIMIT = 2**60  # cgroup v1 writes "no limit" as a huge number (9223372036854771712 on x86-64)


def parse_size(text: str, where: str = "--max-memory") -> int:
    """Bytes from a size written as a number and a unit ("4GB", "512MB", "1.5GiB", "800kB", "2g"; see the module's
    docstring for the units). Fractions of a byte round up. AuditError, naming `where` and the text, for anything
    else, and for sizes that are not positive."""
    match = _SIZE.fullmatch(text)
    unit = UNITS.get(match.group(2).lower()) if match else None
    if match is None or unit is None:
        raise AuditError(f"{where} '{text}' is not a size; allowed: {_ALLOWED}")
    try:
        number = Decimal(match.group(1))
    except InvalidOperation:  # the pattern admits only decimal numerals; kept so that a change to it cannot crash
        raise AuditError(f"{where} '{text}' is not a size; allowed: {_ALLOWED}") from None
    if number <= 0:
        raise AuditError(f"{where} '{text}' is not a positive size; allowed: {_ALLOWED}, greater than zero")
    return math.ceil(number * unit)


def round_up_size(n: int) -> int:
    """n rounded up to three significant digits: a size that format_size writes exactly (and parse_size reads back)."""
    digits = len(str(n))
    if digits <= 3:
        return n
    step = 10 ** (digits - 3)
    return -(-n // step) * step


def format_size(n: int) -> str:
    """A size for messages and reports, in decimal units to three significant digits: "1.5 GB", "37 MB", "512 B"."""
    if n < 0:
        return "-" + format_size(-n)
    digits = len(str(n))
    if digits > 3:  # round half up to three significant digits, then pick the unit from the rounded size
        step = 10 ** (digits - 3)
        n = (n + step // 2) // step * step
    name, scale = "B", 1
    for unit, unit_scale in (("kB", 10**3), ("MB", 10**6), ("GB", 10**9), ("TB", 10**12)):
        if n >= unit_scale:
            name, scale = unit, unit_scale
    value = Decimal(n) / Decimal(scale)
    return f"{value.normalize():f} {name}"


# ---------------------------------------------------------------- free memory and the default budget


def free_bytes(device: torch.device) -> int:
    """Memory this process can still use on `device`, in bytes.

    CUDA: the device's free memory (torch.cuda.mem_get_info) plus what PyTorch's allocator holds but does not use
    (reserved minus allocated: reused before asking the device). CPU: see cpu_free_bytes."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type == "cpu":
        return cpu_free_bytes()
    raise AuditError(f"device '{device}' has no memory figure here; allowed: cpu or cuda, or pass --max-memory")


def cpu_free_bytes(proc: Path = Path("/proc"), cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The smaller of the kernel's estimate of available memory (MemAvailable in /proc/meminfo) and what this
    process's memory cgroups still allow (each cgroup's limit minus its usage, its inactive file cache not counted as
    used since the kernel reclaims it first; cgroup v2 memory.max / memory.current / memory.stat, or v1
    memory.limit_in_bytes / memory.usage_in_bytes / memory.stat; the cgroup and each one above it, as far as they are
    visible). Without /proc/meminfo, the free physical pages (os.sysconf); AuditError when nothing says."""
    figures = [figure for figure in (_meminfo_available(proc), _cgroup_room(proc, cgroup)) if figure is not None]
    if not figures:
        figures = [figure for figure in [_sysconf_free()] if figure is not None]
    if not figures:
        raise AuditError("the free memory of this machine cannot be read; allowed: pass --max-memory, e.g. 4GB")
    return max(0, min(figures))


def default_budget(device: torch.device) -> int:
    """The budget when `--max-memory` is not given: CPU_SHARE (0.5) of the free memory on CPU, CUDA_SHARE (0.8) on
    CUDA. CPU keeps the larger margin because there a process that overruns is killed, not told."""
    share = CUDA_SHARE if device.type == "cuda" else CPU_SHARE
    return int(free_bytes(device) * share)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _meminfo_available(proc: Path) -> int | None:
    text = _read(proc / "meminfo")
    match = re.search(r"^MemAvailable:\s+(\d+)\s*kB", text or "", re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def _stat_value(text: str | None, key: str) -> int:
    match = re.search(rf"^{key}\s+(\d+)", text or "", re.MULTILINE)
    return int(match.group(1)) if match else 0


def _cgroup_room(proc: Path, cgroup: Path) -> int | None:
    """The least room (limit minus usage) over this process's memory cgroups and their ancestors; None when none
    has a limit, or none can be read."""
    rooms = []
    for folder, v2 in _cgroup_folders(proc, cgroup):
        limit_text = _read(folder / ("memory.max" if v2 else "memory.limit_in_bytes"))
        usage_text = _read(folder / ("memory.current" if v2 else "memory.usage_in_bytes"))
        if limit_text is None or usage_text is None or limit_text.strip() == "max":
            continue
        try:
            limit, usage = int(limit_text), int(usage_text)
        except ValueError:
            continue
        if limit >= _NO_CGROUP_LIMIT:
            continue
        inactive = _stat_value(_read(folder / "memory.stat"), "inactive_file" if v2 else "total_inactive_file")
        rooms.append(limit - max(0, usage - inactive))
    return min(rooms) if rooms else None


def _cgroup_folders(proc: Path, cgroup: Path) -> list[tuple[Path, bool]]:
    """The folders of this process's memory cgroups (v2: the unified hierarchy; v1: the memory controller's), from
    its own up to the root of what is mounted, with whether each is v2. Inside a container the path in
    /proc/self/cgroup may not exist under the mount (the container sees its cgroup as the root): then the mount's
    root alone."""
    folders: list[tuple[Path, bool]] = []
    for line in (_read(proc / "self" / "cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # v2: the unified hierarchy, mounted at the root or (hybrid systems) under unified/
            roots, marker, v2 = [cgroup, cgroup / "unified"], "cgroup.controllers", True
        elif "memory" in controllers.split(","):
            roots, marker, v2 = [cgroup / "memory", cgroup / controllers], "memory.limit_in_bytes", False
        else:
            continue
        for root in roots:
            if (root / marker).is_file():
                folders += [(folder, v2) for folder in _up_to(root, path.strip())]
                break
    return folders


def _up_to(root: Path, path: str) -> list[Path]:
    """root/path and each folder above it up to root, those that exist; root alone when root/path does not."""
    start = root / path.strip("/")
    if not start.is_dir():
        return [root]
    chain = [start]
    while chain[-1] != root and root in chain[-1].parents:
        chain.append(chain[-1].parent)
    return chain


def _sysconf_free() -> int | None:
    import os

    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


# ---------------------------------------------------------------- the probe


@dataclass(frozen=True)
class StepCost:
    """What an attack step costs in memory, in bytes: `fixed` whatever the batch, plus `per_image` for each image
    (the probe pass's per image cost and the attack's own copies)."""

    per_image: int
    fixed: int

    def bytes_for(self, batch: int) -> int:
        """The estimated memory of a step over `batch` images, in bytes."""
        return self.fixed + batch * self.per_image


def pass_bytes(model: nn.Module, shape: tuple[int, int, int], device: torch.device, batch: int) -> int:
    """The memory, in bytes, of one attack pass over `batch` images of `shape` (C, H, W): a forward, the per-sample
    cross-entropy summed, and a backward with respect to the input. The model must already be in eval mode with its
    parameters frozen (as in an attack); the images are drawn from a fixed generator (the global random state is not
    touched).

    CUDA: the allocator's peak during the pass (torch.cuda.max_memory_allocated) above what was allocated before it;
    it counts everything the pass allocates on the device, workspaces included.

    CPU: there is no allocator statistic, so the bytes are counted: every storage autograd saves for backward
    (torch.autograd.graph.saved_tensors_hooks; each storage once, the model's parameters and buffers left out:
    they are held anyway), the input, its gradient, the logits, the losses and the labels, and BACKWARD_TEMPORARIES
    (2) times the largest saved storage for the backward's gradients in flight. It misses what autograd does not
    see: scratch buffers inside operators (im2col, oneDNN workspaces), tensors a custom autograd.Function keeps on
    `ctx` without save_for_backward, the forward's unsaved intermediate outputs (freed as it goes, so at most a few
    activations at a time), and the allocator's own overhead (malloc arenas, page rounding). For a torchvision
    ResNet-50 at 224x224 the count was within 1% of the peak resident memory a pass added (batch 64, this CPU)."""
    images = torch.rand((batch, *shape), generator=torch.Generator().manual_seed(0)).to(device)
    labels = torch.zeros(batch, dtype=torch.long, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        _forward_backward(model, images, labels, None)
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before) + images.nbytes + labels.nbytes
    held = {_storage_key(t) for t in (*model.parameters(), *model.buffers())}
    saved: dict[int, int] = {}

    def count(tensor: torch.Tensor) -> None:
        key = _storage_key(tensor)
        if key is not None and key not in held:
            saved[key] = max(saved.get(key, 0), tensor.untyped_storage().nbytes())

    logits, losses, grad = _forward_backward(model, images, labels, count)
    for given in (images, labels):  # counted below, once each (the loss saves the labels; the first layer may save x)
        saved.pop(_storage_key(given) or 0, None)
    largest = max(saved.values(), default=0)
    return (
        sum(saved.values())
        + BACKWARD_TEMPORARIES * largest
        + images.nbytes
        + grad.nbytes
        + logits.nbytes
        + losses.nbytes
        + labels.nbytes
    )


def _storage_key(tensor: torch.Tensor) -> int | None:
    """The address of a tensor's storage (what two views of one storage share); None for tensors without one."""
    try:
        pointer = tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # sparse, nested or meta tensors
        return None
    return pointer or None


def _forward_backward(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    count: Callable[[torch.Tensor], None] | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if count is not None:
            count(tensor)
        return tensor

    x = images.detach().requires_grad_(True)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logits = model(x).float()
        losses = F.cross_entropy(logits, labels, reduction="none")
        (grad,) = torch.autograd.grad(losses.sum(), x)
    return logits.detach(), losses.detach(), grad


def probe_step_cost(
    model: nn.Module, shape: tuple[int, int, int], device: torch.device, *, copies: int = DEFAULT_COPIES
) -> StepCost:
    """The memory of an attack step, measured: pass_bytes at PROBE_BATCHES (1 and 2 images), the line through them
    (slope: bytes per image; intercept: fixed bytes), plus `copies` float32 copies of each image that the attack
    keeps (DEFAULT_COPIES: PGD's). The model is put in eval mode with frozen parameters for the probe and left as
    found. A slope that is not positive (allocator noise on CUDA) is replaced by the whole cost of one image, with
    no fixed part (an overestimate)."""
    if copies < 0:
        raise AuditError(f"copies {copies}; allowed: at least 0")
    with eval_mode(model), frozen_parameters(model):
        small, large = (_probe_pass(model, shape, device, batch) for batch in PROBE_BATCHES)
    slope = (large - small) // (PROBE_BATCHES[1] - PROBE_BATCHES[0])
    if slope <= 0:
        slope, fixed = small // PROBE_BATCHES[0], 0
    else:
        fixed = max(0, small - PROBE_BATCHES[0] * slope)
    image_bytes = 4 * shape[0] * shape[1] * shape[2]
    return StepCost(per_image=slope + copies * image_bytes, fixed=fixed)


def _probe_pass(model: nn.Module, shape: tuple[int, int, int], device: torch.device, batch: int) -> int:
    try:
        return pass_bytes(model, shape, device, batch)
    except RuntimeError as error:
        if not is_out_of_memory(error):
            raise
    if device.type == "cuda":
        torch.cuda.empty_cache()
    raise AuditError(
        f"device {device} ran out of memory in a pass over {batch} image(s) of shape {shape}; allowed: a device "
        "with more free memory, or smaller images"
    )


# ---------------------------------------------------------------- the batch size


@dataclass(frozen=True)
class BatchChoice:
    """The batch size chosen from a memory budget, and why. Bytes: budget, per_image, fixed (see StepCost).
    limited_by: 'budget' (the largest batch that fits, rounded down to a power of two) or 'upper' (the cap)."""

    batch_size: int
    budget: int
    per_image: int
    fixed: int
    upper: int
    limited_by: Literal["budget", "upper"]

    @property
    def estimate(self) -> int:
        """The estimated memory of a step at the chosen batch size, in bytes."""
        return self.fixed + self.batch_size * self.per_image


def choose_batch_size(
    model: nn.Module,
    shape: tuple[int, int, int],
    device: torch.device,
    budget: int,
    *,
    upper: int = 512,
    copies: int = DEFAULT_COPIES,
    where: str = "--max-memory",
) -> BatchChoice:
    """The largest batch of images of `shape` (C, H, W) whose attack step fits `budget` bytes (probe_step_cost),
    at most `upper`. When the budget is what limits it, the batch is rounded down to a power of two, so that small
    changes in free memory do not change the batch (and with it the batches' random streams and the numbers).
    AuditError, naming `where` and the smallest budget that works, when one image does not fit."""
    if upper < 1:
        raise AuditError(f"batch size cap {upper}; allowed: at least 1")
    if budget < 1:
        raise AuditError(f"{where} {budget} bytes; allowed: a positive size")
    return batch_for(probe_step_cost(model, shape, device, copies=copies), budget, upper=upper, where=where)


def batch_for(cost: StepCost, budget: int, *, upper: int = 512, where: str = "--max-memory") -> BatchChoice:
    """choose_batch_size's rule, given the step's cost (see there)."""
    fits = (budget - cost.fixed) // cost.per_image if cost.per_image > 0 else upper
    if fits < 1:
        needed = round_up_size(cost.bytes_for(1))
        raise AuditError(
            f"{where} {format_size(budget)} is too small for one image of this model (one needs about "
            f"{format_size(needed)}); allowed: at least {format_size(needed)}"
        )
    if fits >= upper:
        return BatchChoice(upper, budget, cost.per_image, cost.fixed, upper, "upper")
    return BatchChoice(1 << (fits.bit_length() - 1), budget, cost.per_image, cost.fixed, upper, "budget")
