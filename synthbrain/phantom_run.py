"""The old import path of the phantom command, kept for scripts: see `synthbrain.runs.phantom`."""

from synthbrain.runs.phantom import label_names, run_phantom, sample_name, subject_volumes

__all__ = ["label_names", "run_phantom", "sample_name", "subject_volumes"]
