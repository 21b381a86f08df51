"""Tensor (and sequence) parallelism of the AdaHOP linear: the layer under a 2-rank TP mesh (gloo, DTensor)
against the unsharded layer, and training runs with TP=2 against TP=1 (losses, plans)."""

from __future__ import annotations

import json
import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from adahop.linear import AdaHOPLinear, mxfp4_linear
from adahop.modes import MODES, OE_LEFT, OE_RIGHT


def _port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _plain(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor (the functional collectives hand back AsyncCollectiveTensor wrappers)."""
    return (t.wait() if hasattr(t, "wait") else t).detach().clone()


def _layer_worker(rank: int, world: int, port: int, out_dir: str, mode: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        SequenceParallel,
        parallelize_module,
    )

    os.environ.update(MASTER_ADDR="localhost", MASTER_PORT=str(port), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        torch.manual_seed(0)
        kw = dict(forward_y=mode, backward_gx=mode, backward_gw=mode, outlier_k=4)
        # colwise -> rowwise, as a Llama MLP / attention uses them; the norm between them keeps SP in the chain
        model = torch.nn.Sequential(
            torch.nn.LayerNorm(64), AdaHOPLinear(64, 128, bias=False, **kw), AdaHOPLinear(128, 64, bias=False, **kw)
        )
        with torch.no_grad():
            model[1].weight[3] *= 20  # an outlier output channel: the OE modes pick it on either layout
        x = torch.randn(2, 16, 64)
        ref = {k: v.clone() for k, v in model.state_dict().items()}
        from torch.distributed.tensor import Shard

        parallelize_module(
            model,
            mesh,
            {
                "0": SequenceParallel(),
                "1": ColwiseParallel(input_layouts=Shard(1)),
                "2": RowwiseParallel(output_layouts=Shard(1)),
            },
        )
        xs = x.chunk(world, dim=1)[rank].clone().requires_grad_()
        y = model(xs)  # local Shard(1) of the sequence
        y.backward(torch.ones_like(y) * torch.linspace(-1, 1, y.shape[-1]))
        from adahop.calibration import full_operand

        # calibration scores the full logical operand; the first rank of the TP group votes for it
        for i in (1, 2):
            w, follower = full_operand(model[i].weight.detach())
            assert torch.equal(w, ref[f"{i}.weight"]) and follower == (rank != 0)
        grads = {k: _plain(p.grad.full_tensor()) for k, p in model.named_parameters()}
        torch.save(
            {"y": _plain(y), "gx": _plain(xs.grad), "grads": grads, "state": ref, "x": x},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
        dist.barrier()  # neither rank tears gloo down while the other still talks to it
    finally:
        dist.destroy_process_group()
    from adahop.train import exit_process

    exit_process(0)  # as a training rank ends: gloo's threads can abort a finished rank's interpreter shutdown


@pytest.mark.parametrize("mode", MODES)
def test_layer_under_tp_mesh_matches_unsharded(mode):
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_layer_worker, args=(2, _port(), d, mode), nprocs=2, join=True)
        parts = [torch.load(os.path.join(d, f"rank{r}.pt")) for r in range(2)]
    kw = dict(forward_y=mode, backward_gx=mode, backward_gw=mode, outlier_k=4)
    model = torch.nn.Sequential(
        torch.nn.LayerNorm(64), AdaHOPLinear(64, 128, bias=False, **kw), AdaHOPLinear(128, 64, bias=False, **kw)
    )
    model.load_state_dict(parts[0]["state"])
    x = parts[0]["x"].clone().requires_grad_()
    y = model(x)
    y.backward(torch.ones_like(y) * torch.linspace(-1, 1, y.shape[-1]))
    y_tp = torch.cat([p["y"] for p in parts], dim=1)
    gx_tp = torch.cat([p["gx"] for p in parts], dim=1)
    tp_grads = parts[0]["grads"]
    for name in tp_grads:  # every rank holds the same full gradient
        torch.testing.assert_close(parts[1]["grads"][name], tp_grads[name], rtol=0, atol=0)

    # independent reference: the same math on plain tensors, shard by shard (colwise: output rows of W1 per rank,
    # rowwise: the partial products over W2's input columns summed), autograd for every gradient
    state = parts[0]["state"]
    w1, w2 = (state[k].clone().requires_grad_() for k in ("1.weight", "2.weight"))
    ln = torch.nn.LayerNorm(64)
    ln.load_state_dict({"weight": state["0.weight"], "bias": state["0.bias"]})
    xr = parts[0]["x"].clone().requires_grad_()
    h = ln(xr)
    y_ref = sum(
        mxfp4_linear(mxfp4_linear(h, w1c, **kw), w2c, **kw) for w1c, w2c in zip(w1.chunk(2, dim=0), w2.chunk(2, dim=1))
    )
    y_ref.backward(torch.ones_like(y_ref) * torch.linspace(-1, 1, y_ref.shape[-1]))
    exact = dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y_tp, y_ref.detach(), **exact)
    torch.testing.assert_close(gx_tp, xr.grad, **exact)
    torch.testing.assert_close(tp_grads["1.weight"], w1.grad, **exact)
    torch.testing.assert_close(tp_grads["2.weight"], w2.grad, **exact)
    torch.testing.assert_close(tp_grads["0.weight"], ln.weight.grad, **exact)
    if mode in (OE_LEFT, OE_RIGHT):
        return  # they pick their outlier rows / columns per shard (docs/training.md): not the unsharded choice
    # the other modes quantize the very same blocks as the unsharded layer
    torch.testing.assert_close(y_tp, y.detach(), **exact)
    torch.testing.assert_close(gx_tp, x.grad, **exact)
    for name, p in model.named_parameters():
        torch.testing.assert_close(tp_grads[name], p.grad, **exact)


# ---------------------------------------------------------------------------------------------------- training
# torchtitan's Llama TP plan (colwise wq/wk/wv/w1/w3, rowwise wo/w2, SequenceParallel norms, loss parallel) on the
# nano flavor with two KV heads. DTensor's random init differs from the unsharded one, so every run starts from
# one seed checkpoint written by a single rank.

FLAVOR_ARGS = ["--experimental.custom_import", "adahop_tp_flavors", "--model.flavor", "nano_tp"]
STEPS = 10


def write_seed_checkpoint(cfg, folder, args) -> None:
    """One rank writes the initial weights (<folder>/checkpoint/step-0) every compared run starts from: DTensor's
    random init differs from the unsharded one."""
    from train_helpers import run_train

    r = run_train(
        cfg,
        [
            *args,
            "--job.dump_folder",
            str(folder),
            "--checkpoint.enable",
            "--checkpoint.create_seed_checkpoint",
            "--training.steps",
            "1",
            "--quantize.linear.mx.calibration.calibration_steps",
            "1",
            "--parallelism.data_parallel_shard_degree",
            "1",
        ],
    )
    assert r.returncode == 0, r.stdout[-3000:]


@pytest.fixture(scope="module")
def tp_runs(tmp_path_factory):
    from train_helpers import base_toml, run_train

    root = tmp_path_factory.mktemp("tp")
    cfg = root / "job.toml"
    cfg.write_text(base_toml(root / "unused", steps=STEPS, calibration_steps=3))
    write_seed_checkpoint(cfg, root / "seed", FLAVOR_ARGS)
    common = [
        *FLAVOR_ARGS,
        "--checkpoint.enable",
        "--checkpoint.interval",
        "1000",
        "--checkpoint.initial_load_path",
        str(root / "seed" / "checkpoint" / "step-0"),
    ]

    def run(name: str, nproc: int, *args: str):
        out = root / name
        r = run_train(cfg, [*common, "--job.dump_folder", str(out), *args], nproc=nproc)
        assert r.returncode == 0, r.stdout[-5000:]
        return r.stdout, json.loads((out / "adahop_plan.json").read_text())

    return run


def _decisions(plan: dict) -> dict:
    """The plan's decisions (labels with their votes, pair keys, modes); the scores separately, see below."""
    return {
        f: {
            "pair_keys": e["pair_keys"],
            "modes": e["modes"],
            "labels": {t: {k: v for k, v in lab.items() if not k.endswith("_score")} for t, lab in e["labels"].items()},
        }
        for f, e in plan["layers"].items()
    }


def _scores(plan: dict) -> list[float]:
    return [lab[k] for e in plan["layers"].values() for lab in e["labels"].values() for k in ("row_score", "col_score")]


def _same_training(got, want):
    from train_helpers import losses

    (out, plan), (ref_out, ref_plan) = got, want
    lt, l1 = losses(out, 0), losses(ref_out, 0)
    assert sorted(lt) == sorted(l1) == list(range(1, STEPS + 1)), (lt, l1)
    for step in l1:
        assert lt[step] == pytest.approx(l1[step], rel=1e-3), (step, lt, l1)
    assert _decisions(plan) == _decisions(ref_plan)
    # the operands themselves differ by float rounding (TP sums partial products in another order), so the mean
    # scores agree to that rounding, not bit for bit
    assert _scores(plan) == pytest.approx(_scores(ref_plan), rel=1e-5)


def test_tp2_trains_as_tp1(tp_runs):
    tp2 = tp_runs("tp2", 2, "--parallelism.tensor_parallel_degree", "2")
    assert "Applied Tensor Parallelism" in tp2[0]
    _same_training(tp2, tp_runs("tp1", 1))


def test_fsdp2_x_tp2_trains_as_fsdp2(tp_runs):
    both = tp_runs(
        "fsdp2_tp2", 4, "--parallelism.tensor_parallel_degree", "2", "--parallelism.data_parallel_shard_degree", "2"
    )
    assert "Applied Tensor Parallelism" in both[0] and "Applied FSDP" in both[0]
    _same_training(both, tp_runs("fsdp2", 2, "--parallelism.data_parallel_shard_degree", "2"))


def test_tp_shards_that_cut_an_mx_block_refused_before_the_model_is_built(tmp_path):
    from train_helpers import base_toml, run_train

    cfg = tmp_path / "job.toml"
    cfg.write_text(base_toml(tmp_path / "out", steps=2, calibration_steps=1))
    # nano: wk / wv have 32 output features (one KV head of 32): 16 per rank under TP=2
    r = run_train(
        cfg, ["--experimental.custom_import", "adahop_tp_flavors", "--parallelism.tensor_parallel_degree", "2"], nproc=2
    )
    assert r.returncode != 0
    assert (
        "parallelism.tensor_parallel_degree = 2" in r.stdout
        and "layers.0.attention.wk.out_features = 32" in r.stdout
        and "multiple of 32 per rank" in r.stdout
    ), r.stdout[-3000:]
    assert "Applied Tensor Parallelism" not in r.stdout


def test_tp_checkpoint_resumes_on_tp2_and_on_tp1(tmp_path):
    """A TP=2 checkpoint taken mid-calibration (step 3 of 4) resumes with TP=2 on the uninterrupted losses and
    plan, and reshards onto one rank (TP=1, the same single data-parallel rank) within the TP tolerance."""
    from train_helpers import base_toml, losses, run_train

    cfg = tmp_path / "job.toml"
    cfg.write_text(base_toml(tmp_path / "out", steps=6, calibration_steps=4))
    args = [*FLAVOR_ARGS, "--checkpoint.enable", "--checkpoint.interval", "3"]
    plan_path = tmp_path / "out" / "adahop_plan.json"

    def run(nproc: int, *more: str):
        r = run_train(cfg, [*args, *more], nproc=nproc)
        assert r.returncode == 0, r.stdout[-5000:]
        return losses(r.stdout, 0), json.loads(plan_path.read_text()), r.stdout

    full, full_plan, _ = run(2, "--parallelism.tensor_parallel_degree", "2")
    again, again_plan, out = run(2, "--parallelism.tensor_parallel_degree", "2", "--checkpoint.load_step", "3")
    assert "resumed calibration at step 3/4" in out
    assert sorted(again) == [4, 5, 6] and all(again[s] == full[s] for s in again), (again, full)
    assert _decisions(again_plan) == _decisions(full_plan)
    on_one, one_plan, _ = run(1, "--checkpoint.load_step", "3")
    assert sorted(on_one) == [4, 5, 6] and all(on_one[s] == pytest.approx(full[s], rel=1e-3) for s in on_one)
    assert _decisions(one_plan) == _decisions(full_plan)


def test_tp_degree_that_splits_no_whole_heads_refused():
    """torchtitan splits attention by heads: a degree that does not divide the (kv) head counts is refused before
    anything is built (the Linear dims alone can pass: 2 kv heads of 64 over 4 ranks leave 32 features each)."""
    from types import SimpleNamespace

    import torch.nn as nn

    from adahop.config import ConfigError
    from adahop.converter import check_tp_dims

    attention = nn.Module()
    attention.n_heads, attention.n_kv_heads = 4, 2
    attention.wq, attention.wk = nn.Linear(256, 256, bias=False), nn.Linear(256, 128, bias=False)
    model = nn.Module()
    model.attention = attention
    mx = SimpleNamespace(
        enable_mxfp4_linear=True, hadamard_size=32, filter_fqns=[], kernels=SimpleNamespace(reference_only=False)
    )
    check_tp_dims(model, mx, 2)
    with pytest.raises(ConfigError, match=r"attention\.n_kv_heads = 2 cannot be split over 4 ranks"):
        check_tp_dims(model, mx, 4)


def test_moe_tiny_trains_with_tp2_as_tp1(tmp_path):
    """The MoE tiny model (Qwen3: AdaHOP linears, experts in high precision under torchtitan's expert TP plan, the
    attention as DTensors on CPU through adahop.titan's CPU flash-attention sharding) trains with TP=2 as with TP=1
    from one seed checkpoint: losses within 1e-3, the same plan."""
    from train_helpers import REPO, run_train

    cfg = REPO / "configs" / "moe_tiny.toml"
    common = ["--parallelism.data_parallel_shard_degree", "1", "--validation.no-enable", "--metrics.log_freq", "1"]
    write_seed_checkpoint(cfg, tmp_path / "seed", common)
    runs = {}
    for tp in (1, 2):
        out = tmp_path / f"tp{tp}"
        r = run_train(
            cfg,
            [
                *common,
                "--job.dump_folder",
                str(out),
                "--training.steps",
                "6",
                "--quantize.linear.mx.calibration.calibration_steps",
                "2",
                "--quantize.linear.mx.no-enable-mxfp4-gmm",
                "--parallelism.tensor_parallel_degree",
                str(tp),
                "--checkpoint.enable",
                "--checkpoint.interval",
                "1000",
                "--checkpoint.initial_load_path",
                str(tmp_path / "seed" / "checkpoint" / "step-0"),
            ],
            nproc=tp,
        )
        assert r.returncode == 0, r.stdout[-5000:]
        runs[tp] = (r.stdout, json.loads((out / "adahop_plan.json").read_text()))
    assert "Applied Tensor Parallelism" in runs[2][0]
    from train_helpers import losses

    l1, l2 = losses(runs[1][0], 0), losses(runs[2][0], 0)
    assert sorted(l1) == sorted(l2) == list(range(1, 7)), (l1, l2)
    assert all(l2[s] == pytest.approx(l1[s], rel=1e-3) for s in l1), (l1, l2)
    assert _decisions(runs[2][1]) == _decisions(runs[1][1])


def test_tp_dims_on_the_reference_path_need_whole_mx_blocks_only(monkeypatch):
    """On a GPU the fast path needs 128 per rank; with reference_only the reference runs there and 32 is enough
    (as the layer itself needs at run time)."""
    from types import SimpleNamespace

    from adahop import backend
    from adahop.config import ConfigError
    from adahop.converter import check_tp_dims

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(backend, "fast_device", lambda device: True)
    model = torch.nn.Sequential(torch.nn.Linear(256, 192))

    def mx(reference_only):
        kernels = SimpleNamespace(reference_only=reference_only)
        return SimpleNamespace(enable_mxfp4_linear=True, hadamard_size=32, filter_fqns=[], kernels=kernels)

    with pytest.raises(ConfigError, match="not a multiple of 128 per rank"):
        check_tp_dims(model, mx(False), 2)
    check_tp_dims(model, mx(True), 2)  # 96 per rank: whole MX and Hadamard blocks
