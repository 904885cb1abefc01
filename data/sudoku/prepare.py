"""9x9 Sudoku, generated offline: the task where residual context pays (README, Results).

    prompt    4.7..1.6..3.....8......   (81 cells row by row, '.' = blank, padded with spaces to
                                         one 96-token block)
    solution  457821369193...           (the 81 digits of the solved grid, then <eos> padding: the
                                         second block)

Every puzzle has exactly one solution and is solvable by naked singles alone (some blank has a
single candidate left; fill it; repeat), so each step of a solver is a forced deduction that depends
on earlier ones: constraint propagation that one forward pass cannot finish at once and several
passes can. The answer is decoded inside one diffusion block (block_size 96, seq_len 192): how many
tokens each step commits is then exactly the parallelism being measured.

Solution grids come from a shuffled backtracking fill (varied grids, not one grid up to symmetry).
Each split draws its own base grids; training grids are those base grids under random Sudoku
symmetries (digit relabelling, row and column swaps inside bands and stacks, band and stack swaps,
transposition), each dug with its own blank pattern. Val and test grids come from base grids that
train never uses, so no held-out puzzle is a symmetric copy of a training puzzle (with 5.5e9
essentially different grids, the chance that any held-out base grid is equivalent to a training one
is below 1e-3 at the default sizes). The blanks of a puzzle are a random set of --n_blanks cells,
redrawn until naked singles solve it; or, with --dig=greedy (a harder task), blanked one cell at a
time while naked singles still solve it (about 55 blanks, long chains of deductions). Deterministic
from --seed; about 20 s on 2 CPU cores (greedy: a minute or two).

    python data/sudoku/prepare.py [--n_blanks=44 --n_train=100000 --n_val=1000 --n_test=1000
                                   --seed=1337]
    python data/sudoku/prepare.py --dig=greedy --n_train=100000 --out_dir=data/sudoku_hard
"""
import argparse
import os
import pickle
import random
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
from data.tokenizer import char_meta  # noqa: E402

CHARS = '123456789. \n'
BLOCK = 96  # the prompt fills one block, the answer the next: seq_len 192
# digit d (1..9) -> bit d-1; 0 (blank) -> 0
BITS = np.array([0] + [1 << d for d in range(9)], dtype=np.int32)
POPCOUNT = np.array([bin(i).count('1') for i in range(512)])
# a one-bit candidate set -> its digit
DIGIT_OF_BIT = np.array([i.bit_length() for i in range(512)])


def fill_grid(rng):
    """A random complete grid (81 ints, row by row): backtracking over the cells with the digits in
    shuffled order."""
    grid, rows, cols, boxes = [0] * 81, [0] * 9, [0] * 9, [0] * 9

    def place(i):
        if i == 81:
            return True
        r, c = divmod(i, 9)
        b = r // 3 * 3 + c // 3
        for d in rng.sample(range(1, 10), 9):
            bit = 1 << d
            if not (rows[r] | cols[c] | boxes[b]) & bit:
                grid[i] = d
                rows[r], cols[c], boxes[b] = rows[r] | bit, cols[c] | bit, boxes[b] | bit
                if place(i + 1):
                    return True
                rows[r], cols[c], boxes[b] = rows[r] & ~bit, cols[c] & ~bit, boxes[b] & ~bit
        return False
    place(0)
    return grid


def symmetry_copies(base, n, rng):
    """n grids, each a random base grid under a random Sudoku symmetry. base (m, 81) -> (n, 81)."""
    # a permutation of 0..8 that permutes the three groups and the three members of each
    def perm_in_groups():
        groups = rng.permutation(3)
        return np.concatenate([3 * g + rng.permutation(3) for g in groups])
    g = base[rng.integers(0, len(base), n)].reshape(n, 9, 9)
    out = np.empty_like(g)
    for i in range(n):
        grid = g[i][perm_in_groups()][:, perm_in_groups()]
        grid = grid.T if rng.random() < 0.5 else grid
        out[i] = np.concatenate(([0], rng.permutation(9) + 1))[grid]  # relabel the digits
    return out.reshape(n, 81)


def singles_step(x):
    """One round of naked singles on puzzles (n, 81): every blank with a single candidate left gets
    it."""
    # each unit's digits as bits, OR-ed over the unit (its axis moved first: fast)
    g = BITS[x].reshape(-1, 9, 9)
    row = np.bitwise_or.reduce(g.transpose(2, 0, 1), axis=0)[:, :, None]
    col = np.bitwise_or.reduce(g.transpose(1, 0, 2), axis=0)[:, None, :]
    boxes_first = g.reshape(-1, 3, 3, 3, 3).transpose(2, 4, 0, 1, 3).reshape(9, -1, 3, 3)
    box = np.bitwise_or.reduce(boxes_first, axis=0)
    free = (~(row | col | box.repeat(3, 1).repeat(3, 2)) & 511).reshape(-1, 81)
    return np.where((x == 0) & (POPCOUNT[free] == 1), DIGIT_OF_BIT[free], x)


def singles_solve(puzzles):
    """Naked singles on a batch of puzzles (n, 81), 0 = blank: fill every cell with one candidate
    left, repeat. Returns the grids as far as naked singles get (cells still 0 where they get
    stuck)."""
    x, live = puzzles.copy(), np.arange(len(puzzles))
    while len(live):
        rows = x[live]
        x[live] = step = singles_step(rows)
        # rows that moved and still have blanks
        live = live[(step != rows).any(1) & (step == 0).any(1)]
    return x


def dig(grids, n_blanks, rng, max_rounds=200):
    """Puzzles with n_blanks random blanks that naked singles solve (hence exactly one solution):
    each grid redraws its blank pattern until that holds. (n, 81) solutions -> (n, 81) puzzles, 0 =
    blank."""
    puzzles, todo = grids.copy(), np.arange(len(grids))
    for _ in range(max_rounds):
        blanks = rng.random((len(todo), 81)).argsort(1)[:, :n_blanks]
        trial = grids[todo].copy()
        np.put_along_axis(trial, blanks, 0, axis=1)
        ok = (singles_solve(trial) != 0).all(1)
        puzzles[todo[ok]] = trial[ok]
        todo = todo[~ok]
        if len(todo) == 0:
            return puzzles
    sys.exit(f'error: {len(todo)} grids found no {n_blanks}-blank pattern that naked singles '
             f'solve; lower --n_blanks')


def dig_greedy(grids, rng):
    """Harder puzzles: blank the cells one at a time in a random order, keeping each blank only
    while naked singles still solve the puzzle; stops where no further cell can go. (n, 81)
    solutions -> (n, 81) puzzles, 0 = blank."""
    puzzles = grids.copy()
    order = rng.random(grids.shape).argsort(1)
    rows = np.arange(len(grids))
    for i in range(81):
        trial = puzzles.copy()
        trial[rows, order[:, i]] = 0
        ok = (singles_solve(trial) != 0).all(1)
        puzzles[ok] = trial[ok]
    return puzzles


def singles_rounds(puzzles):
    """How many rounds of naked singles each puzzle needs (every round fills all the cells that have
    one candidate left): the length of its chain of deductions."""
    x, rounds = puzzles.copy(), np.zeros(len(puzzles), dtype=int)
    while (x == 0).any():
        step = singles_step(x)
        moved = (step != x).any(1)
        if not moved.any():
            break
        rounds += moved
        x = step
    return rounds


def is_valid_grid(digits):
    """True if `digits` (a string) is a complete valid Sudoku grid: every row, column and box holds
    1..9 once."""
    if len(digits) != 81 or not digits.isdigit() or '0' in digits:
        return False
    g = np.array([int(ch) for ch in digits]).reshape(9, 9)
    boxes = [g[r:r + 3, c:c + 3].ravel() for r in (0, 3, 6) for c in (0, 3, 6)]
    units = list(g) + list(g.T) + boxes
    return all(len(set(u.tolist())) == 9 for u in units)


def to_text(puzzle):
    return ''.join('.' if d == 0 else str(d) for d in puzzle)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--n_blanks', type=int, default=44,
                    help='blank cells per puzzle (difficulty; --dig=random)')
    ap.add_argument('--dig', choices=('random', 'greedy'), default='random',
                    help='random: n_blanks random blanks; greedy: blank cells while singles still '
                         'solve (harder)')
    ap.add_argument('--n_train', type=int, default=100_000)
    ap.add_argument('--n_val', type=int, default=1_000)
    ap.add_argument('--n_test', type=int, default=1_000)
    ap.add_argument('--n_train_grids', type=int, default=2_000,
                    help='base grids the training puzzles are copies of')
    ap.add_argument('--seed', type=int, default=1337)
    ap.add_argument('--out_dir', default=os.path.dirname(os.path.abspath(__file__)))
    args = ap.parse_args()
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        ap.error(f'--out_dir={args.out_dir} is a file, not a directory')
    sizes = (args.n_train, args.n_val, args.n_test, args.n_train_grids)
    if not 1 <= args.n_blanks <= 64 or min(sizes) < 1:
        ap.error('need 1 <= --n_blanks <= 64 and at least one grid and puzzle per split')

    py_rng, rng = random.Random(args.seed), np.random.default_rng(args.seed)
    meta = char_meta(CHARS, row_len=2 * BLOCK, prompt_sep_id=CHARS.index('\n'), answer_prefix='',
                     task='sudoku', data_seed=args.seed)
    os.makedirs(args.out_dir, exist_ok=True)
    for split, n in (('test', args.n_test), ('val', args.n_val), ('train', args.n_train)):
        if split == 'train':
            base = np.array([fill_grid(py_rng) for _ in range(args.n_train_grids)])
            grids = symmetry_copies(base, n, rng)
        else:  # held-out grids: their own base grids, one puzzle each
            grids = np.array([fill_grid(py_rng) for _ in range(n)])
        puzzles = dig(grids, args.n_blanks, rng) if args.dig == 'random' else dig_greedy(grids, rng)
        if split == 'test':
            meta['difficulty'] = dict(dig=args.dig, mean_blanks=float((puzzles == 0).sum(1).mean()),
                                      mean_singles_rounds=float(singles_rounds(puzzles).mean()))
        if split != 'test':  # rows of token ids: puzzle, spaces, newline | solution, <eos> padding
            ids = np.full((n, 2 * BLOCK), meta['eos_id'], dtype=np.uint16)
            ids[:, :81] = np.where(puzzles == 0, meta['stoi']['.'], puzzles - 1)
            ids[:, 81:BLOCK - 1], ids[:, BLOCK - 1] = meta['stoi'][' '], meta['stoi']['\n']
            ids[:, BLOCK:BLOCK + 81] = grids - 1
            ids.tofile(os.path.join(args.out_dir, f'{split}.bin'))
        if split != 'train':  # (prompt, solution) texts, for scoring
            pairs = [(to_text(p).ljust(BLOCK - 1) + '\n', to_text(g))
                     for p, g in zip(puzzles, grids)]
            with open(os.path.join(args.out_dir, f'{split}.pkl'), 'wb') as f:
                pickle.dump(pairs, f)
        print(f'{split}: {n:,} puzzles')
    with open(os.path.join(args.out_dir, 'meta.pkl'), 'wb') as f:
        pickle.dump(meta, f)
    print(f"difficulty {meta['difficulty']}; row_len {2 * BLOCK}, vocab {meta['vocab_size']}")


if __name__ == '__main__':
    main()
