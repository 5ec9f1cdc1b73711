"""Corruptions: defocus, glass, motion, zoom and Gaussian blur (registered in base.CORRUPTIONS)."""
