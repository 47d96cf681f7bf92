"""`synthbrain evaluate`: a report on a synthetic dataset against a reference, and whether it
helps a segmenter (--downstream). Modules: sources/cases (reading), grid (one grid), features
(one pass per set), sections (numbers), figures + html (the report), downstream / nnunet.
"""

from synthbrain.evaluation.report import evaluate

__all__ = ["evaluate"]
