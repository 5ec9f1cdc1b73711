"""The corruption check's figures, each recomputed a second way on a tiny case: corruptions of known effect (fakes put
in the registry: black, white, unchanged, seeded noise) on a model whose answer is known from the mean pixel, counts
by hand, ECE by a plain loop, CE and mCE from hand-built baseline sections."""

import pytest
import torch
import torch.nn as nn

from auditnn.checks import KINDS
from auditnn.checks import corruption as corruption_module
from auditnn.checks.corruption import (
    ECE_BINS,
    CorruptionSettings,
    baseline_errors,
    bin_stats,
    corruption_rows,
    draw_seed,
    draws_warning,
    ece_of,
    load_baseline,
    metric_rows,
    parse_severities,
    summary,
    sweep,
)
from auditnn.corruptions.base import CORRUPTIONS, Corruption, parse_corruptions
from auditnn.errors import AuditError
from auditnn.plan import Threshold
from auditnn.subject import SubjectSpec

SEEDS: list[tuple[int, int]] = []  # (generator's initial seed, images) of every noise call


def _noise(images, severity, generator):
    SEEDS.append((generator.initial_seed(), len(images)))
    return images + 0.2 * severity * torch.randn(images.shape, generator=generator, device=images.device)


FAKES = {
    "brightness": (False, lambda x, s, g: x * 0),  # black: the model below answers 1
    "contrast": (False, lambda x, s, g: x.clone()),  # unchanged: clean accuracy
    "gaussian_noise": (False, _noise),
    "saturate": (True, lambda x, s, g: x * 0 + 1),  # white (held out): the model answers 0
}


@pytest.fixture(autouse=True)
def fakes(monkeypatch):
    import auditnn.corruptions.families  # noqa: F401 - the real ones first: a fake then replaces one for the test

    for name, (held_out, fn) in FAKES.items():
        monkeypatch.setitem(CORRUPTIONS, name, Corruption(name, "digital", held_out, name == "gaussian_noise", fn))
    monkeypatch.setattr(corruption_module, "DRAW_BLOCK", 1)  # one generator per image: any tiny batch size works
    SEEDS.clear()


class MeanModel(nn.Module):
    """Class 0 when the mean pixel is above 0.5, else class 1; confidence sigmoid(40 |mean - 0.5|)."""

    def __init__(self, oom_above: int | None = None) -> None:
        super().__init__()
        self.oom_above = oom_above

    def forward(self, x):
        if self.oom_above is not None and len(x) > self.oom_above:
            raise torch.OutOfMemoryError("CUDA out of memory (a test's)")
        m = x.mean((1, 2, 3))
        return torch.stack([20 * (m - 0.5), -20 * (m - 0.5)], 1)


# 10 gray images of 0.05 .. 0.95: the model answers 1 1 1 1 1 0 0 0 0 0 against these labels: 6 right (0-2, 5-7)
IMAGES = (torch.arange(10).float() + 0.5).div(10).view(10, 1, 1, 1).expand(10, 1, 4, 4).clone()
LABELS = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0, 1, 1])


def _ece_by_loop(logits, labels):
    """Guo et al.'s ECE written out: bins (i/15, (i+1)/15], one image at a time."""
    probs = logits.float().softmax(1)
    total = 0.0
    for b in range(ECE_BINS):
        lower, upper = b / ECE_BINS, (b + 1) / ECE_BINS
        members = [i for i in range(len(labels)) if lower < float(probs[i].max()) <= upper]
        if members:
            acc = sum(int(probs[i].argmax()) == int(labels[i]) for i in members) / len(members)
            conf = sum(float(probs[i].max()) for i in members) / len(members)
            total += len(members) / len(labels) * abs(acc - conf)
    return total


def test_accuracy_error_and_the_means_are_the_hand_counts():
    result = sweep(MeanModel(), IMAGES, LABELS, ["brightness", "contrast", "saturate"], [1, 2], seed=0, batch_size=4)
    rows = {(r["corruption"], r["severity"]): r for r in corruption_rows(result)}
    assert result.n == 10 and result.correct(0) == 6
    # black: answer 1, right for labels 1 (5 images); unchanged: 6; white: answer 0, right for labels 0 (5 images)
    assert {k: r["correct"] for k, r in rows.items()} == {
        ("brightness", 1): 5,
        ("brightness", 2): 5,
        ("contrast", 1): 6,
        ("contrast", 2): 6,
        ("saturate", 1): 5,
        ("saturate", 2): 5,
    }
    assert rows[("brightness", 1)]["accuracy"] == pytest.approx(0.5) and rows[("contrast", 2)][
        "error"
    ] == pytest.approx(0.4)
    assert rows[("saturate", 1)]["held_out"] and not rows[("contrast", 1)]["held_out"]
    figures = summary(result)
    assert figures["mean_accuracy"] == pytest.approx((5 + 5 + 6 + 6) / 40)  # the held-out saturate is not averaged in
    assert figures["mce_unnormalized"] == pytest.approx(1 - 22 / 40)
    assert figures["held_out_mean_accuracy"] == pytest.approx(0.5)


def test_ece_per_cell_per_severity_and_clean_is_the_plain_loop():
    names, severities = ["brightness", "contrast", "saturate"], [1, 3]
    result = sweep(MeanModel(), IMAGES, LABELS, names, severities, seed=0, batch_size=3)
    model = MeanModel()
    corrupted = {"brightness": IMAGES * 0, "contrast": IMAGES, "saturate": IMAGES * 0 + 1}
    assert ece_of(result.stats[0]) == pytest.approx(_ece_by_loop(model(IMAGES), LABELS), abs=1e-9)
    for r in corruption_rows(result):
        assert r["ece"] == pytest.approx(_ece_by_loop(model(corrupted[r["corruption"]]), LABELS), abs=1e-9)
    pooled = torch.cat([corrupted[n] for n in names[:2]])  # the benchmark ones at one severity; saturate is held out
    for entry in summary(result)["ece_by_severity"]:
        assert entry["ece"] == pytest.approx(_ece_by_loop(model(pooled), LABELS.repeat(2)), abs=1e-9)
    held_out_only = sweep(MeanModel(), IMAGES, LABELS, ["saturate"], [1], seed=0, batch_size=3)
    assert summary(held_out_only)["ece_by_severity"] == []


def test_bin_stats_match_the_loop_on_random_logits():
    logits = torch.randn(200, 5, generator=torch.Generator().manual_seed(1)) * 3
    labels = torch.randint(0, 5, (200,), generator=torch.Generator().manual_seed(2))
    stats = bin_stats(logits, labels)
    assert stats[:, 0].sum() == 200 and ece_of(stats) == pytest.approx(_ece_by_loop(logits, labels), abs=1e-9)


def _section(n, clean_correct, correct):
    return {
        "n": n,
        "clean": {"correct": clean_correct},
        "rows": [{"corruption": c, "severity": s, "correct": k} for (c, s), k in correct.items()],
    }


def test_ce_and_mce_are_the_formulas_on_hand_built_sections():
    """Mine: brightness 5, 5 right of 10, contrast 6, 6, clean 6. The baseline: brightness 2, 1, contrast 4, 3, clean 8."""
    mine = _section(10, 6, {("brightness", 1): 5, ("brightness", 2): 5, ("contrast", 1): 6, ("contrast", 2): 6})
    base = _section(10, 8, {("brightness", 1): 2, ("brightness", 2): 1, ("contrast", 1): 4, ("contrast", 2): 3})
    per, means, warnings = baseline_errors(mine["rows"], 6, 10, base, [1, 2])
    ce = {p["corruption"]: p for p in per}
    assert ce["brightness"]["ce"] == pytest.approx((0.5 + 0.5) / (0.8 + 0.9))
    assert ce["contrast"]["ce"] == pytest.approx((0.4 + 0.4) / (0.6 + 0.7))
    assert means["mce"] == pytest.approx(((0.5 + 0.5) / (0.8 + 0.9) + (0.4 + 0.4) / (0.6 + 0.7)) / 2)
    # relative: sum_s (E - E_clean) / sum_s (E_base - E_clean_base); E_clean 0.4, E_clean_base 0.2
    assert ce["brightness"]["relative_ce"] == pytest.approx((0.1 + 0.1) / (0.6 + 0.7))
    assert ce["contrast"]["relative_ce"] == pytest.approx(0.0)
    assert means["relative_mce"] == pytest.approx((0.2 / 1.3 + 0.0) / 2) and warnings == []


def test_a_zero_denominator_leaves_the_figure_out_with_a_warning_never_nan():
    mine = _section(10, 6, {("brightness", 1): 5, ("saturate", 1): 5})
    base = _section(10, 10, {("brightness", 1): 10, ("saturate", 1): 3})  # no error under brightness, nor clean
    per, means, warnings = baseline_errors(mine["rows"], 6, 10, base, [1])
    ce = {p["corruption"]: p for p in per}
    assert ce["brightness"]["ce"] is None and ce["brightness"]["relative_ce"] is None
    assert means == {"mce": None, "relative_mce": None}
    assert [w["code"] for w in warnings] == ["ce_undefined", "relative_ce_undefined"]
    assert "brightness" in warnings[0]["message"]
    assert ce["saturate"]["ce"] == pytest.approx(5 / 7)  # held out: reported, never in the mean


def test_draws_are_seeded_by_each_block_first_image_so_any_batch_size_gives_the_same_pixels(monkeypatch):
    monkeypatch.setattr(corruption_module, "DRAW_BLOCK", 2)
    first = sweep(MeanModel(), IMAGES, LABELS, ["gaussian_noise"], [1, 2], seed=3, batch_size=4)
    seen = list(SEEDS)
    SEEDS.clear()
    again = sweep(MeanModel(), IMAGES, LABELS, ["gaussian_noise"], [1, 2], seed=3, batch_size=4)
    assert torch.equal(first.stats, again.stats) and torch.equal(first.picture, again.picture)
    blocks = {0: (0, 2), 4: (4, 6), 8: (8,)}  # batch start -> its blocks' first images
    expected = [(draw_seed(3, "gaussian_noise", s, k), 2) for b in (0, 4, 8) for s in (1, 2) for k in blocks[b]]
    assert SEEDS == seen == expected
    for size in (2, 6, 10):  # other batch sizes: the same blocks, the same draws, the same numbers
        other_size = sweep(MeanModel(), IMAGES, LABELS, ["gaussian_noise"], [1, 2], seed=3, batch_size=size)
        assert torch.equal(other_size.stats, first.stats) and torch.equal(other_size.picture, first.picture)
    with pytest.raises(AuditError, match="allowed: a multiple of 2"):
        sweep(MeanModel(), IMAGES, LABELS, ["gaussian_noise"], [1], seed=3, batch_size=3)
    other = sweep(MeanModel(), IMAGES, LABELS, ["gaussian_noise"], [2], seed=4, batch_size=4)
    assert not torch.equal(other.picture[1], first.picture[2])  # another seed, other noise
    expected = IMAGES[:2] + 0.4 * torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(seen[2][0]))
    assert torch.equal(first.picture[2], expected[0].clamp(0, 1))  # image 0 at severity 2, drawn again by hand


def test_a_batch_out_of_memory_is_halved_at_block_boundaries_and_keeps_its_pixels(monkeypatch):
    """10 images in batches of 8 (blocks of 2) on a model that cannot take more than 3: 8 -> 4 -> 2 + 2, and the
    numbers equal those of an unhalved run (before: halves were seeded by their own first image, other noise)."""
    monkeypatch.setattr(corruption_module, "DRAW_BLOCK", 2)
    names, severities = ["gaussian_noise", "brightness"], [1, 5]
    halved = sweep(MeanModel(oom_above=3), IMAGES, LABELS, names, severities, seed=0, batch_size=8)
    whole = sweep(MeanModel(), IMAGES, LABELS, names, severities, seed=0, batch_size=8)
    assert halved.oom_halvings == 3 and whole.oom_halvings == 0
    assert torch.equal(halved.stats, whole.stats) and torch.equal(halved.picture, whole.picture)


def test_the_test_digest_does_not_depend_on_the_batch_size_and_follows_the_pixels():
    digests = {
        sweep(MeanModel(), IMAGES, LABELS, ["contrast"], [1], seed=0, batch_size=b).test_sha256 for b in (1, 3, 10)
    }
    assert len(digests) == 1
    changed = IMAGES.clone()
    changed[9, 0, 0, 0] = 0.5
    assert sweep(MeanModel(), changed, LABELS, ["contrast"], [1], seed=0, batch_size=3).test_sha256 not in digests


def test_metric_rows_carry_the_labels_the_gate_finds():
    result = sweep(MeanModel(), IMAGES, LABELS, ["brightness", "saturate"], [1], seed=0, batch_size=4)
    section = {
        "clean": {"accuracy": 0.6, "ece": 0.1},
        "rows": corruption_rows(result),
        "summary": summary(result),
    }
    rows = {(r["metric"], r.get("corruption"), r.get("severity")): r["value"] for r in metric_rows(section)}
    assert rows[("accuracy", "brightness", 1)] == pytest.approx(0.5)
    assert rows[("mean_accuracy", None, None)] == pytest.approx(0.5)  # brightness only: saturate is held out
    assert rows[("held_out_mean_accuracy", None, None)] == pytest.approx(0.5)
    assert ("ece", None, 1) in rows and ("clean_accuracy", None, None) in rows


@pytest.mark.parametrize("text", ["0", "6", "x", "1,1", "-1"])
def test_a_severity_outside_1_to_5_is_refused(text):
    with pytest.raises(AuditError, match="allowed"):
        parse_severities(text)


def test_validate_refuses_a_corruption_or_severity_not_chosen_and_a_corruption_without_severity():
    kind, spec = KINDS["corruption"], SubjectSpec()
    with pytest.raises(AuditError, match="corruption 'fog' is not among the chosen corruptions"):
        kind.validate(CorruptionSettings(corruptions=["brightness"], corruption="fog", severity=1), spec)
    with pytest.raises(AuditError, match="severity 4 is not among the chosen severities"):
        kind.validate(CorruptionSettings(severities=[1, 2], severity=4), spec)
    with pytest.raises(AuditError, match="set without a severity"):
        kind.validate(CorruptionSettings(corruption="fog"), spec)
    with pytest.raises(AuditError, match="corruption 'sepia' is unknown"):
        kind.validate(CorruptionSettings(corruptions=["brightness,sepia"]), spec)
    kind.validate(CorruptionSettings(corruptions=["brightness,saturate"], severities=["1,3"]), spec)


@pytest.mark.parametrize(
    "key,settings,needle",
    [
        ("max_mce", {}, "max_mce needs a baseline"),
        ("min_accuracy", {"severity": 1}, "min_accuracy needs corruption and severity"),
        ("max_ece", {}, "max_ece needs a severity"),
    ],
)
def test_each_threshold_is_refused_without_the_settings_its_row_needs(key, settings, needle):
    metric, bound = KINDS["corruption"].thresholds[key]
    with pytest.raises(AuditError, match=needle):
        KINDS["corruption"].validate_thresholds(CorruptionSettings(**settings), [Threshold(key, metric, bound, 0.5)])
    every = [Threshold(k, m, b, 0.5) for k, (m, b) in KINDS["corruption"].thresholds.items()]
    KINDS["corruption"].validate_thresholds(CorruptionSettings(baseline="b.json", corruption="fog", severity=1), every)


def test_at_most_one_corrupted_batch_is_alive_the_picture_keeps_a_copy_not_a_view(monkeypatch):
    """Each call of the corruption finds every earlier output freed, on the first batch (whose first image goes into
    the picture) as on the others. Before: the picture kept views of each output, so the first batch held all of them."""
    import weakref

    outputs: list[weakref.ref] = []
    alive_at_call: list[int] = []

    def tracked(images, severity, generator):
        alive_at_call.append(sum(ref() is not None for ref in outputs))
        out = images * 0.5
        outputs.append(weakref.ref(out))
        return out

    monkeypatch.setitem(CORRUPTIONS, "contrast", Corruption("contrast", "digital", False, False, tracked))
    monkeypatch.setattr(corruption_module, "DRAW_BLOCK", 4)  # one corruption call per batch of 4
    result = sweep(MeanModel(), IMAGES, LABELS, ["contrast"], [1, 2, 3], seed=0, batch_size=4)
    assert len(alive_at_call) == 9 and max(alive_at_call) == 0
    assert torch.equal(result.picture[1:], (IMAGES[:1] * 0.5).expand(3, -1, -1, -1))


def test_an_audit_file_with_max_mce_and_no_baseline_is_refused_before_anything_runs(tmp_path):
    """The runner hands each check's thresholds to its kind: max_mce without a baseline is bad input (exit 2), not a
    check measured and then failed as 'not measured'."""
    from auditnn.plan import load_plan
    from auditnn.runner import validate_plan

    audit = tmp_path / "audit.toml"
    audit.write_text(
        '[model]\nsource = "mlp"\n[data]\nsource = "digits"\n'
        '[[check]]\nkind = "corruption"\ncorruptions = "fog"\nmax_mce = 1.0\n'
    )
    with pytest.raises(AuditError, match="max_mce needs a baseline"):
        validate_plan(load_plan(audit))


@pytest.mark.parametrize("text", ["", ",", " , "])
def test_an_empty_list_of_corruptions_or_severities_is_refused(text):
    with pytest.raises(AuditError, match="name none"):
        parse_severities(text)
    with pytest.raises(AuditError, match="name none"):
        parse_corruptions(text)


def test_a_severity_in_other_digits_is_bad_input_not_a_crash():
    with pytest.raises(AuditError, match="severity '²' is not allowed"):
        parse_severities("²")


def test_benchmark_or_all_mixed_with_names_is_refused_with_a_message_that_does_not_contradict_itself():
    with pytest.raises(AuditError, match="benchmark or all alone"):
        parse_corruptions("benchmark,fog")


def test_a_ratio_threshold_takes_values_above_one_and_a_share_does_not(tmp_path):
    from auditnn.plan import load_plan

    def plan(line):
        audit = tmp_path / "audit.toml"
        audit.write_text(
            '[model]\nsource = "mlp"\n[data]\nsource = "digits"\n'
            f'[[check]]\nkind = "corruption"\nbaseline = "b.json"\n{line}\n'
        )
        return load_plan(audit)

    assert plan("max_mce = 1.05").checks[0].thresholds[0].value == pytest.approx(1.05)
    with pytest.raises(AuditError, match="max_mce' is -0.1; allowed: a number >= 0"):
        plan("max_mce = -0.1")
    with pytest.raises(AuditError, match=r"allowed: a number in \[0, 1\]"):
        plan("min_mean_accuracy = 1.05")


@pytest.mark.parametrize("key", ["min_mean_accuracy", "max_mce", "max_ece"])
def test_a_mean_threshold_on_held_out_corruptions_only_is_refused(key):
    metric, bound = KINDS["corruption"].thresholds[key]
    settings = CorruptionSettings(corruptions=["saturate,spatter"], baseline="b.json", severity=1)
    with pytest.raises(AuditError, match="only held-out ones are chosen"):
        KINDS["corruption"].validate_thresholds(settings, [Threshold(key, metric, bound, 0.5)])


def test_an_audit_file_corruption_with_dashes_reads_as_the_name():
    assert KINDS["corruption"].from_file("corruption", "Gaussian-Noise", "") == "gaussian_noise"


def _baseline_report(tmp_path, correct, clean=5, n=10, seed=0):
    from auditnn.report.schema import Report

    section = {
        "model": "m",
        "data": {"source": "x", "classes": ["a", "b"]},
        "n": n,
        "constants": "cifar",
        "corruptions": ["contrast"],
        "severities": [1],
        "test_sha256": "0" * 64,
        "oom_halvings": 0,
        "clean": {"correct": clean, "accuracy": 0.5, "ece": 0.1},
        "rows": [
            {
                "corruption": "contrast",
                "severity": 1,
                "held_out": False,
                "correct": correct,
                "accuracy": 0.5,
                "error": 0.5,
                "ece": 0.1,
            }
        ],
        "summary": {
            "mean_accuracy": 0.5,
            "mce_unnormalized": 0.5,
            "held_out_mean_accuracy": None,
            "ece_by_severity": [{"severity": 1, "ece": 0.1}],
        },
    }
    report = Report("corrupt", "r", {}, {"device": "cpu"}, seed, {"corruption": section}, [])
    path = tmp_path / "report.json"
    path.write_text(report.to_json())
    return str(path)


@pytest.mark.parametrize("correct,clean", [(99, 5), (-1, 5), (5, 11)])
def test_a_baseline_with_counts_outside_0_to_n_is_refused(tmp_path, correct, clean):
    with pytest.raises(AuditError, match="allowed: a corrupt report whose counts lie between 0 and"):
        load_baseline(_baseline_report(tmp_path, correct, clean), ["contrast"], [1])


def test_a_baseline_drawn_with_another_seed_or_device_is_said(tmp_path):
    base = load_baseline(_baseline_report(tmp_path, 5, seed=7), ["contrast"], [1])
    [warning] = draws_warning("b.json", base, 0, torch.device("cpu"))
    assert warning["code"] == "baseline_other_draws" and "seed 7 (this run 0)" in warning["message"]
    assert draws_warning("b.json", {**base, "seed": 0}, 0, torch.device("cpu")) == []
