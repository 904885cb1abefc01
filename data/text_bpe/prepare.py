"""Any plain-text corpus, GPT-2 BPE tokenized through tiktoken (for corpora larger than character
level suits). tiktoken normally downloads GPT-2's BPE files; here they must be on disk (see
data/tokenizer.py for the accepted forms):

    python data/text_bpe/prepare.py --input=corpus.txt --bpe_path=GPT2_BPE [--val_fraction=0.1]

Writes train.bin / val.bin (uint16: GPT-2's 50257 ids + [MASK] = 50258 fit) and meta.pkl next to
this file.
"""
import argparse
import os
import pickle
import sys

import numpy as np

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, '..', '..'))
from data.tokenizer import gpt2_meta, load_gpt2_encoding  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument('--input', required=True, help='a UTF-8 text file')
ap.add_argument('--bpe_path', default=None,
                help='GPT-2 BPE directory or .tiktoken file (or $NANORCD_GPT2_BPE)')
ap.add_argument('--val_fraction', type=float, default=0.1)
ap.add_argument('--out_dir', default=here)
args = ap.parse_args()
if not os.path.isfile(args.input):
    sys.exit(f'error: --input {args.input!r} is not a file')
if not 0 < args.val_fraction < 1:
    sys.exit(f'error: --val_fraction={args.val_fraction} must be between 0 and 1')

try:
    with open(args.input, encoding='utf-8') as f:
        text = f.read()
except UnicodeDecodeError as e:
    sys.exit(f'error: --input {args.input!r} is not UTF-8 text (byte {e.start}); convert it first')
enc = load_gpt2_encoding(args.bpe_path)
meta = gpt2_meta(enc, args.bpe_path or os.environ['NANORCD_GPT2_BPE'])
ids = np.array(enc.encode_ordinary(text), dtype=np.uint16)
n = int((1 - args.val_fraction) * len(ids))
if n < 2 or len(ids) - n < 2:
    sys.exit(f'error: {args.input} gives {len(ids)} tokens: too few for a train and a val split')
os.makedirs(args.out_dir, exist_ok=True)
ids[:n].tofile(os.path.join(args.out_dir, 'train.bin'))
ids[n:].tofile(os.path.join(args.out_dir, 'val.bin'))
with open(os.path.join(args.out_dir, 'meta.pkl'), 'wb') as f:
    pickle.dump(meta, f)
print(f"{len(ids):,} tokens (vocab {meta['vocab_size']} incl. [MASK]); train {n:,}, "
      f"val {len(ids) - n:,}")
