"""Models: the architecture registry and the pixel-space wrapper that owns normalization."""

from .load import PixelModel, load_model_dir, save_model_dir
from .zoo import MODELS, build_model

__all__ = ["MODELS", "PixelModel", "build_model", "load_model_dir", "save_model_dir"]
