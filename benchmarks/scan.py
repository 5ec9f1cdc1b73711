"""auditnn scan against its targets, on the built-in digits' controlled datasets (ground truth: where the tag sits).

1. Time: one scan of the training split (default settings: grid 4, 5 folds, 199 permutations) per tag at rho 0.95,
   with the strongest region, its adjusted p and what was flagged.
2. Controls: the tag planted independently of the label (rho = 1/K) over --seeds seeds: how many seeds flag (a) the
   region the tag occupies, (b) any region, (c) any family at all (the digit's own ink amount is label information:
   see the README's 'auditnn scan' section).

Usage: python benchmarks/scan.py [--seeds 20] [--permutations 199] [--tags watermark boat background]
"""

from __future__ import annotations

import argparse
import time

import torch

from auditnn.data.controlled import BuildConfig, ShortcutConfig, build_controlled
from auditnn.runtime import environment
from auditnn.shortcut.scan import scan

PLACE = {
    "watermark": {"cell 3,3", "corner bottom-right"},
    "boat": {"cell 0,0", "corner top-left"},
    "background": {"border top", "border bottom", "border left", "border right"},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--permutations", type=int, default=199)
    parser.add_argument("--tags", nargs="+", default=list(PLACE))
    parser.add_argument("--skip-controls", action="store_true")
    args = parser.parse_args()
    env = environment()
    print(f"torch {env.get('torch')} · {torch.get_num_threads()} threads · permutations {args.permutations}")
    for tag in args.tags:
        ds = build_controlled(BuildConfig(shortcut=ShortcutConfig(tag=tag), rho=0.95))
        start = time.perf_counter()
        result = scan(ds.train.images, ds.train.labels, ds.num_classes, permutations=args.permutations)
        seconds = time.perf_counter() - start
        best = next(s for s in result.scores if s.name == result.strongest_region)
        print(
            f"{tag} rho 0.95: n {result.n}, {seconds:.1f} s, strongest region {best.name} (lift {best.lift:.3f}, "
            f"adjusted p {best.adjusted_p:.4f}), at the tag's place: {best.name in PLACE[tag]}; "
            f"flagged: {[s.name for s in result.flagged]}"
        )
    if args.skip_controls:
        return
    for tag in args.tags:
        place = region = family = 0
        for seed in range(args.seeds):
            ds = build_controlled(BuildConfig(shortcut=ShortcutConfig(tag=tag), rho=1 / 10, seed=seed))
            result = scan(ds.train.images, ds.train.labels, ds.num_classes, permutations=args.permutations, seed=seed)
            flagged = {s.name for s in result.flagged}
            place += bool(flagged & PLACE[tag])
            region += any(s.region for s in result.flagged)
            family += bool(flagged)
            print(f"  control {tag} seed {seed}: flagged {sorted(flagged)}", flush=True)
        print(
            f"{tag} rho 1/K over {args.seeds} seeds: the tag's place flagged in {place}, any region in {region}, "
            f"any family in {family}"
        )


if __name__ == "__main__":
    main()
