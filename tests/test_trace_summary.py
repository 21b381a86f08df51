"""scripts/trace_summary.py: the numbers of a hand-made trace, and a real torch.profiler trace read end to end."""

import json
import sys

import pytest
import torch
from train_helpers import REPO

sys.path.insert(0, str(REPO / "scripts"))
from trace_summary import idle_gaps, main, summarize, union_length  # noqa: E402


def test_union_and_gaps_of_overlapping_intervals():
    spans = [(0, 10), (5, 20), (30, 40), (35, 36), (50, 51)]
    assert union_length(spans) == 10 + 10 + 10 + 1  # [0, 20) + [30, 40) + [50, 51)
    assert idle_gaps(spans) == [10, 10]


def test_summary_of_a_hand_made_trace():
    ev = lambda name, cat, ts, dur: {"ph": "X", "name": name, "cat": cat, "ts": ts, "dur": dur}  # noqa: E731
    trace = {
        "traceEvents": [
            ev("ProfilerStep#7", "user_annotation", 0, 1000),
            ev("ProfilerStep#8", "user_annotation", 1000, 1000),
            # a CUDA trace's GPU-timeline copies of the step spans: not steps of their own
            ev("ProfilerStep#7", "gpu_user_annotation", 100, 500),
            ev("ProfilerStep#8", "gpu_user_annotation", 1500, 400),
            ev("_quantize_kernel", "kernel", 100, 200),
            ev("nvjet_sm90_qqtst_Avec128_Bvec128", "kernel", 200, 400),
            ev("sm90_xmma_gemm_bf16", "kernel", 1500, 400),  # ends at 1900: span 0..2000
            ev(
                "nvjet_sm90_qrtst_128x160_128x5_2x1_v_bz_coopA_algo2_TNT", "kernel", 1600, 0
            ),  # tensorwise fp8 (e4m3 x e5m2)
            ev("aten::_scaled_mm", "cpu_op", 150, 50),
            ev("aten::_scaled_mm", "cpu_op", 1100, 30),
            ev("aten::empty", "cpu_op", 120, 5),
            {"ph": "i", "name": "instant"},  # events without a duration are ignored
        ]
    }
    out = summarize(trace)
    # 2 steps over 2000 us: 1.0 ms per step; kernel time 1000 us / 2; busy = union (100..600, 1500..1900) = 900
    assert "2 profiled steps (ProfilerStep#7, ProfilerStep#8): 1.0 ms per step" in out
    assert "kernel time 0.5 ms per step, GPU busy 45%" in out
    assert "| quantize (triton) | 0.10 | 20% |" in out and "| fp8 GEMM | 0.20 | 40% |" in out
    assert "| bf16 GEMM | 0.20 | 40% |" in out and "| fp8 GEMM | 0.20 | 40% |" in out  # the qrtst one adds 0
    assert "GPU idle gaps: 0.5 per step, 0.45 ms per step; 0.0 per step of 1 ms or more" in out  # one 900 us gap
    assert out.index("aten::_scaled_mm") < out.index("aten::empty") and "x1 " in out
    assert "kernels by GPU time" not in out  # only when asked for
    listed = summarize(trace, kernel_rows=2).split("kernels by GPU time")[1]
    # the two longest kernels, longest first, with their per-step time, launches and group; the third left out
    assert listed.index("nvjet_sm90_qqtst") < listed.index("sm90_xmma_gemm_bf16")
    assert "0.20  x0.5" in listed and "fp8 GEMM" in listed and "_quantize_kernel" not in listed.split("host ops")[0]


def test_a_trace_without_steps_is_refused():
    with pytest.raises(ValueError, match="ProfilerStep"):
        summarize({"traceEvents": [{"ph": "X", "name": "aten::mm", "cat": "cpu_op", "ts": 0, "dur": 1}]})


def test_reads_a_real_profiler_trace(tmp_path, capsys):
    path = tmp_path / "rank0_trace.json"
    sched = torch.profiler.schedule(wait=0, warmup=1, active=2)
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU],
        schedule=sched,
        on_trace_ready=lambda p: p.export_chrome_trace(str(path)),
    ) as prof:
        for _ in range(3):
            torch.randn(64, 64) @ torch.randn(64, 64)
            prof.step()
    main([str(path), "--rows", "5"])  # the command line's own entry point
    out = capsys.readouterr().out
    assert "2 profiled steps" in out and "aten::mm" in out, out
    json.loads(path.read_text())  # what it read is the profiler's own JSON
