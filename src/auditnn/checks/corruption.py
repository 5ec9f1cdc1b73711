"""Accuracy under natural corruptions (Hendrycks & Dietterich, ICLR 2019): every chosen corruption at every chosen
severity, streamed batch by batch, with the corruption error against a baseline model's report and the expected
calibration error per severity.

Formulas (E_s,c: the share of test images misclassified under corruption c at severity s; E_clean: on clean images;
S: the chosen severities; the benchmark corruptions are those of corruptions.BENCHMARK that were chosen):
  mean_accuracy     = mean over benchmark c and s in S of (1 - E_s,c)      (held-out corruptions never averaged in)
  mce_unnormalized  = mean over benchmark c and s in S of E_s,c
  CE_c              = sum_s E_s,c / sum_s E_s,c(baseline)                    mce = mean over benchmark c of CE_c
  relative CE_c     = sum_s (E_s,c - E_clean) / sum_s (E_s,c(baseline) - E_clean(baseline))   relative_mce its mean
  ECE               = sum_b |sum of correct_b - sum of confidence_b| / N over 15 equal-width bins (i/15, (i+1)/15] of
                      the max softmax confidence; per severity over every chosen benchmark corruption at it,
                      pooled (held-out corruptions have their own per-cell ECE, never pooled in).
Every figure is computed from integer counts and the bins' float64 sums of float32 confidences, summed over batches
and processes. Those sums are exact (so their order, and the number of processes, cannot change them) while the images
in one sum times 2^ceil(log2 K) stay below 2^30: a million images of 1000 classes."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from ..corruptions.base import BENCHMARK, HELD_OUT, SEVERITIES, corrupt, corruption, parse_corruptions, scale_of
from ..data.stream import PixelStore, as_store, my_batches_of
from ..errors import AuditError, allowed, option
from ..inference import check_logits, eval_mode, model_device
from ..report.schema import BATCH, BOOL, DATA, INT, NUM_OR_NULL, STR, load_report, metric_row
from ..report.tables import Table, fmt
from ..runtime import gather_parts, split_on_oom
from ..subject import SubjectSpec
from .base import STRING, CheckKind, CheckResult, Context, batch_size_for, cli_only, of_check, path_setting, register

if TYPE_CHECKING:
    from ..plan import Threshold

ALL_CORRUPTIONS = (*BENCHMARK, *HELD_OUT)  # a corruption's index here seeds its draws
ECE_BINS = 15
# Float32 copies of each image a corruption holds at its peak besides the batch (memory.choose_batch_size), measured
# as peak RSS over the batch's size at severity 5 on 48 x 3 x 224 x 224 images (CPU), rounded up with one to spare.
CORRUPTION_COPIES = {
    "glass_blur": 19,
    "defocus_blur": 14,
    "frost": 10,
    "motion_blur": 9,
    "snow": 8,
    "zoom_blur": 8,
    "saturate": 8,
    "spatter": 8,
    "elastic_transform": 6,
    "jpeg_compression": 5,
    "fog": 4,
    "impulse_noise": 4,
    "gaussian_noise": 4,
    "pixelate": 4,
}
DEFAULT_COPIES = 4  # a corruption not measured above (shot and speckle noise, brightness, contrast, gaussian blur)
# Test images that share one generator: block b holds images b*DRAW_BLOCK .. (b+1)*DRAW_BLOCK - 1 of the test set and
# its draws are seeded by (seed, corruption, severity, its first image). Batches (and out-of-memory halves) are whole
# blocks, so any batch size, sharding or halving corrupts every image with the same pixels.
DRAW_BLOCK = 16
STATS = ("count", "confidence", "correct")  # the three sums kept per ECE bin


@dataclass
class CorruptionSettings:
    """corruptions: names, or one 'benchmark' (the 15) / 'all' (the 15 and the 4 held out), or one comma list (an
    audit file writes one string); severities: 1..5 (an audit file writes one integer or one comma list); baseline:
    another model's `auditnn corrupt` report.json (for CE and mCE); corruption and severity: the row that
    min_accuracy judges (severity alone: the ECE that max_ece judges); a corruption's dashes read as underscores."""

    corruptions: list[str] = field(default_factory=lambda: list(BENCHMARK), metadata={"file": STRING})
    severities: list[int | str] = field(default_factory=lambda: list(SEVERITIES), metadata={"file": STRING})
    baseline: str | None = field(default=None, metadata=path_setting())
    corruption: str | None = None
    severity: int | None = None
    batch_size: int | None = field(default=None, metadata=cli_only())  # None: chosen from memory (batch_size_for)


def chosen_corruptions(settings: CorruptionSettings) -> list[str]:
    """The corruption names the settings choose, in the order given (an audit file's one comma string included)."""
    return parse_corruptions(",".join(str(c) for c in settings.corruptions))


def parse_severities(text: str) -> list[int]:
    """'1,3,5' -> [1, 3, 5]. Each must be an integer 1..5 in ASCII digits, each at most once; nothing is refused."""
    words = [w.strip() for w in text.split(",") if w.strip()]
    if not words:
        raise AuditError(f"severities '{text}' name none; allowed: integers 1 to 5, e.g. 1,3,5")
    for word in words:
        if not (word.isascii() and word.isdigit()) or int(word) not in SEVERITIES:
            raise AuditError(f"severity '{word}' is not allowed; allowed: integers 1 to 5, e.g. 1,3,5")
    severities = [int(w) for w in words]
    if len(set(severities)) != len(severities):
        raise AuditError(f"severities '{text}' name one twice; allowed: each at most once")
    return severities


def chosen_severities(settings: CorruptionSettings) -> list[int]:
    return parse_severities(",".join(str(s) for s in settings.severities))


# ---------------------------------------------------------------- the measurement


def draw_seed(seed: int, name: str, severity: int, first: int) -> int:
    """The seed of one corruption's draws on the block (DRAW_BLOCK images) whose first image is test image `first`: a
    function of the run's seed, the corruption's index in the 19 names, the severity and `first` only, so any batch
    size, sharding of the batches or out-of-memory halving gives the same pixels (on one device type: CPU and CUDA
    generators draw differently)."""
    text = f"{seed}/{ALL_CORRUPTIONS.index(name)}/{severity}/{first}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") & (2**63 - 1)


def corrupted_batch(x: torch.Tensor, name: str, severity: int, seed: int, first: int) -> torch.Tensor:
    """x, test images first, first + 1, ... (first a multiple of DRAW_BLOCK), under the corruption: each block of
    DRAW_BLOCK images corrupted with its own generator (draw_seed), on x's device, into one new batch."""
    out = torch.empty_like(x)
    for start in range(0, len(x), DRAW_BLOCK):
        generator = torch.Generator(device=x.device).manual_seed(draw_seed(seed, name, severity, first + start))
        out[start : start + DRAW_BLOCK] = corrupt(x[start : start + DRAW_BLOCK], name, severity, generator)
    return out


def bin_stats(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(ECE_BINS, 3) float64: per bin (i/15, (i+1)/15] of the max softmax confidence, the images in it, the sum of
    their confidences and how many the model classified correctly (its argmax is the label)."""
    logits = logits.float()
    predicted = logits.argmax(1)
    confidence = logits.softmax(1).gather(1, predicted[:, None])[:, 0]
    index = (confidence * ECE_BINS).ceil().long().sub_(1).clamp_(0, ECE_BINS - 1)
    values = torch.stack([torch.ones_like(confidence), confidence, (predicted == labels).float()], 1).double()
    return torch.zeros(ECE_BINS, len(STATS), dtype=torch.float64, device=logits.device).index_add_(0, index, values)


def ece_of(stats: torch.Tensor) -> float | None:
    """The expected calibration error of (..., ECE_BINS, 3) sums (any leading cells pooled); None for no image."""
    bins = stats.reshape(-1, ECE_BINS, len(STATS)).sum(0)
    n = float(bins[:, 0].sum())
    return float((bins[:, 2] - bins[:, 1]).abs().sum() / n) if n else None


@dataclass
class Sweep:
    """What a pass over the test images measured. stats: (1 + corruptions x severities, ECE_BINS, 3) float64 sums,
    cell 0 the clean images, cell 1 + i * len(severities) + j corruption i at severity j; picture: the first test
    image clean then through every cell (cells + 1, C, H, W), or None without images; test_sha256: sha256 over each
    test image's float32 pixels and label, in order (the same for any batch size); oom_halvings: batches split in two
    because they ran out of memory (at a block boundary: the pixels stay the same)."""

    names: list[str]
    severities: list[int]
    stats: torch.Tensor
    picture: torch.Tensor | None
    test_sha256: str
    oom_halvings: int
    constants: str | None

    def cell(self, name: str, severity: int) -> int:
        return 1 + self.names.index(name) * len(self.severities) + self.severities.index(severity)

    def correct(self, cell: int) -> int:
        return round(float(self.stats[cell, :, 2].sum()))

    @property
    def n(self) -> int:
        return round(float(self.stats[0, :, 0].sum()))


def sweep(
    model: nn.Module,
    images: torch.Tensor | PixelStore,
    labels: torch.Tensor,
    names: list[str],
    severities: list[int],
    *,
    seed: int,
    batch_size: int,
    workers: int | None = None,
) -> Sweep:
    """Every test image clean and under every corruption x severity, read batch_size at a time: per batch the clean
    logits once, then each corruption at each severity on the model's device (one corrupted batch at a time); only
    the bins' sums are kept. Under torchrun each process reads its own batches and the sums are gathered.
    batch_size must be a multiple of DRAW_BLOCK (see there)."""
    if batch_size < 1 or batch_size % DRAW_BLOCK:
        raise AuditError(
            f"batch size {batch_size}; allowed: a multiple of {DRAW_BLOCK} (the corruptions draw their randomness "
            f"per block of {DRAW_BLOCK} test images, so that any batch size gives the same pixels)"
        )
    store, device = as_store(images), model_device(model)
    if len(store) != len(labels):
        raise AuditError(f"{len(store)} images with {len(labels)} labels; allowed: one label per image")
    cells = 1 + len(names) * len(severities)
    stats = torch.zeros(cells, ECE_BINS, len(STATS), dtype=torch.float64)
    digests: list[bytes] = []
    picture: list[torch.Tensor] = []
    halvings, constants = 0, None

    def run(x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> list[torch.Tensor]:
        x, y = x.to(device, non_blocking=True), y.to(device)
        first = int(index[0])
        assert first % DRAW_BLOCK == 0  # batches and halves are whole blocks
        out = torch.zeros(cells, ECE_BINS, len(STATS), dtype=torch.float64, device=device)
        kept = [x[:1].cpu().clone()] if first == 0 else []  # copies: a view would keep its whole batch alive
        out[0] = bin_stats(_logits(model, x), y)
        for i, name in enumerate(names):
            for j, severity in enumerate(severities):
                corrupted = corrupted_batch(x, name, severity, seed, first)
                out[1 + i * len(severities) + j] = bin_stats(_logits(model, corrupted), y)
                if first == 0:
                    kept.append(corrupted[:1].cpu().clone())
                del corrupted
        return [out.cpu(), torch.cat(kept) if kept else torch.zeros(0)]

    with torch.no_grad(), eval_mode(model):
        for _, begin, end, x in my_batches_of(store, batch_size, workers=workers):
            y = labels[begin:end]
            digests += [_image_digest(image, label) for image, label in zip(x, y.tolist(), strict=True)]
            constants = scale_of(x)
            parts = split_on_oom(run, x, y, torch.arange(begin, end), unit=DRAW_BLOCK)
            halvings += len(parts) // 2 - 1
            for part in parts[0::2]:
                stats += part
            if begin == 0:
                picture = [parts[1]]
            del x, parts
    everyone = gather_parts([(stats, digests, halvings, constants, picture)])
    total = torch.stack([s for s, *_ in everyone]).sum(0) if everyone else stats
    digest = hashlib.sha256()
    for _, mine, *_ in everyone:
        for one in mine:
            digest.update(one)
    pictures = [p for *_, kept in everyone for p in kept]
    return Sweep(
        list(names),
        list(severities),
        total,
        pictures[0] if pictures else None,
        digest.hexdigest(),
        sum(h for _, _, h, _, _ in everyone),
        next((c for _, _, _, c, _ in everyone if c is not None), None),
    )


def _logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    logits = model(images)
    check_logits(logits, len(images))
    return logits


def _image_digest(image: torch.Tensor, label: int) -> bytes:
    return hashlib.sha256(
        image.float().contiguous().numpy().tobytes() + label.to_bytes(8, "little", signed=True)
    ).digest()


# ---------------------------------------------------------------- the figures


def share(count: int, n: int) -> float | None:
    """count / n as every share auditnn reports (float32 division); None for no image."""
    return float(torch.tensor(float(count)) / n) if n else None


def ratio(top: int, bottom: int) -> float | None:
    """top / bottom in float64; None where the denominator is zero."""
    return top / bottom if bottom else None


def corruption_rows(result: Sweep) -> list[dict[str, Any]]:
    """One entry per chosen corruption x severity: its counts, accuracy, error and ECE."""
    n, rows = result.n, []
    for name in result.names:
        for severity in result.severities:
            cell = result.cell(name, severity)
            correct = result.correct(cell)
            rows.append(
                {
                    "corruption": name,
                    "severity": severity,
                    "held_out": name in HELD_OUT,
                    "correct": correct,
                    "accuracy": share(correct, n),
                    "error": share(n - correct, n),
                    "ece": ece_of(result.stats[cell]),
                }
            )
    return rows


def summary(result: Sweep) -> dict[str, Any]:
    """The chosen benchmark corruptions' mean accuracy and mean error, the held-out ones' mean accuracy (None when
    none is chosen), and the ECE per severity, pooled over the chosen benchmark corruptions (none without one)."""
    n = result.n
    bench = [c for c in result.names if c not in HELD_OUT]
    held = [c for c in result.names if c in HELD_OUT]

    def total(names: list[str]) -> tuple[int, int]:
        cells = [result.cell(c, s) for c in names for s in result.severities]
        return sum(result.correct(c) for c in cells), n * len(cells)

    bench_correct, bench_n = total(bench)
    held_correct, held_n = total(held)
    per_severity = []
    for severity in result.severities if bench else []:
        cells = [result.cell(c, severity) for c in bench]
        per_severity.append({"severity": severity, "ece": ece_of(result.stats[cells])})
    return {
        "mean_accuracy": share(bench_correct, bench_n),
        "mce_unnormalized": share(bench_n - bench_correct, bench_n),
        "held_out_mean_accuracy": share(held_correct, held_n) if held else None,
        "ece_by_severity": per_severity,
    }


def baseline_errors(
    rows: list[dict[str, Any]], clean_correct: int, n: int, base: dict[str, Any], severities: list[int]
) -> tuple[list[dict[str, Any]], dict[str, Any], list[dict[str, str]]]:
    """CE_c and relative CE_c per chosen corruption against the baseline's section, mce and relative_mce over the
    benchmark ones, and a warning for each figure whose denominator is zero (left None, never NaN). Wrong counts
    stand in for errors: both models saw the same n images, so the n cancels."""
    mine = {(r["corruption"], r["severity"]): n - r["correct"] for r in rows}
    theirs = {(r["corruption"], r["severity"]): base["n"] - r["correct"] for r in base["rows"]}
    clean, base_clean = n - clean_correct, base["n"] - base["clean"]["correct"]
    per, warnings = [], []
    for name in dict.fromkeys(r["corruption"] for r in rows):
        top = sum(mine[(name, s)] for s in severities)
        bottom = sum(theirs[(name, s)] for s in severities)
        rel_top, rel_bottom = top - len(severities) * clean, bottom - len(severities) * base_clean
        ce, relative = ratio(top, bottom), ratio(rel_top, rel_bottom)
        if ce is None:
            warnings.append(
                {
                    "code": "ce_undefined",
                    "message": f"the baseline misclassified no image under {name} at the chosen severities: its CE "
                    "(and the mCE) has a zero denominator and is left out",
                }
            )
        if relative is None:
            warnings.append(
                {
                    "code": "relative_ce_undefined",
                    "message": f"the baseline's errors under {name} sum to its clean error at the chosen severities: "
                    "its relative CE (and the relative mCE) has a zero denominator and is left out",
                }
            )
        per.append({"corruption": name, "held_out": name in HELD_OUT, "ce": ce, "relative_ce": relative})
    bench = [p for p in per if not p["held_out"]]

    def mean(key: str) -> float | None:
        values = [p[key] for p in bench]
        return sum(values) / len(values) if values and None not in values else None

    return per, {"mce": mean("ce"), "relative_mce": mean("relative_ce")}, warnings


# ---------------------------------------------------------------- the baseline report


def baseline_name() -> str:
    return option("--baseline", "baseline")


def load_baseline(path: str, names: list[str], severities: list[int]) -> dict[str, Any]:
    """The corruption section of another model's `auditnn corrupt` report, refused unless it holds every chosen
    corruption at every chosen severity."""
    report = load_report(path)
    section = report.results.get("corruption")
    if report.command != "corrupt" or not isinstance(section, dict) or "clean" not in section:
        raise AuditError(
            f"{baseline_name()} '{path}' is a report of 'auditnn {report.command}'; "
            "allowed: a report.json written by auditnn corrupt"
        )
    n = section["n"]
    counts = [("clean", section["clean"]["correct"])] + [
        (f"{r['corruption']} at severity {r['severity']}", r["correct"]) for r in section["rows"]
    ]
    for where, correct in counts:
        if n < 1 or not 0 <= correct <= n:
            raise AuditError(
                f"{baseline_name()} '{path}' counts {correct} correct of {n} images ({where}); allowed: a corrupt "
                "report whose counts lie between 0 and its number of images"
            )
    held = {(r["corruption"], r["severity"]) for r in section["rows"]}
    for name in names:
        for severity in severities:
            if (name, severity) not in held:
                raise AuditError(
                    f"{baseline_name()} '{path}' holds no {name} at severity {severity}; allowed: a corrupt report "
                    "measured with every chosen corruption and severity"
                )
    device = str(report.environment.get("device", "")).split(":")[0]
    return {**section, "seed": report.seed, "device_type": device}


def draws_warning(path: str, base: dict[str, Any], seed: int, device: torch.device) -> list[dict[str, str]]:
    """A warning when the baseline's random corruptions were drawn otherwise than this run's (another seed, block or
    device type): its CE is then a comparison under other noise, not paired image by image."""
    differ = []
    if base.get("seed") != seed:
        differ.append(f"seed {base.get('seed')} (this run {seed})")
    if base.get("draw_block", DRAW_BLOCK) != DRAW_BLOCK:
        differ.append(f"draw block {base.get('draw_block')} (this run {DRAW_BLOCK})")
    if base.get("device_type") and base["device_type"] != device.type:
        differ.append(f"device {base['device_type']} (this run {device.type})")
    if not differ:
        return []
    return [
        {
            "code": "baseline_other_draws",
            "message": f"baseline '{path}' drew its random corruptions with {', '.join(differ)}: its errors are "
            "measured under other noise, so CE compares the models on average, not image by image",
        }
    ]


def check_same_data(path: str, base: dict[str, Any], n: int, classes: int, test_sha256: str | None) -> None:
    """The baseline was measured on the same test images (count, class count, and pixels when known)."""
    if base["n"] != n:
        raise AuditError(
            f"{baseline_name()} '{path}' was measured on {base['n']} test images, this run on {n}; "
            "allowed: a corrupt report on the same test images"
        )
    theirs = len(base["data"].get("classes", []))
    if theirs != classes:
        raise AuditError(
            f"{baseline_name()} '{path}' has {theirs} classes, this model {classes}; "
            "allowed: a corrupt report of a model with the same classes"
        )
    if test_sha256 is not None and base["test_sha256"] != test_sha256:
        raise AuditError(
            f"{baseline_name()} '{path}' was measured on other test images (test_sha256 {base['test_sha256'][:12]}, "
            f"this run's {test_sha256[:12]}); allowed: a corrupt report on the same test images"
        )


# ---------------------------------------------------------------- the check kind


@register
class Corruption(CheckKind[CorruptionSettings]):
    name = "corruption"
    settings = CorruptionSettings
    thresholds = {
        "min_mean_accuracy": ("mean_accuracy", "min"),
        "max_mce": ("mce", "max"),
        "max_ece": ("ece", "max"),
        "min_accuracy": ("accuracy", "min"),
    }
    ratio_thresholds = frozenset({"max_mce"})  # mCE is a ratio to the baseline's errors: 1.05 is 5 % worse
    section_schema = {
        "model": STR,
        "data": DATA,
        "batch?": BATCH,
        "check?": STR,
        "n": INT,
        "constants": STR,
        "corruptions": [STR],
        "severities": [INT],
        "test_sha256": STR,
        "oom_halvings": INT,
        "draw_block?": INT,
        "clean": {"correct": INT, "accuracy": NUM_OR_NULL, "ece": NUM_OR_NULL},
        "rows": [
            {
                "corruption": STR,
                "severity": INT,
                "held_out": BOOL,
                "correct": INT,
                "accuracy": NUM_OR_NULL,
                "error": NUM_OR_NULL,
                "ece": NUM_OR_NULL,
            }
        ],
        "summary": {
            "mean_accuracy": NUM_OR_NULL,
            "mce_unnormalized": NUM_OR_NULL,
            "held_out_mean_accuracy": NUM_OR_NULL,
            "ece_by_severity": [{"severity": INT, "ece": NUM_OR_NULL}],
            "mce?": NUM_OR_NULL,
            "relative_mce?": NUM_OR_NULL,
        },
        "baseline?": {
            "report": STR,
            "model": STR,
            "by_corruption": [{"corruption": STR, "held_out": BOOL, "ce": NUM_OR_NULL, "relative_ce": NUM_OR_NULL}],
        },
    }

    @classmethod
    def from_file(cls, key: str, value: Any, at: str) -> Any:
        if key == "corruption" and isinstance(value, str):
            return value.strip().lower().replace("-", "_")
        if key == "severities" and isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # one severity, as the comma list reads it
        return value

    def validate(self, settings: CorruptionSettings, spec: SubjectSpec) -> None:
        names, severities = chosen_corruptions(settings), chosen_severities(settings)
        if settings.corruption is not None and settings.corruption not in names:
            raise AuditError(
                f"corruption '{settings.corruption}' is not among the chosen corruptions; allowed: {allowed(names)}"
            )
        if settings.severity is not None and settings.severity not in severities:
            raise AuditError(
                f"severity {settings.severity!r} is not among the chosen severities; allowed: {allowed(severities)}"
            )
        if settings.corruption is not None and settings.severity is None:
            raise AuditError(
                f"corruption '{settings.corruption}' is set without a severity; allowed: both (the accuracy row "
                "min_accuracy judges) or neither"
            )
        if settings.batch_size is not None and (settings.batch_size < 1 or settings.batch_size % DRAW_BLOCK):
            raise AuditError(
                f"--batch-size {settings.batch_size}; allowed: a multiple of {DRAW_BLOCK} (the corruptions draw their "
                f"randomness per block of {DRAW_BLOCK} test images, so that any batch size gives the same pixels)"
            )
        if settings.baseline is not None:
            load_baseline(settings.baseline, names, severities)

    def validate_thresholds(self, settings: CorruptionSettings, thresholds: list[Threshold]) -> None:
        """What a check's thresholds need of its settings: max_mce a baseline, min_accuracy a corruption and a
        severity, max_ece a severity."""
        keys = [t.key for t in thresholds]
        means = [k for k in ("min_mean_accuracy", "max_mce", "max_ece") if k in keys]
        if means and not any(name in BENCHMARK for name in chosen_corruptions(settings)):
            raise AuditError(
                f"{means[0]} judges the benchmark corruptions, but only held-out ones are chosen "
                f"({', '.join(chosen_corruptions(settings))}); allowed: at least one of the 15 benchmark corruptions"
            )
        if "max_mce" in keys and settings.baseline is None:
            raise AuditError("max_mce needs a baseline; allowed: baseline = another model's corrupt report.json")
        if "min_accuracy" in keys and (settings.corruption is None or settings.severity is None):
            raise AuditError(
                "min_accuracy needs corruption and severity; allowed: e.g. corruption = 'fog', severity = 3"
            )
        if "max_ece" in keys and settings.severity is None:
            raise AuditError("max_ece needs a severity (the ECE of every chosen corruption at it); allowed: 1 to 5")

    def title(self, settings: CorruptionSettings) -> tuple[str, tuple[str, ...]]:
        if settings.corruption is None and settings.severity is None:
            return "corruption", ()
        if settings.corruption is None:
            return f"corruption severity {settings.severity}", ("severity",)
        return f"corruption {settings.corruption} severity {settings.severity}", ("corruption", "severity")

    def labels(self, settings: CorruptionSettings) -> dict[str, Any]:
        return {"corruption": settings.corruption, "severity": settings.severity}

    def measure(self, settings: CorruptionSettings, ctx: Context) -> CheckResult:
        subject = ctx.subject
        assert subject is not None  # needs_subject: the runner resolved it
        names, severities = chosen_corruptions(settings), chosen_severities(settings)
        data = subject.data
        n = len(data.test_labels)
        base = None
        if settings.baseline is not None:
            base = load_baseline(settings.baseline, names, severities)
            check_same_data(settings.baseline, base, n, len(data.classes), None)
        copies = max(CORRUPTION_COPIES.get(name, DEFAULT_COPIES) for name in names)
        batch = batch_size_for(ctx, settings.batch_size, copies=copies)
        if batch["chosen_by"] != "given":  # whole draw blocks (see DRAW_BLOCK); the same on every process
            batch["size"] = max(DRAW_BLOCK, batch["size"] // DRAW_BLOCK * DRAW_BLOCK)
        result = sweep(
            subject.model, data.test, data.test_labels, names, severities, seed=ctx.seed, batch_size=batch["size"]
        )
        if settings.baseline is not None and base is not None:
            check_same_data(settings.baseline, base, n, len(data.classes), result.test_sha256)
        rows = corruption_rows(result)
        clean_correct = result.correct(0)
        section: dict[str, Any] = {
            "model": subject.source,
            "data": subject.described,
            "batch": batch,
            "n": n,
            "constants": result.constants or scale_of(torch.zeros(1, *data.test.shape)),
            "corruptions": names,
            "severities": severities,
            "test_sha256": result.test_sha256,
            "oom_halvings": result.oom_halvings,
            "draw_block": DRAW_BLOCK,
            "clean": {"correct": clean_correct, "accuracy": share(clean_correct, n), "ece": ece_of(result.stats[0])},
            "rows": rows,
            "summary": summary(result),
        }
        warnings: list[dict[str, str]] = []
        if base is not None and settings.baseline is not None:
            per, means, warnings = baseline_errors(rows, clean_correct, n, base, severities)
            warnings += draws_warning(settings.baseline, base, ctx.seed, ctx.device)
            section["summary"].update(means)
            section["baseline"] = {"report": str(settings.baseline), "model": base["model"], "by_corruption": per}
        pictures = {} if result.picture is None else {"grid": result.picture}
        return CheckResult(metric_rows(section), section, pictures, warnings)

    def tables(self, section: dict[str, Any]) -> list[Table]:
        return [accuracy_table(section), summary_table(section)]


def metric_rows(section: dict[str, Any]) -> list[dict[str, Any]]:
    """The tidy rows of a corruption section: accuracy and error per corruption x severity, the summary figures
    unlabelled, ECE per severity (labelled severity), CE and relative CE per corruption (labelled corruption)."""
    rows = [metric_row("corruption", "clean_accuracy", section["clean"]["accuracy"])]
    rows.append(metric_row("corruption", "clean_ece", section["clean"]["ece"]))
    for r in section["rows"]:
        for metric in ("accuracy", "error"):
            rows.append(metric_row("corruption", metric, r[metric], corruption=r["corruption"], severity=r["severity"]))
    figures = section["summary"]
    for metric in ("mean_accuracy", "mce_unnormalized", "held_out_mean_accuracy", "mce", "relative_mce"):
        if metric in figures and (metric != "held_out_mean_accuracy" or figures[metric] is not None):
            rows.append(metric_row("corruption", metric, figures[metric]))
    for entry in figures["ece_by_severity"]:
        rows.append(metric_row("corruption", "ece", entry["ece"], severity=entry["severity"]))
    for entry in section.get("baseline", {}).get("by_corruption", []):
        for metric in ("ce", "relative_ce"):
            rows.append(metric_row("corruption", metric, entry[metric], corruption=entry["corruption"]))
    return rows


def accuracy_table(section: dict[str, Any]) -> Table:
    """Accuracy per corruption (rows) and severity (columns), with the mean over the severities, and CE and
    relative CE where a baseline was given."""
    severities = section["severities"]
    by_cell = {(r["corruption"], r["severity"]): r for r in section["rows"]}
    ce = {e["corruption"]: e for e in section.get("baseline", {}).get("by_corruption", [])}
    columns = ["corruption", *(f"sev {s}" for s in severities), "mean"] + ["CE", "rel CE"] * bool(ce)
    body = []
    for name in section["corruptions"]:
        cells = [by_cell.get((name, s)) for s in severities]  # a report read back may lack a cell: shown as '-'
        held = [c for c in cells if c is not None]
        correct = sum(c["correct"] for c in held)
        label = name + (" (held out)" if name in HELD_OUT else "")
        row = [label, *(fmt(None if c is None else c["accuracy"]) for c in cells)]
        row.append(fmt(share(correct, section["n"] * len(held)) if len(held) == len(cells) else None))
        if ce:
            row += [fmt(ce[name]["ce"]), fmt(ce[name]["relative_ce"])] if name in ce else ["-", "-"]
        body.append(row)
    title = (
        f"Accuracy under corruption ({section['n']} test images, {section['constants']}-size constants, "
        f"model {section['model']}){of_check(section)}"
    )
    return Table(title, columns, body)


def summary_table(section: dict[str, Any]) -> Table:
    """Clean accuracy, the means over the benchmark corruptions, mCE when a baseline was given, and the ECE."""
    figures = section["summary"]
    body = [
        ["clean accuracy", fmt(section["clean"]["accuracy"])],
        ["mean corruption accuracy (benchmark)", fmt(figures["mean_accuracy"])],
        ["mean corruption error (unnormalized)", fmt(figures["mce_unnormalized"])],
    ]
    if figures["held_out_mean_accuracy"] is not None:
        body.append(["mean accuracy (held out, not averaged in)", fmt(figures["held_out_mean_accuracy"])])
    if "baseline" in section:
        body.append([f"mCE (baseline {section['baseline']['model']})", fmt(figures.get("mce"))])
        body.append(["relative mCE", fmt(figures.get("relative_mce"))])
    body.append(["ECE clean", fmt(section["clean"]["ece"])])
    body += [[f"ECE severity {e['severity']}", fmt(e["ece"])] for e in figures["ece_by_severity"]]
    return Table(f"Corruption summary{of_check(section)}", ["figure", "value"], body)


def family_of(name: str) -> str:
    """The registered corruption's family (noise, blur, weather, digital), 'other' for a name not registered."""
    try:
        return corruption(name).family
    except AuditError:
        return "other"


def accuracy_curves(section: dict[str, Any]) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """Per family, per corruption: (severities with 0 for clean, accuracies), the series of one accuracy-vs-severity
    plot (a cell the section lacks is NaN: a report read back is checked for its types, not its completeness)."""
    by_cell = {(r["corruption"], r["severity"]): r["accuracy"] for r in section["rows"]}
    xs = [0.0, *map(float, section["severities"])]
    curves: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for name in section["corruptions"]:
        values = [section["clean"]["accuracy"], *(by_cell.get((name, s)) for s in section["severities"])]
        label = name + (" (held out)" if name in HELD_OUT else "")
        ys = [math.nan if v is None else float(v) for v in values]
        curves.setdefault(family_of(name), {})[label] = (xs, ys)
    return curves
