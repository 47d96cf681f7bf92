"""Tri-planar PNG previews."""

from __future__ import annotations

import numpy as np
import pytest

from synthbrain.io.preview import preview_center, save_preview

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _volume(shape=(20, 24, 16)) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.random(shape).astype(np.float32)


def test_preview_writes_png_with_labels(tmp_path):
    image = _volume()
    mask = np.zeros(image.shape, dtype=np.uint8)
    mask[4:8, 5:9, 3:6] = 2
    mask[5:7, 6:8, 4:5] = 1
    mask[10:12, 10:12, 10:12] = 3
    affine = np.diag([2.0, 1.0, 3.0, 1.0])
    out = save_preview(tmp_path / "sub" / "p.png", image, mask, affine=affine, title="t")
    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    # Atomic write: only the final file is left in the folder.
    assert [p.name for p in out.parent.iterdir()] == ["p.png"]


def test_preview_without_mask_and_with_empty_mask(tmp_path):
    image = _volume()
    for name, mask in (("a.png", None), ("b.png", np.zeros(image.shape, np.uint8))):
        data = save_preview(tmp_path / name, image, mask).read_bytes()
        assert data[:8] == PNG_SIGNATURE


def test_planes_pass_through_the_lesion():
    image = _volume()
    mask = np.zeros(image.shape, dtype=np.uint8)
    mask[3:6, 15:20, 2:4] = 1
    x, y, z = preview_center(image, mask)
    assert mask[x, y, z] == 1
    assert preview_center(image, None) == (10, 12, 8)


def test_preview_rejects_bad_shapes(tmp_path):
    with pytest.raises(ValueError):
        save_preview(tmp_path / "x.png", np.zeros((8, 8)))
    with pytest.raises(ValueError):
        save_preview(tmp_path / "x.png", _volume(), np.zeros((4, 4, 4)))
    assert not any(tmp_path.iterdir())
