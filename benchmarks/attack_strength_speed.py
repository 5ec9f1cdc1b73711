"""PGD/FGSM strength and speed against the physical limit and against torchattacks and Foolbox, on the same model,
images, eps, steps, step size and batch.

Physical limit: a k-step PGD needs k input-gradient forward+backward passes. Two ratios are printed:
  limit ratio  = time(PGD-k) / (k x time(one input-gradient forward+backward over the same images))   [issue 3]
  exact ratio  = time(PGD-k) / (k x fwd+bwd + 2 x forward)   -- the work a robust-accuracy figure needs: the clean
                 forward (which points to attack) and the forward that scores the final iterate.
PGD runs twice: with early exit (the default: broken points stop) and without (every point, every step).

Usage: pip install -r benchmarks/requirements.txt; python benchmarks/attack_strength_speed.py [--models mlp cnn]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from auditnn.attacks import FGSM, PGD
from auditnn.attacks.base import input_gradient
from auditnn.data.controlled import stratified_split
from auditnn.data.sources import load_source
from auditnn.inference import frozen_parameters
from auditnn.runtime import environment, resolve_device
from auditnn.train import TrainConfig, train_classifier


def timed_rounds(calls: dict[str, Callable[[], object]], device: torch.device, rounds: int) -> dict[str, float]:
    """Median seconds of each call, measured in interleaved rounds (A, B, C, A, B, C, ...): on a shared, noisy
    machine a slow spell then hits every contender alike, and the ratios stay honest."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            call()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def compare_on(
    arch: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace, device: torch.device
) -> None:
    """Print one model's rows: auditnn's PGD and FGSM beside torchattacks' and Foolbox's, timed against the limit."""
    import foolbox
    import torchattacks

    alpha = 2.5 * args.eps / args.steps

    def ours(early_exit: bool, seed: int = 0):
        return PGD(
            eps=args.eps, steps=args.steps, step_size=alpha, early_exit=early_exit, batch_size=len(y), seed=seed
        ).run(model, x, y)

    def theirs_pgd():
        adv = torchattacks.PGD(model, eps=args.eps, alpha=alpha, steps=args.steps, random_start=True)(x, y)
        with torch.no_grad():
            return (model(adv).argmax(1) == y).float().mean().item()

    def theirs_fgsm():
        adv = torchattacks.FGSM(model, eps=args.eps)(x, y)
        with torch.no_grad():
            return (model(adv).argmax(1) == y).float().mean().item()

    def one_gradient():
        with frozen_parameters(model):
            return input_gradient(model, x, y, None)

    def one_forward():
        with torch.no_grad():
            return model(x)

    def foolbox_pgd():
        attack = foolbox.attacks.LinfPGD(steps=args.steps, abs_stepsize=alpha, random_start=True)
        _, _, success = attack(foolbox.PyTorchModel(model, bounds=(0, 1)), x, y, epsilons=[args.eps])
        return 1.0 - success.float().mean().item()

    t = timed_rounds(
        {
            "grad": one_gradient,
            "fwd": one_forward,
            "fast": lambda: ours(True),
            "full": lambda: ours(False),
            "theirs": theirs_pgd,
            "foolbox": foolbox_pgd,
        },
        device,
        args.repeats,
    )
    t_grad, t_fwd, t_fast, t_full, t_theirs = t["grad"], t["fwd"], t["fast"], t["full"], t["theirs"]
    limit = args.steps * t_grad
    exact = args.steps * t_grad + 2 * t_fwd

    # Random starts differ between libraries: robust accuracy is the mean over the same number of draws each.
    torch.manual_seed(0)
    robust_theirs = statistics.mean(theirs_pgd() for _ in range(args.draws))  # their start uses the global RNG
    rows = [
        ("auditnn PGD, early exit", statistics.mean(ours(True, s).robust_accuracy for s in range(args.draws)), t_fast),
        ("auditnn PGD, all steps", statistics.mean(ours(False, s).robust_accuracy for s in range(args.draws)), t_full),
        ("torchattacks PGD", robust_theirs, t_theirs),
        ("Foolbox LinfPGD", statistics.mean(foolbox_pgd() for _ in range(args.draws)), t["foolbox"]),
    ]
    for name, robust, seconds in rows:
        versus = f"{seconds / t_theirs:.2f}x time" if name.startswith("auditnn") else "-"
        print(
            f"{arch:<9}{name:<22}{robust:>11.3f}{seconds:>9.3f}{seconds / limit:>13.3f}{seconds / exact:>13.3f}"
            f"{versus:>17}"
        )
    # Without a random start both attacks are deterministic: the exact strength comparison, point for point.
    plain_ours = PGD(eps=args.eps, steps=args.steps, step_size=alpha, random_start=False, batch_size=len(y)).run(
        model, x, y
    )
    plain_theirs = torchattacks.PGD(model, eps=args.eps, alpha=alpha, steps=args.steps, random_start=False)(x, y)
    with torch.no_grad():
        theirs_robust = (model(plain_theirs).argmax(1) == y).cpu()
    print(
        f"{arch:<9}{'auditnn PGD, no start':<22}{plain_ours.robust_accuracy:>11.3f}   "
        f"points robust for auditnn but broken by torchattacks: {int((plain_ours.robust & ~theirs_robust).sum())}"
    )
    print(f"{arch:<9}{'torchattacks, no start':<22}{theirs_robust.float().mean().item():>11.3f}")
    fgsm_ours = FGSM(eps=args.eps, batch_size=len(y)).run(model, x, y).robust_accuracy
    print(f"{arch:<9}{'auditnn FGSM':<22}{fgsm_ours:>11.3f}")
    print(f"{arch:<9}{'torchattacks FGSM':<22}{theirs_fgsm():>11.3f}")
    print(f"{arch:<9}one input-gradient fwd+bwd {t_grad * 1000:.1f} ms, one forward {t_fwd * 1000:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"])
    parser.add_argument("--eps", type=float, default=8 / 255)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--images", type=int, default=500, help="test images attacked (one batch)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--train-epochs", type=int, default=10, help="epochs for each model (1 keeps resnet18 quick on a CPU)"
    )
    parser.add_argument("--draws", type=int, default=10, help="random starts averaged for robust accuracy")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    import foolbox
    import torchattacks

    base = load_source("digits")
    train, test = stratified_split(base, max(1, args.images // 10), seed=0)
    x, y = test.images[: args.images].to(device), test.labels[: args.images].to(device)
    env = environment(device)
    print(
        f"device: {env['device']} ({env['device_name']}), {env['cpu_threads']} CPU threads; torch {env['torch']}, "
        f"torchattacks {torchattacks.__version__}, foolbox {foolbox.__version__}, auditnn {env['auditnn']}"
    )
    print(
        f"images {len(y)} (one batch), eps {args.eps:.5f} Linf, steps {args.steps}, step size 2.5*eps/steps, "
        f"time: median of {args.repeats} interleaved rounds; robust acc: mean of {args.draws} random starts"
    )
    header = (
        f"{'model':<9}{'attack':<22}{'robust acc':>11}{'time s':>9}{'limit ratio':>13}{'exact ratio':>13}"
        f"{'vs torchattacks':>17}"
    )
    print(header)
    for arch in args.models:
        model, _, _ = train_classifier(
            train.images, train.labels, train.classes, arch, TrainConfig(epochs=args.train_epochs), device
        )
        model.eval()
        compare_on(arch, model, x, y, args, device)


if __name__ == "__main__":
    main()
