"""Natural corruptions (issue 16): auditnn's batched torch corruptions against the reference package `imagecorruptions`
(Michaelis et al., the pip packaging of Hendrycks & Dietterich's ImageNet-C code): fidelity, speed and memory.

Targets (issue 16):
- fidelity, deterministic corruptions (brightness, contrast, saturate, pixelate, jpeg_compression, defocus_blur,
  zoom_blur, gaussian_blur): PSNR of ours against the reference >= 30 dB at every severity, on 224x224 and 32x32 RGB;
- fidelity, random corruptions (the other 11): a CNN's accuracy under ours and under the reference within 2 percentage
  points per corruption and severity;
- speed: the full 15 x 5 sweep over the same images at >= 20x the reference's images per second on this CPU;
- memory: a sweep over 10,000 images holds at most one batch of corrupted images (peak RSS at 1,000 vs 10,000 images).

How it runs. The reference runs in a subprocess with its own interpreter (--reference-python, default
/tmp/icvenv/bin/python: `python3 -m venv /tmp/icvenv && /tmp/icvenv/bin/pip install imagecorruptions`; it needs
numpy < 2, scikit-image < 0.21 and opencv-python < 4.11, see the README section), reading the images from a .npy file
(uint8, N x H x W x 3) and writing each corruption and severity's outputs as .npy (uint8, as `imagecorruptions.corrupt`
returns them: truncated, not rounded) with the seconds its calls took. Our side runs `auditnn.corruptions.corrupt` on
the same uint8 pixels / 255 in batches, torch threads = the CPU's cores.

Constant sets: `imagecorruptions` has only the ImageNet-size constants (it applies them at every size); auditnn picks
the CIFAR-size set for images up to 64 px. To compare like with like, ours runs with the ImageNet set forced at both
sizes (base.CIFAR_MAX_SIDE set to 0 for the comparison); the CIFAR set has no packaged reference and is shown only as
the accuracy under ours with it ("ours, CIFAR set"), not compared.

Images: at 224 px, half `shapes` (auditnn's built-in procedural source) and half procedural 1/f ("pink") colour noise,
whose power spectrum falls like a photograph's; at 32 px, the `shapes` test images the CNN is scored on. The CNN is
auditnn's `cnn` trained here for a few epochs on 32 px `shapes` (seconds on a CPU).
Accuracy comparison: the same images, the same model; the difference's standard error is the paired one (the std of
per-image correct(ours) - correct(reference), over sqrt(N)), printed beside it.

Usage: PYTHONPATH=$PWD/src python benchmarks/corruptions.py [--quick] [--reference-python PATH] [--large N]
       [--small N] [--memory-sizes 1000,10000] [--parts fidelity,speed,memory]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DETERMINISTIC = (
    "brightness",
    "contrast",
    "saturate",
    "pixelate",
    "jpeg_compression",
    "defocus_blur",
    "zoom_blur",
    "gaussian_blur",
)
RANDOM = (  # the corruptions that draw random numbers: compared through a model's accuracy
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "speckle_noise",
    "glass_blur",
    "motion_blur",
    "snow",
    "frost",
    "fog",
    "spatter",
    "elastic_transform",
)
PSNR_TARGET = 30.0  # dB
ACCURACY_TARGET = 0.02  # largest allowed |accuracy(ours) - accuracy(reference)|
SPEED_TARGET = 20.0  # ours / reference images per second over the 15 x 5 sweep
LARGE, SMALL = 224, 32  # image sides in pixels
SEVERITIES = (1, 2, 3, 4, 5)

REFERENCE_RUNNER = r'''
"""Runs imagecorruptions over a job (argv[1], JSON): images .npy, tasks [[name, severity, seed, save]], out folder."""
import json, sys, time, warnings
warnings.simplefilter("ignore")
import numpy as np
import skimage.filters

_gaussian = skimage.filters.gaussian


def gaussian(image, *args, multichannel=None, **kwargs):  # skimage >= 0.20 dropped multichannel=True
    if multichannel:
        kwargs.setdefault("channel_axis", -1)
    return _gaussian(image, *args, **kwargs)


skimage.filters.gaussian = gaussian
from imagecorruptions import corrupt  # noqa: E402 - after the shim

job = json.load(open(sys.argv[1]))
images = np.load(job["images"])
seconds = {}
for name, severity, seed, save in job["tasks"]:
    corrupt(images[0], corruption_name=name, severity=severity)  # warm-up, untimed (as ours)
    np.random.seed(seed)
    out = np.empty_like(images)
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(len(images)):
        out[i] = corrupt(images[i], corruption_name=name, severity=severity)
    seconds[f"{name}-{severity}"] = [time.perf_counter() - wall, time.process_time() - cpu]
    if save:
        np.save(f"{job['out']}/{name}-{severity}.npy", out)
json.dump(seconds, open(f"{job['out']}/seconds.json", "w"))
'''


# ---------------------------------------------------------------- pure helpers (tests/test_benchmark_corruptions.py)


def psnr(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of `ours` against `reference`, both in [0, 1] (peak 1): 10 log10(1 / MSE),
    the MSE over every pixel value of the whole set (float64); inf when they are equal."""
    mse = (ours.double() - reference.double()).pow(2).mean().item()
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def worst_image_psnr(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """The lowest per-image PSNR (dB) over the first dimension."""
    return min(psnr(a, b) for a, b in zip(ours, reference, strict=True))


@dataclass(frozen=True)
class Paired:
    """Accuracies of one model on the same N images under two corruptions, as fractions, and the paired standard
    error of their difference: std(correct_ours - correct_reference) / sqrt(N) (0/1 per image, unbiased std)."""

    ours: float
    reference: float
    images: int
    se_difference: float

    @property
    def difference(self) -> float:
        return self.ours - self.reference

    @property
    def within(self) -> bool:
        """|difference| <= 2 pp, a difference on the line included (52 % - 50 % is 0.020000000000000018 in floats)."""
        return abs(self.difference) <= ACCURACY_TARGET + 1e-12


def paired(ours_correct: torch.Tensor, reference_correct: torch.Tensor) -> Paired:
    """Compare two (N,) boolean vectors of per-image correctness on the same images."""
    if ours_correct.shape != reference_correct.shape or ours_correct.dim() != 1:
        raise ValueError(f"shapes {tuple(ours_correct.shape)} and {tuple(reference_correct.shape)} differ")
    n = ours_correct.numel()
    d = ours_correct.double() - reference_correct.double()
    se = d.std(unbiased=True).item() / math.sqrt(n) if n > 1 else math.nan
    return Paired(ours_correct.double().mean().item(), reference_correct.double().mean().item(), n, se)


def images_per_second(images: int, seconds: float) -> float:
    """Throughput; inf for a zero time."""
    return math.inf if seconds <= 0 else images / seconds


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def fmt_number(value: float, digits: int = 1) -> str:
    """A figure for a table: 'inf' for infinity, '-' for nan, else fixed-point with `digits` decimals."""
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain-text table: the first column left-aligned, the others right-aligned, columns two spaces apart, each as
    wide as its widest cell. Every row must have as many cells as the header."""
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"row {list(row)} has {len(row)} cells; allowed: {len(header)}")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        parts = [str(c).ljust(widths[0]) if i == 0 else str(c).rjust(widths[i]) for i, c in enumerate(cells)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


# ---------------------------------------------------------------- images


def pink_noise(n: int, side: int, seed: int) -> torch.Tensor:
    """(n, 3, side, side) float in [0, 1]: Gaussian noise shaped in Fourier space to amplitude 1/f (a photograph's
    spectrum falls about so), per channel with a shared component so the colours correlate, then each image rescaled
    to span [0.05, 0.95]."""
    gen = torch.Generator().manual_seed(seed)
    fy = torch.fft.fftfreq(side).view(-1, 1)
    fx = torch.fft.rfftfreq(side).view(1, -1)
    amplitude = 1.0 / torch.sqrt(fx**2 + fy**2).clamp(min=1.0 / side)
    shared = torch.randn(n, 1, side, side, generator=gen)
    own = torch.randn(n, 3, side, side, generator=gen)
    field = torch.fft.irfft2(torch.fft.rfft2(0.7 * shared + 0.5 * own) * amplitude, s=(side, side))
    low = field.amin(dim=(1, 2, 3), keepdim=True)
    high = field.amax(dim=(1, 2, 3), keepdim=True)
    return 0.05 + 0.9 * (field - low) / (high - low)


def as_uint8(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] float (N, C, H, W) to uint8 (N, C, H, W), rounded: the pixels both sides get."""
    return images.mul(255).round().clamp(0, 255).to(torch.uint8)


def large_images(n: int, seed: int) -> torch.Tensor:
    """n uint8 (N, 3, 224, 224) images: the first half `shapes`, the rest pink noise."""
    from auditnn.data.sources import make_shapes

    shapes = n // 2
    parts = [pink_noise(n - shapes, LARGE, seed)]
    if shapes:
        parts.insert(0, make_shapes(max(shapes, 6), seed=seed, size=LARGE).images[:shapes])
    return as_uint8(torch.cat(parts))


def shapes_set(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n 32 px `shapes` images as uint8 (N, 3, 32, 32) and their labels."""
    from auditnn.data.sources import make_shapes

    data = make_shapes(n, seed=seed, size=SMALL)
    return as_uint8(data.images), data.labels


# ---------------------------------------------------------------- both sides


@contextmanager
def constant_set(name: str) -> Iterator[None]:
    """Force auditnn's corruptions to one constant set ('imagenet' or 'cifar') at every image size."""
    from auditnn.corruptions import base

    saved = base.CIFAR_MAX_SIDE
    base.CIFAR_MAX_SIDE = 0 if name == "imagenet" else 1 << 30
    try:
        yield
    finally:
        base.CIFAR_MAX_SIDE = saved


def available() -> list[str]:
    """The corruptions registered in this checkout (the others are reported as missing)."""
    from auditnn.corruptions import base, families  # noqa: F401 - importing families registers them

    return [name for name in (*base.BENCHMARK, *base.HELD_OUT) if name in base.CORRUPTIONS]


def task_seed(name: str, severity: int, seed: int) -> int:
    """The seed of one corruption and severity: the same on both sides (each side draws from its own generator)."""
    from auditnn.corruptions.base import BENCHMARK, HELD_OUT

    return seed * 1000 + 10 * (BENCHMARK + HELD_OUT).index(name) + severity


def ours(images: torch.Tensor, name: str, severity: int, seed: int, batch: int) -> tuple[torch.Tensor, Seconds]:
    """uint8 images under our corruption, as float (N, C, H, W) in [0, 1], and the time the corrupt calls took (the
    uint8 -> float conversion included), one generator seeded per task, batches of `batch` images."""
    from auditnn.corruptions import corrupt

    gen = torch.Generator().manual_seed(task_seed(name, severity, seed))
    corrupt(images[:1].float() / 255, name, severity, torch.Generator().manual_seed(0))  # warm-up, untimed
    outs, wall, cpu = [], 0.0, 0.0
    for start in range(0, len(images), batch):
        began, began_cpu = time.perf_counter(), time.process_time()
        out = corrupt(images[start : start + batch].float().div_(255), name, severity, gen)
        wall += time.perf_counter() - began
        cpu += time.process_time() - began_cpu
        outs.append(out)
    return torch.cat(outs), Seconds(wall, cpu)


@dataclass(frozen=True)
class Seconds:
    """Time one task took: wall-clock seconds and CPU seconds of the process (every thread's, summed)."""

    wall: float
    cpu: float


@dataclass
class ReferenceRun:
    """The reference's outputs (name-severity -> uint8 (N, 3, H, W), for the tasks saved) and times per task."""

    outputs: dict[str, torch.Tensor]
    seconds: dict[str, Seconds]


def save_images(images: torch.Tensor, work: Path) -> Path:
    """uint8 (N, 3, H, W) as the reference reads them: (N, H, W, 3) .npy in `work`, and the runner beside it."""
    work.mkdir(parents=True, exist_ok=True)
    np.save(work / "images.npy", images.permute(0, 2, 3, 1).contiguous().numpy())
    (work / "runner.py").write_text(REFERENCE_RUNNER)
    return work / "images.npy"


def reference(python: str, work: Path, tasks: Sequence[tuple[str, int, bool]], seed: int) -> ReferenceRun:
    """Run imagecorruptions over the images saved in `work` (save_images) in a subprocess of `python`: tasks (name,
    severity, keep the outputs)."""
    job = {
        "images": str(work / "images.npy"),
        "out": str(work),
        "tasks": [[name, s, task_seed(name, s, seed), save] for name, s, save in tasks],
    }
    (work / "job.json").write_text(json.dumps(job))
    subprocess.run([python, str(work / "runner.py"), str(work / "job.json")], check=True)
    seconds = {k: Seconds(*v) for k, v in json.loads((work / "seconds.json").read_text()).items()}
    outputs = {}
    for name, s, save in tasks:
        if save:
            path = work / f"{name}-{s}.npy"
            outputs[f"{name}-{s}"] = torch.from_numpy(np.load(path)).permute(0, 3, 1, 2).contiguous()
            path.unlink()
    return ReferenceRun(outputs, seconds)


# ---------------------------------------------------------------- the model


def train_cnn(n: int, epochs: int, seed: int, work: Path) -> torch.nn.Module:
    """auditnn's `cnn` trained on n 32 px `shapes` images (seed + 1), batches of 64, in eval mode; its state_dict is
    cached in `work` (read back with weights_only) so that a rerun measures the same model."""
    from auditnn.runtime import seed_everything
    from auditnn.train import TrainConfig, fit, new_classifier

    images, labels = shapes_set(n, seed + 1)
    x = images.float() / 255
    seed_everything(seed)
    model = new_classifier(x, ["circle", "square", "triangle", "cross", "ring", "star"], "cnn")
    path = work / f"cnn-shapes-{n}-{epochs}-{seed}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        print(f"cnn read from {path}", flush=True)
        return model.eval()
    result = fit(model, x, labels, TrainConfig(epochs=epochs, batch_size=64, seed=seed), device=torch.device("cpu"))
    print(f"trained cnn on {n} shapes (32 px), {epochs} epochs, {result.seconds:.0f} s", flush=True)
    work.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


@torch.no_grad()
def correct(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N,) bool: the model's answer on float images in [0, 1] equals the label."""
    answers = torch.cat([model(images[i : i + 500]).argmax(1) for i in range(0, len(images), 500)])
    return answers == labels


# ---------------------------------------------------------------- the parts


@dataclass
class SideResult:
    """One image size: per task 'name-severity', our time and the reference's, PSNR (deterministic corruptions: pooled
    and worst image, dB), and the model's paired accuracies (when scored)."""

    side: int
    images: int
    ours_seconds: dict[str, Seconds]
    reference_seconds: dict[str, Seconds]
    psnr: dict[str, tuple[float, float]]
    accuracy: dict[str, Paired]
    clean_accuracy: float = math.nan


def run_side(
    side: int,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    model: torch.nn.Module | None,
    args: argparse.Namespace,
) -> SideResult:
    """Every available corruption at every severity on both sides, one corruption at a time (the reference's five
    severities, then ours: a slow spell on this shared machine hits both alike), with the reference's outputs kept
    for the deterministic corruptions (PSNR) and, when a model and labels are given, for all (accuracy)."""
    score = model is not None and labels is not None
    result = SideResult(side, len(images), {}, {}, {}, {})
    batch = 32 if side > 64 else 500
    if model is not None and labels is not None:
        result.clean_accuracy = correct(model, images.float() / 255, labels).double().mean().item()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        save_images(images, work)
        for name in available():
            print(f"{side} px, {len(images)} images: {name}", flush=True)
            tasks = [(name, s, name in DETERMINISTIC or score) for s in SEVERITIES]
            ref = reference(args.reference_python, work, tasks, args.seed)
            result.reference_seconds.update(ref.seconds)
            for s in SEVERITIES:
                key = f"{name}-{s}"
                with constant_set("imagenet"):
                    out, result.ours_seconds[key] = ours(images, name, s, args.seed, batch)
                if key not in ref.outputs:
                    continue
                theirs = ref.outputs[key].float() / 255
                if name in DETERMINISTIC:
                    result.psnr[key] = (psnr(out, theirs), worst_image_psnr(out, theirs))
                if model is not None and labels is not None:
                    result.accuracy[key] = paired(correct(model, out, labels), correct(model, theirs, labels))
    return result


@dataclass(frozen=True)
class Outcome:
    """A part's verdict: every compared row met its target, how many rows were compared and how many were missing
    (corruptions not registered in this checkout). A part with nothing compared is not met."""

    met: bool
    compared: int
    missing: int

    def line(self, what: str) -> str:
        met = self.met and self.compared > 0
        return f"{what}: {verdict(met)} ({self.compared} compared, {self.missing} not available)"


def fidelity_table(results: Sequence[SideResult]) -> tuple[str, Outcome]:
    """One row per deterministic corruption and side: PSNR (dB) at each severity, the worst image's, and the verdict
    (every severity's pooled PSNR >= PSNR_TARGET)."""
    header = ["corruption", "side", "s1 dB", "s2 dB", "s3 dB", "s4 dB", "s5 dB", "worst image dB", "target"]
    rows, all_met, compared, missing = [], True, 0, 0
    for r in results:
        for name in DETERMINISTIC:
            keys = [f"{name}-{s}" for s in SEVERITIES]
            if not all(k in r.psnr for k in keys):
                rows.append([name, str(r.side), *["n/a"] * 6, "not available"])
                missing += 1
                continue
            met = min(r.psnr[k][0] for k in keys) >= PSNR_TARGET
            all_met, compared = all_met and met, compared + 1
            worst = min(r.psnr[k][1] for k in keys)
            rows.append([name, str(r.side), *[fmt_number(r.psnr[k][0]) for k in keys], fmt_number(worst), verdict(met)])
    return table(header, rows), Outcome(all_met, compared, missing)


def accuracy_table(r: SideResult, random_names: Sequence[str]) -> tuple[str, Outcome]:
    """One row per corruption and severity scored: the model's accuracy under ours and under the reference, the
    difference and its paired SE (percentage points); the verdict (|difference| <= 2 pp) for the random corruptions
    (`random_names`), the deterministic ones shown for context."""
    header = ["corruption", "sev", "ours %", "reference %", "diff pp", "paired SE pp", "target"]
    rows, all_met, compared = [], True, 0
    for key, p in r.accuracy.items():
        name, s = key.rsplit("-", 1)
        random = name in random_names
        if random:
            all_met, compared = all_met and p.within, compared + 1
        rows.append(
            [
                name,
                s,
                fmt_number(100 * p.ours),
                fmt_number(100 * p.reference),
                fmt_number(100 * p.difference, 2),
                fmt_number(100 * p.se_difference, 2),
                verdict(p.within) if random else "(deterministic)",
            ]
        )
    scored = {k.rsplit("-", 1)[0] for k in r.accuracy}
    missing = len([n for n in random_names if n not in scored])
    return table(header, rows), Outcome(all_met, compared, missing)


def speed_rows(
    ours_seconds: dict[str, Seconds], reference_seconds: dict[str, Seconds], images: int, sweep: Sequence[str]
) -> tuple[list[list[str]], float, float]:
    """Table rows, one per corruption (its tasks summed, `images` corrupted per task): our and the reference's
    corrupted images per second (wall clock), the wall-clock ratio and the CPU-time ratio (reference / ours); then one
    row for the corruptions in `sweep` together. Returns the rows and the sweep's wall and CPU ratios."""

    def totals(names: Sequence[str]) -> tuple[int, Seconds, Seconds]:
        keys = [k for k in ours_seconds if k.rsplit("-", 1)[0] in names]
        mine = Seconds(sum(ours_seconds[k].wall for k in keys), sum(ours_seconds[k].cpu for k in keys))
        theirs = Seconds(sum(reference_seconds[k].wall for k in keys), sum(reference_seconds[k].cpu for k in keys))
        return images * len(keys), mine, theirs

    def row(label: str, names: Sequence[str]) -> tuple[list[str], float, float]:
        count, mine, theirs = totals(names)
        wall = theirs.wall / mine.wall if mine.wall > 0 else math.inf
        cpu = theirs.cpu / mine.cpu if mine.cpu > 0 else math.inf
        cells = [
            label,
            fmt_number(images_per_second(count, mine.wall)),
            fmt_number(images_per_second(count, theirs.wall), 2),
            f"{fmt_number(wall)}x",
            f"{fmt_number(cpu)}x",
        ]
        return cells, wall, cpu

    names = list(dict.fromkeys(k.rsplit("-", 1)[0] for k in ours_seconds))
    rows = [row(n if n in sweep else f"{n} (held out)", [n])[0] for n in names]
    present = [n for n in names if n in sweep]
    last, wall, cpu = row(f"sweep: {len(present)} x 5", present)
    return [*rows, last], wall, cpu


SPEED_HEADER = ["corruption", "ours img/s", "reference img/s", "wall ratio", "CPU-time ratio"]


# ---------------------------------------------------------------- memory


def status_mb(field: str) -> float:
    """A field of /proc/self/status in MB: VmRSS (resident now) or VmHWM (the resident high-water mark)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak() -> None:
    """Reset this process's resident high-water mark (VmHWM) to its current resident set (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def memory_child(n: int, batch: int, severities: Sequence[int], seed: int) -> None:
    """The streamed sweep in this process: n 32 px shapes held as one uint8 tensor (built 1,000 at a time), every
    available benchmark corruption at each of `severities`, batch by batch into a CNN's forward; prints JSON: the
    resident set (MB) after the setup (model and store), the peak during one batch of each corruption (the warm-up)
    and the peak during the sweep (the high-water mark reset before each, so setup transients do not count), the
    store's MB and the corrupted images."""
    from auditnn.corruptions import corrupt
    from auditnn.corruptions.base import BENCHMARK
    from auditnn.models.zoo import build_model

    torch.manual_seed(seed)
    model = build_model("cnn", 3, SMALL, 6).eval()
    store = torch.cat([shapes_set(min(1000, n - i), seed + i)[0] for i in range(0, n, 1000)])
    setup = status_mb("VmRSS")
    reset_peak()
    names = [name for name in available() if name in BENCHMARK]
    for name in names:  # warm-up: first-call allocations of every corruption before the sweep
        with torch.no_grad():
            model(corrupt(store[:batch].float() / 255, name, 5, torch.Generator().manual_seed(0)))
    one_batch, done, checksum = status_mb("VmHWM"), 0, 0.0
    reset_peak()
    start = time.perf_counter()
    with torch.no_grad():
        for name in names:
            for s in severities:
                gen = torch.Generator().manual_seed(task_seed(name, s, seed))
                for i in range(0, n, batch):
                    out = corrupt(store[i : i + batch].float().div_(255), name, s, gen)
                    checksum += model(out).argmax(1).sum().item()
                    done += len(out)
    print(
        json.dumps(
            {
                "images": n,
                "setup_mb": setup,
                "one_batch_mb": one_batch,
                "peak_mb": status_mb("VmHWM"),
                "store_mb": store.numel() / 2**20,
                "corrupted": done,
                "seconds": time.perf_counter() - start,
                "corruptions": len(names),
            }
        )
    )


def memory_part(
    sizes: Sequence[int], batch: int, severities: str, seed: int
) -> tuple[str, dict[int, dict[str, float]]]:
    results = {}
    for n in sizes:
        print(f"memory: sweep over {n} images ...", flush=True)
        command = [
            sys.executable,
            __file__,
            "--memory-child",
            str(n),
            "--memory-batch",
            str(batch),
            "--memory-severities",
            severities,
            "--seed",
            str(seed),
        ]
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        results[n] = json.loads(done.stdout.strip().splitlines()[-1])
    header = [
        "images",
        "corrupted",
        "s",
        "store MB",
        "RSS after setup MB",
        "peak, one batch each MB",
        "peak, sweep MB",
        "sweep adds MB",
    ]
    rows = [
        [
            f"{n:,}",
            f"{r['corrupted']:,}",
            fmt_number(r["seconds"], 0),
            fmt_number(r["store_mb"]),
            fmt_number(r["setup_mb"]),
            fmt_number(r["one_batch_mb"]),
            fmt_number(r["peak_mb"]),
            fmt_number(r["peak_mb"] - r["one_batch_mb"]),
        ]
        for n, r in results.items()
    ]
    return table(header, rows), results


# ---------------------------------------------------------------- main


def banner(args: argparse.Namespace) -> str:
    from auditnn.runtime import environment

    info = environment(torch.device("cpu"))
    try:
        ref = subprocess.run(
            [
                args.reference_python,
                "-c",
                "import imagecorruptions, numpy, scipy, skimage, cv2; "
                "print(imagecorruptions.__file__.split('/')[-4], numpy.__version__, scipy.__version__, "
                "skimage.__version__, cv2.__version__)",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        peer = f"imagecorruptions (numpy {ref[1]}, scipy {ref[2]}, scikit-image {ref[3]}, opencv {ref[4]})"
    except (OSError, subprocess.CalledProcessError, IndexError):
        peer = "imagecorruptions: not importable"
    command = "python benchmarks/corruptions.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return (
        f"device: cpu ({info.get('device_name', '?')}), torch {info['torch']}, threads {torch.get_num_threads()}, "
        f"python {info['python']}\nreference: {peer}\ncommand: {command}\n"
        f"corruptions available here: {', '.join(available()) or 'none'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-python", default="/tmp/icvenv/bin/python")
    parser.add_argument("--large", type=int, default=16, help="224 px images (fidelity and speed)")
    parser.add_argument("--small", type=int, default=1000, help="32 px shapes (fidelity, accuracy and speed)")
    parser.add_argument("--train", type=int, default=3000, help="32 px shapes the CNN is trained on")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "auditnn-corbench"), help="model cache")
    parser.add_argument("--memory-sizes", default="1000,10000")
    parser.add_argument("--memory-batch", type=int, default=256)
    parser.add_argument("--memory-severities", default="3", help="severities of the memory sweep (e.g. 1,2,3,4,5)")
    parser.add_argument("--parts", default="fidelity,speed,memory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 4 + 100 images, 500 + 2,000 for memory")
    parser.add_argument("--memory-child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    if args.memory_child:
        memory_child(
            args.memory_child, args.memory_batch, [int(s) for s in args.memory_severities.split(",")], args.seed
        )
        return
    if args.quick:
        args.large, args.small, args.train, args.epochs, args.memory_sizes = 4, 100, 1500, 2, "500,2000"
    parts = {p.strip() for p in args.parts.split(",")}
    print(banner(args), flush=True)
    verdicts = []
    if parts & {"fidelity", "speed"}:
        model = train_cnn(args.train, args.epochs, args.seed, Path(args.work))
        small_images, labels = shapes_set(args.small, args.seed + 2)
        results = [
            run_side(LARGE, large_images(args.large, args.seed + 3), None, None, args),
            run_side(SMALL, small_images, labels, model, args),
        ]
        if "fidelity" in parts:
            text, outcome = fidelity_table(results)
            print(
                f"\nFidelity, deterministic: PSNR of ours vs imagecorruptions (ImageNet set at both sizes), "
                f"{args.large} images at 224 px, {args.small} at 32 px; pooled MSE per severity; target >= 30 dB"
            )
            print(text)
            verdicts.append(outcome.line(f"fidelity PSNR >= {PSNR_TARGET:g} dB (corruption x side)"))
            small = results[1]
            text, outcome = accuracy_table(small, RANDOM)
            binomial = 100 * math.sqrt(0.25 / small.images)
            print(
                f"\nFidelity, accuracy: the CNN on {small.images} shapes at 32 px (clean "
                f"{100 * small.clean_accuracy:.1f} %), ImageNet set on both sides; one accuracy's binomial SE "
                f"<= {binomial:.2f} pp; target |diff| <= 2 pp for the random corruptions"
            )
            print(text)
            verdicts.append(outcome.line("accuracy within 2 pp (random corruption x severity)"))
        if "speed" in parts:
            from auditnn.corruptions.base import BENCHMARK

            for r in results:
                rows, wall, cpu = speed_rows(r.ours_seconds, r.reference_seconds, r.images, BENCHMARK)
                print(
                    f"\nSpeed at {r.side} px, {r.images} images: corrupted images per second, wall clock (corrupt "
                    "calls only, each side warmed up once per task); ratios: our images per second over the "
                    "reference's (its time over ours); target >= 20x (wall) over the sweep"
                )
                print(table(SPEED_HEADER, rows))
                verdicts.append(
                    f"speed at {r.side} px >= {SPEED_TARGET:g}x: {fmt_number(wall)}x wall "
                    f"({fmt_number(cpu)}x CPU time), {verdict(wall >= SPEED_TARGET)}"
                )
    if "memory" in parts:
        sizes = [int(s) for s in args.memory_sizes.split(",")]
        text, mem = memory_part(sizes, args.memory_batch, args.memory_severities, args.seed)
        print(
            f"\nMemory: streamed sweep at 32 px, batches of {args.memory_batch}, every benchmark corruption at "
            f"severities {args.memory_severities} into a CNN forward; resident set after the "
            "setup (model, uint8 store), then its peak (VmHWM, reset before each) over one batch of each corruption "
            "and over the sweep"
        )
        print(text)
        # The sweep's peak over the peak of one batch of each corruption: what the other batches add. (The resident set
        # after the setup is no baseline: building the larger store leaves more freed heap that the sweep reuses.)
        growth = [mem[n]["peak_mb"] - mem[n]["one_batch_mb"] for n in sizes]
        batch_mb = args.memory_batch * 3 * SMALL * SMALL * 4 / 2**20
        flat = max(growth) <= max(4 * batch_mb, 8.0)
        verdicts.append(
            f"memory flat (the sweep's peak is {', '.join(f'{g:.1f}' for g in growth)} MB over one batch of each "
            f"corruption at {', '.join(f'{n:,}' for n in sizes)} images; allowed {max(4 * batch_mb, 8.0):.0f} MB): "
            f"{verdict(flat)}"
        )
    print("\n" + "\n".join(verdicts))


if __name__ == "__main__":
    main()
