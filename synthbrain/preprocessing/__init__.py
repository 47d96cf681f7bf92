"""NIfTI cohorts → one HDF5 training set: `cohorts` (discovery and label conventions),
`prepare` (the per-subject pipeline, no torch), `fingerprint` (per-subject facts and cohort
statistics) and `run` (the two passes that write the set; what `api.preprocess` calls).
"""
