"""Where a training step's time goes: one model under BF16 and under AdaHOP, same batch, torch.profiler.

    python scripts/profile_step.py --job.config_file configs/llama1b_adahop.toml [--plan adahop_plan.json] \
        [--batch 8] [--seq 2048] [--steps 3] [--rows 25]
    torchrun --nproc_per_node 2 scripts/profile_step.py --fsdp ...      (FSDP2 as torchtitan shards it)

Builds the config's model in bfloat16 on the GPU (CPU if none), times forward+backward of random tokens
(CUDA events) without and with the AdaHOP converter (modes from --plan, an adahop_plan.json, else every
slot hadamard), then profiles --steps AdaHOP steps and prints the kernels by GPU time, grouped
(quantize kernels, fp8 GEMMs, bf16 GEMMs, other), and how busy the GPU was (kernel time / wall time):
a GPU idle between kernels is waiting for the host (launch overhead, synchronisations).
"""

from __future__ import annotations

import argparse
import time

import torch

from adahop.cli import exit_on_removed_switches
from adahop.titan import setup

setup()

from adahop.checkpoint_io import build_model, load_job_config  # noqa: E402

# cuBLAS names its fp8 kernels nvjet_sm90_<q|r><q|r>tst_... (q: e4m3, r: e5m2 operands; blockwise ones add
# _Avec128_Bvec128); its bf16 kernels nvjet_sm90_tst_...; other nvjet/xmma kernels are bf16
GROUPS = (
    ("quantize (triton)", ("_quantize_kernel", "_reencode_kernel")),
    ("fp8 GEMM", ("qqtst", "qrtst", "rqtst", "vec128", "e4m3")),
    ("bf16 GEMM", ("gemm", "sm90_xmma", "cutlass", "nvjet")),
    ("attention", ("sdpa", "flash", "attention")),
)


def group_of(name: str) -> str:
    low = name.lower()
    for g, keys in GROUPS:
        if any(k in low for k in keys):
            return g
    return "other"


def step_fn(model, tokens, deferred_device=None):
    """One forward+backward; with `deferred_device`, as the trainer runs it: the per-GEMM deficient-block
    sync deferred to one check (adahop.kernels.deferred)."""
    from adahop.kernels import deferred

    def once():
        logits = model(tokens)
        logits.float().square().mean().backward()  # a loss-shaped backward through every layer
        model.zero_grad(set_to_none=True)

    def run():
        if deferred_device is None:
            return once()
        with deferred.deferred_check(deferred_device):
            once()
            deferred.raise_if_deficient()

    return run


def timed(run, steps: int, sync) -> float:
    run()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        run()
    sync()
    return (time.perf_counter() - t0) / steps


def _init_distributed(cuda: bool) -> int:
    """torchrun's environment -> a process group (NCCL on GPUs, gloo on CPU); returns this rank."""
    import os

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank()


def build(job, device: str, convert: bool, fsdp: bool):
    """The config's model on `device`: AdaHOP-converted if `convert`; FSDP2 over all ranks with bf16
    parameters in compute and float32 gradient reduction, as torchtitan shards it, if `fsdp`; else with
    bf16 parameters."""
    from adahop.converter import AdaHOPConverter
    from adahop.plan_wiring import wire

    torch.manual_seed(0)
    model, margs = build_model(job, device=device)
    if convert:
        converter = AdaHOPConverter(job, None)
        converter.convert(model)
        wire(converter, [model])  # the modes of --plan (plan_file)
    if fsdp:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for block in model.layers.values():
            fully_shard(block, mp_policy=mp, reshard_after_forward=True)
        fully_shard(model, mp_policy=mp)
    else:
        for prm in model.parameters():  # parameters only: the rope buffer is complex
            prm.data = prm.data.to(torch.bfloat16)
    return model, margs


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", default="")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--fsdp", action="store_true", help="shard with FSDP2 over torchrun's ranks (bf16 compute)")
    args, rest = p.parse_known_args(argv)
    exit_on_removed_switches()
    cuda = torch.cuda.is_available()
    rank = _init_distributed(cuda)
    device = f"cuda:{torch.cuda.current_device()}" if cuda else "cpu"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    job = load_job_config(None, rest)
    job.quantize.linear.mx.calibration.use_HT_calibration = False
    job.quantize.linear.mx.calibration.plan_file = args.plan
    model, margs = build(job, device, convert=False, fsdp=args.fsdp)
    tokens = torch.randint(0, margs.vocab_size, (args.batch, args.seq), device=device)
    bf16_s = timed(step_fn(model, tokens), args.steps, sync)
    del model
    model, _ = build(job, device, convert=True, fsdp=args.fsdp)
    sync_s = timed(step_fn(model, tokens), args.steps, sync)
    run = step_fn(model, tokens, torch.device(device))
    adahop_s = timed(run, args.steps, sync)
    say = print if rank == 0 else (lambda *a, **k: None)  # rank 0 reports
    ntok = args.batch * args.seq
    say(
        f"model {job.model.flavor}, batch {args.batch} x {args.seq} per rank, device {device}, "
        f"{'FSDP2 over ' + str(torch.distributed.get_world_size()) + ' ranks' if args.fsdp else 'one device'}, "
        f"plan {args.plan or 'all hadamard'}"
    )
    say("| recipe | ms / step | tokens/s | vs BF16 |\n| --- | --- | --- | --- |")
    say(f"| bf16 | {1e3 * bf16_s:.1f} | {ntok / bf16_s:.0f} | 1.00x |")
    say(f"| adahop, sync per GEMM | {1e3 * sync_s:.1f} | {ntok / sync_s:.0f} | {bf16_s / sync_s:.2f}x |")
    say(
        f"| adahop (as trained: deferred check) | {1e3 * adahop_s:.1f} | {ntok / adahop_s:.0f} "
        f"| {bf16_s / adahop_s:.2f}x |\n"
    )

    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=acts) as prof:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            run()
        sync()
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    kernels = [e for e in events if getattr(e, attr, 0) > 0 and (not cuda or e.device_type.name == "CUDA")]
    total = sum(getattr(e, attr) for e in kernels) / 1e6  # seconds
    groups: dict[str, float] = {}
    for e in kernels:
        groups[group_of(e.key)] = groups.get(group_of(e.key), 0.0) + getattr(e, attr) / 1e6
    say(
        f"profiled {args.steps} AdaHOP steps: wall {1e3 * wall:.1f} ms, kernel time {1e3 * total:.1f} ms, "
        f"GPU busy {100 * total / wall:.0f}%"
    )
    say("| group | ms / step | share of kernel time |\n| --- | --- | --- |")
    for g, t in sorted(groups.items(), key=lambda kv: -kv[1]):
        say(f"| {g} | {1e3 * t / args.steps:.2f} | {100 * t / total:.0f}% |")
    say()
    say(events.table(sort_by=attr, row_limit=args.rows, max_name_column_width=70))
    cpu = sorted(events, key=lambda e: -e.cpu_time_total)[: args.rows]
    say("host (CPU) time by op, inclusive:")
    for e in cpu:
        say(f"  {e.cpu_time_total / 1e3 / args.steps:9.2f} ms/step  x{e.count // args.steps:<6d} {e.key[:90]}")


if __name__ == "__main__":
    main()
