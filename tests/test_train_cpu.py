"""End-to-end CPU training through `python -m adahop.train` / torchrun (upstream torchtitan trainer).

Tiny "nano" model, short sequences, a few steps: each run is tens of seconds on a 2-core CPU.
"""

from __future__ import annotations

import json

import pytest
from train_helpers import (
    TOKENIZER,
    base_toml,
    digests,
    losses,
    run_train,
)

from adahop.train import REDO_BACKOFF_STEPS

pytestmark = pytest.mark.slow

DATA_ARGS = ["--training.dataset", "adahop_text"]


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    """2-rank FSDP (gloo) run with calibration; shared by the tests that need a finished run."""
    tmp = tmp_path_factory.mktemp("two_rank")
    dump = tmp / "out"
    cfg = _write(tmp, "c.toml", base_toml(dump, steps=5, calibration_steps=3))
    r = run_train(cfg, nproc=2)
    return r, dump


def test_two_rank_fsdp_calibration_identical_plan(two_rank_run):
    r, dump = two_rank_run
    out = r.stdout
    assert r.returncode == 0, out[-4000:]
    assert "FSDP reduce-scatter set to SUM" in out  # gloo: no PREMUL_SUM
    assert "[adahop] plan (calibration)" in out
    d = digests(out)
    assert set(d) == {0, 1} and d[0] == d[1], d
    plan = json.loads((dump / "adahop_plan.json").read_text())
    assert plan["source"] == "calibration" and plan["calibration_steps"] == 3
    assert len(plan["layers"]) == 14 and "output" not in plan["layers"]
    for entry in plan["layers"].values():
        for t in ("x", "w", "g"):
            assert sum(entry["labels"][t]["votes"].values()) == 3 * 2  # 3 steps x 2 ranks
    l0, l1 = losses(out, 0), losses(out, 1)
    assert sorted(l0) == [1, 2, 3, 4, 5] and l0 == l1


CKPT = "\n[checkpoint]\nenable = true\ninterval = {interval}\nlast_save_model_only = false\n"


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """Uninterrupted 2-rank run (7 steps, calibration over 3) that the resumed runs must match."""
    tmp = tmp_path_factory.mktemp("reference")
    dump = tmp / "ref"
    ref = run_train(
        _write(tmp, "ref.toml", base_toml(dump, steps=7, calibration_steps=3) + CKPT.format(interval=4)), nproc=2
    )
    assert ref.returncode == 0, ref.stdout[-4000:]
    return ref, dump


def _kill_and_resume(tmp_path, interval: int, kill_at: int):
    dump = tmp_path / "run"
    cfg = _write(tmp_path, "run.toml", base_toml(dump, steps=7, calibration_steps=3) + CKPT.format(interval=interval))
    # every rank SIGKILLed right after the optimizer step of step `kill_at`
    killed = run_train(cfg, nproc=2, extra_env={"ADAHOP_DEBUG_KILL_AT_STEP": str(kill_at)})
    assert killed.returncode != 0
    last = (kill_at - 1) // interval * interval
    assert (dump / "checkpoint" / f"step-{last}").is_dir(), killed.stdout[-3000:]
    assert not (dump / "checkpoint" / f"step-{kill_at}").exists()
    resumed = run_train(cfg, nproc=2)
    assert resumed.returncode == 0, resumed.stdout[-4000:]
    assert "Loading the checkpoint" in resumed.stdout
    return resumed.stdout, dump, last


def _assert_matches(out, dump, first_step, reference_run):
    ref, ref_dump = reference_run
    assert digests(out)[0][-1] == digests(ref.stdout)[0][-1]
    assert digests(out)[1][-1] == digests(ref.stdout)[0][-1]
    got, want = losses(out, 0), losses(ref.stdout, 0)
    assert sorted(got) == list(range(first_step, 8)), got
    for step in got:
        assert got[step] == pytest.approx(want[step], abs=2e-5), (step, got, want)
    plan = json.loads((dump / "adahop_plan.json").read_text())
    ref_plan = json.loads((ref_dump / "adahop_plan.json").read_text())
    assert plan["layers"] == ref_plan["layers"]


def test_checkpoint_kill_resume_matches_uninterrupted(tmp_path, reference_run):
    """Checkpoint at step 4 (plan fixed after step 3), kill in step 5, resume: plan restored, no
    re-calibration, losses of steps 5..7 equal the uninterrupted run's."""
    out, dump, last = _kill_and_resume(tmp_path, interval=4, kill_at=5)
    assert last == 4
    assert "[adahop] plan restored from checkpoint" in out
    assert "resumed calibration" not in out
    _assert_matches(out, dump, 5, reference_run)


def test_resume_mid_calibration_keeps_votes(tmp_path, reference_run):
    """Checkpoint at step 2 (inside the 3-step calibration), kill in step 3, resume: the votes so far
    come back from the checkpoint and the final plan and losses equal the uninterrupted run's."""
    out, dump, last = _kill_and_resume(tmp_path, interval=2, kill_at=3)
    assert last == 2
    assert "[adahop] resumed calibration at step 2/3" in out
    _assert_matches(out, dump, 3, reference_run)


def test_step_with_dropped_blocks_is_redone_exactly(tmp_path):
    """The deferred deficient-block check (adahop.kernels.deferred): a step in which a block was left out
    (simulated at steps 4, 5 and 6 on both ranks: row slots overflowed, a block dropped twice) is run again
    from the same batches and the same random state (stochastic rounding on) before the optimizer sees it, so the
    run equals one without the events."""
    sr = '\n[quantize.linear.mx]\nfilter_fqns = ["output"]\nuse_sr_grad = true\n'
    runs = {}
    for name, env in (("plain", {}), ("redo", {"ADAHOP_DEBUG_DEFICIENT_AT_STEP": "4:rows,5,6"})):
        text = base_toml(tmp_path / name, steps=7, calibration_steps=3).replace(
            '[quantize.linear.mx]\nfilter_fqns = ["output"]\n', sr
        )
        runs[name] = run_train(_write(tmp_path, f"{name}.toml", text), nproc=2, extra_env=env)
        assert runs[name].returncode == 0, runs[name].stdout[-4000:]
    redo = [line for line in runs["redo"].stdout.splitlines() if "running the step again" in line]
    assert len(redo) == 4, redo
    # step 4: too few row slots (1% of a GEMM's rows flagged, simulated): slots for 2% from then on and no
    # backoff, so step 5 is deferred again and its dropped block redoes it; that one backs off, so step 6
    # runs on the per-GEMM path, where nothing is dropped and nothing redone
    rows = [line for line in redo if "step 4: 1 MXFP4 block" in line]
    block = [line for line in redo if "step 5: 1 MXFP4 block" in line]
    assert len(rows) == 2 and all("recompute up to 2.00% of their rows" in line for line in rows), redo
    assert len(block) == 2 and all(f"next {REDO_BACKOFF_STEPS} steps" in line for line in block), redo
    for rank in (0, 1):
        got, want = losses(runs["redo"].stdout, rank), losses(runs["plain"].stdout, rank)
        assert sorted(got) == list(range(1, 8)) and got == want, (rank, got, want)


def test_resume_on_other_rank_count_refused_or_restarts_data(tmp_path, reference_run):
    """A 2-rank checkpoint resumed by 1 rank: refused before any step, naming both rank counts and the
    way out; with the data loader excluded it resumes (plan restored, not recalibrated)."""
    import shutil

    ref, ref_dump = reference_run
    dump = tmp_path / "copy"
    shutil.copytree(ref_dump / "checkpoint" / "step-7", dump / "checkpoint" / "step-7")
    cfg = _write(tmp_path, "one.toml", base_toml(dump, steps=8, calibration_steps=3) + CKPT.format(interval=4))
    refused = run_train(cfg, nproc=1)
    assert refused.returncode != 0
    assert "written by 2 data-parallel ranks and this run has 1" in refused.stdout, refused.stdout[-3000:]
    assert "--checkpoint.exclude_from_loading dataloader" in refused.stdout
    assert not losses(refused.stdout) and "Loading the checkpoint" not in refused.stdout
    resumed = run_train(cfg, ["--checkpoint.exclude_from_loading", "dataloader"], nproc=1)
    assert resumed.returncode == 0, resumed.stdout[-4000:]
    assert "[adahop] plan restored from checkpoint" in resumed.stdout
    assert sorted(losses(resumed.stdout)) == [8]
    assert digests(resumed.stdout)[0][-1] == digests(ref.stdout)[0][-1]


def test_seed_readme_toml_trains(tmp_path):
    from test_config import SEED_README_TOML

    cfg = _write(tmp_path, "seed.toml", SEED_README_TOML)
    dump = tmp_path / "out"
    r = run_train(
        cfg,
        [
            "--job.dump_folder",
            str(dump),
            "--model.name",
            "adahop_llama3",
            "--model.flavor",
            "nano",
            "--model.hf_assets_path",
            str(TOKENIZER),
            *DATA_ARGS,
            "--training.steps",
            "32",
            "--training.local_batch_size",
            "1",
            "--training.seq_len",
            "64",
            "--training.mixed_precision_param",
            "float32",
            "--activation_checkpoint.mode",
            "none",
            "--metrics.log_freq",
            "8",
            "--lr_scheduler.warmup_steps",
            "4",
        ],
    )
    assert r.returncode == 0, r.stdout[-4000:]
    assert "[adahop] plan (calibration)" in r.stdout
    plan = json.loads((dump / "adahop_plan.json").read_text())
    assert plan["calibration_steps"] == 30 and len(plan["layers"]) == 14
    assert 32 in losses(r.stdout)


def test_plan_file_skips_calibration_and_quant_error_to_tensorboard(two_rank_run, tmp_path):
    _, dump = two_rank_run
    plan_path = dump / "adahop_plan.json"
    out_dump = tmp_path / "out"
    cfg = _write(
        tmp_path,
        "p.toml",
        base_toml(
            out_dump,
            steps=2,
            calibration_steps=3,
            extra=f'plan_file = "{plan_path}"\n',
        ),
    )
    r = run_train(
        cfg,
        [
            "--metrics.enable_tensorboard",
            "--quantize.linear.mx.quant_error_freq",
            "1",
            "--quantize.linear.mx.quant_error_tokens",
            "64",
            "--quantize.linear.mx.kernels.deficient_report",
            str(tmp_path / "deficient"),
        ],
    )
    assert r.returncode == 0, r.stdout[-4000:]
    assert "[adahop] plan (plan_file:" in r.stdout and "calibration of outlier patterns" not in r.stdout
    # kernels.deficient_report: written by the trainer when training ends (CPU: the reference path, no fp8 GEMM)
    report = json.loads((tmp_path / "deficient.0.json").read_text())
    assert report["by_tag"] == {} and report["stats"]["gemms"] == 0
    src = json.loads(plan_path.read_text())
    got = json.loads((out_dump / "adahop_plan.json").read_text())
    assert {f: e["modes"] for f, e in got["layers"].items()} == {f: e["modes"] for f, e in src["layers"].items()}
    # the opt-in per-layer quantization error went through torchtitan's TensorBoard logger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted(out_dump.glob("tb/**/events.out.tfevents*"))
    assert events, list(out_dump.rglob("*"))
    tags = set()
    for ev in events:
        acc = EventAccumulator(str(ev))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    for slot in ("forward_y", "backward_gx", "backward_gw"):
        assert f"adahop_qerr/{slot}/mean" in tags, sorted(tags)[:20]
        assert f"adahop_qerr/{slot}/layers.0.feed_forward.w2" in tags


INVALID = [
    (
        "mode",
        ["--quantize.linear.mx.calibration.layer_transform_config.row-row", "rotate"],
        ['layer_transform_config."row-row"', "'rotate'", "inner_outlier_extract_left"],
    ),
    ("pair-key", None, ["layer_transform_config", "'diag-row'", "none-col"]),
    ("recipe", ["--quantize.linear.mx.recipe_name", "mxfp8_cublas"], ["recipe_name", "'mxfp8_cublas'", "mxfp4_1d1d"]),
    (
        "dims",
        [
            "--experimental.custom_import",
            "adahop_test_flavors",
            "--model.flavor",
            "nano_odd_vocab",
            "--quantize.linear.mx.filter_fqns",
            "layers.99",
        ],
        ["filter_fqns", "'output'", "[8200, 64]"],
    ),
    (
        "calibration-steps",
        ["--quantize.linear.mx.calibration.calibration_steps", "9", "--training.steps", "8"],
        ["calibration_steps", "9", "training.steps = 8"],
    ),
    ("gmm", ["--quantize.linear.mx.enable_mxfp4_gmm"], ["enable_mxfp4_gmm", "True", "without MoE experts"]),
    (
        "fa",
        ["--quantize.linear.mx.enable_mxfp4_fa", "--model.flavor", "debugmodel_flex_attn"],
        ["enable_mxfp4_fa", "True", 'attn_type = "sdpa"', "FlexAttentionWrapper"],
    ),
]


@pytest.mark.parametrize("name, args, expect", INVALID, ids=[i[0] for i in INVALID])
def test_invalid_config_refused_before_any_step(tmp_path, name, args, expect):
    extra = ""
    if args is None:  # a pair key cannot come from the CLI: put it in the TOML
        extra = '\n[quantize.linear.mx.calibration.layer_transform_config]\n"diag-row" = "hadamard"\n'
        args = []
    cfg = _write(tmp_path, "bad.toml", base_toml(tmp_path / "out", steps=8) + extra)
    r = run_train(cfg, args, timeout=300)
    out = r.stdout
    assert r.returncode == 2
    assert "error: invalid config: " in out and "Traceback" not in out, out[-3000:]
    for e in expect:
        assert e in out, (e, out[-3000:])
    assert "Training starts" not in out and "step:" not in out
    assert "Building adahop_llama3" not in out  # refused before any model is built
