"""The pure helpers of benchmarks/corruptions.py (PSNR, paired accuracy, speed rows, tables, verdicts, images), each
checked against a hand-computed case; the script itself (and the reference package) is not run here."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "corruptions.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_corruptions", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_corruptions"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules["bench_corruptions"]


def test_psnr_hand_computed(bench):
    reference = torch.zeros(2, 3, 2, 2)
    assert bench.psnr(reference + 0.1, reference) == pytest.approx(20.0)  # MSE 0.01
    ours = reference.clone()
    ours[0, 0, 0, 0] = 0.5  # one value of 24 off by 0.5: MSE 0.25 / 24
    assert bench.psnr(ours, reference) == pytest.approx(10 * math.log10(24 / 0.25))
    assert bench.psnr(reference, reference) == math.inf


def test_worst_image_psnr_is_the_lowest_per_image(bench):
    reference = torch.zeros(3, 1, 4, 4)
    ours = reference.clone()
    ours[1] += 0.1  # image 0 equal (inf), image 1 MSE 0.01: 20 dB
    ours[2, 0, 0, :2] = 0.4  # image 2: MSE 2 x 0.16 / 16 = 0.02: 10 log10(50) = 16.99 dB
    assert bench.worst_image_psnr(ours, reference) == pytest.approx(10 * math.log10(50))


def test_paired_accuracy_hand_counted(bench):
    ours = torch.tensor([True, True, False, True])
    ref = torch.tensor([True, False, False, False])
    p = bench.paired(ours, ref)
    assert (p.ours, p.reference, p.images) == (0.75, 0.25, 4)
    assert p.difference == pytest.approx(0.5)
    # differences 0, 1, 0, 1: mean 0.5, unbiased variance (4 x 0.25) / 3
    assert p.se_difference == pytest.approx(math.sqrt(1 / 3) / 2)
    assert not p.within
    same = bench.paired(ours, ours)
    assert same.difference == 0 and same.se_difference == 0 and same.within


def test_paired_within_two_points(bench):
    n = 100
    ours = torch.zeros(n, dtype=torch.bool)
    ours[:52] = True  # 52 %
    ref = torch.zeros(n, dtype=torch.bool)
    ref[:50] = True  # 50 %: 2 pp apart, on the line
    assert bench.paired(ours, ref).within
    ours[52] = True  # 53 %: 3 pp
    assert not bench.paired(ours, ref).within
    with pytest.raises(ValueError):
        bench.paired(ours, ref[:10])


def test_speed_rows_hand_computed(bench):
    S = bench.Seconds
    ours = {"a-1": S(1.0, 2.0), "a-2": S(1.0, 2.0), "b-1": S(2.0, 2.0), "held-1": S(0.5, 0.5)}
    ref = {"a-1": S(20.0, 20.0), "a-2": S(20.0, 20.0), "b-1": S(8.0, 8.0), "held-1": S(1.0, 1.0)}
    rows, wall, cpu = bench.speed_rows(ours, ref, 10, sweep=["a", "b"])
    # a: 20 images in 2 s ours (10/s) against 40 s (0.5/s): 20x wall; CPU 40 / 4 = 10x
    assert rows[0] == ["a", "10.0", "0.50", "20.0x", "10.0x"]
    assert rows[1] == ["b", "5.0", "1.25", "4.0x", "4.0x"]
    assert rows[2] == ["held (held out)", "20.0", "10.00", "2.0x", "2.0x"]
    # the sweep: a and b, 30 images in 4 s ours (7.5/s) against 48 s; CPU 48 / 6 = 8x
    assert rows[3] == ["sweep: 2 x 5", "7.5", "0.62", "12.0x", "8.0x"]
    assert (wall, cpu) == (pytest.approx(12.0), pytest.approx(8.0))


def test_table_alignment(bench):
    text = bench.table(["name", "x"], [["a", "1.0"], ["long name", "22.5"]])
    assert text.splitlines() == ["name          x", "a           1.0", "long name  22.5"]
    with pytest.raises(ValueError, match="has 1 cells; allowed: 2"):
        bench.table(["name", "x"], [["a"]])


def test_fmt_number_and_verdict(bench):
    assert bench.fmt_number(math.inf) == "inf"
    assert bench.fmt_number(math.nan) == "-"
    assert bench.fmt_number(1.25, 1) == "1.2"  # round half to even, as format does
    assert bench.fmt_number(2.0, 2) == "2.00"
    assert bench.images_per_second(10, 0.0) == math.inf
    assert bench.images_per_second(10, 4.0) == 2.5
    assert (bench.verdict(True), bench.verdict(False)) == ("met", "MISSED")


def side(bench, psnr, accuracy):
    return bench.SideResult(32, 4, {}, {}, psnr, accuracy)


def test_fidelity_table_verdict(bench):
    good = {f"{n}-{s}": (40.0, 35.0) for n in bench.DETERMINISTIC for s in range(1, 6)}
    _, outcome = bench.fidelity_table([side(bench, good, {})])
    assert (outcome.met, outcome.compared, outcome.missing) == (True, 8, 0)
    one_low = dict(good, **{"pixelate-5": (29.9, 25.0)})
    text, outcome = bench.fidelity_table([side(bench, one_low, {})])
    assert not outcome.met and "MISSED" in next(line for line in text.splitlines() if line.startswith("pixelate"))
    partial = {k: v for k, v in good.items() if not k.startswith("contrast")}
    text, outcome = bench.fidelity_table([side(bench, partial, {})])
    assert (outcome.met, outcome.compared, outcome.missing) == (True, 7, 1)
    assert "not available" in text
    nothing = bench.fidelity_table([side(bench, {}, {})])[1]
    assert "MISSED (0 compared, 8 not available)" in nothing.line("fidelity")


def test_accuracy_table_judges_only_random_corruptions(bench):
    ok = bench.paired(torch.tensor([True, False]), torch.tensor([True, False]))
    off = bench.paired(torch.tensor([True, True]), torch.tensor([True, False]))  # 50 pp apart
    accuracy = {"gaussian_noise-1": ok, "contrast-1": off}
    text, outcome = bench.accuracy_table(side(bench, {}, accuracy), bench.RANDOM)
    assert (outcome.met, outcome.compared, outcome.missing) == (True, 1, len(bench.RANDOM) - 1)
    assert "(deterministic)" in text
    accuracy["fog-2"] = off
    assert not bench.accuracy_table(side(bench, {}, accuracy), bench.RANDOM)[1].met


def test_random_and_deterministic_cover_the_nineteen(bench):
    from auditnn.corruptions.base import BENCHMARK, HELD_OUT

    assert sorted((*bench.RANDOM, *bench.DETERMINISTIC)) == sorted((*BENCHMARK, *HELD_OUT))


def test_pink_noise_range_and_spectrum(bench):
    images = bench.pink_noise(8, 64, seed=0)
    assert images.shape == (8, 3, 64, 64)
    assert images.amin() == pytest.approx(0.05, abs=1e-6) and images.amax() == pytest.approx(0.95, abs=1e-6)
    assert torch.equal(images, bench.pink_noise(8, 64, seed=0))
    # power falls like 1/f^2: a log-log fit of the radially binned power spectrum has slope about -2
    power = torch.fft.fft2(images - images.mean(dim=(2, 3), keepdim=True)).abs().pow(2).mean(dim=(0, 1))
    f = torch.sqrt(torch.fft.fftfreq(64).view(-1, 1) ** 2 + torch.fft.fftfreq(64).view(1, -1) ** 2)
    bands = torch.linspace(2 / 64, 0.45, 12)
    x, y = [], []
    for lo, hi in zip(bands[:-1], bands[1:], strict=True):
        ring = (f >= lo) & (f < hi)
        x.append(math.log(((lo + hi) / 2).item()))
        y.append(math.log(power[ring].mean().item()))
    xs, ys = torch.tensor(x), torch.tensor(y)
    slope = (((xs - xs.mean()) * (ys - ys.mean())).sum() / (xs - xs.mean()).pow(2).sum()).item()
    assert slope == pytest.approx(-2.0, abs=0.3)


def test_as_uint8_rounds(bench):
    x = torch.tensor([0.0, 0.5 / 255, 0.49 / 255, 1.0, 1.2]).view(1, 1, 1, 5)
    assert bench.as_uint8(x).flatten().tolist() == [0, 0, 0, 255, 255]  # 0.5 rounds half to even
    assert bench.as_uint8(torch.tensor([1.5 / 255]).view(1, 1, 1, 1)).item() == 2


def test_constant_set_forces_and_restores(bench):
    from auditnn.corruptions import base

    small, large = torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 224, 224)
    assert base.scale_of(small) == "cifar"
    with bench.constant_set("imagenet"):
        assert base.scale_of(small) == "imagenet"
    with bench.constant_set("cifar"):
        assert base.scale_of(large) == "cifar"
    assert (base.scale_of(small), base.scale_of(large)) == ("cifar", "imagenet")


def test_task_seeds_are_distinct(bench):
    from auditnn.corruptions.base import BENCHMARK, HELD_OUT

    seeds = {bench.task_seed(n, s, 0) for n in (*BENCHMARK, *HELD_OUT) for s in range(1, 6)}
    assert len(seeds) == 19 * 5
    assert bench.task_seed("fog", 3, 1) != bench.task_seed("fog", 3, 0)
