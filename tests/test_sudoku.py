"""The Sudoku task: generated puzzles are valid, uniquely solvable and held out from training; answers are scored on
the exact grid; the paired interval that compares two methods on the same puzzles, by hand."""
import math
import os
import pickle
import random

import numpy as np
import pytest

import common
from conftest import run_script
from data.sudoku import prepare as sudoku
from eval import (binomial_interval, budgets, claim_table, comparison, frontier_points, frontier_table, numbers,
                  paired_difference, read_records, report_text, val_frontier_means)
from sample import answer_of, is_right

SOLVED = '534678912672195348198342567859761423426853791713924856961537284287419635345286179'


def count_solutions(puzzle, limit=2):
    """Backtracking solution count (up to `limit`), independent of the generator's naked-singles solver."""
    grid = list(puzzle)

    def ok(i, d):
        r, c = divmod(i, 9)
        b = r // 3 * 27 + c // 3 * 3
        return all(grid[r * 9 + k] != d and grid[k * 9 + c] != d and grid[b + k // 3 * 9 + k % 3] != d
                   for k in range(9))

    def search():
        if 0 not in grid:
            return 1
        i = grid.index(0)
        n = 0
        for d in range(1, 10):
            if ok(i, d):
                grid[i] = d
                n += search()
                grid[i] = 0
                if n >= limit:
                    break
        return n
    return search()


@pytest.fixture(scope='module')
def small_set(tmp_path_factory):
    out = tmp_path_factory.mktemp('sudoku')
    r = run_script('data/sudoku/prepare.py', '--n_train=400', '--n_val=20', '--n_test=20', '--n_train_grids=50',
                   f'--out_dir={out}')
    assert r.returncode == 0, r.stderr
    return str(out)


def test_grids_are_valid_and_varied():
    rng = random.Random(0)
    grids = [sudoku.fill_grid(rng) for _ in range(20)]
    assert all(sudoku.is_valid_grid(''.join(map(str, g))) for g in grids)
    assert len({tuple(g[:9]) for g in grids}) == 20  # not one grid: even the first rows differ
    copies = sudoku.symmetry_copies(np.array(grids), 50, np.random.default_rng(0))
    assert all(sudoku.is_valid_grid(''.join(map(str, g))) for g in copies)


def test_puzzles_have_one_solution_that_naked_singles_find(small_set):
    with open(os.path.join(small_set, 'test.pkl'), 'rb') as f:
        problems = pickle.load(f)
    for prompt, solution in problems[:8]:
        cells = prompt[:81]
        assert len(prompt) == 96 and prompt.endswith('\n') and cells.count('.') == 44
        assert all(c == '.' or c == s for c, s in zip(cells, solution))  # the givens are the solution's
        puzzle = [0 if c == '.' else int(c) for c in cells]
        assert count_solutions(puzzle) == 1
        assert ''.join(map(str, sudoku.singles_solve(np.array([puzzle]))[0])) == solution


def test_held_out_puzzles_are_not_in_train(small_set):
    with open(os.path.join(small_set, 'meta.pkl'), 'rb') as f:
        meta = pickle.load(f)
    rows = np.fromfile(os.path.join(small_set, 'train.bin'), dtype=np.uint16).reshape(-1, 192)
    itos = meta['itos']
    train_grids = {''.join(itos[i] for i in row[96:177]) for row in rows}
    assert len(rows) == 400 and all(sudoku.is_valid_grid(g) for g in train_grids)
    assert (rows[:, 177:] == meta['eos_id']).all() and (rows[:, 95] == meta['prompt_sep_id']).all()
    held = {}
    for split in ('val', 'test'):
        with open(os.path.join(small_set, f'{split}.pkl'), 'rb') as f:
            held[split] = {s for _, s in pickle.load(f)}
    assert not (held['val'] | held['test']) & train_grids and not held['val'] & held['test']


def test_answers_are_scored_on_the_exact_grid():
    assert answer_of(SOLVED, '') == SOLVED and answer_of(SOLVED + '\njunk', '') == SOLVED
    assert is_right(answer_of(SOLVED, ''), SOLVED, '')
    swapped = SOLVED[1] + SOLVED[0] + SOLVED[2:]  # a parsable grid, but wrong (and not a valid one)
    assert not is_right(answer_of(swapped, ''), SOLVED, '') and not sudoku.is_valid_grid(swapped)
    assert not is_right(answer_of('12_4', ''), SOLVED, '')
    assert sudoku.is_valid_grid(SOLVED) and not sudoku.is_valid_grid(SOLVED[:80])
    # the arithmetic task's answer line
    assert is_right(answer_of('1+2=3\n#### 3\n', '#### '), '#### 3\n', '#### ')
    assert not is_right(answer_of('1+2=3\n#### 4\n', '#### '), '#### 3\n', '#### ')
    assert not is_right(answer_of('1+2=3\n', '#### '), '#### 3\n', '#### ')  # no answer line: unparsable


def test_exact_paired_interval_by_hand():
    # Clopper-Pearson: 10 of 10 -> lower end (0.025)^(1/10); 5 of 10 -> the textbook [0.1871, 0.8129]
    assert binomial_interval(10, 10) == (pytest.approx(0.025 ** 0.1), 1.0)
    lo, hi = binomial_interval(5, 10)
    assert lo == pytest.approx(0.1871, abs=1e-4) and hi == pytest.approx(0.8129, abs=1e-4)
    # 20 items: a alone right on 10, b alone right on none, 10 agree -> difference +0.5; interval from 10 of 10
    a = [True] * 10 + [True] * 5 + [False] * 5
    b = [False] * 10 + [True] * 5 + [False] * 5
    d, lo, hi = paired_difference(a, b)
    assert d == 0.5 and lo == pytest.approx(0.5 * (2 * 0.025 ** 0.1 - 1)) and hi == pytest.approx(0.5)
    assert paired_difference(b, a) == (-0.5, pytest.approx(-0.5), pytest.approx(-0.5 * (2 * 0.025 ** 0.1 - 1)))
    assert paired_difference(a, a) == (0.0, 0.0, 0.0)
    # unpaired accuracies would hide this: the same 50% each, but all disagreements one way or the other
    d, lo, hi = paired_difference([True, False] * 50, [False, True] * 50)
    assert d == 0 and lo < 0 < hi and math.isclose(lo, -hi)


def record(label, split, threshold, accuracy, passes, items='1100', seed=1):
    return dict(label=label, split=split, train_seed=seed, rule='threshold', tokens_per_step=None,
                threshold=threshold, first_step='zero', residual_temperature=1.0, use_rcd=label != 'baseline',
                accuracy=accuracy, mean_passes=passes, items=items, n=len(items), correct=items.count('1'))


def test_frontier_chooses_each_budget_on_val_and_reads_test():
    # val: threshold 0.9 is the best at <= 3 passes; 0.99 costs 4.2, so it only counts from budget 5 on
    # 0.95 ties 0.9 on val accuracy at more passes: the tie goes to fewer passes
    val = [record('rcd', 'val', 0.5, 0.10, 2.0), record('rcd', 'val', 0.9, 0.60, 2.9),
           record('rcd', 'val', 0.95, 0.60, 3.0), record('rcd', 'val', 0.99, 0.90, 4.2)]
    # test: the better threshold on test at budget 3 (0.5 here) must not be what is reported
    test = [record('rcd', 'test', 0.5, 0.75, 2.0, '1110'), record('rcd', 'test', 0.9, 0.50, 3.1, '1100'),
            record('rcd', 'test', 0.95, 0.75, 3.1, '1110'), record('rcd', 'test', 0.99, 1.0, 4.4, '1111')]
    points = frontier_points(test, val, [1, 3, 5])
    assert set(points[('rcd', 1)]) == {3, 5}  # nothing fits a budget of 1 pass on val
    assert points[('rcd', 1)][3]['threshold'] == 0.9 and points[('rcd', 1)][5]['threshold'] == 0.99
    # paired against the baseline's own val choice on the same items: +0.25 at budget 3 (1100 vs 1000)
    val += [record('baseline', 'val', 0.9, 0.5, 3.0)]
    test += [record('baseline', 'test', 0.9, 0.25, 3.0, '1000')]
    table = frontier_table(test, val, [3], 'baseline')
    assert '| rcd | ≤ 3 | 25.0 (3.0) | 50.0 (3.1) | 1: 25.0 → 50.0, +25.0' in table
    # the method chosen on val: rcd (0 + 0.6 + 0.9) / 3 against the baseline's (0 + 0.5 + 0.5) / 3
    assert val_frontier_means(val, [1, 3, 5]) == pytest.approx({'rcd': 0.5, 'baseline': 1 / 3})


def test_claim_pairs_half_the_baselines_passes_with_its_ceiling():
    # the baseline's ceiling is threshold 0.99 (best on val, 8 passes there), so the methods get 4 passes on val
    val = [record('baseline', 'val', 0.9, 0.5, 3.0), record('baseline', 'val', 0.99, 0.9, 8.0),
           record('rcd', 'val', 0.9, 0.6, 2.9), record('rcd', 'val', 0.99, 0.95, 4.2), record('slow', 'val', 0.9, 1, 5)]
    test = [record('baseline', 'test', 0.9, 0.25, 3.0, '1000'), record('baseline', 'test', 0.99, 0.75, 7.5, '1110'),
            record('rcd', 'test', 0.9, 0.5, 3.1, '1100'), record('rcd', 'test', 0.99, 1.0, 4.4, '1111'),
            record('slow', 'test', 0.9, 1.0, 5.0, '1111')]
    table = claim_table(test, val, 'baseline')
    # rcd within 4 passes is threshold 0.9 (0.99 costs 4.2 on val, although it is better on test)
    assert '| rcd | 1: 75.0 → 50.0, -25.0 [' in table and '(7.5 → 3.1; threshold 0.9) | -25.0 |' in table
    assert '| slow | 1: nothing within 4.0 passes on val | -75.0 |' in table


def test_greedy_digging_leaves_no_removable_given():
    rng = np.random.default_rng(0)
    grids = np.array([sudoku.fill_grid(random.Random(i)) for i in range(8)])
    puzzles = sudoku.dig_greedy(grids, rng)
    assert ((sudoku.singles_solve(puzzles) == grids).all()) and (puzzles[puzzles != 0] == grids[puzzles != 0]).all()
    assert (puzzles == 0).sum(1).mean() > 48  # more blanks than random digging can reach
    for p in puzzles[:3]:  # maximal: blanking any one more given leaves a puzzle naked singles cannot finish
        for i in np.flatnonzero(p):
            trial = p.copy()
            trial[i] = 0
            assert (sudoku.singles_solve(trial[None]) == 0).any()
    assert (sudoku.singles_rounds(puzzles) > sudoku.singles_rounds(sudoku.dig(grids, 44, rng))).mean() > 0.5


def cycle_type(a, b):
    """The cycle lengths of the digit permutation that maps row a onto row b, column by column: unchanged by
    relabelling the digits (a conjugation) and by permuting the columns (the same map)."""
    sigma, seen, lengths = dict(zip(a, b)), set(), []
    for start in sigma:
        n, d = 0, start
        while d not in seen:
            seen.add(d)
            d, n = sigma[d], n + 1
        lengths += [n] if n else []
    return tuple(sorted(lengths))


def invariant(grid):
    """A fingerprint of a grid that every Sudoku symmetry preserves (digit relabelling, row and column swaps in
    bands and stacks, band and stack swaps, transposition): the cycle types of all pairs of rows, split into
    pairs inside a band and across bands; the same for the columns; the two sorted (transposition swaps them)."""
    g = np.asarray(grid).reshape(9, 9)

    def part(rows):
        pairs = [(i, j) for i in range(9) for j in range(i + 1, 9)]
        same = sorted(cycle_type(rows[i], rows[j]) for i, j in pairs if i // 3 == j // 3)
        across = sorted(cycle_type(rows[i], rows[j]) for i, j in pairs if i // 3 != j // 3)
        return tuple(same), tuple(across)
    return tuple(sorted([part(g.tolist()), part(g.T.tolist())]))


def test_held_out_grids_are_no_symmetric_copy_of_a_training_grid(small_set):
    base = np.array([sudoku.fill_grid(random.Random(i)) for i in range(30)])
    copies = sudoku.symmetry_copies(base, 60, np.random.default_rng(0))
    fingerprints = {invariant(g) for g in base}
    assert len(fingerprints) == 30 and {invariant(g) for g in copies} <= fingerprints  # it sees through copies
    train = np.fromfile(os.path.join(small_set, 'train.bin'), dtype=np.uint16).reshape(-1, 192)[:, 96:177] + 1
    seen = {invariant(g) for g in train}
    for split in ('val', 'test'):
        with open(os.path.join(small_set, f'{split}.pkl'), 'rb') as f:
            held_out = [[int(c) for c in solution] for _, solution in pickle.load(f)]
        assert not {invariant(g) for g in held_out} & seen, split


def test_the_stored_ceiling_and_claim_tables_come_from_the_stored_records():
    with open(os.path.join(common.ROOT, 'results', 'sudoku_ceiling_h200.md')) as f:
        published = set(f.read().splitlines())
    rows = []
    for name in ('sudoku_frontier_h200', 'sudoku_hard_frontier_h200', 'sudoku_mixed_start_h200',
                 'sudoku_hard_mixed_start_h200'):
        path = os.path.join(common.ROOT, 'results', name)
        test, val = read_records(f'{path}_test.jsonl'), read_records(f'{path}_val.jsonl')
        rows += frontier_table(test, val, [1000.0], 'baseline').splitlines()
        rows += claim_table(test, val, 'baseline').splitlines()
    assert len(rows) == 40 and not [r for r in rows if r not in published]


@pytest.mark.parametrize('name, control', [
    ('sudoku_frontier_h200', None), ('sudoku_hard_frontier_h200', None), ('sudoku_mixed_start_h200', None),
    ('sudoku_hard_mixed_start_h200', None), ('sudoku_decode_knobs_h200', None),
    ('sudoku_hard_decode_knobs_h200', None), ('sudoku_control_pilot_h200', 'baseline_rollout'),
    ('sudoku_hard_control_pilot_h200', 'baseline_rollout'), ('sudoku_hard_control_h200', 'baseline_rollout'),
    ('sudoku_plain_h200', 'baseline_rollout_all'), ('sudoku_hard_plain_h200', 'baseline_rollout_all'),
    ('sudoku_plain_rerun_h200', 'baseline_rollout_all'), ('sudoku_plain_one_seed_h200', 'baseline_rollout_all')])
def test_the_stored_results_tables_come_from_the_stored_records(name, control):
    """Every table row in results/<name>.md is what eval.py computes today from the records beside it: the
    published numbers and the statistics code cannot drift apart. The later runs' files also hold the ceiling and
    the claim, and the control runs every table against the control too."""
    path = os.path.join(common.ROOT, 'results', name)
    test, val = read_records(f'{path}_test.jsonl'), read_records(f'{path}_val.jsonl')
    with open(f'{path}.md') as f:
        published = set(f.read().splitlines())
    rows = []
    for base in ['baseline'] + ([control] if control else []):
        rows += frontier_table(test, val, numbers(budgets, 'budgets', float), base).splitlines()  # eval's default
        rows += comparison(test, base).splitlines()
        if 'knobs' in name or control:
            rows += frontier_table(test, val, [1000.0], base).splitlines()
            rows += claim_table(test, val, base).splitlines()
    assert len(rows) > 60 and not [r for r in rows if r not in published]


def test_the_report_prints_every_table_against_the_baseline_and_the_control():
    """eval.py --report (the recipe's one table process) holds, in order, the frontier, the ceiling and the claim
    against the baseline, the frontier and the claim against the control, then the paired differences."""
    path = os.path.join(common.ROOT, 'results', 'sudoku_plain_rerun_h200')
    test, val = read_records(f'{path}_test.jsonl'), read_records(f'{path}_val.jsonl')
    grid = numbers(budgets, 'budgets', float)
    tables = [frontier_table(test, val, grid, 'baseline'), frontier_table(test, val, [1000.0], 'baseline'),
              claim_table(test, val, 'baseline'), frontier_table(test, val, grid, 'baseline_rollout_all'),
              claim_table(test, val, 'baseline_rollout_all'), comparison(test, 'baseline')]
    text = report_text(test, val, grid)
    at = [text.index(table) for table in tables]
    assert at == sorted(at) and text.count('## ') == 5 and 'against the control (baseline_rollout_all)' in text
