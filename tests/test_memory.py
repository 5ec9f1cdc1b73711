"""Memory-aware batches: sizes, free memory, the probe, the batch choice, and splitting a batch that does not fit."""

from __future__ import annotations

import pytest
import torch

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
