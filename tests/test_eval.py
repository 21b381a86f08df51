"""adahop.eval on a tiny trained checkpoint reproduces the run's last validation loss; damaged and
crafted checkpoints are refused in one line."""

import json
import os
import shutil

import pytest
from train_helpers import base_toml, run_train, val_losses

EXTRA = """
[checkpoint]
enable = true
folder = "checkpoint"
interval = 3
last_save_model_only = false

[validation]
enable = true
dataset = "adahop_text_val"
local_batch_size = 2
seq_len = 64
freq = 6
steps = 3
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evalrun")
    dump = tmp / "out"
    cfg = tmp / "run.toml"
    cfg.write_text(base_toml(dump, steps=6, calibration_steps=3) + EXTRA)
    r = run_train(cfg)
    assert r.returncode == 0, r.stdout[-4000:]
    return dump, val_losses(r.stdout)[6]


def test_quantized_eval_reproduces_training_validation_loss(trained, tmp_path):
    from adahop.eval import main

    dump, logged = trained
    ckpt = dump / "checkpoint" / "step-6"
    assert (dump / "adahop_job.json").is_file()
    # no TOML given: the run's adahop_job.json describes the model, data and plan settings
    (tmp_path / "eval_quantized.json.tmp").write_text("a user's file")
    assert main(["--checkpoint_path", str(ckpt), "--quantized", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "eval_quantized.json.tmp").read_text() == "a user's file"  # not the eval's to replace
    res = json.loads((tmp_path / "eval_quantized.json").read_text())
    assert res["overall"]["loss"] == pytest.approx(logged, abs=1e-3)  # torchtitan logs 4 decimals
    assert set(res["by_source"]) >= {"gutenberg", "wikipedia"}
    # the "all" row reads every source in turn (not the file's leading Wikipedia leads only), and says how much
    read = res["overall"]["tokens_by_source"]
    assert len(read) >= 2 and sum(read.values()) == 3 * 2 * (64 + 1)  # batches x batch x (seq_len + 1)
    assert all(res["overall"]["loss"] != row["loss"] for row in res["by_source"].values())
    assert "tokens of each source in the 'all' row" in (tmp_path / "eval_quantized.md").read_text()
    assert (tmp_path / "eval_quantized.md").read_text().startswith("checkpoint:")
    # the high-precision forward of the same weights (barely trained: close to the MXFP4 one)
    assert main(["--checkpoint_path", str(ckpt), "--out", str(tmp_path)]) == 0
    hp = json.loads((tmp_path / "eval.json").read_text())
    assert hp["quantized"] is False and abs(hp["overall"]["loss"] - logged) < 0.5


def test_bad_checkpoints_refused(trained, tmp_path, capsys):
    from adahop.eval import main

    dump, _ = trained
    assert main(["--checkpoint_path", str(dump / "checkpoint" / "step-999")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--checkpoint_path", str(dump / "checkpoint" / "step-6"), "--model.flavor", "tiny"]) == 2
    assert "shape" in capsys.readouterr().err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_trained_checkpoint_passes_the_full_check(trained):
    from adahop.checkpoint_io import check_checkpoint, previous_loadable_step

    dump, _ = trained
    metadata = check_checkpoint(dump / "checkpoint" / "step-6", all_entries=True)  # what a resume loads
    assert "adahop.adahop_state_json" in metadata.state_dict_metadata
    assert previous_loadable_step(dump / "checkpoint" / "step-6") == dump / "checkpoint" / "step-3"


def _zero_entry(step, fqn: str) -> str:
    """Zero the first 64 bytes of the stored record of `fqn` (the file keeps its size); its file name."""
    from adahop.checkpoint_io import check_checkpoint

    info = next(i for k, i in check_checkpoint(step).storage_data.items() if k.fqn == fqn)
    with open(step / info.relative_path, "r+b") as f:
        f.seek(info.offset)
        f.write(bytes(64))
    return info.relative_path


@pytest.mark.parametrize("damage", ["truncated", "garbage_metadata", "zeroed_tensor"])
def test_damaged_checkpoint_names_the_file_and_the_previous_step(trained, tmp_path, capsys, damage):
    from adahop.eval import main as eval_main
    from adahop.export_hf import main as export_main

    dump, _ = trained
    run = tmp_path / "run"
    shutil.copytree(dump, run)
    step6, step3 = run / "checkpoint" / "step-6", run / "checkpoint" / "step-3"
    if damage == "truncated":
        os.truncate(step6 / "__0_0.distcp", 1000)
        file = "__0_0.distcp"
    elif damage == "garbage_metadata":
        (step6 / ".metadata").write_bytes(b"garbage\n123")
        file = ".metadata"
    else:  # same size, unreadable content: found by the load itself (torch's CheckpointException)
        file = _zero_entry(step6, "tok_embeddings.weight")
    for main, out in ((eval_main, "eval"), (export_main, "hf")):
        assert main(["--checkpoint_path", str(step6), "--out", str(tmp_path / out)]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert f"checkpoint {step6} is damaged: {file}" in line, line
        assert f"previous loadable checkpoint is {step3}" in line and "--checkpoint.load_step 3" in line, line
        assert not (tmp_path / out).exists()
    assert eval_main(["--checkpoint_path", str(step3), "--out", str(tmp_path / "eval"), "--steps", "1"]) == 0


class RunsCommand:
    """Unpickling this runs `touch marker` (what a crafted checkpoint would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_plan_entry_that_runs_code_refused(trained, tmp_path, capsys):
    import torch
    import torch.distributed.checkpoint as dcp

    from adahop.checkpoint_io import check_checkpoint, load_checkpoint_entries
    from adahop.eval import main

    dump, _ = trained
    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    shutil.copy(dump / "adahop_job.json", run)
    metadata = check_checkpoint(dump / "checkpoint" / "step-6")
    model = {
        k: torch.empty(m.size, dtype=m.properties.dtype)
        for k, m in metadata.state_dict_metadata.items()
        if k.split(".")[0] in ("tok_embeddings", "layers", "norm", "output")
    }
    load_checkpoint_entries(model, dump / "checkpoint" / "step-6", metadata)
    marker = tmp_path / "ran"
    step = run / "checkpoint" / "step-6"
    dcp.save({**model, "adahop": {"adahop_state_json": RunsCommand(marker)}}, checkpoint_id=str(step))
    assert main(["--checkpoint_path", str(step), "--quantized", "--out", str(tmp_path / "e")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"refusing to load checkpoint {step}" in line and "'adahop.adahop_state_json'" in line
    assert "sources you trust" in line and not marker.exists()
    # the check a resume runs before torchtitan loads anything refuses it too
    with pytest.raises(ValueError, match="refusing"):
        check_checkpoint(step, all_entries=True)
    assert not marker.exists()


def test_eval_from_another_folder_finds_the_runs_tokenizer(trained, tmp_path, monkeypatch, capsys):
    """A run started in the repository root records its tokenizer as the relative adahop/data/assets/tokenizer;
    eval run from elsewhere used to fail on it (torchtitan: 'HF assets path ... does not exist!', then a
    FileNotFoundError traceback)."""
    from adahop.eval import main

    dump, _ = trained
    run = tmp_path / "run"
    shutil.copytree(dump, run)
    job = json.loads((run / "adahop_job.json").read_text())
    job["model"]["hf_assets_path"] = "adahop/data/assets/tokenizer"
    (run / "adahop_job.json").write_text(json.dumps(job))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["--checkpoint_path", str(run / "checkpoint" / "step-6"), "--steps", "1", "--out", "out"]) == 0
    captured = capsys.readouterr()
    assert "does not exist" not in captured.out + captured.err
    assert (elsewhere / "out" / "eval.json").is_file()
