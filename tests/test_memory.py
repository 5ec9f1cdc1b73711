"""Memory-aware batches: sizes, free memory, the probe, the batch choice, and splitting a batch that does not fit."""

from __future__ import annotations

import pytest
import torch

from auditnn.errors import AuditError
from auditnn.memory import format_size, parse_size, round_up_size
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
