"""
Accuracy against decoding cost. A sweep decodes the val or test split of a row dataset (sudoku,
reasoning) over a grid of commit rules (tokens per step, confidence thresholds; for RCD also its
residual knobs) and appends one JSON record per setting to `records`: accuracy, which items were
right (so rows compare paired on the same items) and mean forward passes per answer (denoising steps
+ cache fills + any first-step pass).

    python eval.py --ckpt=out/stage1/ckpt.pt --label=baseline --split=val
    python eval.py --ckpt=out/stage2/ckpt.pt --label=rcd --use_rcd=True --alpha_scales=0.25,0
    python eval.py --report=test.jsonl --val=val.jsonl     # AUF per row, paired differences, claim
    python eval.py --plot=test.jsonl --val=val.jsonl       # each row's frontier -> test.png

The measure is the interpolated frontier. On val, a row's settings form an upper concave hull in
(mean passes, accuracy); at a budget of P passes the row runs the best mix of two hull settings
whose val passes average P (one on a share of the puzzles, the other on the rest), scored on test
with the same mix. Its mean over budgets 3..12 passes is the AUF, the area under the frontier.
An RCD model gives two rows: `<label>` (residual on; its residual knobs chosen once per seed on
val AUF) and `<label>_off` (the same weights decoded by the plain sampler).
"""
import json
import math
import os
import signal
import sys
import time
from dataclasses import replace

if __name__ == '__main__':  # Ctrl-C while torch loads: quit quietly (until configure())
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))

import torch
from tqdm import tqdm

import common
from configurator import configure_and_run
from data.datasets import answer_of, is_right, load_problems
from engine import as_trained, check_decoding, load_models
from sample import Decoding, generate

# --------------------------------------------------------------------------------------------------
ckpt = 'out/stage1/ckpt.pt'
label = ''                   # the row's name in records ('' = 'RCD' with use_rcd, else 'baseline')
# RCD's settings: where not set here, as the model was trained (its checkpoint says)
use_rcd = False              # RCD sampling (residual context); False = the plain sampler, α = 0
alpha_mode = 'entropy'       # with use_rcd: 'entropy', 'confidence', 'constant', 'none'
alpha_constant = 0.5
alpha_scales = ''            # with use_rcd, to sweep: α × these ('' = the trained scale; 0 =
                             # residual off, the `_off` row: this model by the plain sampler)
residual_temperatures = '1.0'  # with use_rcd: T_res values to sweep (α of softmax(logits / T_res))
first_steps = 'zero'         # with use_rcd, to sweep: 'zero', 'self', 'reference', 'dirichlet'
reference_ckpt = ''          # the model of first_steps 'reference'
split = 'test'               # 'val' to choose settings, 'test' to report
tokens_per_step_grid = '1,2,4,8'  # static rule settings ('' = none)
threshold_grid = '0.5,0.7,0.9,0.95,0.97,0.99,0.999,0.9999,0.99999'  # threshold settings ('' = none)
n_problems = 0               # problems per setting (0 = all of the split)
batch_size = 500
records = 'out/results.jsonl'
report = ''                  # test records: print the run's tables (with --val); exit
plot = ''                    # test records: draw each row's frontier (with --val) to a PNG; exit
val = ''                     # the val records each row's settings are chosen on
budgets = '3,4,5,6,7,8,9,10,11,12'  # the AUF's budgets: mean forward passes per answer
references = 'baseline,baseline_long,onpolicy'  # rows the others are paired with, where present
differences = 'rcd_onpolicy-onpolicy,rcd_onpolicy_off-onpolicy,rcd_onpolicy-rcd_onpolicy_off'
                             # --plot: these differences (row-reference) per budget, where present
device = 'auto'
dtype = 'auto'
seed = 1337
# --------------------------------------------------------------------------------------------------


def score(model, tok, meta, split, n_problems, batch_size, autocast, desc, dec, reference,
          generator):
    """(per-problem correctness list, mean forward passes per answer) on <dataset>/<split>.pkl.
    Problems are batched by prompt length, so every row of a batch shares the same block alignment;
    the list is in the file's order, the same for every method."""
    problems = load_problems(meta, split, n_problems)
    by_len = {}
    for i, (q, solution) in enumerate(problems):
        by_len.setdefault(len(tok.encode(q)), []).append(i)
    right, passes, dev = [False] * len(problems), 0, model.wte.weight.device
    bar = tqdm(total=len(problems), desc=desc, dynamic_ncols=True, disable=not sys.stderr.isatty())
    for p_len, group in sorted(by_len.items()):
        for k in range(0, len(group), batch_size):
            chunk = group[k:k + batch_size]
            ids = torch.tensor([tok.encode(problems[i][0]) for i in chunk], device=dev)
            with autocast:
                out, n_pass = generate(model, ids, meta['row_len'] - p_len, dec, meta['eos_id'],
                                       reference, generator)
            for i, row in zip(chunk, out[:, p_len:].tolist()):
                pred = answer_of(tok.decode(row), meta['answer_prefix'])
                right[i] = is_right(pred, problems[i][1], meta['answer_prefix'])
            passes += int(n_pass.sum())
            bar.update(len(chunk))
    bar.close()
    return right, passes / len(problems)


# --------------------------------------------------------------------------------------------------
# Reading records: each row's frontier, interpolated on val and scored on test, and its area (AUF)

T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262]  # t quantiles, 1-9 dof


def read_records(path, split=None):
    """The records of a file, each checked to be an eval.py record (of `split`, where given)."""
    if os.path.isdir(path):
        common.fail(f"records file '{path}' is a directory: give the .jsonl file")
    if not os.path.isfile(path):
        common.fail(f"records file '{path}' not found; run eval.py on a checkpoint first")
    need = {'label', 'rule', 'items', 'mean_passes', 'train_seed', 'split', 'accuracy'}
    rows, want = [], split
    with open(path, errors='replace') as f:  # a binary file: its first line is no JSON record
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                common.fail(f'{path}, line {i}: not a JSON record')
            if not isinstance(row, dict) or not need <= row.keys():
                common.fail(f"{path}, line {i}: not an eval.py record "
                            f"(needs {', '.join(sorted(need))})")
            if not (isinstance(row['items'], str) and set(row['items']) <= set('01')
                    and type(row['mean_passes']) in (int, float)):
                common.fail(f"{path}, line {i}: not an eval.py record (items: a string of 0s "
                            f"and 1s; mean_passes: a number)")
            if RULE_KEY.get(str(row['rule'])) not in row:
                common.fail(f"{path}, line {i}: not an eval.py record (a rule 'static' with "
                            f"tokens_per_step, or 'threshold' with threshold)")
            want = want or row['split']  # one split per file: the first record's, or `split`
            if row['split'] != want:
                common.fail(f"{path}, line {i}: a {row['split']} record where {want} records "
                            f"belong")
            rows.append(row)
    if not rows:
        common.fail(f'records file {path} holds no records')
    return rows


def row_of(r):
    """A record's row: an RCD model decoded with its residual off (α × 0) is a row of its own,
    '<label>_off'. Rows are never merged into one frontier."""
    return r['label'] + '_off' if r.get('use_rcd') and r.get('alpha_scale') == 0 else r['label']


RULE_KEY = {'static': 'tokens_per_step', 'threshold': 'threshold'}  # each rule's one setting


def rule_of(r):
    """A record's commit rule: the menu every row is decoded over alike."""
    return r['rule'], r[RULE_KEY[r['rule']]]


def setting_of(r):
    rule = f"{r['tokens_per_step']} tokens/step" if r['rule'] == 'static' else f"τ {r['threshold']}"
    if r.get('use_rcd') and r.get('alpha_scale'):
        rule += (f", α × {r['alpha_scale']}, T_res {r['residual_temperature']}, first step "
                 f"{r['first_step']}")
    return rule


def items(r):
    return [c == '1' for c in r['items']]


def menus(rows):
    """{(row, seed): {residual knobs: {rule: record}}}. The knobs (α scale, T_res, first step)
    are one value for a plain row."""
    out = {}
    for r in rows:
        knobs = tuple(r.get(k) for k in ('alpha_scale', 'residual_temperature', 'first_step'))
        out.setdefault((row_of(r), r['train_seed']), {}).setdefault(knobs, {})[rule_of(r)] = r
    return out


def upper_hull(menu):
    """The upper concave hull of a menu's (mean passes, accuracy) points, left to right up to the
    most accurate: [(passes, accuracy, rule)]. A point on or under a chord is never worth it."""
    hull = []
    for p in sorted(((r['mean_passes'], r['accuracy'], rule) for rule, r in menu.items()),
                    key=lambda p: (p[0], -p[1])):
        if hull and p[1] <= hull[-1][1]:  # no better than a cheaper setting
            continue
        while len(hull) > 1 and ((hull[-1][1] - hull[-2][1]) * (p[0] - hull[-1][0])
                                 <= (p[1] - hull[-1][1]) * (hull[-1][0] - hull[-2][0])):
            hull.pop()  # hull[-1] lies on or under the chord from hull[-2] to p
        hull.append(p)
    return hull


def mixture(hull, budget):
    """[(rule, share)]: the best mix of two neighbouring hull settings whose mean passes is at most
    `budget` (one setting on that share of the puzzles, the other on the rest); [] if none fits."""
    if not hull or budget < hull[0][0]:
        return []
    for a, b in zip(hull, hull[1:]):
        if budget < b[0]:
            share = (budget - a[0]) / (b[0] - a[0])
            return [(a[2], 1 - share), (b[2], share)]
    return [(hull[-1][2], 1.0)]


def frontier_scores(val_menu, test_menu, budgets):
    """Each test item's score on the frontier chosen on val, averaged over the budgets (a budget
    that nothing fits scores 0). Their mean is the AUF; two rows' per-item differences pair them."""
    total, hull = [0.0] * next(iter(test_menu.values()))['n'], upper_hull(val_menu)
    for budget in budgets:
        for rule, share in mixture(hull, budget):
            for i, right in enumerate(items(test_menu[rule])):
                total[i] += share * right
    return [s / len(budgets) for s in total]


def passes_to_reach(val_menu, test_menu, target):
    """The fewest passes (on val's axis) at which the frontier chosen on val reaches `target`
    accuracy on test, linear between hull settings; None if it never does."""
    last = None
    for passes, _, rule in upper_hull(val_menu):
        acc = test_menu[rule]['accuracy']
        if acc >= target:
            if last is None:
                return passes
            return last[0] + (target - last[1]) / (acc - last[1]) * (passes - last[0])
        last = (passes, acc)
    return None


def frontiers(test_rows, val_rows, budgets):
    """{(row, seed): (val menu, test menu)}: an RCD row's residual knobs are the ones with the best
    val AUF, chosen once per seed (not per budget); every row must have the same menu of rules."""
    tasks = {(r.get('dataset'), r.get('data_seed')) for r in test_rows + val_rows}
    if len(tasks) > 1:
        common.fail(f'records of {len(tasks)} datasets (dataset, data seed) mixed: '
                    f'{sorted(tasks, key=str)}; keep one task per records file')
    val, test, out = menus(val_rows), menus(test_rows), {}
    grid = {rule for by_knobs in val.values() for menu in by_knobs.values() for rule in menu}
    for row, seed in sorted(val.keys() - test.keys()):  # a row must not vanish from the tables
        common.fail(f"row '{row}', seed {seed} has val records but no {test_rows[0]['split']} "
                    f"records")
    for (row, seed), by_knobs in test.items():
        if (row, seed) not in val:
            common.fail(f"row '{row}', seed {seed} has no val records: nothing chooses its "
                        f"settings")
        knobs = max(val[row, seed], key=lambda k: mean(frontier_scores(val[row, seed][k],
                                                                      val[row, seed][k], budgets)))
        lacking = grid - set(by_knobs.get(knobs, {})) | grid - set(val[row, seed][knobs])
        if lacking:
            common.fail(f"row '{row}', seed {seed} lacks {len(lacking)} settings of the menu "
                        f"(e.g. {min(lacking)}): decode every row over the same grid")
        out[row, seed] = val[row, seed][knobs], by_knobs[knobs]
    sizes = {r['n'] for _, menu in out.values() for r in menu.values()}
    if len(sizes) > 1:  # paired differences compare item by item
        common.fail(f'records over different numbers of items ({sorted(sizes)}): score every row '
                    f'on the same puzzles')
    return out


def mean(xs):
    return sum(xs) / len(xs)


def bounds(xs, over):
    """(mean, low, high): the 95% interval of the mean, t over seeds, normal over items (none,
    low = high = mean, for one value)."""
    m = mean(xs)
    if len(xs) < 2:
        return m, m, m
    q = T_975[min(len(xs), 10) - 2] if over == 'seeds' else 1.96
    half = q * math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs))
    return m, m - half, m + half


def interval(xs, over):
    """'mean [95% interval]' in points."""
    m, low, high = bounds(xs, over)
    if len(xs) < 2:
        return f'{100 * m:+.1f}'
    return f'{100 * m:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]'


def budget_differences(front, a, b, budgets):
    """Per budget, the per-seed differences row a − row b (same seeds, same items)."""
    both = [s for r, s in front if r == a and (b, s) in front]
    return [[mean(frontier_scores(*front[a, s], [x])) - mean(frontier_scores(*front[b, s], [x]))
             for s in both] for x in budgets]


def budget_table(front, pairs, budgets):
    """The paired differences at each budget: where along the frontier a row gains or loses."""
    text = ['', '## Paired differences per budget (passes): mean over seeds [t interval]', '',
            '| row − reference | ' + ' | '.join(f'{x:g}' for x in budgets) + ' |',
            '|---|' + '---|' * len(budgets)]
    for a, b in pairs:
        cells = [interval(d, 'seeds') for d in budget_differences(front, a, b, budgets)]
        text.append(f"| {a} − {b} | {' | '.join(cells)} |")
    return text


def report_text(test_rows, val_rows, budgets, references):
    """The run's tables: each row's AUF and the passes it needs to reach 90 / 95 / 99%; the paired
    AUF differences (each row against each reference, and each RCD row against its `_off` row);
    the paper's claim (the passes each row needs to reach a reference's best accuracy)."""
    front = frontiers(test_rows, val_rows, budgets)
    scores = {key: frontier_scores(v, t, budgets) for key, (v, t) in front.items()}
    rows = list(dict.fromkeys(row for row, _ in front))
    seeds = {row: sorted((s for r, s in front if r == row), key=str) for row in rows}
    split = test_rows[0]['split']
    text = [f'## AUF: {split} accuracy (%) on the frontier chosen on val, mean over budgets '
            f'{budgets[0]:g}..{budgets[-1]:g} passes' + (' (scored on val: for choosing only)'
                                                         if split == 'val' else ''),
            '', '| row | seeds | AUF | per seed | passes to reach 90 / 95 / 99% | 1 token/step |',
            '|---|---|---|---|---|---|']
    for row in rows:
        aufs = [mean(scores[row, s]) for s in seeds[row]]
        reach = []
        for target in (0.9, 0.95, 0.99):
            got = [passes_to_reach(*front[row, s], target) for s in seeds[row]]
            never = f'never in {got.count(None)} of {len(got)}'
            reach.append(f'{mean(got):.1f}' if None not in got else never)
        one = [front[row, s][1].get(('static', 1)) for s in seeds[row]]
        one = f"{100 * mean([r['accuracy'] for r in one]):.1f}" if None not in one else '-'
        text.append(f"| {row} | {len(aufs)} | {100 * mean(aufs):.1f} | "
                    f"{', '.join(f'{100 * a:.1f}' for a in aufs)} | {' / '.join(reach)} | {one} |")
    refs = [ref for ref in references if ref in rows]
    pairs = [(row, ref) for i, ref in enumerate(refs) for row in rows if row not in refs[:i + 1]]
    pairs += [(row, row + '_off') for row in rows if row + '_off' in rows]
    text += ['', '## Paired differences (same seed, same items): AUF, and accuracy at 1 token/step',
             '', '| row − reference | AUF, mean over seeds [t interval] | '
             'per seed [95% over items] | 1 token/step per seed [95% over items] |',
             '|---|---|---|---|']
    for a, b in pairs:
        both = [s for s in seeds[a] if s in seeds[b]]
        diffs = [[x - y for x, y in zip(scores[a, s], scores[b, s])] for s in both]
        ones = [(front[a, s][1].get(('static', 1)), front[b, s][1].get(('static', 1)))
                for s in both]
        ones = [[x - y for x, y in zip(items(r), items(q))] for r, q in ones if r and q]
        text.append(f"| {a} − {b} | {interval([mean(d) for d in diffs], 'seeds')} | "
                    f"{'; '.join(interval(d, 'items') for d in diffs)} | "
                    f"{'; '.join(interval(d, 'items') for d in ones)} |")
    text += budget_table(front, pairs, budgets)
    for ref in refs:
        text += ['', f"## The paper's claim: passes to reach {ref}'s best {split} accuracy",
                 '', f'| row | seed: passes ({ref} → row) |', '|---|---|']
        for row in rows:
            cells = []
            for s in (s for s in seeds[row] if s in seeds[ref]):
                best = max(front[ref, s][1][rule]['accuracy'] for *_, rule in
                           upper_hull(front[ref, s][0]))
                mine = passes_to_reach(*front[row, s], best)
                cells.append(f"{s}: {passes_to_reach(*front[ref, s], best):.1f} → "
                             + (f'{mine:.1f}' if mine is not None else 'never'))
            text.append(f"| {row} | {'; '.join(cells)} |")
    return '\n'.join(text)


def draw(test_path, val_path, budgets, pairs):
    """Each row's frontier: test accuracy of the mixture chosen on val at each budget, mean over
    seeds; beside it, each pair of rows present (row, reference) as its difference per budget with
    its 95% interval over seeds as a band. Written to a PNG beside the test records."""
    front = frontiers(read_records(test_path), read_records(val_path, 'val'), budgets)
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        common.fail('the plot needs matplotlib (pip install matplotlib); the records are plain '
                    'JSON lines')
    rows = {row for row, _ in front}
    pairs = [(a, b) for a, b in pairs if a in rows and b in rows]
    xs = [budgets[0] + i * (budgets[-1] - budgets[0]) / 100 for i in range(101)]
    fig, axes = plt.subplots(1, 1 + bool(pairs), figsize=(7 + 5 * bool(pairs), 4.5),
                             squeeze=False)
    ax = axes[0, 0]
    for row in dict.fromkeys(row for row, _ in front):
        mine = [(v, t) for (r, _), (v, t) in front.items() if r == row]
        ys = [100 * mean([mean(frontier_scores(v, t, [x])) for v, t in mine]) for x in xs]
        ax.plot(xs, ys, label=f"{row} ({len(mine)} seed{'s' * (len(mine) > 1)})")
    ax.set_xlabel('budget: mean forward passes per answer (mixture chosen on val)')
    ax.set_ylabel('exact-answer accuracy on test (%)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    for a, b in pairs:
        band = [bounds(d, 'seeds') for d in budget_differences(front, a, b, budgets)]
        ys = [100 * m for m, _, _ in band]
        line = axes[0, 1].plot(budgets, ys, 'o-', ms=3, label=f'{a} − {b}')[0]
        axes[0, 1].fill_between(budgets, [100 * lo for _, lo, _ in band],
                                [100 * hi for _, _, hi in band], color=line.get_color(), alpha=0.2)
    if pairs:
        axes[0, 1].axhline(0, color='k', lw=0.8)
        axes[0, 1].set_xlabel('budget: mean forward passes per answer')
        axes[0, 1].set_ylabel('row − reference, test accuracy (points; 95% over seeds)')
        axes[0, 1].grid(alpha=0.3)
        axes[0, 1].legend(fontsize=8)
    png = os.path.splitext(test_path)[0] + '.png'
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    print(f'wrote {png}')


# --------------------------------------------------------------------------------------------------

def numbers(text, name, kind):
    try:
        return [kind(v) for v in text.split(',') if v]
    except ValueError:
        common.fail(f"{name}='{text}' must be comma-separated numbers")


def main(told):
    """The tables from records (--report, --plot), or else a sweep that writes them."""
    budget_list = sorted(numbers(budgets, 'budgets', float))
    if not budget_list or not all(1 <= b < math.inf for b in budget_list):
        common.fail(f"budgets='{budgets}' must be passes per answer, each >= 1 and finite")
    if report or plot:
        if not val:
            common.fail('each row chooses its settings on val: give --val=VAL_RECORDS')
        if os.path.abspath(val) == os.path.abspath(report or plot):
            print('note: scored on the val records themselves: for choosing, not for reporting')
        if plot:
            pairs = [tuple(pair.split('-', 1)) for pair in differences.split(',') if pair]
            return draw(plot, val, budget_list, pairs)
        return print(report_text(read_records(report), read_records(val, 'val'), budget_list,
                                 references.split(',')))
    sweep(told)


def sweep_settings(dec):
    """Every decoding setting the config asks for (commit rule × RCD knobs) from `dec`, each
    checked before any scoring."""
    starts = first_steps.split(',')
    for start in starts:  # each first step checked alone, as sample.py checks it
        reference = reference_ckpt if start == 'reference' else ''
        check_decoding(replace(dec, first_step=start), reference)
    if split not in ('val', 'test'):
        common.fail(f"split='{split}' must be 'val' or 'test'")
    if n_problems < 0 or batch_size < 1 or not 0 <= seed < 2**32:
        common.fail(f'need n_problems >= 0 (0 = all), batch_size >= 1 and 0 <= seed < 2**32 '
                    f'(got {n_problems}, {batch_size}, {seed})')
    if not dec.use_rcd and (alpha_scales, residual_temperatures) != ('', '1.0'):
        common.fail('alpha_scales and residual_temperatures sweep RCD: use them with '
                    '--use_rcd=True')
    temps = numbers(residual_temperatures, 'residual_temperatures', float)
    scales = numbers(alpha_scales, 'alpha_scales', float) or [dec.alpha_scale]
    knobs = [(a, T, f) for a in scales if a != 0 for T in temps for f in starts]
    knobs += [(0.0, 1.0, 'zero')] if 0 in scales else []  # the residual off: no other knob acts
    rules = [(k, 0.0) for k in numbers(tokens_per_step_grid, 'tokens_per_step_grid', int)]
    thresholds = numbers(threshold_grid, 'threshold_grid', float)
    if not all(0 < tau <= 1 for tau in thresholds):
        common.fail('thresholds must be in (0, 1]')
    rules += [(1, tau) for tau in thresholds]
    settings = [replace(dec, tokens_per_step=k, threshold=tau, alpha_scale=a,
                        residual_temperature=T, first_step=f)
                for k, tau in rules for a, T, f in knobs]
    for problem in [s.problem() for s in settings] or ['there is no setting to sweep']:
        if problem:
            common.fail(problem)
    return settings


def sweep(told):
    """Score every setting on the split: one JSON record per setting, appended to `records`."""
    if reference_ckpt and 'reference' not in first_steps.split(','):
        common.fail("reference_ckpt is read only by first_steps 'reference'")
    dev, autocast = common.setup_device(device, dtype)
    model, meta, tok, reference, train_config = load_models(ckpt, reference_ckpt, dev)
    dec = Decoding(use_rcd=use_rcd, alpha_mode=alpha_mode, alpha_constant=alpha_constant)
    dec = as_trained(dec, train_config, told)  # RCD's settings the checkpoint's, unless told
    settings = sweep_settings(dec)
    torch.manual_seed(seed)
    try:  # before any scoring: a run must not end with results it cannot write
        os.makedirs(os.path.dirname(records) or '.', exist_ok=True)
        open(records, 'a').close()
    except OSError as e:
        common.fail(f'cannot write records to {records} ({e.strerror})')
    name = label or ('RCD' if dec.use_rcd else 'baseline')
    for dec in settings:
        t0 = time.perf_counter()
        right, passes = score(model, tok, meta, split, n_problems, batch_size, autocast, name, dec,
                              reference, torch.Generator(dev).manual_seed(seed))
        wall = time.perf_counter() - t0  # score reads every answer back to the CPU: the GPU is done
        n, correct, rule = len(right), sum(right), 'threshold' if dec.threshold else 'static'
        record = dict(label=name, ckpt=ckpt, train_seed=train_config.get('seed'),
                      dataset=meta['dataset'], data_seed=meta.get('data_seed'), split=split,
                      block_size=model.cfg.block_size, use_rcd=dec.use_rcd,
                      alpha_mode=dec.alpha_mode if dec.use_rcd else 'none',
                      alpha_scale=dec.alpha_scale,
                      first_step=dec.first_step, residual_temperature=dec.residual_temperature,
                      rule=rule, tokens_per_step=None if dec.threshold else dec.tokens_per_step,
                      threshold=dec.threshold or None, n=n, correct=correct,
                      accuracy=correct / n, items=''.join('01'[x] for x in right),
                      mean_passes=passes, wall_s=wall,
                      device=torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu')
        print(f'{name}, {setting_of(record)}: accuracy {100 * correct / n:.1f}% on {n} {split}, '
              f'{passes:.1f} passes per answer, {wall:.1f}s', flush=True)
        try:
            with open(records, 'a') as f:
                f.write(json.dumps(record) + '\n')
        except OSError as e:
            common.fail(f'could not write {records} ({e.strerror}); the line above is the result')


if __name__ == '__main__':
    configure_and_run(main, globals())
