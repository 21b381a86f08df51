"""Evaluate a checkpoint: validation loss and perplexity, overall and per source.

    python -m adahop.eval --job.config_file configs/default.toml \
        --checkpoint_path outputs/default/checkpoint/step-150 [--steps N] [--quantized] [--out DIR]

Uses the config's validation data ([validation] dataset, local_batch_size, seq_len) through
torchtitan's own validation dataloader and loss, so the number is the one training logs. The model
runs with its high-precision weights (the BF16 view) or, with --quantized, through the checkpoint's
AdaHOP plan in MXFP4 (the forward training ran). For the embedded validation set, each source
(Gutenberg, SOTU, Python docs, Wikipedia) is also evaluated on its own, and the table says how many tokens of
each source the "all" row read (the embedded split is read with its sources interleaved: adahop.data.datasets).
Writes eval.json and eval.md (the table) to --out (default: next to the checkpoint).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from .checkpoint_io import (
    CheckpointError,
    build_model,
    check_checkpoint,
    load_checkpoint_entries,
    load_job_config,
    load_model_state,
)
from .cli import UsageError, run_cli
from .config import check_dataset
from .files import write_text_atomic


def load_plan_into(converter, checkpoint_path: str) -> None:
    """Restore the AdaHOP plan stored in the checkpoint into `converter`'s layers."""
    metadata = check_checkpoint(checkpoint_path)
    if not any(k.startswith("adahop.") for k in metadata.state_dict_metadata):
        raise CheckpointError(
            f"checkpoint {checkpoint_path} holds no AdaHOP plan: it was not trained with the converter"
        )
    load_checkpoint_entries({"adahop": converter.wiring.state()}, checkpoint_path, metadata)
    if converter.calibrator.calibrating:
        raise CheckpointError(f"checkpoint {checkpoint_path} was saved during calibration: its plan is not final yet")


def dataset_loss(model, job_config, dataset: str, steps: int, desc: str) -> dict:
    from torchtitan.components.loss import IGNORE_INDEX, cross_entropy_loss
    from torchtitan.components.tokenizer import build_hf_tokenizer
    from torchtitan.hf_datasets.text_datasets import build_text_validation_dataloader
    from tqdm import tqdm

    job_config.validation.dataset = dataset
    tokenizer = build_hf_tokenizer(job_config)
    loader = build_text_validation_dataloader(1, 0, tokenizer, job_config, infinite=False)
    device = next(model.parameters()).device
    losses, tokens = [], 0
    with torch.no_grad(), tqdm(total=steps if steps > 0 else None, desc=desc, leave=False, file=sys.stderr) as bar:
        for input_dict, labels in loader:
            if steps > 0 and len(losses) >= steps:
                break
            inputs, labels = input_dict["input"].to(device), labels.to(device)
            valid = (labels != IGNORE_INDEX).sum()
            losses.append((cross_entropy_loss(model(inputs), labels) / valid).item())
            tokens += int(valid)
            bar.update(1)
    if not losses:
        raise UsageError(f"validation dataset {dataset!r} gave no batch of {job_config.validation.seq_len} tokens")
    loss = sum(losses) / len(losses)
    return {"loss": loss, "perplexity": math.exp(loss), "steps": len(losses), "tokens": tokens}


def tokens_by_source(job_config, dataset: str, tokens: int) -> dict[str, int] | None:
    """How many tokens of each source the validation loader read to give `tokens` label tokens, for data whose
    samples have a "source" field (else None). torchtitan's text dataset reads the samples in order, each as
    BOS + text + EOS, and cuts seq_len + 1 tokens per sequence (its labels are the last seq_len of them)."""
    from torchtitan.components.tokenizer import build_hf_tokenizer
    from torchtitan.hf_datasets.text_datasets import DATASETS

    from .data.datasets import registered_datasets

    if dataset.lower() not in registered_datasets():
        return None
    entry = DATASETS[dataset.lower()]
    data = entry.loader(job_config.validation.dataset_path or entry.path)
    if "source" not in (getattr(data, "column_names", None) or []):
        return None
    seq_len = job_config.validation.seq_len
    left = tokens // seq_len * (seq_len + 1)
    tokenizer = build_hf_tokenizer(job_config)
    counts: dict[str, int] = {}
    for sample in data:
        if left <= 0:
            break
        n = min(left, len(tokenizer.encode(entry.sample_processor(sample), add_bos=True, add_eos=True)))
        counts[sample["source"]] = counts.get(sample["source"], 0) + n
        left -= n
    return counts


def evaluate(checkpoint_path: str, cli_args: list[str], steps: int | None = None, quantized: bool = False) -> dict:
    check_checkpoint(checkpoint_path)  # before anything is built: missing, damaged or crafted
    job_config = load_job_config(checkpoint_path, cli_args)
    check_dataset(job_config, "validation")
    model, _ = build_model(job_config, device="cuda" if torch.cuda.is_available() else "cpu")
    load_model_state(model, checkpoint_path)
    if quantized:
        from .converter import AdaHOPConverter
        from .plan_wiring import wire

        converter = AdaHOPConverter(job_config, None)
        converter.convert(model)
        wire(converter, [model])
        load_plan_into(converter, checkpoint_path)
    model.eval()
    steps = job_config.validation.steps if steps is None else steps
    main = job_config.validation.dataset
    results = {"checkpoint": str(checkpoint_path), "quantized": quantized, "dataset": main}
    results["overall"] = dataset_loss(model, job_config, main, steps, "validation")
    by_source = tokens_by_source(job_config, main, results["overall"]["tokens"])
    if by_source is not None:
        results["overall"]["tokens_by_source"] = by_source
    from .data.datasets import VALIDATION_DATASET, validation_sources

    if main.lower() == VALIDATION_DATASET:  # torchtitan takes the name in any case
        results["by_source"] = {
            src: dataset_loss(model, job_config, f"{VALIDATION_DATASET}_{src}", steps, src)
            for src in validation_sources()
        }
    return results


def table(results: dict) -> str:
    rows = [("all", results["overall"])] + list(results.get("by_source", {}).items())
    lines = [
        f"checkpoint: {results['checkpoint']} "
        f"({'MXFP4 plan forward' if results['quantized'] else 'high-precision forward'})",
        "",
        "| data | loss | perplexity | batches | tokens |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {n} | {r['loss']:.4f} | {r['perplexity']:.2f} | {r['steps']} | {r['tokens']} |" for n, r in rows]
    read = results["overall"].get("tokens_by_source")
    if read:
        total = sum(read.values())
        lines += [
            "",
            "tokens of each source in the 'all' row (as read, BOS/EOS included): "
            + ", ".join(f"{s} {n} ({100 * n / total:.0f}%)" for s, n in sorted(read.items(), key=lambda kv: -kv[1])),
        ]
    return "\n".join(lines) + "\n"


def _main(argv: list[str] | None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m adahop.eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint_path", required=True)
    p.add_argument("--steps", type=int, default=None, help="validation batches (default: validation.steps; -1: all)")
    p.add_argument("--quantized", action="store_true", help="forward through the checkpoint's MXFP4 plan")
    p.add_argument(
        "--out", default=None, help="folder for eval.json / eval.md (default: the checkpoint folder's parent)"
    )
    args, rest = p.parse_known_args(argv)
    if args.steps is not None and args.steps < 1 and args.steps != -1:
        raise UsageError(f"--steps {args.steps}: give a number of batches >= 1, or -1 for the whole validation set")
    out = Path(args.out) if args.out else Path(args.checkpoint_path).resolve().parent
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder: give a folder for eval.json / eval.md")
    results = evaluate(args.checkpoint_path, rest, args.steps, args.quantized)
    out.mkdir(parents=True, exist_ok=True)
    stem = "eval_quantized" if args.quantized else "eval"
    for suffix, text in ((".json", json.dumps(results, indent=2)), (".md", table(results))):
        write_text_atomic(out / f"{stem}{suffix}", text)
    print(table(results))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
