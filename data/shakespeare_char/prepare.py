"""Nine Shakespeare plays at character level, from the public-domain text shipped beside this file
(plays.txt.gz: Project Gutenberg editions of Hamlet, Macbeth, Romeo and Juliet, King Lear, Othello,
Julius Caesar, The Tempest, A Midsummer Night's Dream, Twelfth Night; about 1.15M characters). First
90% train, last 10% val.

    python data/shakespeare_char/prepare.py
"""
import gzip
import os
import pickle
import sys

import numpy as np

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, '..', '..'))
from data.tokenizer import char_meta  # noqa: E402

if len(sys.argv) > 1:
    sys.exit(f'error: this script takes no arguments (got {" ".join(sys.argv[1:])})')
with gzip.open(os.path.join(here, 'plays.txt.gz'), 'rt', encoding='utf-8') as f:
    text = f.read()
meta = char_meta(sorted(set(text)))
ids = np.array([meta['stoi'][c] for c in text], dtype=np.uint16)
n = int(0.9 * len(ids))
ids[:n].tofile(os.path.join(here, 'train.bin'))
ids[n:].tofile(os.path.join(here, 'val.bin'))
with open(os.path.join(here, 'meta.pkl'), 'wb') as f:
    pickle.dump(meta, f)
print(f"{len(text):,} characters, vocab {meta['vocab_size']} (incl. <eos>, <mask>); train {n:,}, "
      f"val {len(ids) - n:,} tokens")
