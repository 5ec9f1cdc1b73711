"""auditnn data: build a controlled dataset with a planted shortcut and save it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..data.controlled import build_controlled, save_controlled
from ..io import staged_folder
from ..values import parse_number
from . import options as o
from .common import Consoles

app = typer.Typer(help="Build controlled datasets.", no_args_is_help=True, add_completion=False)


@app.command("build")
def build(
    out: Annotated[Path, typer.Option(help="Folder to write (manifest.json and one tensor file per split).")],
    base: o.Base = "digits",
    tag: o.Tag = "watermark",
    rho: Annotated[str, typer.Option(help="P(shortcut agrees with label) in train/val, in [0, 1].")] = "0.95",
    target_class: o.TargetClass = None,
    size: o.Size = None,
    opacity: o.Opacity = None,
    position: o.Position = None,
    test_per_class: o.TestPerClass = 30,
    seed: o.Seed = 0,
    data_root: o.DataRoot = None,
    download: o.Download = False,
    quiet: o.Quiet = False,
) -> None:
    """Plant a shortcut at correlation rho; write train/val/test (group-balanced) and test_clean splits."""
    consoles = Consoles(quiet)
    config = o.build_config(
        base=base,
        tag=tag,
        rho=parse_number(rho, "--rho"),
        size=size,
        opacity=opacity,
        position=position,
        target_class=target_class,
        seed=seed,
        test_per_class=test_per_class,
        data_root=data_root,
        download=download,
    )
    config.validate()
    with staged_folder(out, "dataset folder") as staging:
        dataset = build_controlled(config)
        save_controlled(dataset, staging)
    sizes = ", ".join(f"{k} {v}" for k, v in dataset.manifest["sizes"].items())
    consoles.out.print(
        f"dataset written to {out}/: {sizes}; image shape {dataset.manifest['image_shape']}", markup=False
    )
