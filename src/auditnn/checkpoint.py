"""Per-batch progress of a long measurement, kept beside the output folder while a run is under way, so that
`--resume` after an interruption (Ctrl-C, a killed CI job, a lost machine) continues from the batches already done:
at most the batch in flight is lost.

Layout: sibling(out, "partial")/<check key>/ holds manifest.json (the check's name and kind and what its key was
made from) and one batch-NNNNNN.pt per batch done (torch.save of plain tensors, written atomically). A run that
completes removes the folder. A check's key covers everything its numbers depend on (runner.check_key), so batches
of another model, data or setting are never mixed in: on --resume they are refused, naming what changed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from .errors import AuditError
from .io import atomic_torch_save, atomic_write_text, safe_torch_load, sibling
from .runtime import is_main_process

MANIFEST = "manifest.json"


def partial_root(out_dir: Path) -> Path:
    """Where the interrupted runs into `out_dir` keep their batches."""
    return sibling(out_dir, "partial")


class Checkpoint:
    """One check's batches. With resume, batches already on disk are handed back by `load`; without, the folder
    is emptied first (an earlier run's batches are never mixed with this one's)."""

    def __init__(self, folder: Path, key: str, resume: bool) -> None:
        self.folder, self.key, self.resume = folder, key, resume
        if is_main_process() and not resume and folder.exists():
            shutil.rmtree(folder, ignore_errors=True)

    def start(self, name: str, material: dict[str, Any]) -> None:
        """Write the manifest (first process only): what a later --resume compares its own check with."""
        if is_main_process():
            self.folder.mkdir(parents=True, exist_ok=True)
            text = json.dumps({"key": self.key, "check": name, "material": material}, sort_keys=True, default=str)
            atomic_write_text(self.folder / MANIFEST, text + "\n")

    def load(self, index: int) -> dict[str, Any] | None:
        """Batch `index` as saved, or None (not done, or damaged: it is measured again)."""
        path = self.folder / f"batch-{index:06d}.pt"
        if not self.resume or not path.is_file():
            return None
        try:
            saved = safe_torch_load(path, "saved batch")
        except AuditError:
            return None
        if not isinstance(saved, dict) or saved.get("key") != self.key:
            return None
        return saved

    def save(self, index: int, payload: dict[str, Any]) -> None:
        """Batch `index` (this process's own: under torchrun every process saves its batches)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(self.folder / f"batch-{index:06d}.pt", {**payload, "key": self.key}, every_process=True)


def refuse_changed(root: Path, name: str, key: str, material: dict[str, Any]) -> None:
    """On --resume: an interrupted run's batches of the check called `name` under another key mean the check is not
    the one that was interrupted. Refused, naming the first thing that differs."""
    if not root.is_dir():
        return
    for manifest in sorted(root.glob(f"*/{MANIFEST}")):
        try:
            earlier = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(earlier, dict) or earlier.get("check") != name or earlier.get("key") == key:
            continue
        material_before = earlier.get("material")
        before: dict[str, Any] = material_before if isinstance(material_before, dict) else {}
        raise AuditError(
            f"--resume: the interrupted run of check '{name}' measured {_difference(before, material)}; "
            "allowed: the same settings, model and data as the interrupted run, or run without --resume"
        )


def _difference(before: dict[str, Any], now: dict[str, Any]) -> str:
    """What changed between two checks' key materials, in words."""
    words = {
        "inputs": "another model or other data (their fingerprint differs)",
        "subject": "another model or data spec",
    }
    for part in ("settings", "seed", "device", "auditnn", "subject", "inputs"):
        old, new = before.get(part), json.loads(json.dumps(now.get(part), default=str))
        if old == new:
            continue
        if part == "settings" and isinstance(old, dict) and isinstance(new, dict):
            changed = [k for k in new if old.get(k) != new.get(k)]
            if changed:
                k = changed[0]
                return f"it with {k} {old.get(k)!r} (now {new.get(k)!r})"
        return words.get(part, f"it with another {part} ({old!r}, now {new!r})")
    return "another version of it"


def as_payload(tensors: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor]:
    """Only the tensors (a None field is left out)."""
    return {k: v for k, v in tensors.items() if v is not None}
