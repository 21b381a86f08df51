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
    assert main(["--checkpoint_path", str(path), "--out", str(out), "--dtype", "float32", "--job.config_file", CONFIG]) == 0
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


def test_missing_and_mismatching_checkpoints_refused(checkpoint, tmp_path, capsys):
    from adahop.export_hf import main

    path, _ = checkpoint
    assert main(["--checkpoint_path", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--job.config_file", CONFIG]) == 2
    assert "does not exist" in capsys.readouterr().err
    rc = main(["--checkpoint_path", str(path), "--out", str(tmp_path / "o"), "--job.config_file", CONFIG,
               "--model.flavor", "125M"])
    assert rc == 2 and "shape" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing half-written
    (tmp_path / "broken").mkdir()
    assert main(["--checkpoint_path", str(tmp_path / "broken"), "--out", str(tmp_path / "o"), "--job.config_file", CONFIG]) == 2
    assert "not a readable DCP checkpoint" in capsys.readouterr().err
