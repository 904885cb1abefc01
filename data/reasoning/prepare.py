"""The embedded default dataset: chains of additions and subtractions, solved step by step.

    prompt    47+85-23+16=?
    solution  47-23=24
              24+16=40
              40+85=125
              #### 125

The solution starts from the first term and folds in the others one per line, in a random order
(--order=random, the default) or left to right (--order=left). Every example is one row of `row_len`
tokens (prompt, solution, then <eos> padding), so a batch is a set of rows and the prompt of each
row is everything up to its first newline. The answer line '#### N' is checked exactly by eval.py.
Generated offline and deterministically from --seed; train, val and test problems are disjoint.
Difficulty knobs: --digits (operand size), --min_terms/--max_terms (chain length, hence the number
of solution lines) and --order.

    python data/reasoning/prepare.py [--digits=2 --min_terms=4 --max_terms=6 --order=random
                                      --n_train=300000 ...]
"""
import argparse
import os
import pickle
import random
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
from data.tokenizer import char_meta  # noqa: E402

CHARS = '0123456789+-=?#\n '
ANSWER_PREFIX = '#### '


def make_problem(rng, digits, min_terms, max_terms, order):
    """(prompt, solution) of one random chain of signed terms. The solution folds the terms into a
    running value one line at a time: left to right (order='left'), or picking any remaining term
    next (order='random'), so that several next lines are equally right. That ambiguity is what
    decoding many tokens at once gets wrong."""
    lo, hi = 10 ** (digits - 1) if digits > 1 else 0, 10 ** digits - 1
    n_terms = rng.randint(min_terms, max_terms)
    terms = [(rng.choice('+-'), rng.randint(lo, hi)) for _ in range(n_terms)]
    terms[0] = ('+', terms[0][1])
    prompt = str(terms[0][1]) + ''.join(f'{op}{t}' for op, t in terms[1:]) + '=?\n'
    value, rest, lines = terms[0][1], terms[1:], []
    while rest:
        op, t = rest.pop(rng.randrange(len(rest)) if order == 'random' else 0)
        new = value + t if op == '+' else value - t
        lines.append(f'{value}{op}{t}={new}\n')
        value = new
    return prompt, ''.join(lines) + f'{ANSWER_PREFIX}{value}\n'


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--digits', type=int, default=2)
    ap.add_argument('--min_terms', type=int, default=4)
    ap.add_argument('--max_terms', type=int, default=6)
    ap.add_argument('--order', choices=('random', 'left'), default='random',
                    help='order the solution folds terms in')
    ap.add_argument('--n_train', type=int, default=300_000)
    ap.add_argument('--n_val', type=int, default=2_000)
    ap.add_argument('--n_test', type=int, default=1_000)
    ap.add_argument('--seed', type=int, default=1337)
    ap.add_argument('--out_dir', default=os.path.dirname(os.path.abspath(__file__)))
    args = ap.parse_args()
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        ap.error(f'--out_dir={args.out_dir} is a file, not a directory')
    if not (args.digits >= 1 and 2 <= args.min_terms <= args.max_terms):
        ap.error('need --digits >= 1 and 2 <= --min_terms <= --max_terms')
    if min(args.n_train, args.n_val, args.n_test) < 1:
        ap.error('need at least one problem per split (--n_train, --n_val, --n_test >= 1)')

    rng = random.Random(args.seed)
    seen, splits = set(), {}
    for split, n in (('test', args.n_test), ('val', args.n_val), ('train', args.n_train)):
        problems, tries = [], 0
        # held-out problems are drawn first; later splits skip any prompt already used
        while len(problems) < n:
            tries += 1
            if tries > 50 * n + 1000:
                sys.exit(f'error: only {len(problems)} distinct {split} problems at this '
                         f'difficulty; lower --n_{split}')
            prompt, solution = make_problem(rng, args.digits, args.min_terms, args.max_terms,
                                            args.order)
            if prompt in seen:
                continue
            if split != 'train':  # train may repeat its own problems, never a held-out one
                seen.add(prompt)
            problems.append((prompt, solution))
        splits[split] = problems

    # +1: at least one <eos>
    longest = max(len(p) + len(s) for probs in splits.values() for p, s in probs) + 1
    row_len = -(-longest // 32) * 32  # a multiple of 32, so every block size up to 32 divides it
    difficulty = dict(digits=args.digits, min_terms=args.min_terms, max_terms=args.max_terms,
                      order=args.order)
    meta = char_meta(CHARS, row_len=row_len, prompt_sep_id=CHARS.index('\n'),
                     answer_prefix=ANSWER_PREFIX, difficulty=difficulty)
    lut = np.full(256, 255, dtype=np.uint16)
    lut[[ord(c) for c in CHARS]] = np.arange(len(CHARS))
    os.makedirs(args.out_dir, exist_ok=True)
    for split in ('train', 'val'):
        text = ''.join((p + s).ljust(row_len, '\0') for p, s in splits[split])  # '\0' marks padding
        ids = lut[np.frombuffer(text.encode('ascii'), dtype=np.uint8)]
        ids[ids == 255] = meta['eos_id']
        ids.tofile(os.path.join(args.out_dir, f'{split}.bin'))
        print(f'{split}: {len(splits[split]):,} problems, {ids.size:,} tokens')
    for split in ('val', 'test'):  # (prompt, solution) texts, for scoring
        with open(os.path.join(args.out_dir, f'{split}.pkl'), 'wb') as f:
            pickle.dump(splits[split], f)
    with open(os.path.join(args.out_dir, 'meta.pkl'), 'wb') as f:
        pickle.dump(meta, f)
    print(f"test: {len(splits['test']):,} problems; row_len {row_len}, vocab {meta['vocab_size']}, "
          f"longest {longest}")


if __name__ == '__main__':
    main()
