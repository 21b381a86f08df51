"""adahop.resume: which checkpoint a resume reads (as torchtitan's CheckpointManager.load picks it), the
data-parallel degree a run will have (the rank refusal runs end to end in tests/test_train_cpu.py), and the
checks of a resumed checkpoint against the run's config (model, steps, states, plan settings)."""

import json
import warnings

import pytest
import torch
from train_helpers import base_toml, losses, run_train

from adahop.calibration import Calibrator, plan_settings
from adahop.checkpoint_io import CheckpointError, load_job_config
from adahop.config import ConfigError
from adahop.modes import SEED_TABLE
from adahop.resume import PLAN_KEY, check_resume, checkpoint_to_load, checkpoint_to_resume, dp_degree, saved_values


def job(tmp_path, *args):
    return load_job_config(
        None,
        ["--job.config_file", "configs/default.toml", "--job.dump_folder", str(tmp_path), "--checkpoint.enable", *args],
    )


def step_dir(tmp_path, name, marker=".metadata"):
    d = tmp_path / "checkpoint" / name
    d.mkdir(parents=True)
    (d / marker).write_text("")
    return d


def test_latest_complete_step_is_resumed(tmp_path):
    assert checkpoint_to_resume(job(tmp_path)) is None  # no folder yet: fresh start
    step_dir(tmp_path, "step-10")
    step_dir(tmp_path, "step-30")
    (tmp_path / "checkpoint" / "step-50").mkdir()  # a save that never finished: no metadata
    assert checkpoint_to_resume(job(tmp_path)).endswith("step-30")
    assert checkpoint_to_resume(job(tmp_path, "--checkpoint.load_step", "10")).endswith("step-10")
    step_dir(tmp_path, "step-40", "model.safetensors.index.json")  # upstream counts HF saves too
    assert checkpoint_to_resume(job(tmp_path)).endswith("step-40")


def test_model_only_loads_have_no_data_loader(tmp_path):
    step_dir(tmp_path, "step-0")
    assert checkpoint_to_resume(job(tmp_path)) is None  # step 0 is loaded model-only
    assert checkpoint_to_resume(job(tmp_path, "--checkpoint.no-enable")) is None


def test_initial_load_path_counts_only_as_a_full_state(tmp_path):
    init = tmp_path / "elsewhere" / "step-7"
    init.mkdir(parents=True)
    run = tmp_path / "run"
    assert checkpoint_to_resume(job(run, "--checkpoint.initial_load_path", str(init))) is None  # model only
    full = job(run, "--checkpoint.initial_load_path", str(init), "--checkpoint.no-initial-load-model-only")
    assert checkpoint_to_resume(full) == str(init)


@pytest.mark.parametrize(
    "args, world, want",
    [
        ([], 8, 8),
        (["--parallelism.tensor_parallel_degree", "2"], 8, 4),
        (["--parallelism.data_parallel_replicate_degree", "2", "--parallelism.data_parallel_shard_degree", "2"], 4, 4),
        (["--parallelism.context_parallel_degree", "2", "--parallelism.pipeline_parallel_degree", "2"], 8, 2),
    ],
)
def test_dp_degree(tmp_path, args, world, want):
    assert dp_degree(job(tmp_path, *args), world) == want


# ---------------------------------------------------------------------------------------------------------
# check_resume against a real checkpoint: one 2-step run (nano, calibration over 1 step, saved at step 2)
# ---------------------------------------------------------------------------------------------------------
CKPT = "\n[checkpoint]\nenable = true\ninterval = 2\nlast_save_model_only = false\n"
TABLE = "--quantize.linear.mx.calibration.layer_transform_config.row-none"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(config file, dump folder) of a finished 2-step run with a full checkpoint at step 2."""
    tmp = tmp_path_factory.mktemp("resume")
    cfg = tmp / "c.toml"
    cfg.write_text(base_toml(tmp / "run", steps=2, calibration_steps=1) + CKPT)
    r = run_train(cfg)
    assert r.returncode == 0, r.stdout[-3000:]
    assert (tmp / "run" / "checkpoint" / "step-2" / ".metadata").is_file()
    return cfg, tmp / "run"


def resume_config(cfg, dump, *args):
    return load_job_config(
        None, ["--job.config_file", str(cfg), "--job.dump_folder", str(dump), "--training.steps", "4", *args]
    )


def copy_checkpoint(src, dst, keep=lambda key: True, replace=None):
    """A DCP checkpoint at `dst` with the entries of `src` whose flattened key `keep` takes (`replace`:
    plain values to put instead)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)  # one process on purpose
    md = FileSystemReader(str(src)).read_metadata().state_dict_metadata
    tensors = {
        k: torch.empty(m.size, dtype=m.properties.dtype)
        for k, m in md.items()
        if isinstance(m, TensorStorageMetadata) and keep(k)
    }
    dcp.load(tensors, checkpoint_id=str(src), no_dist=True)
    plain = saved_values(str(src), [k for k, m in md.items() if not isinstance(m, TensorStorageMetadata) and keep(k)])
    dcp.save({**tensors, **plain, **(replace or {})}, checkpoint_id=str(dst), no_dist=True)


def plan_state(dump, step=2):
    return json.loads(saved_values(str(dump / "checkpoint" / f"step-{step}"), [PLAN_KEY])[PLAN_KEY])


def test_checkpoint_to_load_tells_model_only_loads(tmp_path):
    step_dir(tmp_path, "step-0")
    assert checkpoint_to_load(job(tmp_path)) == (str(tmp_path / "checkpoint" / "step-0"), True)
    step_dir(tmp_path, "step-5")
    assert checkpoint_to_load(job(tmp_path)) == (str(tmp_path / "checkpoint" / "step-5"), False)
    run = tmp_path / "new"
    assert checkpoint_to_load(job(run, "--checkpoint.initial_load_path", "/x/step-3")) == ("/x/step-3", True)


def test_unchanged_resume_passes(trained):
    check_resume(resume_config(*trained), 1)


@pytest.mark.parametrize(
    "args, key, saved, current",
    [
        ([TABLE, "hadamard"], 'layer_transform_config."row-none"', "'inner_outlier_extract_left'", "'hadamard'"),
        (["--quantize.linear.mx.calibration.pattern_threshold", "3"], "calibration.pattern_threshold", "4.0", "3.0"),
        (["--quantize.linear.mx.outlier_k", "8"], "quantize.linear.mx.outlier_k", "64", "8"),
        (["--quantize.linear.mx.calibration.calibration_steps", "2"], "calibration.calibration_steps", "1", "2"),
        (["--quantize.linear.mx.calibration.no-use-HT-calibration"], "use_HT_calibration", "True", "False"),
    ],
    ids=["table", "threshold", "outlier_k", "calibration_steps", "no-calibration"],
)
def test_resume_with_other_plan_settings_refused(trained, args, key, saved, current):
    """The resumed run kept the checkpoint's plan while adahop_job.json recorded the new values."""
    with pytest.raises(ConfigError) as e:
        check_resume(resume_config(*trained, *args), 1)
    msg = str(e.value)
    assert key in msg and f"{current} (checkpoint: {saved})" in msg, msg
    assert "--quantize.linear.mx.calibration.plan_file" in msg
    assert "--checkpoint.exclude_from_loading adahop calibrates again" in msg


def test_plan_file_or_excluded_plan_resume_with_new_settings(trained):
    cfg, dump = trained
    changed = [TABLE, "hadamard", "--quantize.linear.mx.outlier_k", "8"]
    check_resume(
        resume_config(
            cfg, dump, *changed, "--quantize.linear.mx.calibration.plan_file", str(dump / "adahop_plan.json")
        ),
        1,
    )
    check_resume(resume_config(cfg, dump, *changed, "--checkpoint.exclude_from_loading", "adahop"), 1)
    # without the plan the run calibrates again from step 3: 3 calibration steps do not fit in steps 3..4
    with pytest.raises(
        ConfigError, match="calibration_steps = 3; allowed: at most 2, the steps left after the resumed step 2"
    ):
        check_resume(
            resume_config(
                cfg,
                dump,
                "--checkpoint.exclude_from_loading",
                "adahop",
                "--quantize.linear.mx.calibration.calibration_steps",
                "3",
            ),
            1,
        )


def test_a_loaded_plan_is_the_checkpoints_whatever_the_config(trained):
    """Loading a checkpoint's plan (eval, sweep) applies it as saved: the settings check is the resume's, up
    front, not the load's (an older checkpoint of a run whose plan changed on resume must stay readable)."""
    from adahop.linear import AdaHOPLinear

    cfg, dump = trained
    state = plan_state(dump)
    layers = {f: AdaHOPLinear(64, 64, bias=False) for f in state["fqns"]}
    mx = resume_config(cfg, dump, TABLE, "hadamard").quantize.linear.mx
    cal = Calibrator(
        layers, table=dict(SEED_TABLE), uniform_mode="hadamard", calibrate=True, steps=1, settings=plan_settings(mx)
    )
    cal.load_state_dict({"adahop_state_json": json.dumps(state)})
    assert cal.plan["layers"] == state["plan"]["layers"]
    assert json.loads(cal.state_dict()["adahop_state_json"])["settings"] == plan_settings(mx)


def test_mid_calibration_checkpoint_checks_what_shaped_its_votes(trained, tmp_path):
    """Votes so far: a changed threshold or uniform mode is refused; the table is applied only when the
    plan is made, after the resume, so a new one is taken."""
    cfg, dump = trained
    state = plan_state(dump)
    state.update(calibrating=True, plan=None, step=1)
    state["settings"]["calibration_steps"] = 3
    copy_checkpoint(
        dump / "checkpoint" / "step-2",
        tmp_path / "run" / "checkpoint" / "step-2",
        replace={PLAN_KEY: json.dumps(state)},
    )
    args = ["--quantize.linear.mx.calibration.calibration_steps", "3"]
    check_resume(resume_config(cfg, tmp_path / "run", *args, TABLE, "hadamard"), 1)
    with pytest.raises(ConfigError, match="calibration votes of the resumed checkpoint"):
        check_resume(resume_config(cfg, tmp_path / "run", *args, "--quantize.linear.mx.no-use-hadamard"), 1)


def test_checkpoint_without_saved_settings_is_checked_from_its_plan(trained, tmp_path):
    cfg, dump = trained
    state = plan_state(dump)
    del state["settings"]
    copy_checkpoint(
        dump / "checkpoint" / "step-2",
        tmp_path / "run" / "checkpoint" / "step-2",
        replace={PLAN_KEY: json.dumps(state)},
    )
    check_resume(resume_config(cfg, tmp_path / "run"), 1)
    with pytest.raises(ConfigError, match='layer_transform_config."row-none"'):
        check_resume(resume_config(cfg, tmp_path / "run", TABLE, "hadamard"), 1)


def test_training_steps_below_the_checkpoint_refused(trained):
    """It printed "Training completed" and exited 0 without a step."""
    cfg, dump = trained
    with pytest.raises(
        ConfigError,
        match=r"training.steps = 1; allowed: at least 2, the step of the resumed "
        r"checkpoint .*step-2.*--checkpoint.load_step N \(N <= 1\)",
    ):
        check_resume(resume_config(cfg, dump, "--training.steps", "1"), 1)
    check_resume(resume_config(cfg, dump, "--training.steps", "2"), 1)  # nothing to train: a warning


def test_other_flavor_refused_naming_both(trained):
    with pytest.raises(
        ConfigError,
        match=r"model.flavor = 'tiny'; allowed: the flavor of the resumed "
        r"checkpoint: 'nano'.*--model.flavor nano",
    ):
        check_resume(resume_config(*trained, "--model.flavor", "tiny"), 1)


def test_checkpoint_with_more_layers_refused(trained, tmp_path):
    """DCP loads only the keys asked for: a checkpoint with a third layer loaded silently into two."""
    cfg, dump = trained
    src = dump / "checkpoint" / "step-2"
    copy_checkpoint(
        src, tmp_path / "run" / "checkpoint" / "step-2", replace={"layers.2.ffn_norm.weight": torch.ones(64)}
    )
    with pytest.raises(ConfigError, match="layers.2.ffn_norm.weight is \\[64\\] there and absent in flavor 'nano'"):
        check_resume(resume_config(cfg, tmp_path / "run"), 1)


def test_checkpoint_without_plan_names_exclude_adahop(trained, tmp_path):
    cfg, dump = trained
    copy_checkpoint(
        dump / "checkpoint" / "step-2",
        tmp_path / "run" / "checkpoint" / "step-2",
        keep=lambda k: not k.startswith("adahop."),
    )
    with pytest.raises(CheckpointError, match="no AdaHOP plan.*--checkpoint.exclude_from_loading adahop"):
        check_resume(resume_config(cfg, tmp_path / "run"), 1)
    check_resume(resume_config(cfg, tmp_path / "run", "--checkpoint.exclude_from_loading", "adahop"), 1)
    plan_file = ["--quantize.linear.mx.calibration.plan_file", str(dump / "adahop_plan.json")]
    check_resume(resume_config(cfg, tmp_path / "run", *plan_file), 1)  # replaces the plan: none is loaded


def test_model_only_checkpoint_named_as_such(trained, tmp_path):
    """The last save of a run with last_save_model_only = true: upstream stopped at the first missing
    state, 'Missing key ... adahop.adahop_state_json', and excluding adahop would only move it on."""
    cfg, dump = trained
    model_keys = lambda k: not k.startswith(("optimizer.", "lr_scheduler.", "dataloader.", "train_state.", "adahop."))
    copy_checkpoint(dump / "checkpoint" / "step-2", tmp_path / "run" / "checkpoint" / "step-2", keep=model_keys)
    for extra in ([], ["--checkpoint.exclude_from_loading", "adahop"]):
        with pytest.raises(
            CheckpointError, match="holds the model only.*--checkpoint.load_step N.*--checkpoint.initial_load_path"
        ):
            check_resume(resume_config(cfg, tmp_path / "run", *extra), 1)


def test_damaged_checkpoint_refused_before_anything_is_built(trained, tmp_path):
    """check_resume reads the checkpoint through adahop.checkpoint_io's checks: a truncated data file is
    named (training stopped with a bare error inside the load)."""
    import shutil

    cfg, dump = trained
    step = tmp_path / "run" / "checkpoint" / "step-2"
    shutil.copytree(dump / "checkpoint" / "step-2", step)
    data = next(step.glob("*.distcp"))
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=f"{step} is damaged: {data.name}: .*truncated"):
        check_resume(resume_config(cfg, tmp_path / "run"), 1)


@pytest.mark.slow
def test_refused_resume_leaves_the_run_as_it_was(trained):
    """End to end: exit 2, one message, before any model is built; adahop_job.json still describes the
    checkpoint's plan (it was rewritten with the new table)."""
    cfg, dump = trained
    before = (dump / "adahop_job.json").read_bytes()
    r = run_train(cfg, ["--training.steps", "4", TABLE, "hadamard"])
    assert r.returncode == 2, r.stdout[-3000:]
    assert "error: invalid config: quantize.linear.mx.calibration.layer_transform_config" in r.stdout
    assert "Building adahop_llama3" not in r.stdout and "Traceback" not in r.stdout
    assert (dump / "adahop_job.json").read_bytes() == before


@pytest.mark.slow
def test_resume_with_a_plan_file_trains_with_that_plan(trained, tmp_path):
    """The way out for a new plan on resume: plan_file wins over the checkpoint's plan, and adahop_job.json
    and adahop_plan.json then describe that plan."""
    import shutil

    cfg, dump = trained
    run = tmp_path / "run"
    shutil.copytree(dump, run)
    plan = json.loads((dump / "adahop_plan.json").read_text())
    for entry in plan["layers"].values():
        entry["modes"] = {s: "full_precision" for s in entry["modes"]}
    plan_file = tmp_path / "p.json"
    plan_file.write_text(json.dumps(plan))
    r = run_train(
        cfg,
        [
            "--job.dump_folder",
            str(run),
            "--training.steps",
            "3",
            TABLE,
            "hadamard",
            "--quantize.linear.mx.calibration.plan_file",
            str(plan_file),
        ],
    )
    assert r.returncode == 0, r.stdout[-3000:]
    assert "Loading the checkpoint" in r.stdout and "a resumed checkpoint's plan is not loaded" in r.stdout
    assert sorted(losses(r.stdout)) == [3]
    job_file = json.loads((run / "adahop_job.json").read_text())
    assert job_file["quantize"]["linear"]["mx"]["calibration"]["plan_file"] == str(plan_file)
    used = json.loads((run / "adahop_plan.json").read_text())
    assert used["source"] == f"plan_file:{plan_file}"
    assert {m for e in used["layers"].values() for m in e["modes"].values()} == {"full_precision"}
