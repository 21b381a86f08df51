"""HF export: logits of the exported transformers model equal torchtitan's on CPU."""

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "default.toml")

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch.distributed.checkpoint as dcp

    from adahop.checkpoint_io import build_model, load_job_config

    job = load_job_config("/nonexistent", ["--job.config_file", CONFIG])
    torch.manual_seed(0)
    model, _ = build_model(job)
    with torch.no_grad():  # break the zero init of some weights so every tensor matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    path = tmp_path_factory.mktemp("run") / "checkpoint" / "step-3"
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("freqs_cis")}
    dcp.save({**sd, "train_state": torch.tensor(3)}, checkpoint_id=str(path))
    return path, model


def test_logits_match(checkpoint, tmp_path):
    from adahop.export_hf import main

    path, model = checkpoint
    out = tmp_path / "hf"
    assert (
        main(["--checkpoint_path", str(path), "--out", str(out), "--dtype", "float32", "--job.config_file", CONFIG])
        == 0
    )
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), torch_dtype=torch.float32).eval()
    tokens = torch.randint(0, 8192, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(tokens)
        got = hf(tokens).logits
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    ids = tok("The quick brown fox.")["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == "The quick brown fox."


def test_export_loads_without_warnings(checkpoint, tmp_path):
    """transformers warned twice that rope original_max_position_embeddings (8192) is not below
    max_position_embeddings (128); the rope parameters are now written in an equivalent form (the logits test
    above shows the same model)."""
    import logging
    import warnings

    from adahop.export_hf import main

    path, _ = checkpoint
    out = tmp_path / "hf"
    assert main(["--checkpoint_path", str(path), "--out", str(out), "--job.config_file", CONFIG]) == 0
    config = __import__("json").loads((out / "config.json").read_text())
    assert config["max_position_embeddings"] == 128  # the trained length: lm-eval's context length
    records = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append
    hf_logger = logging.getLogger("transformers")  # transformers' loggers do not propagate to the root
    hf_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            transformers.AutoModelForCausalLM.from_pretrained(str(out))
            transformers.AutoTokenizer.from_pretrained(str(out))
    finally:
        hf_logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == []
    assert [str(w.message) for w in caught] == []


def test_llama3_rope_parameters_keep_the_frequencies():
    from types import SimpleNamespace

    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from adahop.export_hf import llama3_rope

    rs = SimpleNamespace(
        scaling_factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192
    )

    def inv_freq(rope, max_position):
        cfg = LlamaConfig(
            hidden_size=256,
            num_attention_heads=4,
            max_position_embeddings=max_position,
            rope_parameters={"rope_theta": 500000.0, **rope},
        )
        return ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")[0]

    as_trained = llama3_rope(rs, 128)
    assert as_trained["original_max_position_embeddings"] == 127
    assert llama3_rope(rs, 16384)["original_max_position_embeddings"] == 8192  # below: left as it is
    want = inv_freq(
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        16384,
    )
    torch.testing.assert_close(inv_freq(as_trained, 128), want, rtol=1e-6, atol=0)  # float32 rounding


def test_missing_and_mismatching_checkpoints_refused(checkpoint, tmp_path, capsys):
    from adahop.export_hf import main

    path, _ = checkpoint
    assert (
        main(["--checkpoint_path", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--job.config_file", CONFIG])
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    rc = main(
        [
            "--checkpoint_path",
            str(path),
            "--out",
            str(tmp_path / "o"),
            "--job.config_file",
            CONFIG,
            "--model.flavor",
            "125M",
        ]
    )
    assert rc == 2 and "shape" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing half-written
    (tmp_path / "broken").mkdir()
    assert (
        main(["--checkpoint_path", str(tmp_path / "broken"), "--out", str(tmp_path / "o"), "--job.config_file", CONFIG])
        == 2
    )
    assert "not a readable DCP checkpoint" in capsys.readouterr().err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_export_into_a_run_folder_keeps_its_checkpoint(checkpoint, tmp_path, capsys):
    import shutil

    from adahop.export_hf import main

    path, _ = checkpoint
    run = tmp_path / "run"
    shutil.copytree(path.parent.parent, run)  # <run>/checkpoint/step-3
    (run / "adahop_job.json").write_text("{}")
    (run / "notes.txt").write_text("mine")
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    step = run / "checkpoint" / "step-3"
    args = ["--checkpoint_path", str(step), "--out", str(run), "--dtype", "float32", "--job.config_file", CONFIG]
    assert main(args) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(run) in line and "not empty" in line and "--overwrite" in line
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # nothing touched
    # --overwrite writes the export's files into the run folder and keeps every other entry
    assert main(args + ["--overwrite"]) == 0
    after = {p.relative_to(run) for p in run.rglob("*")}
    assert set(before) <= after and (step / ".metadata").is_file() and (run / "notes.txt").read_text() == "mine"
    assert {"model.safetensors", "config.json", "generation_config.json"} <= {p.name for p in run.iterdir()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary folder left beside it


def test_bad_out_folders_refused_in_one_line(checkpoint, tmp_path, capsys, monkeypatch):
    from adahop.export_hf import main

    path, _ = checkpoint

    def export(out, *more):
        return main(["--checkpoint_path", str(path), "--out", str(out), "--job.config_file", CONFIG, *more])

    afile = tmp_path / "afile"
    afile.write_text("data")
    assert export(afile) == 2
    assert "is a file" in _one_error_line(capsys.readouterr().err)
    assert afile.read_text() == "data" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
    monkeypatch.chdir(tmp_path)  # "." holds afile
    assert export(".") == 2
    assert "not empty" in _one_error_line(capsys.readouterr().err)
    assert export(path, "--overwrite") == 2  # a DCP checkpoint folder, even with --overwrite
    assert "DCP checkpoint folder" in _one_error_line(capsys.readouterr().err)
    # a new folder is written whole; a user's <out>.tmp beside it is not the export's to delete
    (tmp_path / "hf.tmp").mkdir()
    (tmp_path / "hf.tmp" / "keep").write_text("mine")
    assert export(tmp_path / "hf") == 0
    assert (tmp_path / "hf.tmp" / "keep").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "hf", "hf.tmp"]
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    # an empty folder is written into; a second export into it needs --overwrite
    (tmp_path / "empty").mkdir()
    assert export(tmp_path / "empty") == 0 and (tmp_path / "empty" / "config.json").is_file()
    assert export(tmp_path / "hf") == 2
    assert "--overwrite" in _one_error_line(capsys.readouterr().err)
