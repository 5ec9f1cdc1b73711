"""Memory-aware batches: sizes, free memory, the probe, the batch choice, and splitting a batch that does not fit."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from auditnn import memory
from auditnn.errors import AuditError
from auditnn.memory import (
    DEFAULT_COPIES,
    BatchChoice,
    StepCost,
    batch_for,
    choose_batch_size,
    cpu_free_bytes,
    default_budget,
    format_size,
    free_bytes,
    parse_size,
    pass_bytes,
    probe_step_cost,
    round_up_size,
)
from auditnn.runtime import split_on_oom

CPU_ALLOCATOR_FAILURE = (
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
    "allocate 4611686018427387904 bytes. Error code 12 (Cannot allocate memory)"
)


class FailsAbove:
    """Doubles each row and sums it; raises `error` for batches larger than `limit` (a model that runs out of
    memory). Records the batch sizes it was called with."""

    def __init__(self, limit: int, error: BaseException) -> None:
        self.limit, self.error, self.calls = limit, error, []

    def __call__(self, xs: torch.Tensor, ys: torch.Tensor) -> list[torch.Tensor]:
        self.calls.append(len(xs))
        if len(xs) > self.limit:
            raise self.error
        return [xs.sum(1) * 2 + ys]


def test_split_on_oom_splits_on_the_cpu_allocators_failure():
    """What this torch raises when the CPU allocator fails (a RuntimeError naming DefaultCPUAllocator) is split like
    a CUDA out-of-memory: the results equal, in order, those of one unsplit call that does not fail."""
    try:
        torch.empty(2**62, dtype=torch.uint8)
    except RuntimeError as exc:  # this torch's own message, so the test follows the installed version
        message = str(exc)
    else:
        message = CPU_ALLOCATOR_FAILURE
    assert "DefaultCPUAllocator: can't allocate memory" in message
    xs, ys = torch.arange(21.0).view(7, 3), torch.arange(7.0)
    expected = FailsAbove(10**9, RuntimeError())(xs, ys)[0]
    run = FailsAbove(2, RuntimeError(message))
    parts = split_on_oom(run, xs, ys)
    assert torch.equal(torch.cat(parts), expected)
    assert max(len(p) for p in parts) <= 2
    assert run.calls == [7, 4, 2, 2, 3, 2, 1]  # halves, first half first, down to batches that fit


def test_split_on_oom_splits_on_any_torch_out_of_memory_error():
    xs, ys = torch.ones(5, 2), torch.zeros(5)
    run = FailsAbove(1, torch.OutOfMemoryError("out of memory"))
    assert torch.equal(torch.cat(split_on_oom(run, xs, ys)), torch.full((5,), 4.0))


@pytest.mark.parametrize(
    "error",
    [RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 2x2)"), ValueError("can't allocate memory")],
)
def test_split_on_oom_lets_other_errors_through_unchanged(error):
    run = FailsAbove(0, error)
    with pytest.raises(type(error)) as caught:
        split_on_oom(run, torch.ones(4, 3), torch.zeros(4))
    assert caught.value is error
    assert run.calls == [4]  # not retried in halves


def test_split_on_oom_raises_when_one_item_does_not_fit():
    error = RuntimeError(CPU_ALLOCATOR_FAILURE)
    with pytest.raises(RuntimeError) as caught:
        split_on_oom(FailsAbove(0, error), torch.ones(2, 3), torch.zeros(2))
    assert caught.value is error


# ---------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4GB", 4 * 10**9),
        ("512MB", 512 * 10**6),
        ("1.5GiB", 3 * 2**29),
        ("800kB", 800_000),
        ("2g", 2 * 10**9),
        ("1.5 GB", 1_500_000_000),
        ("  10 KiB ", 10_240),
        ("3mi", 3 * 2**20),
        ("7b", 7),
        ("7 B", 7),
        ("1tb", 10**12),
        ("2TiB", 2**41),
        (".5kB", 500),
        ("1.kB", 1000),
        ("+2MB", 2 * 10**6),
        ("0.0001kB", 1),  # a tenth of a byte rounds up to one byte
        ("36.3 MB", 36_300_000),  # exact: no float rounding on the way
    ],
)
def test_parse_size_reads_decimal_and_binary_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("4 apples", "is not a size"),
        ("4096", "is not a size"),  # a bare number: bytes or megabytes? refused
        ("", "is not a size"),
        ("GB", "is not a size"),
        ("nanGB", "is not a size"),
        ("infGB", "is not a size"),
        ("1e9B", "is not a size"),
        ("4 GB GB", "is not a size"),
        ("4 gigabytes", "is not a size"),
        ("0GB", "is not a positive size"),
        ("0.0 MB", "is not a positive size"),
        ("-1GB", "is not a positive size"),
    ],
)
def test_parse_size_refuses_what_is_not_a_positive_size(text, what):
    with pytest.raises(AuditError) as caught:
        parse_size(text)
    message = str(caught.value)
    assert f"--max-memory '{text}' {what}; allowed: a number with a unit, e.g. 4GB or 512MB" in message
    assert "\n" not in message


def test_parse_size_names_where_the_size_came_from():
    with pytest.raises(AuditError, match=r"^run\.max_memory '12' is not a size; allowed: "):
        parse_size("12", where="run.max_memory")


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (512, "512 B"),
        (1000, "1 kB"),
        (1_500_000_000, "1.5 GB"),
        (37_000_000, "37 MB"),
        (123_456_789, "123 MB"),
        (123_500_000, "124 MB"),  # half rounds up
        (999_600, "1 MB"),  # the rounded size picks the unit: not "1000 kB"
        (2**30, "1.07 GB"),
        (5 * 10**13, "50 TB"),
    ],
)
def test_format_size(n, text):
    assert format_size(n) == text


@pytest.mark.parametrize("n", [1, 999, 1000, 1001, 36_200_001, 99_950_001, 2**30 + 1, 123_456_789_012])
def test_round_up_size_is_at_least_n_and_written_exactly(n):
    up = round_up_size(n)
    assert n <= up < n * 1.01 + 1
    assert parse_size(format_size(up)) == up  # the message's figure, read back, is the figure itself


# ---------------------------------------------------------------- free memory and the default budget

GB = 10**9


def fake_machine(tmp_path, meminfo_kb=None, cgroup_line="0::/job\n"):
    """A /proc and a /sys/fs/cgroup under tmp_path: MemAvailable (kB) when given, and /proc/self/cgroup's line."""
    proc, cgroup = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    cgroup.mkdir()
    (proc / "self" / "cgroup").write_text(cgroup_line)
    if meminfo_kb is not None:
        (proc / "meminfo").write_text(f"MemTotal:       99999999 kB\nMemAvailable:   {meminfo_kb} kB\nBuffers: 1 kB\n")
    return proc, cgroup


def write_cgroup(folder, files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


def test_cpu_free_bytes_is_meminfo_available_without_a_cgroup_limit(tmp_path):
    proc, cgroup = fake_machine(tmp_path, meminfo_kb=8_000_000)
    write_cgroup(cgroup, {"cgroup.controllers": "cpu memory\n", "memory.max": "max\n", "memory.current": "5\n"})
    assert cpu_free_bytes(proc, cgroup) == 8_000_000 * 1024


def test_cpu_free_bytes_takes_the_tighter_cgroup_v2_limit_and_its_ancestors(tmp_path):
    """v2: limit minus (usage minus inactive file cache), for the process's cgroup and each one above it."""
    proc, cgroup = fake_machine(tmp_path, meminfo_kb=8_000_000, cgroup_line="0::/outer/job\n")
    write_cgroup(cgroup, {"cgroup.controllers": "memory\n", "memory.max": "max\n", "memory.current": "1\n"})
    job = {
        "memory.max": f"{2 * GB}\n",
        "memory.current": f"{GB + GB // 2}\n",
        "memory.stat": f"anon 5\ninactive_file {GB // 2}\n",
    }
    write_cgroup(cgroup / "outer" / "job", job)
    assert cpu_free_bytes(proc, cgroup) == 2 * GB - GB  # 2 GB limit, 1.5 GB used of which 0.5 GB reclaimable cache
    write_cgroup(cgroup / "outer", {"memory.max": f"{3 * GB}\n", "memory.current": f"{2_900_000_000}\n"})
    assert cpu_free_bytes(proc, cgroup) == 100_000_000  # the parent has less room left


def test_cpu_free_bytes_reads_cgroup_v1_and_ignores_its_no_limit_value(tmp_path):
    proc, cgroup = fake_machine(tmp_path, meminfo_kb=4_000_000, cgroup_line="4:memory:/docker/abc\n1:cpu:/\n")
    no_limit = {"memory.limit_in_bytes": "9223372036854771712\n", "memory.usage_in_bytes": "1000\n"}
    write_cgroup(cgroup / "memory", no_limit)
    write_cgroup(cgroup / "memory" / "docker" / "abc", no_limit)
    assert cpu_free_bytes(proc, cgroup) == 4_000_000 * 1024
    limited = {
        "memory.limit_in_bytes": f"{GB}\n",
        "memory.usage_in_bytes": "300\n",
        "memory.stat": "total_inactive_file 100\n",
    }
    write_cgroup(cgroup / "memory" / "docker" / "abc", limited)
    assert cpu_free_bytes(proc, cgroup) == GB - 200


def test_cpu_free_bytes_in_a_container_that_sees_its_cgroup_as_the_root(tmp_path):
    """/proc/self/cgroup names a path that the container's mount does not have: the mount's root is the cgroup."""
    proc, cgroup = fake_machine(tmp_path, meminfo_kb=8_000_000, cgroup_line="0::/kubepods/pod1/c2\n")
    write_cgroup(cgroup, {"cgroup.controllers": "memory\n", "memory.max": f"{GB}\n", "memory.current": f"{GB // 4}\n"})
    assert cpu_free_bytes(proc, cgroup) == GB - GB // 4


def test_cpu_free_bytes_falls_back_to_free_pages_and_then_refuses(tmp_path, monkeypatch):
    proc, cgroup = fake_machine(tmp_path)  # no meminfo, no cgroup files
    monkeypatch.setattr(memory, "_sysconf_free", lambda: 12345)
    assert cpu_free_bytes(proc, cgroup) == 12345
    monkeypatch.setattr(memory, "_sysconf_free", lambda: None)
    with pytest.raises(AuditError, match=r"free memory of this machine cannot be read; allowed: pass --max-memory"):
        cpu_free_bytes(proc, cgroup)


def test_default_budget_is_half_the_free_memory_on_cpu(monkeypatch):
    monkeypatch.setattr(memory, "cpu_free_bytes", lambda: 10_000_001)
    assert default_budget(torch.device("cpu")) == 5_000_000


@pytest.mark.skipif(not Path("/proc/meminfo").is_file(), reason="reads MemTotal from /proc/meminfo (Linux)")
def test_free_bytes_on_this_machine_is_positive_and_below_its_memory():
    total = int(re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE).group(1)) * 1024
    assert 0 < free_bytes(torch.device("cpu")) <= total


# ---------------------------------------------------------------- the probe


def mlp(d: int, h: int, k: int, inplace: bool = False) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(d, h), nn.ReLU(inplace=inplace), nn.Linear(h, k))


def mlp_pass_bytes_by_hand(d: int, h: int, k: int, n: int) -> int:
    """One pass of Flatten -> Linear(d, h) -> ReLU -> Linear(h, k) with frozen weights, over n images, counted by
    hand. Saved for backward: the ReLU's output (n*h floats; the Linears save only their weights, since their inputs
    are needed for weight gradients alone), log_softmax's output (n*k floats, saved twice, one storage), the labels
    (n int64, by nll_loss) and nll_loss's total weight (one float: the fixed part). Added: the input and its
    gradient (n*d floats each), the logits (n*k), the losses (n), the labels (n int64, counted once), and two times
    the largest saved storage (the ReLU's output, as h > k) for the backward's temporaries."""
    saved = 4 * n * h + 4 * n * k + 4
    return saved + 2 * (4 * n * h) + 2 * (4 * n * d) + 4 * n * k + 4 * n + 8 * n


@pytest.mark.parametrize("inplace", [False, True])  # in place, the ReLU's output is the Linear's: one storage
def test_cpu_pass_bytes_is_the_hand_count(inplace):
    d, h, k = 3 * 4 * 5, 17, 3
    model = mlp(d, h, k, inplace).eval().requires_grad_(False)
    for n in (1, 2, 7):
        assert pass_bytes(model, (3, 4, 5), torch.device("cpu"), n) == mlp_pass_bytes_by_hand(d, h, k, n)


def test_probe_step_cost_is_the_line_through_two_passes_plus_the_attacks_copies():
    d, h, k = 3 * 4 * 5, 17, 3
    model = mlp(d, h, k)
    per_pass = mlp_pass_bytes_by_hand(d, h, k, 2) - mlp_pass_bytes_by_hand(d, h, k, 1)
    assert per_pass == 12 * h + 8 * k + 8 * d + 12
    cpu = torch.device("cpu")
    assert probe_step_cost(model, (3, 4, 5), cpu, copies=0) == StepCost(per_image=per_pass, fixed=4)
    assert probe_step_cost(model, (3, 4, 5), cpu, copies=3) == StepCost(per_image=per_pass + 3 * 4 * d, fixed=4)
    assert probe_step_cost(model, (3, 4, 5), cpu).per_image == per_pass + DEFAULT_COPIES * 4 * d


def test_probe_counts_a_conv_net_activations_by_hand():
    """Conv2d(1, c, 3, padding=1) -> ReLU -> Flatten -> Linear(c*s*s, k) on (1, s, s) images, frozen: saved are the
    ReLU's output (c*s*s floats per image; the conv saves its weight and, for the input gradient, not its input),
    log_softmax's output and the labels; as for the MLP, the rest is the input, its gradient, logits, losses and
    labels (once), and two ReLU outputs of temporaries."""
    c, s, k = 4, 6, 5
    model = nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(c * s * s, k))
    relu = 4 * c * s * s
    per_image = (relu + 4 * k) + 2 * relu + 2 * (4 * s * s) + 4 * k + 4 + 8  # saved, temporaries, x and grad, rest
    assert probe_step_cost(model, (1, s, s), torch.device("cpu"), copies=0) == StepCost(per_image, fixed=4)


def test_probe_leaves_the_model_as_found():
    """Mode of every submodule, requires_grad of every parameter, no .grad written, the global random state."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Dropout(0.5), nn.Flatten(), nn.Linear(32, 3))
    model.train()
    model[1].eval()
    model[0].weight.requires_grad_(False)
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    state = {name: t.clone() for name, t in model.state_dict().items()}
    rng = torch.get_rng_state()
    choose_batch_size(model, (1, 6, 6), torch.device("cpu"), 10**9)
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(t, state[name]) for name, t in model.state_dict().items())  # BatchNorm stats untouched
    assert torch.equal(torch.get_rng_state(), rng)


# ---------------------------------------------------------------- the batch size


def test_batch_for_rounds_down_to_a_power_of_two_when_the_budget_limits_it():
    cost = StepCost(per_image=100, fixed=50)
    assert batch_for(cost, 50 + 100 * 5) == BatchChoice(4, 550, 100, 50, 512, "budget")
    assert batch_for(cost, 50 + 100 * 8 - 1).batch_size == 4  # 7.99 images fit
    assert batch_for(cost, 50 + 100 * 8).batch_size == 8
    assert batch_for(cost, 50 + 100).batch_size == 1


def test_batch_for_stops_at_the_cap():
    cost = StepCost(per_image=100, fixed=0)
    assert batch_for(cost, 100 * 100, upper=100) == BatchChoice(100, 10_000, 100, 0, 100, "upper")
    assert batch_for(cost, 100 * 99, upper=100) == BatchChoice(64, 9_900, 100, 0, 100, "budget")
    assert batch_for(cost, 10**12, upper=48).batch_size == 48  # the cap need not be a power of two


def test_batch_size_grows_with_the_budget_and_its_estimate_fits():
    model, shape, cpu = mlp(60, 17, 3), (3, 4, 5), torch.device("cpu")
    cost = probe_step_cost(model, shape, cpu)
    sizes = []
    for budget in range(cost.bytes_for(1), cost.bytes_for(700), 997):
        choice = batch_for(cost, budget)
        assert choice.estimate == cost.bytes_for(choice.batch_size) <= budget
        assert choice.limited_by == "upper" or cost.bytes_for(2 * choice.batch_size) > budget  # the largest power
        sizes.append(choice.batch_size)
    assert sizes == sorted(sizes)
    assert set(sizes) == {1, 2, 4, 8, 16, 32, 64, 128, 256, 512}
    assert choose_batch_size(model, shape, cpu, cost.bytes_for(300)) == batch_for(cost, cost.bytes_for(300))


def test_too_small_a_budget_names_the_smallest_that_works_and_that_one_does():
    model, shape, cpu = mlp(3 * 32 * 32, 300, 10), (3, 32, 32), torch.device("cpu")
    one = probe_step_cost(model, shape, cpu).bytes_for(1)
    with pytest.raises(AuditError) as caught:
        choose_batch_size(model, shape, cpu, parse_size("1kB"))
    message = str(caught.value)
    match = re.fullmatch(
        r"--max-memory 1 kB is too small for one image of this model \(one needs about (\S+ \w?B)\); "
        r"allowed: at least (\S+ \w?B)",
        message,
    )
    assert match and match.group(1) == match.group(2), message
    smallest = parse_size(match.group(2))
    assert one <= smallest < one * 1.01
    assert choose_batch_size(model, shape, cpu, smallest).batch_size == 1
    with pytest.raises(AuditError, match="too small"):
        choose_batch_size(model, shape, cpu, one - 1)


def test_too_small_message_by_hand_and_where():
    with pytest.raises(AuditError) as caught:
        batch_for(StepCost(per_image=36_200_001, fixed=0), 10**6, where="the default budget (half the free memory)")
    assert str(caught.value) == (
        "the default budget (half the free memory) 1 MB is too small for one image of this model (one needs about "
        "36.3 MB); allowed: at least 36.3 MB"
    )


class RaisesInForward(nn.Module):
    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.linear, self.error = nn.Linear(4, 2), error

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise self.error


def test_a_probe_that_runs_out_of_memory_is_a_usage_error_and_other_errors_propagate():
    cpu = torch.device("cpu")
    with pytest.raises(AuditError, match=r"^device cpu ran out of memory in a pass over 1 image\(s\) of shape"):
        choose_batch_size(RaisesInForward(RuntimeError(CPU_ALLOCATOR_FAILURE)), (1, 2, 2), cpu, 10**9)
    error = RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    with pytest.raises(RuntimeError) as caught:
        choose_batch_size(RaisesInForward(error), (1, 2, 2), cpu, 10**9)
    assert caught.value is error
