"""Checkpoints are read without running code from them, and every CLI ends on bad input with one line.

torch's DCP `.metadata` is a pickle: the CLIs read it with a restricted unpickler (adahop.checkpoint_io)
and refuse a file that names anything but DCP's metadata classes, before anything is unpickled by torch.
"""

import os
import pickle
import subprocess
import sys

import pytest
import torch
from train_helpers import REPO, env

CLIS = {
    "adahop.eval": [],
    "adahop.export_hf": ["--out", "{tmp}/hf"],
    "adahop.sweep": ["--tables", str(REPO / "configs" / "sweep" / "tables.toml"), "--out", "{tmp}/sweep"],
    "adahop.patterns": ["--out", "{tmp}/maps"],
}


class RunsCommand:
    """Unpickling this runs `touch marker` (what a crafted checkpoint would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def small_checkpoint(path, extra: dict | None = None):
    import torch.distributed.checkpoint as dcp

    dcp.save({"w": torch.arange(6.0).view(2, 3), **(extra or {})}, checkpoint_id=str(path))
    return path


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:") or "Traceback" in line]


@pytest.mark.parametrize("cli", list(CLIS))
def test_crafted_metadata_refused_by_every_cli(tmp_path, cli):
    step = small_checkpoint(tmp_path / "run" / "checkpoint" / "step-1")
    marker = tmp_path / "ran"
    (step / ".metadata").write_bytes(pickle.dumps(RunsCommand(marker)))
    more = [a.format(tmp=tmp_path) for a in CLIS[cli]]
    r = subprocess.run(
        [sys.executable, "-m", cli, "--checkpoint_path", str(step), *more],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr[-3000:]
    [line] = error_lines(r.stderr)
    assert f"refusing to load checkpoint {step}" in line and "posix.system" in line and "trust" in line
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no output folder begun


def test_real_metadata_passes_and_data_files_are_checked(tmp_path):
    from adahop.checkpoint_io import CheckpointError, check_checkpoint, load_checkpoint_entries

    step = small_checkpoint(tmp_path / "step-1", {"note": "plain data"})
    metadata = check_checkpoint(step, all_entries=True)
    assert set(metadata.state_dict_metadata) == {"w", "note"}
    state = {"w": torch.zeros(2, 3), "note": ""}
    load_checkpoint_entries(state, step)
    assert state["note"] == "plain data" and state["w"][1, 2] == 5
    # the metadata may only point to files inside the folder
    for _index, info in metadata.storage_data.items():
        info.relative_path = "../elsewhere.distcp"
    (step / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(CheckpointError, match="outside the folder"):
        check_checkpoint(step)


def test_data_loader_state_that_runs_code_refused_before_a_resume(tmp_path):
    from adahop.checkpoint_io import CheckpointError, check_checkpoint

    marker = tmp_path / "ran"
    # torchtitan stores the data loader's state as pickle bytes and unpickles them on resume
    step = small_checkpoint(tmp_path / "step-2", {"dataloader": {"dp_rank_0": pickle.dumps(RunsCommand(marker))}})
    check_checkpoint(step)  # the CLIs do not load the data loader entry
    with pytest.raises(CheckpointError, match="'dataloader.dp_rank_0' references posix.system"):
        check_checkpoint(step, all_entries=True)
    assert not marker.exists()
    fine = small_checkpoint(tmp_path / "step-3", {"dataloader": {"dp_rank_0": pickle.dumps({"i": [1, 2]})}})
    check_checkpoint(fine, all_entries=True)


def test_previous_loadable_step_skips_damaged_and_crafted_ones(tmp_path):
    from adahop.checkpoint_io import CheckpointError, check_checkpoint, previous_loadable_step

    folder = tmp_path / "checkpoint"
    for n in (1, 2, 3, 4):
        small_checkpoint(folder / f"step-{n}")
    (folder / "step-2" / ".metadata").write_bytes(pickle.dumps(RunsCommand(tmp_path / "ran")))
    os.truncate(folder / "step-3" / "__0_0.distcp", 10)
    (folder / "step-10").mkdir()  # later steps and folders without .metadata are not candidates
    assert previous_loadable_step(folder / "step-4") == folder / "step-1"
    with pytest.raises(CheckpointError) as e:
        check_checkpoint(folder / "step-3")
    msg = str(e.value)
    assert f"checkpoint {folder / 'step-3'} is damaged: __0_0.distcp: 10 bytes" in msg
    assert f"the previous loadable checkpoint is {folder / 'step-1'}" in msg and "--checkpoint.load_step 1" in msg
    os.truncate(folder / "step-1" / "__0_0.distcp", 10)
    with pytest.raises(CheckpointError, match="no earlier step-N folder beside it"):
        check_checkpoint(folder / "step-3")
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("cli", list(CLIS))
def test_missing_config_file_is_one_line(tmp_path, capsys, cli):
    import importlib

    module = {"adahop.sweep": "adahop.sweep.__main__", "adahop.patterns": "adahop.patterns_cli"}.get(cli, cli)
    main = importlib.import_module(module).main
    if cli == "adahop.sweep":
        more = CLIS[cli]
    else:
        more = ["--checkpoint_path", str(small_checkpoint(tmp_path / "step-1"))] + CLIS[cli]
    more = [a.format(tmp=tmp_path) for a in more]
    assert main([*more, "--job.config_file", str(tmp_path / "missing.toml")]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "job.config_file" in lines[0] and "missing.toml" in lines[0], lines


def test_unreadable_job_file_is_named(tmp_path, capsys):
    from adahop.eval import main

    step = small_checkpoint(tmp_path / "run" / "checkpoint" / "step-1")
    (tmp_path / "run" / "adahop_job.json").write_text("{broken")
    assert main(["--checkpoint_path", str(step)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and f"{tmp_path / 'run' / 'adahop_job.json'} cannot be read" in lines[0], lines
    assert "--job.config_file" in lines[0]
