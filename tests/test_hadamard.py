import numpy as np
import pytest
import torch

from adahop.hadamard import block_hadamard, hadamard_matrix, random_signs
from reference import block_hadamard as ref_block_hadamard
from reference import hadamard as ref_hadamard


@pytest.mark.parametrize("block", [2, 16, 32, 128])
@pytest.mark.parametrize("axis", [-1, 0])
def test_matches_float64_matrix(block, axis):
    g = torch.Generator().manual_seed(block)
    x = torch.randn(256, 256, generator=g) * torch.exp2(torch.randint(-20, 20, (256, 1), generator=g).float())
    signs = random_signs(256, seed=block)
    ours = block_hadamard(x, axis=axis, block=block, signs=signs)
    moved = x.double().movedim(axis, -1).numpy()
    ref = torch.from_numpy(ref_block_hadamard(moved, block, signs.double().numpy())).movedim(-1, axis)
    # float32 butterflies: each output's error is a few ulps of the sum of |inputs| its block mixes
    abs_blocks = np.abs(moved).reshape(*moved.shape[:-1], -1, block)
    block_l1 = np.repeat(abs_blocks.sum(-1, keepdims=True), block, -1).reshape(moved.shape)
    bound = torch.from_numpy(block_l1).movedim(-1, axis) / block**0.5 * 2.0**-23 * (2 + np.log2(block))
    assert torch.all((ours.double() - ref).abs() <= bound)


def test_orthogonal_and_gemm_invariant():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, 128, generator=g), torch.randn(24, 128, generator=g)
    s = random_signs(128, seed=3)
    torch.testing.assert_close(block_hadamard(a, signs=s) @ block_hadamard(b, signs=s).t(), a @ b.t(), rtol=1e-5, atol=1e-5)
    h = hadamard_matrix(64)
    torch.testing.assert_close(h @ h.t(), torch.eye(64, dtype=torch.float64))
    assert np.allclose(h.numpy(), ref_hadamard(64))


def test_random_signs_are_fixed_by_seed():
    a, b, c = random_signs(64, 5), random_signs(64, 5), random_signs(64, 6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.tolist()) <= {-1.0, 1.0}


@pytest.mark.parametrize("bad", [0, 1, 3, 48, 2.0, True, "32"])
def test_bad_block_size_refused(bad):
    with pytest.raises(ValueError, match="power of two"):
        block_hadamard(torch.randn(4, 96), block=bad)


def test_axis_not_multiple_of_block_refused():
    with pytest.raises(ValueError, match="multiple of 64"):
        block_hadamard(torch.randn(4, 96), block=64)
