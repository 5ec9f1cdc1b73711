"""Mutation score of the numeric core: how many one-line changes to the code that computes auditnn's numbers the fast
tests notice.

mutmut (configured in pyproject.toml, [tool.mutmut]) writes every mutant of attacks/, shortcut/metrics.py, gate.py,
formats.py and io.py; each mutant is run against the tests that cover the mutated function. On a 2-core machine one
mutant costs several seconds, so by default a seeded random sample of mutants is run and the score is given with its
95 % Wilson interval; `--all` runs every mutant.

    pip install mutmut            # a tool for this script, not a dependency of auditnn
    python benchmarks/mutation.py --sample 200 --seed 0
    python benchmarks/mutation.py --all

The run happens in a scratch copy of the checkout (mutmut writes a mutants/ folder), so the working tree is untouched.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# mutmut's exit codes per mutant (mutmut/stats.py): 1 and 3 mean a test failed, 0 that every test passed.
STATUS = {
    1: "killed",
    3: "killed",
    0: "survived",
    33: "no tests",
    5: "no tests",
    36: "timeout",
    24: "timeout",
    -24: "timeout",
    152: "timeout",
    255: "timeout",
    None: "not run",
}


def copy_checkout(to: Path) -> None:
    """The tracked files and the untracked ones git does not ignore: what a clean clone plus this change holds."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (to / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, to / name)


def mutmut(work: Path, *names: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "mutmut", "run", "--max-children", "2", *names],
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )


def results(work: Path) -> dict[str, int | None]:
    found: dict[str, int | None] = {}
    for meta in (work / "mutants").rglob("*.meta"):
        found.update(json.loads(meta.read_text())["exit_code_by_key"])
    return found


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=200, help="mutants to run, drawn at random (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--all", action="store_true", help="run every mutant")
    parser.add_argument("--json", type=Path, help="write the per-mutant statuses here")
    args = parser.parse_args()
    if (
        shutil.which("mutmut") is None
        and subprocess.run([sys.executable, "-m", "mutmut", "--help"], capture_output=True).returncode != 0
    ):
        print("mutmut is not installed: pip install mutmut", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="auditnn-mutation-") as scratch:
        work = Path(scratch)
        copy_checkout(work)
        # A name that matches no mutant: mutmut writes every mutant and maps tests to functions, then stops.
        mutmut(work, "no-such-mutant")
        every = sorted(results(work))
        if not every:
            print("mutmut wrote no mutants (see pyproject.toml [tool.mutmut])", file=sys.stderr)
            return 3
        chosen = every if args.all else sorted(random.Random(args.seed).sample(every, min(args.sample, len(every))))
        for start in range(0, len(chosen), 100):  # keep each command line short
            mutmut(work, *chosen[start : start + 100])
        measured = results(work)
        survivors = "\n".join(
            subprocess.run(
                [sys.executable, "-m", "mutmut", "show", name], cwd=work, capture_output=True, text=True
            ).stdout.strip()
            for name in chosen
            if measured.get(name) == 0
        )
    statuses = {name: STATUS.get(measured.get(name), "suspicious") for name in chosen}
    per_module: dict[str, Counter[str]] = defaultdict(Counter)
    for name, status in statuses.items():
        per_module[name.split(".x_")[0].split(".xǁ")[0]][status] += 1
    print(f"mutants written: {len(every)}; run: {len(chosen)} (seed {args.seed}{', all' if args.all else ''})")
    print(f"{'module':34} {'run':>5} {'killed':>7} {'survived':>9} {'other':>6}")
    for module, counts in sorted(per_module.items()):
        run = sum(counts.values())
        other = run - counts["killed"] - counts["survived"]
        print(f"{module:34} {run:5d} {counts['killed']:7d} {counts['survived']:9d} {other:6d}")
    total = Counter(statuses.values())
    judged = total["killed"] + total["survived"]
    low, high = wilson(total["killed"], judged)
    others = ", ".join(f"{k} {v}" for k, v in total.items() if k not in ("killed", "survived")) or "none"
    print(
        f"score: {total['killed']}/{judged} killed = {total['killed'] / max(judged, 1):.1%} "
        f"(95 % interval {low:.1%}..{high:.1%}); not judged: {others}"
    )
    if survivors:
        print("survivors:")
        print(survivors)
    if args.json:
        args.json.write_text(json.dumps(statuses, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
