"""The one write step of heal and implant: every output on the scan's grid, then the edit mask.

The engines (`engines.<name>.heal / implant`) bring the scan to their model grid and back and
return an `io.samples.EditJob`; the files are written here, each atomically (a killed run leaves
no half-written file under its final name), the edit mask last, so that a present edit mask
means every output before it is complete.
"""

from __future__ import annotations

from typing import Any

from synthbrain.io.samples import EditJob


def write_edit(job: EditJob) -> dict[str, Any]:
    """Write the job's outputs and edit mask; its summary of the written paths."""
    from synthbrain.io.nifti import save_volume

    written = [str(save_volume(vol, path, dtype=dtype)) for vol, path, dtype in job.outputs]
    volume, path = job.editmask
    written.append(str(save_volume(volume, path)))
    return job.summary(written)
