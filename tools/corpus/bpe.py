"""Train adahop's byte-level BPE tokenizer and save it in the layout torchtitan loads
(adahop/data/tokenizer.py says which files torchtitan reads).

`python scripts/build_corpus.py --embedded --train-tokenizer` reproduces the shipped one
(adahop/data/assets/tokenizer).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from adahop.data.tokenizer import BOS_TOKEN, EOS_TOKEN, SPECIAL_TOKENS

# A small vocabulary keeps the embedding/output layers of the small test models cheap while
# still compressing English to ~4 characters per token.
DEFAULT_VOCAB_SIZE = 8192


def train_bpe_tokenizer(
    texts: Iterable[str],
    out_dir: str | Path,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    min_frequency: int = 2,
):
    """Train a byte-level BPE on `texts` and write tokenizer.json + tokenizer_config.json.

    Byte-level: every UTF-8 byte is in the base alphabet, so any input is encodable (no
    <unk>) and decode(encode(s)) == s. Digits are split one per token before BPE, which
    makes numbers tokenise consistently (known to help small models with arithmetic-like
    text such as dates and years in the State of the Union corpus).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,  # get ids 0, 1 in this order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    save_tokenizer(tok, out_dir)
    return tok


def save_tokenizer(tok, out_dir: str | Path) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    bos_id, eos_id = tok.token_to_id(BOS_TOKEN), tok.token_to_id(EOS_TOKEN)

    def added(token: str) -> dict:
        return {
            "content": token,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "single_word": False,
            "special": True,
        }

    config = {
        # torchtitan matches these strings to find bos_id / eos_id.
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        # Default for a bare tokenizer.encode(text): BOS yes, EOS no (the training
        # dataset passes add_bos=True, add_eos=True explicitly per document).
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {str(bos_id): added(BOS_TOKEN), str(eos_id): added(EOS_TOKEN)},
        "model_max_length": 1_000_000,
        "clean_up_tokenization_spaces": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN}, indent=2) + "\n"
    )
