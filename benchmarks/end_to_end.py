"""End-to-end wall time of the main commands on the built-in data, start-up included: `auditnn shortcut --tag TAG`
for each tag and `auditnn attack --method pgd` (its default model trained once into a fresh cache, then reused).

Each run is a fresh process. Targets (issues 2 and 6): shortcut <= 60 s on a 2-core CPU, <= 10 s on a GPU.
Usage: python benchmarks/end_to_end.py [--repeats 3] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed_run(args: list[str], env: dict[str, str]) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        command = [sys.executable, "-m", "auditnn", *args, "--out", out, "-q"]
        subprocess.run(command, check=True, capture_output=True, env=env)
        seconds = time.perf_counter() - start
        return seconds, json.loads((Path(out) / "report.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tags", nargs="+", default=["watermark", "background", "boat"])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    rows = []
    report: dict = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "AUDITNN_CACHE_DIR": cache}
        for tag in args.tags:
            runs = [timed_run(["shortcut", "--tag", tag, "--device", args.device], env) for _ in range(args.repeats)]
            report = runs[-1][1]
            m = report["results"]["shortcut"]["rows"][0]["metrics"]
            figures = f"reliance {m['reliance']:.3f}, worst group {m['worst_group_accuracy']:.3f}, gap {m['gap']:.3f}"
            seconds = [t for t, _ in runs]
            rows.append((f"shortcut --tag {tag}", statistics.median(seconds), min(seconds), figures))
        attack = ["attack", "--method", "pgd", "--device", args.device]
        first, _ = timed_run(attack, env)  # trains the default model into the fresh cache
        runs = [timed_run(attack, env) for _ in range(args.repeats)]
        top = runs[-1][1]["results"]["attack"]["rows"][-1]
        rows.append(
            (
                "attack --method pgd (cached)",
                statistics.median(t for t, _ in runs),
                min(t for t, _ in runs),
                f"robust acc {top['robust_accuracy']:.3f} at the largest eps",
            )
        )
        rows.append(("attack --method pgd (training)", first, first, "first run: trains and caches the model"))
    env_info = report["environment"]
    print(
        f"device: {env_info['device']} ({env_info['device_name']}), {env_info['cpu_threads']} CPU threads; python "
        f"{env_info['python']}, torch {env_info['torch']}, auditnn {env_info['auditnn']}; {platform.platform()}"
    )
    print(f"{'command':<34}{'median s':>10}{'min s':>8}  result")
    for name, median, low, note in rows:
        print(f"{name:<34}{median:>10.1f}{low:>8.1f}  {note}")


if __name__ == "__main__":
    main()
