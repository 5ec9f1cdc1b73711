"""Corruptions: gaussian, shot, impulse and speckle noise (registered in base.CORRUPTIONS)."""
