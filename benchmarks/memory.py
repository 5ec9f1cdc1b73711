"""Peak resident memory of `auditnn attack --method pgd` over generated image folders of 224x224 JPEG images, and
the images per second of a clean-accuracy pass over such a folder against a plain DataLoader loop (issue 12).

Targets (issue 12):
- the attack's peak resident memory over folders of 500, 2,000 and 8,000 images with a small convolutional model is
  flat within 10 % across the three sizes: (max peak - min peak) / min peak <= 0.10;
- the same command with a torchvision ResNet-50 on 500 images completes without an explicit --batch-size;
- auditnn's clean accuracy over the 2,000-image folder runs at >= 90 % of a plain torchvision ImageFolder +
  DataLoader loop's images per second, with the same workers, model and batch size.

Each attack is a fresh process (`python -m auditnn`, the interpreter and PYTHONPATH that run this script), watched
every 50 ms: it is killed when its process tree's resident memory passes --max-rss-gb or it runs past --timeout, and
its address space is capped at --max-rss-gb + 6 GB (python and torch reserve about 3.3 GB of it before any image).
"peak MB" is ru_maxrss from os.wait4: the largest resident set of the process and of each child it reaped (DataLoader
workers), not their sum; "tree MB" is the largest sampled sum of resident sets over the process and its descendants
(shared pages counted once per process). The memory figure does not depend on the PGD steps (every step works on the
same batch), so the runs use --steps 2 --eps 8/255 to stay short on a 2-core CPU.

Image folders (seeded, smooth random content with a per-class tint, JPEG quality 90) and models are cached under
--work DIR: a rerun skips their generation.
Usage: python benchmarks/memory.py [--work DIR] [--quick] [--no-resnet50] [--max-rss-gb 8] [--timeout 600]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

SIDE = 224  # image side in pixels
SIZES = (500, 2_000, 8_000)
QUICK_SIZES = (100, 200, 400)
ATTACK_OPTIONS = ["--method", "pgd", "--eps", "8/255", "--steps", "2"]
RESNET_OPTIONS = ["--steps", "1", "--no-sanity"]
PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 1024 * 1024


# ---------------------------------------------------------------- data and models


def smooth_image(index: int, label: int, classes: int, seed: int) -> torch.Tensor:
    """Image `index` as uint8 (SIDE, SIDE, 3): two octaves of bicubically upsampled noise (8x8 and 32x32) and a tint
    that depends on the class, so that JPEG compresses it as it would a photograph rather than white noise. The same
    index gives the same image in every folder size."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
    coarse = F.interpolate(torch.rand(1, 3, 8, 8, generator=gen), size=SIDE, mode="bicubic", align_corners=False)
    fine = F.interpolate(torch.rand(1, 3, 32, 32, generator=gen), size=SIDE, mode="bicubic", align_corners=False)
    tint = torch.zeros(1, 3, 1, 1)
    tint[0, label % 3] = 0.25 * (label / max(classes - 1, 1) - 0.5)
    image = (0.2 + 0.6 * coarse + 0.15 * (fine - 0.5) + tint).clamp(0, 1)
    return image[0].permute(1, 2, 0).mul(255).round().to(torch.uint8)


def image_folder(work: Path, images: int, classes: int, seed: int) -> Path:
    """`work`/images-N-K: one sub-folder per class, image i in class i % K. Generated once; a marker file beside the
    folder (written last) says it is complete."""
    from PIL import Image

    folder = work / f"images-{images}-{classes}"
    marker = work / f"images-{images}-{classes}.json"
    description = {"images": images, "classes": classes, "side": SIDE, "seed": seed, "quality": 90}
    if marker.exists() and json.loads(marker.read_text()) == description:
        return folder
    start = time.perf_counter()
    for index in range(images):
        label = index % classes
        (folder / f"class{label:02d}").mkdir(parents=True, exist_ok=True)
        pixels = smooth_image(index, label, classes, seed).numpy()
        Image.fromarray(pixels).save(folder / f"class{label:02d}" / f"{index:06d}.jpg", quality=90)
    marker.write_text(json.dumps(description))
    print(f"generated {folder} ({images} images) in {time.perf_counter() - start:.0f} s", flush=True)
    return folder


class SmallCNN(nn.Module):
    """Two strided convolutions, global average pooling and a linear layer: about 3 million multiply-adds per 224x224
    image, so that the run's time and memory go to the data rather than the model. Takes [0, 1] pixels."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 5, stride=4, padding=2),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(16, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images - 0.5))


def small_model(work: Path, classes: int, seed: int) -> Path:
    """The small CNN as a TorchScript file: random convolutions (seed 0) and a linear head fitted by least squares on
    the pooled features of the folders' first 50 images per class, so that its answers vary from image to image (an
    untrained head answers one class for all; memory does not depend on what it learned)."""
    path = work / f"small-cnn-{classes}-{seed}.pt"
    if path.exists():
        return path
    torch.manual_seed(0)
    net = SmallCNN(classes).eval()
    index = torch.arange(50 * classes)
    labels = index % classes
    images = torch.stack([smooth_image(i, int(i) % classes, classes, seed) for i in index.tolist()])
    with torch.no_grad():
        features = net.features(images.permute(0, 3, 1, 2).float().div(255) - 0.5)
        x = torch.cat([features, torch.ones(len(index), 1)], 1).double()
        ridge = 1e-6 * torch.eye(x.shape[1], dtype=torch.float64) * x.pow(2).sum(0).max()
        w = torch.linalg.solve(x.T @ x + ridge, x.T @ F.one_hot(labels, classes).double())
        net.head.weight.copy_(w[:-1].T.float())
        net.head.bias.copy_(w[-1].float())
    with warnings.catch_warnings():  # torch deprecates TorchScript; the CLI still reads it
        warnings.simplefilter("ignore")
        torch.jit.script(net).save(str(path))
    return path


def resnet50_weights(work: Path, classes: int) -> Path:
    """torchvision resnet50(weights=None, num_classes=K), seed 0, as a state_dict for --weights."""
    import torchvision

    path = work / f"resnet50-{classes}.pt"
    if not path.exists():
        torch.manual_seed(0)
        torch.save(torchvision.models.resnet50(weights=None, num_classes=classes).state_dict(), path)
    return path


# ---------------------------------------------------------------- one watched process


@dataclass
class Run:
    """One command's outcome: exit code (None when killed here), ru_maxrss (MB), sampled tree peak (MB), wall s."""

    exit_code: int | None
    peak_mb: float
    tree_mb: float
    seconds: float
    note: str


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (0 for those that exit while being read)."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            total += int(Path(f"/proc/{current}/statm").read_text().split()[1]) * PAGE
            for task in Path(f"/proc/{current}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def watched(command: list[str], env: dict[str, str], *, max_rss: int, timeout: float) -> Run:
    """Run `command` in its own process group; kill the group when its tree passes `max_rss` bytes or `timeout` s."""

    def limit() -> None:  # a single huge allocation between two samples fails instead of taking the machine
        cap = max_rss + 6 * 1024**3
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        proc = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=errors, start_new_session=True, preexec_fn=limit
        )
        tree, note = 0, ""
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            tree = max(tree, tree_rss(proc.pid))
            seconds = time.perf_counter() - start
            if not note and (tree > max_rss or seconds > timeout):
                note = f"killed: resident memory over {max_rss / 1024**3:g} GB" if tree > max_rss else "killed: timeout"
                os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(0.05)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if not note and proc.returncode != 0:
            errors.seek(0)
            lines = [line for line in errors.read().decode(errors="replace").splitlines() if line.strip()]
            note = lines[-1].strip()[:100] if lines else "no message"
    exit_code = None if note.startswith("killed") else proc.returncode
    return Run(exit_code, usage.ru_maxrss / 1024, tree / MB, seconds, note)


def attack(folder: Path, model: list[str], extra: list[str], *, max_rss: int, timeout: float) -> Run:
    """`auditnn attack --method pgd` on the folder, a fresh cache and output folder, --quiet."""
    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "AUDITNN_CACHE_DIR": str(Path(scratch) / "cache")}
        command = [sys.executable, "-m", "auditnn", "attack", *ATTACK_OPTIONS, *model, *extra]
        command += ["--data", f"imagefolder:{folder}", "--out", str(Path(scratch) / "out"), "--quiet"]
        return watched(command, env, max_rss=max_rss, timeout=timeout)


# ---------------------------------------------------------------- clean accuracy throughput


def plain_accuracy(model: nn.Module, folder: Path, batch_size: int, workers: int) -> float:
    """What a user would write: torchvision ImageFolder + ToTensor ([0, 1] pixels) + DataLoader, argmax, compare."""
    import torchvision
    from torch.utils.data import DataLoader

    dataset = torchvision.datasets.ImageFolder(str(folder), transform=torchvision.transforms.ToTensor())
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    correct = 0
    with torch.no_grad():
        for images, labels in loader:
            correct += int((model(images).argmax(1) == labels).sum())
    return correct / len(dataset)


def auditnn_accuracy(workers: int) -> tuple[str, Callable[[nn.Module, Path, int], float]]:
    """auditnn's clean accuracy over a folder, streamed: the folder's headers read by load_source, then
    checks.clean.clean_accuracy over its store (pixels decoded per batch in `workers` processes). Before issue 12
    the folder was decoded up front and scored with predict (the README's "before" figures)."""
    from auditnn.checks.clean import clean_accuracy
    from auditnn.data.sources import load_source

    def streamed(model: nn.Module, folder: Path, batch_size: int) -> float:
        data = load_source(f"imagefolder:{folder}").train
        return clean_accuracy(model, data.store, data.labels, batch_size=batch_size, workers=workers)

    return f"auditnn clean_accuracy, {workers} workers", streamed


def throughput(folder: Path, images: int, model_path: Path, batch_size: int, workers: int, rounds: int) -> list[str]:
    """Both contenders on the same TorchScript model, interleaved in rounds; median images/s and their ratio."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torch.jit.load(str(model_path)).eval()
    name, ours = auditnn_accuracy(workers)
    times: dict[str, list[float]] = {"plain": [], "auditnn": []}
    accuracy: dict[str, float] = {}
    for _ in range(rounds):
        for key, run in (
            ("plain", lambda: plain_accuracy(model, folder, batch_size, workers)),
            ("auditnn", lambda: ours(model, folder, batch_size)),
        ):
            start = time.perf_counter()
            accuracy[key] = run()
            times[key].append(time.perf_counter() - start)
    rate = {key: images / statistics.median(seconds) for key, seconds in times.items()}
    lines = [
        f"clean accuracy over {images} images, batch {batch_size}, median of {rounds} interleaved rounds:",
        f"  {'plain ImageFolder + DataLoader, ' + str(workers) + ' workers':<74}{rate['plain']:>8.0f} img/s  "
        f"accuracy {accuracy['plain']:.4f}",
        f"  {name:<74}{rate['auditnn']:>8.0f} img/s  accuracy {accuracy['auditnn']:.4f}",
        f"  ratio auditnn / plain: {rate['auditnn'] / rate['plain']:.2f} (target >= 0.90)",
    ]
    if abs(accuracy["plain"] - accuracy["auditnn"]) > 0.5 / images:
        lines.append("  ACCURACIES DIFFER: the two passes did not classify the same images the same way")
    return lines


# ---------------------------------------------------------------- main


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def row(label: str, images: int, run: Run) -> str:
    code = "-" if run.exit_code is None else str(run.exit_code)
    per_image = f"{run.peak_mb / images:.2f}" if run.exit_code == 0 else "-"  # a cut-off run's peak is the cap's
    return (
        f"{label:<10}{images:>7}{run.peak_mb:>10.0f}{run.tree_mb:>10.0f}{per_image:>8}"
        f"{run.seconds:>8.1f}{code:>6}  {run.note}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "auditnn-memory-bench")
    parser.add_argument("--quick", action="store_true", help="sizes 100/200/400, no ResNet-50, one clean round")
    parser.add_argument("--sizes", type=int, nargs="+", help="folder sizes (default 500 2000 8000)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--no-resnet50", action="store_true")
    parser.add_argument("--no-clean", action="store_true")
    parser.add_argument("--max-rss-gb", type=float, default=8.0, help="kill a run whose process tree passes this")
    parser.add_argument("--timeout", type=float, default=600.0, help="kill a run that takes longer (seconds)")
    parser.add_argument("--resnet-timeout", type=float, default=2400.0, help="the same for the ResNet-50 run")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the clean-accuracy pass")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch of the clean-accuracy pass")
    parser.add_argument("--rounds", type=int, help="clean-accuracy rounds (default 3, 1 with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    rounds = args.rounds or (1 if args.quick else 3)
    max_rss = int(args.max_rss_gb * 1024**3)
    args.work.mkdir(parents=True, exist_ok=True)

    import auditnn

    print(
        f"device: cpu ({cpu_name()}), {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads; python "
        f"{sys.version.split()[0]}, torch {torch.__version__}, auditnn {auditnn.__version__} from "
        f"{Path(auditnn.__file__).parent}"
    )
    folders = {n: image_folder(args.work, n, args.classes, args.seed) for n in sizes}
    small = ["--model", f"torchscript:{small_model(args.work, args.classes, args.seed)}"]
    print(
        f"auditnn attack {' '.join(ATTACK_OPTIONS)} --data imagefolder:DIR --quiet; {args.classes} classes, "
        f"{SIDE}x{SIDE} JPEG; caps: {args.max_rss_gb:g} GB resident, {args.timeout:g} s"
    )
    print(f"{'model':<10}{'images':>7}{'peak MB':>10}{'tree MB':>10}{'MB/img':>8}{'wall s':>8}{'exit':>6}  note")
    runs = {}
    for n in sizes:
        runs[n] = attack(folders[n], small, [], max_rss=max_rss, timeout=args.timeout)
        print(row("small cnn", n, runs[n]), flush=True)
    peaks = [r.peak_mb for r in runs.values()]
    flat = (max(peaks) - min(peaks)) / min(peaks)
    complete = all(r.exit_code == 0 for r in runs.values())
    print(
        f"flatness (max peak - min peak) / min peak over {', '.join(map(str, sizes))} images: "
        + (f"{flat:.1%}" if complete else f">= {flat:.1%} (a run did not complete)")
        + f" (target <= 10 %): {'met' if complete and flat <= 0.10 else 'not met'}"
    )
    if not (args.quick or args.no_resnet50):
        weights = resnet50_weights(args.work, args.classes)
        resnet = ["--model", "torchvision:resnet50", "--weights", str(weights)]
        # one step and no sanity runs: a ResNet-50 step takes about 1 s per image on 2 CPU cores; the memory of a
        # step does not depend on how many there are
        run = attack(folders[min(sizes)], resnet, RESNET_OPTIONS, max_rss=max_rss, timeout=args.resnet_timeout)
        print(row("resnet50", min(sizes), run))
        print(f"resnet50 without --batch-size: {'completed' if run.exit_code == 0 else 'did not complete'}")
    if not args.no_clean:
        n = sorted(sizes)[len(sizes) // 2]  # the middle size: 2,000 images (200 with --quick)
        for line in throughput(
            folders[n], n, small_model(args.work, args.classes, args.seed), args.batch_size, args.workers, rounds
        ):
            print(line)


if __name__ == "__main__":
    main()
