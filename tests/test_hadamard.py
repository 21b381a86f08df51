import numpy as np
import pytest
import torch
from reference import block_hadamard as ref_block_hadamard
from reference import hadamard as ref_hadamard

from adahop.hadamard import block_hadamard, hadamard_matrix, random_signs


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
    torch.testing.assert_close(
        block_hadamard(a, signs=s) @ block_hadamard(b, signs=s).t(), a @ b.t(), rtol=1e-5, atol=1e-5
    )
    h = hadamard_matrix(64)
    torch.testing.assert_close(h @ h.t(), torch.eye(64, dtype=torch.float64))
    assert np.allclose(h.numpy(), ref_hadamard(64))


def test_random_signs_are_fixed_by_seed():
    a, b, c = random_signs(64, 5), random_signs(64, 5), random_signs(64, 6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.tolist()) <= {-1.0, 1.0}


@pytest.mark.parametrize("bad", [0, 1, 3, 48, 256, 2.0, True, "32"])
def test_bad_block_size_refused(bad):
    with pytest.raises(ValueError, match="power of two"):
        block_hadamard(torch.randn(4, 96), block=bad)


def test_axis_not_multiple_of_block_refused():
    with pytest.raises(ValueError, match="multiple of 64"):
        block_hadamard(torch.randn(4, 96), block=64)


def _job_config(*args):
    from adahop.checkpoint_io import load_job_config

    return load_job_config(None, ["--job.config_file", "configs/default.toml", *args])


@pytest.mark.parametrize("size", [16, 32, 64, 128, 256, 48])
def test_layers_and_config_accept_the_same_hadamard_sizes(size):
    """One check (adahop.hadamard.check_hadamard_size) for the layers and the training config: the config
    used to refuse 64 and 128, which mxfp4_linear took."""
    from adahop.config import ConfigError, validate_mx
    from adahop.hadamard import HADAMARD_SIZES
    from adahop.linear import mxfp4_linear

    x, w = torch.randn(4, 256), torch.randn(128, 256)
    config = _job_config("--quantize.linear.mx.hadamard_size", str(size))
    if size in HADAMARD_SIZES:
        assert mxfp4_linear(x, w, hadamard_size=size).shape == (4, 128)
        validate_mx(config)
    else:
        with pytest.raises(ValueError, match="power of two from 2 to 128"):
            mxfp4_linear(x, w, hadamard_size=size)
        with pytest.raises(ConfigError, match=f"hadamard_size = {size}; allowed: a power of two from 2 to 128"):
            validate_mx(config)


def test_every_hadamard_size_runs_on_the_gpu_fast_path(monkeypatch):
    """No accepted size falls back to the reference path on a GPU: the dispatch and the fused kernels
    take every one of them."""
    from adahop import backend
    from adahop.hadamard import HADAMARD_SIZES, MAX_HADAMARD_SIZE
    from adahop.kernels import quantize as kq

    monkeypatch.setattr(backend, "fast_device", lambda device: True)
    assert kq.MAX_HADAMARD == MAX_HADAMARD_SIZE
    for size in HADAMARD_SIZES:
        assert backend._fast_ok(torch.empty(1, 128), 128, size), size
        assert kq._hadamard_block(size) == size


@pytest.mark.parametrize(
    "size, args, refused",
    [
        (64, ["--model.flavor", "tiny"], None),
        (64, ["--model.flavor", "nano"], "'layers.0.attention.wk' with dims [32, 64]"),  # n_kv_heads * head_dim = 32
        (
            128,
            ["--model.flavor", "tiny", "--quantize.linear.mx.enable_mxfp4_fa"],
            "'layers.0.attention.inner_attention head_dim' with dims [64]",
        ),
    ],
)
def test_hadamard_size_must_divide_the_converted_dims(size, args, refused):
    """Above the MX block a size must divide every converted GEMM's dims: refused before the model is built
    for training (the layers refused it at their construction or first step)."""
    from adahop.config import ConfigError, validate_model

    config = _job_config("--quantize.linear.mx.hadamard_size", str(size), *args)
    if refused is None:
        validate_model(config)
        return
    with pytest.raises(ConfigError, match="hadamard_size") as e:
        validate_model(config)
    assert refused in str(e.value)
