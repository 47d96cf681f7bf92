"""The one write step of heal, implant and enhance: every output on the scan's grid, then the
edit mask (heal, implant) or the sidecar JSON (enhance).

The engines (`engines.<name>.heal / implant / enhance`) bring the scan to their model grid and
back and return an `io.samples.EditJob`; the files are written here, each atomically (a killed
run leaves no half-written file under its final name), the edit mask or sidecar last, so that
its presence means every output before it is complete.
"""

from __future__ import annotations

from typing import Any

from synthbrain.io.samples import EditJob


def write_edit(job: EditJob) -> dict[str, Any]:
    """Write the job's outputs, edit mask and sidecar; its summary of the written paths."""
    from synthbrain.io.nifti import save_volume
    from synthbrain.io.outputs import atomic_write_json

    written = [str(save_volume(vol, path, dtype=dtype)) for vol, path, dtype in job.outputs]
    if job.editmask is not None:
        volume, path = job.editmask
        written.append(str(save_volume(volume, path)))
    if job.sidecar is not None:
        atomic_write_json(*job.sidecar)
    return job.summary(written)
