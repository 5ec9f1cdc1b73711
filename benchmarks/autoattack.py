"""AutoAttack (issue 13): auditnn's `autoattack` against torchattacks' `AutoAttack`, on the same model, images, norm,
eps, steps, target classes and queries.

Targets: auditnn's robust accuracy <= torchattacks' + 0.5 percentage points, and auditnn's wall time <= 0.5 x
torchattacks', on the default CNN, a ResNet-18 and a BatchNorm model that expects normalized input, at Linf 8/255 and
L2 0.5.

Settings matched to torchattacks' `AutoAttack(version="standard")` (attacks/autoattack.py there): APGD-CE, APGD-T
(n_classes - 1 = 9 target classes), FAB-T (multi_targeted, 9 target classes), Square (5000 queries), 1 restart each,
each run by its MultiAttack on the points every earlier one left standing. torchattacks builds APGD, APGD-T and FAB
with their default 10 steps (the reference implementation and auditnn's default use 100): `--steps` sets both sides
(default 10, torchattacks' own), `--queries` sets both Squares. Robust accuracy on both sides is the model's answer on
the returned images: correct and within the ball (a point torchattacks returns outside the ball would count as
robust; a line says how many there were). Wall time: one run each, from the call to the per-sample robust mask (the
clean forward and the scoring forward included on both sides); the two libraries alternate who runs first.

Models (all take [0, 1] pixels, so both libraries attack the same function):
  cnn       the default CNN (`auditnn attack`'s: digits, trained or read from auditnn's cache)
  resnet18  torchvision's ResNet-18 with a 3x3 stem (auditnn's zoo), trained briefly on the same digits
  bn        a VGG-like BatchNorm network that expects normalized input ((x - 0.1307) / 0.3081, the constants users copy),
            the normalization wrapped inside the model
Trained models are cached under --work (state_dicts, read back with weights_only).

Usage: pip install -r benchmarks/requirements.txt; PYTHONPATH=$PWD/src python benchmarks/autoattack.py [--quick]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from auditnn.attacks.autoattack import AutoAttack
from auditnn.runtime import environment, resolve_device, seed_everything
from auditnn.subject import SubjectSpec, load_subject
from auditnn.train import TrainConfig, fit, new_classifier

NORMS = {"linf": ("Linf", 8 / 255), "l2": ("L2", 0.5)}  # auditnn norm -> (torchattacks' name, the issue's eps)
BALL_SLACK = 1e-5  # float32 rounding allowed on a perturbation's norm


class Normalized(nn.Module):
    """A network that expects normalized input, wrapped so that the model takes [0, 1] pixels: net((x - mean) / std)
    with fixed constants, as users write it with torchvision's Normalize."""

    def __init__(self, net: nn.Module, mean: float, std: float) -> None:
        super().__init__()
        self.net = net
        self.mean, self.std = mean, std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images - self.mean) / self.std)


def bn_net(channels: int, size: int, classes: int) -> nn.Module:
    """Four 3x3 convolutions with BatchNorm (two 2x2 poolings), a BatchNorm hidden layer and a linear head."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(channels, 32),
        *block(32, 32),
        nn.MaxPool2d(2),
        *block(32, 64),
        *block(64, 64),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * (size // 4) ** 2, 128, bias=False),
        nn.BatchNorm1d(128),
        nn.ReLU(),
        nn.Linear(128, classes),
    )


def cached(path: Path, model: nn.Module, train: Callable[[nn.Module], object]) -> nn.Module:
    """The model with the weights stored at `path`, or trained by `train(model)` and stored there."""
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))
    else:
        train(model)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(path)
    return model


def build_models(
    args: argparse.Namespace, device: torch.device
) -> tuple[dict[str, nn.Module], torch.Tensor, torch.Tensor]:
    """The three models on `device` in eval mode, and the test images (N, 1, 28, 28) in [0, 1] with their labels."""
    subject = load_subject(SubjectSpec(), device, seed=0)  # the default `auditnn attack` model (auditnn's cache)
    data = subject.data
    x_train, y_train = data.train_images, data.train_labels
    x_test, y_test = data.test.materialize(), data.test_labels
    work = Path(args.work)
    models: dict[str, nn.Module] = {"cnn": subject.model}
    if "resnet18" in args.models:
        config = TrainConfig(epochs=args.resnet_epochs)
        seed_everything(config.seed)  # as train_classifier: the initialisation draws from the global generator
        resnet = new_classifier(x_train, data.classes, "resnet18")  # normalized with the digits' statistics
        models["resnet18"] = cached(
            work / f"resnet18-e{args.resnet_epochs}.pt",
            resnet,
            lambda m: fit(m, x_train, y_train, config, device=device),
        )
    if "bn" in args.models:
        seed_everything(0)
        net = Normalized(bn_net(x_train.shape[1], x_train.shape[2], len(data.classes)), 0.1307, 0.3081)
        config = TrainConfig(epochs=args.bn_epochs)
        models["bn"] = cached(
            work / f"bn-e{args.bn_epochs}.pt", net, lambda m: fit(m, x_train, y_train, config, device=device)
        )
    for model in models.values():
        model.to(device).eval()
    return {name: models[name] for name in args.models}, x_test, y_test


def within_ball(adv: torch.Tensor, x: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """(N,) bool: the perturbation's norm is at most eps (plus float32 rounding)."""
    delta = (adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    return size <= eps + BALL_SLACK


def run_auditnn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float, queries: int, args):
    """(robust mask, (wall, CPU) seconds, points standing after each of its attacks)."""
    attack = AutoAttack(eps=eps, norm=norm, steps=args.steps, queries=queries, batch_size=len(y), seed=0)
    start, cpu = time.perf_counter(), time.process_time()
    result = attack.run(model, x, y)
    seconds = (time.perf_counter() - start, time.process_time() - cpu)
    assert result.broken_by is not None
    standing = int(result.clean_correct.sum())
    after = []
    for i in range(len(attack.component_labels)):
        standing -= int((result.broken_by == i).sum())
        after.append(standing)
    return result.robust.cpu(), seconds, after


def run_torchattacks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float, queries: int, args):
    """(robust mask, (wall, CPU) seconds, points standing after each of its attacks, points returned outside the
    ball)."""
    import torchattacks

    attack = torchattacks.AutoAttack(model, norm=NORMS[norm][0], eps=eps, version="standard", n_classes=10, seed=0)
    multi = attack._autoattack
    for member in multi.attacks:  # APGD, APGDT, FAB: steps; Square: n_queries
        if isinstance(member, torchattacks.Square):
            member.n_queries = queries
        else:
            member.steps = args.steps
    # MultiAttack's own record of the points left after each attack (what its save() turns on)
    multi._clear_multi_atk_records()
    multi._multi_atk_records += [0.0] * len(multi.attacks)
    multi._accumulate_multi_atk_records = True
    start, cpu = time.perf_counter(), time.process_time()
    adv = attack(x, y)
    with torch.no_grad():
        correct = model(adv).argmax(1) == y
    inside = within_ball(adv, x, norm, eps)
    seconds = (time.perf_counter() - start, time.process_time() - cpu)
    records = [int(r) for r in multi._multi_atk_records[2:]]  # [0]: the start value, [1]: the batch size
    records += [records[-1]] * (len(multi.attacks) - len(records))  # it stops once nothing is left
    return (correct & inside).cpu(), seconds, records, int((~inside).sum())


def compare(arch: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace, turn: int):
    """One line per norm: both robust accuracies, their difference, both wall times, the disagreements."""
    queries = args.resnet_queries if arch == "resnet18" else args.queries
    with torch.enable_grad():  # warm-up: the first backward pass of a process pays one-off costs
        probe = x.clone().requires_grad_(True)
        nn.functional.cross_entropy(model(probe), y).backward()
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    for norm in args.norms:
        eps = NORMS[norm][1]
        runs = {}
        order = ("auditnn", "torchattacks") if turn % 2 == 0 else ("torchattacks", "auditnn")
        turn += 1
        for who in order:
            runs[who] = (run_auditnn if who == "auditnn" else run_torchattacks)(model, x, y, norm, eps, queries, args)
        ours, t_ours, after_ours = runs["auditnn"]
        theirs, t_theirs, after_theirs, outside = runs["torchattacks"]
        r_ours, r_theirs = ours.float().mean().item(), theirs.float().mean().item()
        diff = 100 * (r_ours - r_theirs)
        ratio, cpu_ratio = t_ours[0] / t_theirs[0], t_ours[1] / t_theirs[1]
        print(
            f"{arch:<9}{norm:<5}{eps:>7.4f}{clean:>7.3f}{r_ours:>9.3f}{r_theirs:>9.3f}{diff:>+8.1f}"
            f"{'met' if diff <= 0.5 else 'NOT met':>9}{t_ours[0]:>10.1f}{t_theirs[0]:>11.1f}{ratio:>7.2f}"
            f"{'met' if ratio <= 0.5 else 'NOT met':>9}{cpu_ratio:>10.2f}{queries:>8}{int((ours & ~theirs).sum()):>7}{int((theirs & ~ours).sum()):>7}"
            f"   {'/'.join(map(str, after_ours)):<14}{'/'.join(map(str, after_theirs))}"
            + (f"   torchattacks outside the ball: {outside}" if outside else ""),
            flush=True,
        )
    return turn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["cnn", "resnet18", "bn"], choices=["cnn", "resnet18", "bn"])
    parser.add_argument("--norms", nargs="+", default=["linf", "l2"], choices=list(NORMS))
    parser.add_argument("--images", type=int, default=100, help="test images attacked (one batch) on cnn and bn")
    parser.add_argument("--resnet-images", type=int, default=20, help="test images attacked on resnet18")
    parser.add_argument("--steps", type=int, default=10, help="APGD's, APGD-T's and FAB-T's, both libraries")
    parser.add_argument("--queries", type=int, default=5000, help="Square's, both libraries")
    parser.add_argument("--resnet-queries", type=int, default=1000, help="Square's on resnet18, both libraries")
    parser.add_argument("--resnet-epochs", type=int, default=3)
    parser.add_argument("--bn-epochs", type=int, default=10)
    parser.add_argument("--work", default="/tmp/auditnn-aabench", help="where the trained models are cached")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 images, 5 steps, 100 queries")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: steady figures on a CPU other work shares)"
    )
    args = parser.parse_args()
    if args.quick:
        args.images, args.resnet_images, args.steps, args.queries, args.resnet_queries = 20, 10, 5, 100, 100
        args.resnet_epochs = 1
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    import torchattacks

    models, x_test, y_test = build_models(args, device)
    env = environment(device)
    print(
        f"device: {env['device']} ({env['device_name']}), {env['cpu_threads']} CPU threads; torch {env['torch']}, "
        f"torchattacks {torchattacks.__version__}, auditnn {env['auditnn']}"
    )
    print(
        f"AutoAttack standard: APGD-CE, APGD-T, FAB-T ({args.steps} steps, 9 target classes), Square "
        f"({args.queries} queries, {args.resnet_queries} on resnet18), 1 restart each, seed 0; images: the first {args.images} digits test images "
        f"({args.resnet_images} on resnet18), one batch; time: one run each, the two alternating who goes first; "
        "cpu ratio: the same ratio of process CPU time"
    )
    print(
        f"{'model':<9}{'norm':<5}{'eps':>7}{'clean':>7}{'auditnn':>9}{'torchatk':>9}{'diff pp':>8}{'<=+0.5':>9}"
        f"{'auditnn s':>10}{'torchatk s':>11}{'ratio':>7}{'<=0.5':>9}{'cpu ratio':>10}{'queries':>8}{'a-only':>7}{'t-only':>7}"
        f"   standing after each attack (auditnn / torchattacks)"
    )
    turn = 0
    for arch, model in models.items():
        n = args.resnet_images if arch == "resnet18" else args.images
        x, y = x_test[:n].to(device), y_test[:n].to(device)
        turn = compare(arch, model, x, y, args, turn)
    print(
        "a-only: points robust for auditnn but broken by torchattacks; t-only: the reverse. "
        "standing: points still correct after APGD-CE/APGD-T/FAB-T/Square"
    )


if __name__ == "__main__":
    main()
