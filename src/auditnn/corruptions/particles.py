"""Corruptions: snow, frost and spatter (registered in base.CORRUPTIONS)."""
