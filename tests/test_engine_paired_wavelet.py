import torch

from synthbrain.engines.paired.wavelet import haar_forward, haar_inverse


def test_two_level_haar_has_the_latent_shape_and_an_exact_inverse():
    x = torch.rand(2, 1, 16, 24, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w = haar_forward(x, 2)
    assert w.shape == (2, 64, 4, 6, 2)
    assert torch.allclose(haar_inverse(w, 2), x, atol=1e-12, rtol=0)
    # Orthonormal: energy kept; the first channel is the scaled block mean (the LLL-LLL band).
    assert torch.allclose((w**2).sum(), (x**2).sum())
    mean = torch.nn.functional.avg_pool3d(x, 4)
    assert torch.allclose(w[:, :1], mean * 8.0)


def test_haar_bands_of_a_constant_are_zero_except_the_low_band():
    w = haar_forward(torch.ones(1, 2, 8, 8, 8), 1)
    assert w.shape == (1, 16, 4, 4, 4)
    assert torch.allclose(w[:, :2], torch.full_like(w[:, :2], 8**0.5))
    assert torch.count_nonzero(w[:, 2:]) == 0
