"""Spatial maths shared by preprocessing and the engines; no file I/O.

- `window`: the one 0.5 / 99.5-percentile intensity window and its inverse;
- `registration`: affine registration of a scan to the MNI152 template (SimpleITK, in memory);
- `template`: the template on a model grid, a scan onto that grid and a mask after it;
- `extent`: where a brain mask lies in world mm.

Volumes and grid transforms themselves (`Volume`, `GridTransform`, resampling) are in
`synthbrain.io.geometry`, because a Volume carries the NIfTI header it is written back with.
"""
