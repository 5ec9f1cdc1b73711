"""Corruptions: brightness and fog (registered in base.CORRUPTIONS)."""
