"""adahop.resume: which checkpoint a resume reads (as torchtitan's CheckpointManager.load picks it) and the
data-parallel degree a run will have. The refusal itself runs end to end in tests/test_train_cpu.py."""

import pytest

from adahop.checkpoint_io import load_job_config
from adahop.resume import checkpoint_to_resume, dp_degree


def job(tmp_path, *args):
    return load_job_config(None, ["--job.config_file", "configs/default.toml", "--job.dump_folder", str(tmp_path),
                                  "--checkpoint.enable", *args])


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


@pytest.mark.parametrize("args, world, want", [
    ([], 8, 8),
    (["--parallelism.tensor_parallel_degree", "2"], 8, 4),
    (["--parallelism.data_parallel_replicate_degree", "2", "--parallelism.data_parallel_shard_degree", "2"], 4, 4),
    (["--parallelism.context_parallel_degree", "2", "--parallelism.pipeline_parallel_degree", "2"], 8, 2),
])
def test_dp_degree(tmp_path, args, world, want):
    assert dp_degree(job(tmp_path, *args), world) == want
