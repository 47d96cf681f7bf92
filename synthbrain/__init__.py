"""synthbrain: synthetic paired brain-MRI datasets with diffusion models."""

__version__ = "0.1.0"
