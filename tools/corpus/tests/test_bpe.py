"""tools/corpus/bpe.py: a tokenizer it trains loads in torchtitan with BOS = 0 and EOS = 1 and round-trips
text; its config files equal the shipped ones (adahop/data/assets/tokenizer)."""

import json

from adahop.data import default_assets_path
from adahop.data.tokenizer import BOS_TOKEN, EOS_TOKEN, tokenizer_file_problem
from tools.corpus.bpe import save_tokenizer, train_bpe_tokenizer

TEXTS = [f"In {1790 + i} the President addressed Congress on the state of the Union, number {i}." for i in range(200)]


def test_trained_tokenizer_loads_in_torchtitan(tmp_path):
    from torchtitan.components.tokenizer import HuggingFaceTokenizer

    train_bpe_tokenizer(TEXTS, tmp_path, vocab_size=400)
    assert tokenizer_file_problem(tmp_path) is None
    tok = HuggingFaceTokenizer(str(tmp_path))
    assert (tok.bos_id, tok.eos_id) == (0, 1)
    assert (tok.id_to_token(0), tok.id_to_token(1)) == (BOS_TOKEN, EOS_TOKEN)
    text = "In 1848 the Union, café 東京 😀\n\ttabs  and spaces "
    ids = tok.encode(text, add_bos=True, add_eos=True)
    assert ids[0] == 0 and ids[-1] == 1 and tok.decode(ids[1:-1]) == text
    # digits are split one per token
    assert len(tok.encode("1790", add_bos=False, add_eos=False)) == 4


def test_save_writes_the_shipped_layout(tmp_path):
    from tokenizers import Tokenizer

    shipped = default_assets_path()
    save_tokenizer(Tokenizer.from_file(f"{shipped}/tokenizer.json"), tmp_path)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        assert json.loads((tmp_path / name).read_text()) == json.loads(open(f"{shipped}/{name}").read()), name
