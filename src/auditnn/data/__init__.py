"""Data: base image sources, planted shortcuts and the controlled dataset builder."""
