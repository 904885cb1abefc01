"""The Sudoku task: generated puzzles are valid, uniquely solvable and held out from training;
answers are scored on the exact grid; the paired interval that compares two methods on the same
puzzles, by hand."""
import os
import pickle
import random

import numpy as np
import pytest

from conftest import ROOT, run_script
from data.sudoku import prepare as sudoku
from eval import (frontier_scores, frontiers, interval, mixture, passes_to_reach, read_records,
                  report_text, upper_hull)
from data.datasets import answer_of, is_right

SOLVED = '534678912672195348198342567859761423426853791713924856961537284287419635345286179'


def count_solutions(puzzle, limit=2):
    """Backtracking solution count (up to `limit`), independent of the generator's naked-singles
    solver."""
    grid = list(puzzle)

    def ok(i, d):
        r, c = divmod(i, 9)
        b = r // 3 * 27 + c // 3 * 3
        return all(grid[r * 9 + k] != d and grid[k * 9 + c] != d
                   and grid[b + k // 3 * 9 + k % 3] != d for k in range(9))

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
    r = run_script('data/sudoku/prepare.py', '--n_train=400', '--n_val=20', '--n_test=20',
                   '--n_train_grids=50', f'--out_dir={out}')
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
        # the givens are the solution's
        assert all(c == '.' or c == s for c, s in zip(cells, solution))
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
    # no answer line: unparsable
    assert not is_right(answer_of('1+2=3\n', '#### '), '#### 3\n', '#### ')


def test_intervals_by_hand():
    # over 3 seeds: mean 0.2, sd 0.1, t(2 dof) = 4.303 -> half width 4.303 * 0.1 / sqrt(3) = 0.248
    assert interval([0.1, 0.2, 0.3], 'seeds') == '+20.0 [-4.8, +44.8]'
    # over items: paired differences 1, -1, 1, -1 -> mean 0, sd 2/sqrt(3), 1.96 * sd / 2 = 1.13
    assert interval([1, -1, 1, -1], 'items') == '+0.0 [-113.2, +113.2]'
    assert interval([0.1], 'seeds') == '+10.0'  # one seed: no interval
    assert interval([0.0] * 5, 'items') == '+0.0 [+0.0, +0.0]'  # no item differs


def record(label, split, rule, accuracy, passes, items='1100', seed=1, **rcd):
    k, tau = (rule, None) if isinstance(rule, int) else (None, rule)
    return dict(label=label, split=split, train_seed=seed, rule='static' if k else 'threshold',
                tokens_per_step=k, threshold=tau, accuracy=accuracy, mean_passes=passes,
                items=items, n=len(items), correct=items.count('1'), **rcd)


def test_the_hull_mixes_two_neighbouring_settings_by_hand():
    # val: 0.9 lies under the chord from 0.5 to 0.99 (0.5 at 3 passes); 0.995 costs more than 0.99
    # and is no better: the hull is 0.5, 0.99, 0.999
    val = {(r['rule'], r['threshold']): r for r in [
        record('a', 'val', 0.5, 0.2, 2.0), record('a', 'val', 0.9, 0.3, 3.0),
        record('a', 'val', 0.99, 0.8, 4.0), record('a', 'val', 0.995, 0.7, 5.0),
        record('a', 'val', 0.999, 1.0, 8.0)]}
    hull = upper_hull(val)
    assert [(p, a) for p, a, _ in hull] == [(2.0, 0.2), (4.0, 0.8), (8.0, 1.0)]
    assert mixture(hull, 1.5) == [] and mixture(hull, 9) == [(('threshold', 0.999), 1.0)]
    assert mixture(hull, 3) == [(('threshold', 0.5), 0.5), (('threshold', 0.99), 0.5)]
    assert mixture(hull, 7) == [(('threshold', 0.99), 0.25), (('threshold', 0.999), 0.75)]
    # test: each setting's items; budgets 1 (nothing fits: 0), 3, 6 and 9
    test = {key: dict(r, items=it, accuracy=it.count('1') / 4, n=4) for (key, r), it in
            zip(val.items(), ['1000', '0000', '1100', '1110', '1111'])}
    assert frontier_scores(val, test, [1, 3, 6, 9]) == [0.75, 0.625, 0.375, 0.375]
    # test accuracy along the val hull: 0.25 at 2, 0.5 at 4, 1.0 at 8 passes
    assert passes_to_reach(val, test, 0.2) == 2.0 and passes_to_reach(val, test, 0.75) == 6.0
    assert passes_to_reach(val, test, 1.01) is None


def test_the_paired_difference_at_each_budget_by_hand():
    # two settings on every row's hull: 2 passes (τ 0.5) and 4 passes (τ 0.99); budget 2 runs
    # the first alone, budget 4 the second
    test_items = {('a', 1): ('1100', '1111'), ('ref', 1): ('1000', '1110'),
                  ('a', 2): ('1110', '1111'), ('ref', 2): ('1000', '1111')}
    val, test = [], []
    for (label, seed), items in test_items.items():
        for tau, passes, acc, it in ((0.5, 2.0, 0.5, items[0]), (0.99, 4.0, 0.9, items[1])):
            val.append(record(label, 'val', tau, acc, passes, seed=seed))
            test.append(record(label, 'test', tau, it.count('1') / 4, passes, it, seed=seed))
    # a − ref: budget 2, +1/4 (seed 1) and +2/4 (seed 2); budget 4, +1/4 and 0. Two seeds:
    # t 12.706 × sd 0.1768 / sqrt(2) = 158.8 points either side
    text = report_text(test, val, [2.0, 4.0], ['ref'])
    assert '| a − ref | +37.5 [-121.3, +196.3] | +12.5 [-146.3, +171.3] |' in text, text
    assert '| row − reference | 2 | 4 |' in text


def test_rcd_knobs_are_chosen_once_per_seed_on_val_and_the_residual_off_is_its_own_row():
    on = dict(use_rcd=True, first_step='zero')
    val, test = [], []
    # T_res 2 wins on val
    for temp, val_items, test_items in ((1.0, '1100', '1000'), (2.0, '1110', '1100')):
        for split, it in (('val', val_items), ('test', test_items)):
            acc = it.count('1') / 4
            rows = val if split == 'val' else test
            knobs = dict(alpha_scale=0.25, residual_temperature=temp, **on)
            rows += [record('rcd', split, 1, acc, 9.0, it, **knobs),
                     record('rcd', split, 0.9, acc, 3.0, it, **knobs)]
    for split, rows in (('val', val), ('test', test)):
        off = dict(alpha_scale=0.0, residual_temperature=1.0, **on)
        rows += [record('rcd', split, 1, 0.5, 9.0, '1000', **off),
                 record('rcd', split, 0.9, 0.5, 3.0, '1000', **off)]
    front = frontiers(test, val, [3.0])
    assert set(front) == {('rcd', 1), ('rcd_off', 1)}
    assert {r['residual_temperature'] for r in front['rcd', 1][1].values()} == {2.0}
    text = report_text(test, val, [3.0], ['baseline'])
    assert '| rcd − rcd_off | +25.0 | +25.0 [' in text  # items 1100 against 1000, seed 1
    with pytest.raises(SystemExit, match='lacks 1 settings of the menu'):
        frontiers(test[:-1], val, [3.0])  # the off row's test records lack threshold 0.9


def test_greedy_digging_leaves_no_removable_given():
    rng = np.random.default_rng(0)
    grids = np.array([sudoku.fill_grid(random.Random(i)) for i in range(8)])
    puzzles = sudoku.dig_greedy(grids, rng)
    assert (sudoku.singles_solve(puzzles) == grids).all()
    assert (puzzles[puzzles != 0] == grids[puzzles != 0]).all()
    assert (puzzles == 0).sum(1).mean() > 48  # more blanks than random digging can reach
    # maximal: blanking any one more given leaves a puzzle naked singles cannot finish
    for p in puzzles[:3]:
        for i in np.flatnonzero(p):
            trial = p.copy()
            trial[i] = 0
            assert (sudoku.singles_solve(trial[None]) == 0).any()
    random_dug = sudoku.dig(grids, 44, rng)
    assert (sudoku.singles_rounds(puzzles) > sudoku.singles_rounds(random_dug)).mean() > 0.5


def cycle_type(a, b):
    """The cycle lengths of the digit permutation that maps row a onto row b, column by column:
    unchanged by relabelling the digits (a conjugation) and by permuting the columns (the same
    map)."""
    sigma, seen, lengths = dict(zip(a, b)), set(), []
    for start in sigma:
        n, d = 0, start
        while d not in seen:
            seen.add(d)
            d, n = sigma[d], n + 1
        lengths += [n] if n else []
    return tuple(sorted(lengths))


def invariant(grid):
    """A fingerprint of a grid that every Sudoku symmetry preserves (digit relabelling, row and
    column swaps in bands and stacks, band and stack swaps, transposition): the cycle types of all
    pairs of rows, split into pairs inside a band and across bands; the same for the columns; the
    two sorted (transposition swaps them)."""
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
    # it sees through copies
    assert len(fingerprints) == 30 and {invariant(g) for g in copies} <= fingerprints
    rows = np.fromfile(os.path.join(small_set, 'train.bin'), dtype=np.uint16).reshape(-1, 192)
    train = rows[:, 96:177] + 1
    seen = {invariant(g) for g in train}
    for split in ('val', 'test'):
        with open(os.path.join(small_set, f'{split}.pkl'), 'rb') as f:
            held_out = [[int(c) for c in solution] for _, solution in pickle.load(f)]
        assert not {invariant(g) for g in held_out} & seen, split


@pytest.mark.parametrize('task', ['hard', 'easy'])
def test_the_stored_table_comes_from_the_stored_records(task):
    """results/headline_<task>.md is what eval.py --report prints today from the records beside it:
    the published numbers and the statistics code cannot drift apart."""
    path = os.path.join(ROOT, 'results', f'headline_{task}')
    test, val = read_records(f'{path}_test.jsonl'), read_records(f'{path}_val.jsonl')
    with open(f'{path}.md') as f:
        published = f.read()
    table = report_text(test, val, list(range(3, 13)), ['baseline', 'baseline_long', 'onpolicy'])
    assert table.count('|') > 100 and table in published
