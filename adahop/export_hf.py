"""Export a torchtitan Llama checkpoint to a Hugging Face folder that `transformers` loads.

    python -m adahop.export_hf --checkpoint_path outputs/default/checkpoint/step-150 --out hf/default \
        [--dtype bfloat16] [--overwrite] [--job.config_file configs/default.toml ...]

Writes model.safetensors, config.json, generation_config.json and the tokenizer files, so that
`AutoModelForCausalLM.from_pretrained(out)` and lm-eval-harness work on it (see docs/evaluation.md).
The weights are the BF16/FP32 master weights: the MXFP4 numerics are a training-time transform.
Name mapping and the rotary-embedding permutation come from torchtitan's Llama3StateDictAdapter.

--out must be a new or empty folder; with --overwrite, an existing one gets the files above replaced and
keeps every other entry (nothing is deleted). A DCP checkpoint folder is never written into.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from .checkpoint_io import build_model, check_checkpoint, load_job_config, load_model_state
from .cli import UsageError, run_cli
from .files import atomic_dir_write, check_out_folder

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
#: every file an export may write into --out (the tokenizer files when the config's tokenizer has them)
EXPORT_FILES = ("model.safetensors", "config.json", "generation_config.json", *TOKENIZER_FILES)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def llama3_rope(rs, max_position: int) -> dict:
    """transformers' llama3 rope parameters giving torchtitan's frequencies, for a model of `max_position`
    positions.

    transformers warns when original_max_position_embeddings is not below max_position_embeddings (8192 against
    the 128 the default model was trained on). Its llama3 formula uses original_max_position_embeddings L only
    through L / low_freq_factor, L / high_freq_factor and L / wavelength - low_freq_factor over high_freq_factor
    - low_freq_factor, all of which stay the same when L and both factors are scaled by one number. So a smaller L
    with both factors scaled gives the same frequencies, while max_position_embeddings keeps the trained length
    (which lm-eval-harness takes as its context length)."""
    original, low, high = rs.original_max_position_embeddings, rs.low_freq_factor, rs.high_freq_factor
    if original >= max_position:
        scale = (max_position - 1) / original
        original, low, high = max_position - 1, low * scale, high * scale
    return {
        "rope_type": "llama3",
        "factor": rs.scaling_factor,
        "low_freq_factor": low,
        "high_freq_factor": high,
        "original_max_position_embeddings": original,
    }


def hf_config(args, state: dict, tokenizer_dir: Path | None) -> dict:
    """A LlamaConfig dict matching torchtitan's TransformerModelArgs."""
    head_dim = args.dim // args.n_heads
    special = {}
    if tokenizer_dir is not None and (tokenizer_dir / "tokenizer.json").is_file():
        vocab = json.loads((tokenizer_dir / "tokenizer.json").read_text())
        added = {t["content"]: t["id"] for t in vocab.get("added_tokens", [])}
        cfg = (
            json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
            if (tokenizer_dir / "tokenizer_config.json").is_file()
            else {}
        )
        for role in ("bos", "eos"):
            token = cfg.get(f"{role}_token")
            token = token.get("content") if isinstance(token, dict) else token
            if token in added:
                special[f"{role}_token_id"] = added[token]
    rope = llama3_rope(args.rope_scaling_args, args.max_seq_len)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": args.dim,
        "intermediate_size": int(state["model.layers.0.mlp.gate_proj.weight"].shape[0]),
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.n_kv_heads or args.n_heads,
        "head_dim": head_dim,
        "vocab_size": args.vocab_size,
        "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "rope_scaling": rope,
        "rope_parameters": {"rope_theta": args.rope_theta, **rope},
        "max_position_embeddings": args.max_seq_len,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        **special,
    }


def export(
    checkpoint_path: str, out: str, cli_args: list[str], dtype: str = "bfloat16", overwrite: bool = False
) -> Path:
    from safetensors.torch import save_file
    from torchtitan.models.llama3.model.state_dict_adapter import Llama3StateDictAdapter

    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r}: allowed {', '.join(DTYPES)}")
    check_out_folder(out, overwrite, EXPORT_FILES)  # before anything is read or built
    check_checkpoint(checkpoint_path)
    job_config = load_job_config(checkpoint_path, cli_args)
    model, args = build_model(job_config)
    load_model_state(model, checkpoint_path)
    tokenizer_dir = Path(job_config.model.hf_assets_path) if job_config.model.hf_assets_path else None
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("freqs_cis")}
    hf_sd = Llama3StateDictAdapter(args, None).to_hf(sd)
    hf_sd = {k: v.detach().to(DTYPES[dtype]).contiguous() for k, v in hf_sd.items()}
    config = hf_config(args, hf_sd, tokenizer_dir)
    config["torch_dtype"] = dtype
    with atomic_dir_write(out, overwrite, EXPORT_FILES) as tmp:
        save_file(hf_sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        gen = {k: config[k] for k in ("bos_token_id", "eos_token_id") if k in config}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))
        if tokenizer_dir is not None:
            for name in TOKENIZER_FILES:
                if (tokenizer_dir / name).is_file():
                    shutil.copy(tokenizer_dir / name, tmp / name)
    return Path(out)


def _main(argv: list[str] | None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m adahop.export_hf", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint_path", required=True, help="a DCP step-N folder written by training")
    p.add_argument("--out", required=True, help="a new or empty output folder (written whole or not at all)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty --out: replace only the export's files, keep every other entry",
    )
    p.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    args, rest = p.parse_known_args(argv)
    out = export(args.checkpoint_path, args.out, rest, args.dtype, args.overwrite)
    print(f"[adahop] wrote a Hugging Face Llama checkpoint to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
