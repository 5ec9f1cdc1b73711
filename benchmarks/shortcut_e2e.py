"""End-to-end wall time of `auditnn shortcut --tag TAG` on the built-in data, start-up included.

Runs the real console command in a fresh process per repeat and prints a table with the device and versions.
Target (issue 2): <= 60 s on a 2-core CPU.   Usage: python benchmarks/shortcut_e2e.py [--repeats 3] [--tags ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tags", nargs="+", default=["watermark", "background", "boat"])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    rows = []
    for tag in args.tags:
        times, report = [], {}
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as out:
                start = time.perf_counter()
                subprocess.run(
                    [sys.executable, "-m", "auditnn", "shortcut", "--tag", tag, "--device", args.device, "--out", out, "-q"],
                    check=True, capture_output=True,
                )
                times.append(time.perf_counter() - start)
                report = json.loads((Path(out) / "report.json").read_text())
        m = report["results"]["shortcut"]["rows"][0]["metrics"]
        rows.append((tag, statistics.median(times), min(times), m["reliance"], m["worst_group_accuracy"], m["gap"]))
    env = report["environment"]
    print(f"device: {env['device']} ({env['device_name']}), {env['cpu_threads']} CPU threads; python {env['python']}, "
          f"torch {env['torch']}, auditnn {env['auditnn']}; {platform.platform()}")
    print(f"{'tag':<12}{'median s':>10}{'min s':>8}{'reliance':>10}{'worst grp':>11}{'gap':>8}")
    for tag, med, low, rel, worst, gap in rows:
        print(f"{tag:<12}{med:>10.1f}{low:>8.1f}{rel:>10.3f}{worst:>11.3f}{gap:>8.3f}")


if __name__ == "__main__":
    main()
