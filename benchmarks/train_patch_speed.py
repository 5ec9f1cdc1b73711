"""Training throughput against a plain hand-written torch loop, and the universal patch's optimization step against
one input-gradient forward+backward, on the same model, data and batch (timings interleaved in rounds).

Target (issue 6): training at least as fast as the plain loop; on a GPU, small-CNN training >= 100k images/s.
Usage: python benchmarks/train_patch_speed.py [--models mlp cnn] [--device auto]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from auditnn.attacks.base import input_gradient
from auditnn.attacks.patch import PatchConfig, apply_patch, patch_mask
from auditnn.data.controlled import stratified_split
from auditnn.data.sources import load_source
from auditnn.inference import frozen_parameters
from auditnn.models import PixelModel, build_model
from auditnn.runtime import environment, resolve_device
from auditnn.train import TrainConfig, fit


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, batch: int, lr: float) -> None:
    """What a user would write: the same optimizer, batches and loss, nothing else."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), device=x.device)
        for begin in range(0, len(y), batch):
            idx = order[begin : begin + batch]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def fresh_model(arch: str, device: torch.device) -> PixelModel:
    """The same initial weights for every contender (seed 0)."""
    torch.manual_seed(0)
    return PixelModel(build_model(arch, 1, 28, 10), [0.1], [0.25]).to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    train, _ = stratified_split(load_source("digits"), 10, seed=0)
    x, y = train.images.to(device), train.labels.to(device)
    env = environment(device)
    print(
        f"device: {env['device']} ({env['device_name']}), {env['cpu_threads']} CPU threads; torch {env['torch']}, "
        f"auditnn {env['auditnn']}; {len(y)} digits images 28x28, batch 64, {args.epochs} epochs, median of "
        f"{args.rounds} interleaved rounds"
    )
    print(
        f"{'model':<7}{'auditnn fit img/s':>19}{'plain loop img/s':>18}{'ratio':>8}{'patch step ms':>15}"
        f"{'grad fwd+bwd ms':>17}{'patch/grad':>12}"
    )
    config = TrainConfig(epochs=args.epochs, batch_size=64)
    for arch in args.models:
        ours, plain = [], []
        for _ in range(args.rounds):
            model = fresh_model(arch, device)
            sync(device)
            start = time.perf_counter()
            fit(model, x, y, config, device=device)
            sync(device)
            ours.append(len(y) * args.epochs / (time.perf_counter() - start))
            model = fresh_model(arch, device)
            sync(device)
            start = time.perf_counter()
            plain_loop(model, x, y, args.epochs, 64, config.lr)
            sync(device)
            plain.append(len(y) * args.epochs / (time.perf_counter() - start))
        model = fresh_model(arch, device).eval()
        batch_x, batch_y = x[:128], y[:128]
        side = round(PatchConfig().size * 28)
        patch = torch.rand(1, side, side, device=device, requires_grad=True)
        mask = patch_mask(side, "square").to(device)
        optimizer = torch.optim.Adam([patch], lr=0.05)
        gen = torch.Generator().manual_seed(0)
        step_times, grad_times = [], []
        with frozen_parameters(model):
            for _ in range(args.rounds * 4):
                sync(device)
                start = time.perf_counter()
                patched, _ = apply_patch(batch_x, patch, mask, generator=gen, rotation=30.0, scale=(0.8, 1.2))
                loss = F.cross_entropy(model(patched), torch.zeros_like(batch_y), reduction="sum")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                sync(device)
                step_times.append(time.perf_counter() - start)
                start = time.perf_counter()
                input_gradient(model, batch_x, batch_y, None)
                sync(device)
                grad_times.append(time.perf_counter() - start)
        step, grad = statistics.median(step_times), statistics.median(grad_times)
        a, b = statistics.median(ours), statistics.median(plain)
        print(
            f"{arch:<7}{a:>19,.0f}{b:>18,.0f}{a / b:>8.2f}{step * 1000:>15.2f}{grad * 1000:>17.2f}{step / grad:>12.2f}"
        )


if __name__ == "__main__":
    main()
