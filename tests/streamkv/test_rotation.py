"""The pure rotation functions of the rotated peers: Hadamard matrices, seeded signs, per-head
rotation and its inverse."""

from __future__ import annotations

import pytest
import torch

from streamkv import rotation


@pytest.mark.parametrize("d", [1, 2, 16, 64, 128])
def test_hadamard_is_orthogonal_up_to_d(d):
    h = rotation.hadamard(d)
    assert set(h.unique().tolist()) <= {-1.0, 1.0}
    torch.testing.assert_close(h @ h.T, d * torch.eye(d))


@pytest.mark.parametrize("d", [0, 3, 24, 96])
def test_hadamard_refuses_sizes_that_are_not_powers_of_two(d):
    with pytest.raises(ValueError, match="power of two"):
        rotation.hadamard(d)


def test_randomized_hadamard_is_orthogonal_and_seeded():
    r = rotation.randomized_hadamard(64, seed=7)
    torch.testing.assert_close(r @ r.T, torch.eye(64), atol=1e-6, rtol=0)
    assert torch.equal(r, rotation.randomized_hadamard(64, seed=7))  # same seed, same matrix
    assert not torch.equal(r, rotation.randomized_hadamard(64, seed=8))
    # The signs flip columns of the plain Hadamard, nothing else.
    plain = rotation.randomized_hadamard(64, seed=None)
    torch.testing.assert_close(r.abs(), plain.abs())
    signs = rotation.random_signs(64, 7)
    torch.testing.assert_close(r, plain * signs)
    assert 10 < int((signs > 0).sum()) < 54  # both signs drawn


def test_head_rotations_differ_per_head_and_invert():
    rots = rotation.head_rotations(3, 16, seed=0)
    assert rots.shape == (3, 16, 16)
    assert not torch.equal(rots[0], rots[1])
    x = torch.randn(2, 5, 3 * 16)
    y = rotation.rotate(x, rots)
    torch.testing.assert_close(rotation.unrotate(y, rots), x, atol=1e-5, rtol=0)
    # Per head: norms kept, head h rotated by rots[h] alone.
    xh, yh = x.reshape(2, 5, 3, 16), y.reshape(2, 5, 3, 16)
    torch.testing.assert_close(yh.norm(dim=-1), xh.norm(dim=-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(yh[:, :, 1], xh[:, :, 1] @ rots[1].T, atol=1e-5, rtol=0)


def test_rotation_spreads_an_outlier_channel():
    """The point of the rotation: one huge channel becomes d equal-magnitude coordinates."""
    x = torch.zeros(1, 1, 64)
    x[..., 5] = 10.0
    y = rotation.rotate(x, rotation.head_rotations(1, 64, seed=3))
    torch.testing.assert_close(y.abs(), torch.full_like(y, 10.0 / 8.0))
