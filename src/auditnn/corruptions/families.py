"""Imports every module that registers corruptions (base.corruption imports this module). Modules are split by who
owns the code, not by family: each registration names its family."""

from . import noise, digital, weather, blur, particles  # noqa: F401, I001
