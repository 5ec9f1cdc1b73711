"""Device choice, seeding, and the environment a report records (versions, hardware, git commit)."""

from __future__ import annotations

import os
import platform
import random
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import torch

from .errors import AuditError, option

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
T = TypeVar("T")


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; 'cuda' without CUDA is a usage error, not a silent fallback."""
    name = name.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if not match:
        raise AuditError(f"device '{name}' is unknown; allowed: auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise AuditError(
            f"device '{name}' was requested but CUDA is not available here; use "
            f"{option('--device cpu', 'run.device = cpu')} or auto"
        )
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise AuditError(f"device '{name}' does not exist; this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", index)


def seed_everything(seed: int) -> None:
    """Seed every generator a run touches, so the same seed and inputs give the same numbers on CPU."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def generator(seed: int) -> torch.Generator:
    """A CPU generator: random draws come from here (never the global state), so results do not depend on call order."""
    return torch.Generator().manual_seed(seed)


def _git_commit() -> str | None:
    source = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device | None = None) -> dict[str, Any]:
    """Versions, hardware and source commit, recorded in every report."""
    import torchvision

    from . import __version__

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "auditnn": __version__,
        "auditnn_commit": _git_commit(),
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
    }
    if device is not None:
        info["device"] = str(device)
        if device.type == "cuda":
            info["device_name"] = torch.cuda.get_device_name(device)
        else:
            info["device_name"] = _cpu_name()
    return info


# ---------------------------------------------------------------- many processes (torchrun)


def init_distributed(device_name: str = "auto") -> None:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): nccl for CUDA devices, gloo otherwise."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")


def finish_distributed() -> None:
    """Leave the process group after a run that completed on this process. Without it, Gloo's worker threads may
    still hold work whose tensors are freed during interpreter shutdown, which aborts the process (SIGABRT,
    'terminate called without an active exception'; pytorch/pytorch#190489). Not after a failure: another process
    may still wait in a collective, and destroying the group would hang it."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return rank_and_world()[0] == 0


def my_batches(n: int, batch_size: int) -> list[tuple[int, int, int]]:
    """This process's share of the batches of n items, as (global batch index, start, end): every process takes a
    contiguous run of whole batches (no padding, no duplicates), so batch boundaries, and the random draws seeded
    by batch index, are the same whatever the number of processes."""
    rank, world = rank_and_world()
    batches = [(b, s, min(n, s + batch_size)) for b, s in enumerate(range(0, n, batch_size))]
    per, extra = divmod(len(batches), world)
    first = rank * per + min(rank, extra)
    return batches[first : first + per + (1 if rank < extra else 0)]


def gather_parts(parts: list[Any]) -> list[Any]:
    """Every process's parts, in rank order (so in global batch order). One process: the parts themselves."""
    import torch.distributed as dist

    _, world = rank_and_world()
    if world == 1:
        return parts
    everyone: list[Any] = [None] * world
    dist.all_gather_object(everyone, parts)
    return [part for rank_parts in everyone for part in rank_parts]


def batch_generator(seed: int, batch_index: int) -> torch.Generator:
    """The random stream of one global batch: independent of which process runs it."""
    return torch.Generator().manual_seed(seed * 1_000_003 + batch_index)


def share_weights_from_first(model: torch.nn.Module) -> None:
    """Make every process hold the first process's weights (training on GPUs is not bit-identical across ranks,
    and sharded predictions must all come from one model)."""
    import torch.distributed as dist

    if rank_and_world()[1] == 1:
        return
    with torch.no_grad():
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)


def object_from_first(value: T) -> T:
    """The first process's `value` (anything picklable) in every process. One process: `value` itself."""
    import torch.distributed as dist

    if rank_and_world()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def compile_or_eager(model: torch.nn.Module, sample: torch.Tensor) -> tuple[torch.nn.Module, str | None]:
    """torch.compile the model and run it once on `sample` (compilation happens at the first call); when the
    compiler is unavailable or fails, return the model unchanged and a one-line reason."""
    try:
        # torch.compile's stubs type any callable's result as a plain callable; given a Module it returns a Module
        # (an OptimizedModule wrapping it).
        compiled = cast(torch.nn.Module, torch.compile(model))
        with torch.no_grad():
            compiled(sample)
        return compiled, None
    except Exception as exc:  # no C++ compiler, unsupported platform, or an op dynamo cannot trace
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return model, f"torch.compile is unavailable here ({reason[:160]}); running without it"


CPU_ALLOCATOR_FAILURE = "DefaultCPUAllocator: can't allocate memory"  # in the RuntimeError torch raises on CPU


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` says a tensor could not be allocated: torch.OutOfMemoryError (CUDA's, and any other
    device's that torch reports so), or the RuntimeError the CPU allocator raises (this torch does not raise
    OutOfMemoryError on CPU; its message names DefaultCPUAllocator). On Linux the CPU allocator fails only for
    requests the kernel refuses outright; a process that grows past what the machine has is killed instead, which
    is why batch sizes are chosen from a budget (memory.choose_batch_size) before anything is split."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and CPU_ALLOCATOR_FAILURE in str(error)


def split_on_oom(run: Callable[..., list[Any]], *tensors: torch.Tensor, unit: int = 1) -> list[Any]:
    """run(*tensors) -> list of results; when it runs out of memory (is_out_of_memory: on CUDA or on CPU), run each
    half of the batch instead (recursively, down to one unit of `unit` items: each split falls on a multiple of it).
    The results stay in order; any other error, and an out-of-memory error on one unit, propagates unchanged."""
    try:
        return run(*tensors)
    except RuntimeError as error:  # torch.OutOfMemoryError is a RuntimeError
        if not is_out_of_memory(error) or len(tensors[0]) <= unit:
            raise
    # Split outside the handler: the error's traceback holds the failed call's frames, and with them its tensors.
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    half = -(-len(tensors[0]) // (2 * unit)) * unit  # half the units, rounded up
    first = split_on_oom(run, *(t[:half] for t in tensors), unit=unit)
    return first + split_on_oom(run, *(t[half:] for t in tensors), unit=unit)
