"""torchrun: processes split the evaluation into whole batches and gather per-sample results; the numbers must
equal one process's, bit for bit, with any number of processes (more processes than batches included)."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from auditnn.attacks import PGD

ARGS = ["--method", "pgd", "--steps", "3", "--device", "cpu", "--test-per-class", "2", "--eps", "0,4/255,8/255", "-q"]


def _rows(folder):
    rows = json.loads((folder / "report.json").read_text())["results"]["attack"]["rows"]
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_second")} for r in rows]


def _torchrun(n, out, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               "-m", "auditnn", "attack", *ARGS, *extra, "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


@pytest.mark.parametrize("processes,batch", [(2, 8), (3, 64)], ids=["2 processes", "more processes than batches"])
def test_torchrun_gives_exactly_the_numbers_of_one_process(tmp_path, processes, batch):
    from auditnn.cli import main

    assert main(["attack", *ARGS, "--batch-size", str(batch), "--out", str(tmp_path / "one")]) == 0
    done = _torchrun(processes, tmp_path / "many", "--batch-size", str(batch))
    assert _rows(tmp_path / "many") == _rows(tmp_path / "one")
    assert done.stdout.count("Robust accuracy") == 1  # only the first process prints


def test_a_batch_that_runs_out_of_gpu_memory_is_retried_in_halves():
    class Small(nn.Module):
        """Raises CUDA's out-of-memory error for batches larger than 8, like a big model on a small card."""

        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(16, 3)

        def forward(self, x):
            if len(x) > 8:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return self.linear(x.flatten(1))

    torch.manual_seed(0)
    model = Small()
    x = torch.rand(40, 1, 4, 4)
    y = model.linear(x.flatten(1)).argmax(1)
    retried = PGD(eps=0.1, steps=3, batch_size=32).run(model, x, y)
    direct = PGD(eps=0.1, steps=3, batch_size=8).run(model, x, y)
    assert retried.oom_retries == 3  # 32 -> 16 + 16 -> four batches of 8: three halvings
    assert len(retried.robust) == 40 and retried.robust_accuracy == pytest.approx(direct.robust_accuracy, abs=0.1)
