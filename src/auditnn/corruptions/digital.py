"""Corruptions: contrast, elastic transform, pixelate, JPEG and saturate (registered in base.CORRUPTIONS)."""
