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
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={n}",
        "-m",
        "auditnn",
        "attack",
        *ARGS,
        *extra,
        "--out",
        str(out),
    ]
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


WORKER = """
import json, sys
import torch
from auditnn.runtime import finish_distributed, gather_parts, init_distributed, rank_and_world
from auditnn.spec import ModelSpec
from auditnn.subject import EvalData, resolve_subject
from auditnn.train import TrainConfig

init_distributed("cpu")
rank, _ = rank_and_world()
images = torch.rand(40, 1, 6, 6, generator=torch.Generator().manual_seed(0))
labels = (torch.arange(40) + rank) % 2  # every process holds other labels: a process that trains gets other weights
epochs = []
data = EvalData(images[:32], labels[:32], images[32:], labels[32:], ["a", "b"], {})
subject = resolve_subject(ModelSpec("mlp"), data, TrainConfig(epochs=2), torch.device("cpu"),
                          progress=lambda epoch, total, row: epochs.append(epoch))
model, card, source = subject.model, subject.card, subject.source
weights = torch.cat([t.flatten() for t in model.state_dict().values()]).tolist()
everyone = gather_parts([{"epochs": epochs, "source": source, "weights": weights, "dataset": card["dataset"]}])
if rank == 0:
    open(sys.argv[1], "w").write(json.dumps(everyone))
finish_distributed()
"""


def test_under_torchrun_only_the_first_process_trains_and_the_others_receive_its_weights(tmp_path):
    """The cache cannot be written (its folder would sit under a file), so nothing can be shared through it."""
    (tmp_path / "worker.py").write_text(WORKER)
    (tmp_path / "blocker").write_text("a file, not a folder")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AUDITNN_CACHE_DIR": str(tmp_path / "blocker" / "cache")}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(tmp_path / "worker.py"),
        str(tmp_path / "out.json"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    first, second = json.loads((tmp_path / "out.json").read_text())
    assert first["epochs"] == [1, 2] and second["epochs"] == []
    assert second["weights"] == first["weights"]
    assert first["source"] == second["source"] == "trained"
    assert second["dataset"] == first["dataset"] and "train_sha256" in first["dataset"]


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
