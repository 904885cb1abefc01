"""4x4 Sudoku, the quick start's task: small enough that a tiny model learns it in a couple of CPU
minutes.

    prompt    1.3..2.14...3..2    (16 cells row by row, '.' = blank, then 3 spaces and a newline:
                                   one 20-token block)
    solution  1234341241232143    (the 16 digits of the solved grid, then <eos> padding: the
                                   second block)

There are only 288 complete 4x4 grids, so they are all enumerated, and a puzzle has a unique
solution exactly when one grid agrees with its givens. Held-out puzzles differ from every training
puzzle (the grids cannot: there are too few).

    python data/sudoku4/prepare.py [--n_blanks=9 --n_train=20000 --n_val=500 --n_test=500
                                    --seed=1337]
"""
import argparse
import itertools
import os
import pickle
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
from data.tokenizer import char_meta  # noqa: E402

CHARS = '1234. \n'
BLOCK = 20  # the prompt fills one block, the answer the next: seq_len 40


def all_grids():
    """Every complete 4x4 grid (288, 16): rows are permutations, no digit twice in a column or 2x2
    box."""
    rows = list(itertools.permutations(range(1, 5)))
    grids = []
    for g in itertools.product(rows, repeat=4):
        cols_ok = all(len({g[r][c] for r in range(4)}) == 4 for c in range(4))
        boxes_ok = all(len({g[r][c] for r in (br, br + 1) for c in (bc, bc + 1)}) == 4
                       for br in (0, 2) for bc in (0, 2))
        if cols_ok and boxes_ok:
            grids.append(sum(g, ()))
    return np.array(grids)


def puzzles(grids, n, n_blanks, rng):
    """n (puzzle, solution) pairs with n_blanks blanks and a unique solution, as strings; 0 in a
    puzzle = blank."""
    out = []
    while len(out) < n:
        g = grids[rng.integers(len(grids))]
        p = g.copy()
        p[rng.permutation(16)[:n_blanks]] = 0
        givens = p != 0
        if ((grids[:, givens] == p[givens]).all(1)).sum() == 1:  # exactly one grid fits the givens
            out.append((''.join('.' if d == 0 else str(d) for d in p), ''.join(map(str, g))))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--n_blanks', type=int, default=9)
    ap.add_argument('--n_train', type=int, default=20_000)
    ap.add_argument('--n_val', type=int, default=500)
    ap.add_argument('--n_test', type=int, default=500)
    ap.add_argument('--seed', type=int, default=1337)
    ap.add_argument('--out_dir', default=os.path.dirname(os.path.abspath(__file__)))
    args = ap.parse_args()
    if not 1 <= args.n_blanks <= 12 or min(args.n_train, args.n_val, args.n_test) < 1:
        ap.error('need 1 <= --n_blanks <= 12 and at least one puzzle per split')
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        ap.error(f'--out_dir={args.out_dir} is a file, not a directory')
    rng, grids = np.random.default_rng(args.seed), all_grids()
    held_out = puzzles(grids, args.n_val + args.n_test, args.n_blanks, rng)
    seen = {p for p, _ in held_out}
    drawn = puzzles(grids, 2 * args.n_train, args.n_blanks, rng)
    train = [pair for pair in drawn if pair[0] not in seen]
    splits = dict(train=train[:args.n_train], val=held_out[:args.n_val], test=held_out[args.n_val:])
    meta = char_meta(CHARS, row_len=2 * BLOCK, prompt_sep_id=CHARS.index('\n'), answer_prefix='',
                     task='sudoku4')
    os.makedirs(args.out_dir, exist_ok=True)
    for split, pairs in splits.items():
        ids = np.full((len(pairs), 2 * BLOCK), meta['eos_id'], dtype=np.uint16)
        for row, (p, s) in zip(ids, pairs):
            row[:BLOCK] = [meta['stoi'][c] for c in p.ljust(BLOCK - 1) + '\n']
            row[BLOCK:BLOCK + 16] = [meta['stoi'][c] for c in s]
        if split != 'test':
            ids.tofile(os.path.join(args.out_dir, f'{split}.bin'))
        if split != 'train':  # (prompt, solution) texts, for scoring
            with open(os.path.join(args.out_dir, f'{split}.pkl'), 'wb') as f:
                pickle.dump([(p.ljust(BLOCK - 1) + '\n', s) for p, s in pairs], f)
        print(f'{split}: {len(pairs):,} puzzles')
    with open(os.path.join(args.out_dir, 'meta.pkl'), 'wb') as f:
        pickle.dump(meta, f)


if __name__ == '__main__':
    main()
