"""
Accuracy against decoding budget: sweep tokens per step and confidence thresholds over the val or test split of a row
dataset (sudoku, reasoning) and append one JSON line per setting to `records`: method, rule, accuracy with a 95%
confidence interval, which items were right (so two methods on the same items compare *paired*), valid Sudoku grids,
mean forward passes per answer (denoising steps + cache fills + any first-step pass) and wall time. Every setting runs
the same sampler (sample.generate); the baseline is the plain sampler, alpha = 0 (`--use_rcd=False`).

    python eval.py --ckpt=out/recipe/baseline/ckpt.pt --label=baseline --split=val
    python eval.py --ckpt=out/recipe/rcd/ckpt.pt --label=RCD --use_rcd=True --split=val
    python eval.py --frontier=test.jsonl --val=val.jsonl   # the accuracy-vs-passes frontier, chosen on val
    python eval.py --compare=results.jsonl                 # paired differences to the baseline, per setting
    python eval.py --report=test.jsonl --val=val.jsonl     # all of these tables, against each control too
    python eval.py --claim=test.jsonl --val=val.jsonl      # each method in half the passes of the baseline's best
    python eval.py --plot=test.jsonl --val=val.jsonl       # the frontiers with 95% CIs -> test.png (matplotlib)
The frontier is the measure: at each budget of P forward passes per answer, the best accuracy a method reaches,
with the decoding setting (rule, threshold or tokens per step, RCD's knobs) chosen on the val split among those
that averaged at most P passes there, then scored on test. Methods are compared paired on the same test items.
"""
import collections
import json
import math
import os
import pickle
import sys
import time

import torch
from tqdm import tqdm

import common
from configurator import configure
from sample import Decoding, answer_of, check_decoding, generate, is_right, load_models

# -----------------------------------------------------------------------------------------------------------------
ckpt = 'out/stage1/ckpt.pt'
label = ''                   # the method's name in records and plot ('' = 'RCD' with use_rcd, else 'baseline')
use_rcd = False              # RCD sampling (residual context); False = the plain sampler, alpha = 0
alpha_mode = 'entropy'       # with use_rcd: 'entropy', 'confidence', 'constant', 'none'
alpha_constant = 0.5
alpha_scales = '1.0'         # with use_rcd, to sweep: α multiplied by these (the value the model was trained
                             # with; 0 = the residual off: this model decoded by the plain sampler)
residual_temperatures = '1.0'  # with use_rcd: T_res values to sweep (α from softmax(logits / T_res))
first_steps = 'zero'         # with use_rcd, to sweep: 'zero', 'self', 'reference' (needs reference_ckpt), 'dirichlet'
residual_steps = '0'         # with use_rcd, to sweep: residuals reach only a block's first N steps (0 = every step)
reference_ckpt = ''
split = 'test'               # 'val' to choose settings, 'test' to report
tokens_per_step_grid = '1,2,4,8'  # static rule settings ('' = none)
threshold_grid = '0.5,0.7,0.9,0.95,0.97,0.99,0.999,0.9999,0.99999'  # threshold settings ('' = none)
n_problems = 0               # problems per setting (0 = all of the split)
batch_size = 500
records = 'out/results.jsonl'
frontier = ''                # test records: print each method's frontier (with --val) against `baseline`; exit
report = ''                  # test records: print every table of frontier, claim and compare (with --val); exit
val = ''                     # the val records the frontier's settings are chosen on
budgets = '2,3,4,5,6,8,10,12'  # the frontier's budgets: mean forward passes per answer
plot = ''                    # test records: draw the frontiers (with --val) to a PNG next to them; exit
compare = ''                 # a records file: print each method's paired difference per setting; exit
claim = ''                   # test records: each method in half the passes of the baseline's ceiling (with --val); exit
baseline = 'baseline'        # the label the others are compared with
device = 'auto'
dtype = 'auto'
seed = 1337
# -----------------------------------------------------------------------------------------------------------------


def score(model, tok, meta, split, n_problems, batch_size, autocast, desc, dec, reference, generator):
    """(per-problem correctness list, valid Sudoku grids or None, mean forward passes per answer) on
    data/<dataset>/<split>.pkl. Problems are batched by prompt length, so every row of a batch shares the same
    block alignment; the list is in the file's order, the same for every method."""
    path = os.path.join(common.dataset_dir(meta['dataset']), f'{split}.pkl')
    if 'answer_prefix' not in meta or not os.path.isfile(path):
        common.fail(f"dataset '{meta['dataset']}' has no scorable {split} split ({path}); run its prepare.py")
    with open(path, 'rb') as f:
        problems = pickle.load(f)[:n_problems or None]
    grids = meta.get('task') == 'sudoku'  # also count answers that are valid Sudoku grids
    if grids:
        from data.sudoku.prepare import is_valid_grid
    by_len = {}
    for i, (q, solution) in enumerate(problems):
        by_len.setdefault(len(tok.encode(q)), []).append(i)
    right, valid, passes, dev = [False] * len(problems), 0, 0, model.wte.weight.device
    bar = tqdm(total=len(problems), desc=desc, dynamic_ncols=True, disable=not sys.stderr.isatty())
    for p_len, group in sorted(by_len.items()):
        for k in range(0, len(group), batch_size):
            chunk = group[k:k + batch_size]
            ids = torch.tensor([tok.encode(problems[i][0]) for i in chunk], device=dev)
            with autocast:
                out, n_pass = generate(model, ids, meta['row_len'] - p_len, dec, meta['eos_id'], reference,
                                       generator)
            for i, row in zip(chunk, out[:, p_len:].tolist()):
                pred = answer_of(tok.decode(row), meta['answer_prefix'])
                right[i] = is_right(pred, problems[i][1], meta['answer_prefix'])
                valid += grids and is_valid_grid(pred)
            passes += int(n_pass.sum())
            bar.update(len(chunk))
    bar.close()
    return right, valid if grids else None, passes / len(problems)


# ------------------------------------------------------------------------------------------------------------------
# Statistics: intervals of one accuracy, and of the paired difference of two methods on the same items

def wilson_interval(correct, n, z=1.96):
    """95% interval of a binomial proportion (Wilson score): sound near 0% and 100%, unlike p ± 2·se."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))  # rounding must not cross p


def binomial_interval(k, n, level=0.95):
    """Exact (Clopper-Pearson) interval of a binomial proportion from k successes in n: the p at which seeing >= k
    (for the lower end), or <= k (for the upper end), has probability (1 - level) / 2. Solved by bisection."""
    log_choose = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in range(n + 1)]

    def tail(p, lo, hi):  # P(lo <= X <= hi) for X ~ Binomial(n, p), 0 < p < 1, in log space: no overflow
        log_p, log_q = math.log(p), math.log1p(-p)
        return sum(math.exp(log_choose[i] + i * log_p + (n - i) * log_q) for i in range(lo, hi + 1))

    def solve(f):  # the p in (0, 1) where the increasing function f crosses (1 - level) / 2
        a, b = 0.0, 1.0
        for _ in range(60):
            mid = (a + b) / 2
            a, b = (mid, b) if f(mid) < (1 - level) / 2 else (a, mid)
        return (a + b) / 2
    lower = 0.0 if k == 0 else solve(lambda p: tail(p, k, n))
    upper = 1.0 if k == n else solve(lambda p: -tail(p, 0, k) + (1 - level))  # tail(<= k) falls as p grows
    return lower, upper


def paired_difference(a, b, level=0.95):
    """Accuracy of a minus accuracy of b on the same items (lists of bools), with an exact McNemar-based interval:
    given the d items where the two disagree, the number that a gets right is Binomial(d, π), the difference is
    (d / n)(2π − 1), and π's Clopper-Pearson interval maps onto it. Returns (difference, lower, upper)."""
    n = len(a)
    if n == 0 or n != len(b):
        raise ValueError(f'paired items must match in number ({len(a)} vs {len(b)})')
    a_only = sum(x and not y for x, y in zip(a, b))
    d = a_only + sum(y and not x for x, y in zip(a, b))
    if d == 0:
        return 0.0, 0.0, 0.0
    lo, hi = binomial_interval(a_only, d, level)
    return (2 * a_only - d) / n, d / n * (2 * lo - 1), d / n * (2 * hi - 1)


# ------------------------------------------------------------------------------------------------------------------
# Reading records: per-setting comparison, and the frontier chosen on val

def read_records(path):
    if not os.path.isfile(path):
        common.fail(f"records file '{path}' not found; run eval.py on a checkpoint first")
    need = {'label', 'rule', 'items', 'mean_passes', 'train_seed', 'split', 'accuracy'}
    rows = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            try:
                row = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                common.fail(f'{path}, line {i}: not a JSON record')
            if row is not None and (not isinstance(row, dict) or not need <= row.keys()):
                common.fail(f"{path}, line {i}: not an eval.py record (needs {', '.join(sorted(need))})")
            rows += [row] if row is not None else []
    if not rows:
        common.fail(f'records file {path} holds no records')
    return rows


def setting_of(r):
    rule = f"{r['tokens_per_step']} tokens/step" if r['rule'] == 'static' else f"threshold {r['threshold']}"
    if r.get('use_rcd') and r.get('alpha_scale') == 0:
        rule += ', residual off'
    elif r.get('use_rcd') and (r['first_step'] != 'zero' or r['residual_temperature'] != 1.0):
        rule += f", first step {r['first_step']}, T_res {r['residual_temperature']}"
    if r.get('use_rcd') and r.get('residual_steps'):  # records before the knob have none: every step
        rule += f", residuals in the first {r['residual_steps']} steps"
    return rule


def items(r):
    return [c == '1' for c in r['items']]


def comparison(rows, baseline_label):
    """Markdown: per setting, each method's accuracy and paired difference to the baseline (95% CI) for every
    training seed, and their mean. Records pair up by (split, setting, train_seed)."""
    key = lambda r: (r['split'], setting_of(r).split(',')[0], r['train_seed'])  # noqa: E731
    base = {key(r): r for r in rows if r['label'] == baseline_label}
    if not base:
        common.fail(f"no records labelled '{baseline_label}' to compare with (set --baseline=LABEL)")
    lines = ['| method | setting | passes | seed: baseline → method, difference [95% CI] | mean difference |',
             '|---|---|---|---|---|']
    for method in dict.fromkeys(r['label'] for r in rows if r['label'] != baseline_label):
        for setting in dict.fromkeys(setting_of(r) for r in rows if r['label'] == method):
            runs = [(r, base.get(key(r))) for r in rows if r['label'] == method and setting_of(r) == setting]
            runs = [(r, b) for r, b in runs if b is not None]
            if runs:
                cells, diffs = zip(*(difference_cell(r, b) for r, b in runs))
                passes = f"{runs[0][1]['mean_passes']:.0f} / {runs[0][0]['mean_passes']:.0f}"
                lines.append(f"| {method} | {setting} | {passes} | {'<br>'.join(cells)} | "
                             f"{100 * sum(diffs) / len(diffs):+.1f} |")
    return '\n'.join(lines)


def difference_cell(r, b):
    """'seed: baseline → method, difference [95% CI]' of two records on the same items, and the difference."""
    d, lo, hi = paired_difference(items(r), items(b))
    return (f"{r['train_seed']}: {100 * b['accuracy']:.1f} → {100 * r['accuracy']:.1f}, "
            f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"), d


def frontier_points(test_rows, val_rows, budgets):
    """{(method, seed): {budget: the test record of the setting chosen on val}}. The chosen setting is the one
    with the best val accuracy among the settings that averaged at most `budget` forward passes per answer on val
    (ties: fewer passes). Budgets with no such setting are left out."""
    test = {(r['label'], r['train_seed'], setting_of(r)): r for r in test_rows}
    out = {}
    for method, seed in dict.fromkeys((r['label'], r['train_seed']) for r in test_rows):
        mine = [r for r in val_rows if (r['label'], r['train_seed']) == (method, seed)]
        for budget in budgets:
            fits = [r for r in mine if r['mean_passes'] <= budget + 1e-9]
            if fits:
                best = max(fits, key=lambda r: (r['accuracy'], -r['mean_passes']))
                if (method, seed, setting_of(best)) in test:
                    out.setdefault((method, seed), {})[budget] = test[(method, seed, setting_of(best))]
    return out


def val_frontier_means(val_rows, budgets):
    """{method: its val frontier averaged over the budgets and seeds}, a budget that nothing fits counting 0:
    one number per method, to choose the method on val."""
    points = frontier_points(val_rows, val_rows, budgets)
    scores = {}
    for method, seed in dict.fromkeys((r['label'], r['train_seed']) for r in val_rows):
        chosen = points.get((method, seed), {})
        scores.setdefault(method, []).append(sum(r['accuracy'] for r in chosen.values()) / len(budgets))
    return {method: sum(v) / len(v) for method, v in scores.items()}


def claim_table(test_rows, val_rows, baseline_label):
    """Markdown: the paper's efficiency claim, per seed. The baseline's ceiling is its best setting at any cost
    (chosen on val); each method gets half the passes that setting averaged on val, chooses its best setting
    within them on val, and is paired with the ceiling on the same test items."""
    val_of = {(r['label'], r['train_seed'], setting_of(r)): r for r in val_rows}
    ceilings = frontier_points(test_rows, val_rows, [math.inf])
    if not any(m == baseline_label for m, _ in ceilings):
        common.fail(f"no records labelled '{baseline_label}' in both files (set --baseline=LABEL)")
    lines = ["| method | seed: the baseline's ceiling → the method in half its passes, difference [95% CI] "
             "(passes; setting) | mean difference |", '|---|---|---|']
    for method in dict.fromkeys(m for m, _ in ceilings if m != baseline_label):
        cells, diffs = [], []
        for seed in sorted({s for m, s in ceilings if m == method}, key=str):
            base = ceilings.get((baseline_label, seed), {}).get(math.inf)
            if base is None:
                continue
            half = val_of[(baseline_label, seed, setting_of(base))]['mean_passes'] / 2
            mine = frontier_points(test_rows, val_rows, [half]).get((method, seed), {}).get(half)
            if mine is None:  # nothing fits: it scores 0, as in the val frontier's mean
                cells.append(f'{seed}: nothing within {half:.1f} passes on val')
                diffs.append(-base['accuracy'])
                continue
            cell, d = difference_cell(mine, base)
            cells.append(f"{cell} ({base['mean_passes']:.1f} → {mine['mean_passes']:.1f}; {setting_of(mine)})")
            diffs.append(d)
        if cells:
            lines.append(f"| {method} | {'<br>'.join(cells)} | {100 * sum(diffs) / len(diffs):+.1f} |")
    return '\n'.join(lines)


def frontier_table(test_rows, val_rows, budgets, baseline_label):
    """Markdown: per budget, each method's test accuracy (mean over seeds) at the setting val chose, and per
    seed the paired difference to the baseline's chosen setting on the same test items (95% CI)."""
    points = frontier_points(test_rows, val_rows, budgets)
    seeds = sorted({seed for _, seed in points}, key=str)
    if not any(m == baseline_label for m, _ in points):
        common.fail(f"no records labelled '{baseline_label}' in both files (set --baseline=LABEL)")
    lines = ['| method | budget (passes) | baseline | method | seed: difference [95% CI] (chosen setting) '
             '| mean difference |', '|---|---|---|---|---|---|']
    for method in dict.fromkeys(m for m, _ in points if m != baseline_label):
        for budget in budgets:
            pairs = [(points.get((method, s), {}).get(budget), points.get((baseline_label, s), {}).get(budget))
                     for s in seeds]
            pairs = [(r, b) for r, b in pairs if r is not None and b is not None]
            if not pairs:
                continue
            cells, diffs = zip(*(difference_cell(r, b) for r, b in pairs))
            cells = [f'{cell} ({setting_of(r)})' for cell, (r, _) in zip(cells, pairs)]
            mean = lambda key, i: sum(p[i][key] for p in pairs) / len(pairs)  # noqa: E731
            lines.append(f"| {method} | ≤ {budget} | {100 * mean('accuracy', 1):.1f} ({mean('mean_passes', 1):.1f})"
                         f" | {100 * mean('accuracy', 0):.1f} ({mean('mean_passes', 0):.1f}) | "
                         f"{'<br>'.join(cells)} | {100 * sum(diffs) / len(diffs):+.1f} |")
    return '\n'.join(lines)


def draw(test_path, val_path, budgets):
    """Each method's frontier: test accuracy at the setting chosen on val, against the budget in forward passes
    per answer; seeds pooled (mean accuracy, 95% Wilson interval over all their answers)."""
    rows = read_records(test_path)
    points = frontier_points(rows, read_records(val_path), budgets)
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        common.fail('the plot needs matplotlib (pip install matplotlib); the records are plain JSON lines')
    seeds = collections.Counter(m for m, _ in points)  # per method: they may differ
    same = len(set(seeds.values())) == 1
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in seeds:
        xs, ys, err = [], [], [[], []]
        for budget in budgets:
            runs = [p[budget] for (m, _), p in points.items() if m == method and budget in p]
            if runs:
                correct, n = sum(r['correct'] for r in runs), sum(r['n'] for r in runs)
                lo, hi = wilson_interval(correct, n)
                xs.append(budget)
                ys.append(100 * correct / n)
                err[0].append(ys[-1] - 100 * lo)
                err[1].append(100 * hi - ys[-1])
        ax.errorbar(xs, ys, yerr=err, marker='o', capsize=3,
                    label=method if same else f"{method} ({seeds[method]} seed{'s' * (seeds[method] > 1)})")
    ax.set_xlabel('budget: mean forward passes per answer (setting chosen on val)')
    ax.set_ylabel('exact-answer accuracy on test (%)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    k = max(seeds.values())
    ax.set_title(f"accuracy-vs-passes frontier ({rows[0]['n']} test problems"
                 + (f' x {k} seeds' if same and k > 1 else '') + ', 95% CI)', fontsize=10)
    png = os.path.splitext(test_path)[0] + '.png'
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    print(f'wrote {png}')


# ------------------------------------------------------------------------------------------------------------------

def numbers(text, name, kind):
    try:
        return [kind(v) for v in text.split(',') if v]
    except ValueError:
        common.fail(f"{name}='{text}' must be comma-separated numbers")


def main():
    """The tables from records (--report, --frontier, --claim, --plot, --compare), or else a sweep that writes
    them."""
    budget_list = numbers(budgets, 'budgets', float)
    if report or plot or frontier or claim:
        if not val:
            common.fail('the frontier chooses its settings on val: give --val=VAL_RECORDS')
        if report:
            return print(report_text(read_records(report), read_records(val), budget_list))
        if plot:
            return draw(plot, val, budget_list)
        if claim:
            return print(claim_table(read_records(claim), read_records(val), baseline))
        return print(frontier_text(read_records(frontier), read_records(val), budget_list, baseline))
    if compare:
        return print(comparison(read_records(compare), baseline))
    sweep(*sweep_settings())


def frontier_text(test_rows, val_rows, budget_list, baseline_label):
    """The frontier table, then each method's val frontier averaged over the budgets (to choose on val)."""
    means = sorted(val_frontier_means(val_rows, budget_list).items(), key=lambda kv: -kv[1])
    return (frontier_table(test_rows, val_rows, budget_list, baseline_label)
            + '\n\nval frontier averaged over the budgets and seeds (a budget nothing fits counts 0): '
            + ', '.join(f'{method} {100 * m:.1f}' for method, m in means))


def report_text(test_rows, val_rows, budget_list):
    """Every table of a run, in one process (each python start costs seconds): the frontier, the ceiling,
    the paper's claim, both again against each control (labels 'baseline_rollout*': the rollout states
    without the residual), and the paired differences per setting."""
    parts = [('the frontier (settings chosen on val, scored on test)',
              frontier_text(test_rows, val_rows, budget_list, baseline)),
             ("the ceiling: each method's best setting at any cost (up to 1 token per step), chosen on val",
              frontier_text(test_rows, val_rows, [1000.0], baseline)),
             ("the paper's claim, per seed: each method in half the passes of the baseline's ceiling, "
              'paired with it', claim_table(test_rows, val_rows, baseline))]
    for control in dict.fromkeys(r['label'] for r in test_rows if r['label'].startswith('baseline_rollout')):
        parts.append((f'the frontier and the claim against the control ({control})',
                      frontier_text(test_rows, val_rows, budget_list, control) + '\n\n'
                      + claim_table(test_rows, val_rows, control)))
    parts.append(('paired differences to the baseline on test, per setting', comparison(test_rows, baseline)))
    return '\n\n'.join(f'## {title}\n\n{text}' for title, text in parts)


def sweep_settings():
    """(decoding, settings): every (rule, k, τ, α scale, T_res, first step, residual steps) the config
    asks for, each checked before any work."""
    dec = Decoding(use_rcd=use_rcd, alpha_mode=alpha_mode, alpha_constant=alpha_constant)
    starts = first_steps.split(',')
    for start in starts:  # each first step checked alone, as sample.py checks it
        dec.first_step = start
        check_decoding(dec, reference_ckpt if start == 'reference' else '')
    if reference_ckpt and 'reference' not in starts:
        common.fail("reference_ckpt is read only by first_steps 'reference'")
    if split not in ('val', 'test'):
        common.fail(f"split='{split}' must be 'val' or 'test'")
    if n_problems < 0 or batch_size < 1:
        common.fail(f'need n_problems >= 0 (0 = all) and batch_size >= 1 (got {n_problems}, {batch_size})')
    temps = numbers(residual_temperatures, 'residual_temperatures', float) if use_rcd else [1.0]
    scales = numbers(alpha_scales, 'alpha_scales', float) if use_rcd else [1.0]
    cutoffs = numbers(residual_steps, 'residual_steps', int) if use_rcd else [0]
    knobs = [(a, T, f, n) for a in scales if a != 0 for T in temps for f in starts for n in cutoffs]
    knobs += [(0.0, 1.0, 'zero', 0)] if 0 in scales else []  # the residual off: the other knobs do nothing
    rules = [('static', k, 0.0) for k in numbers(tokens_per_step_grid, 'tokens_per_step_grid', int)]
    rules += [('threshold', 1, tau) for tau in numbers(threshold_grid, 'threshold_grid', float)]
    settings = [rule + knob for rule in rules for knob in knobs]
    if not settings or any(k < 1 or not 0.0 < tau <= 1.0 and rule == 'threshold' or T <= 0 or a < 0 or n < 0
                           for rule, k, tau, a, T, _, n in settings):
        common.fail('need at least one setting, tokens per step >= 1, thresholds in (0, 1], T_res > 0, '
                    'alpha_scales >= 0, residual_steps >= 0')
    return dec, settings


def sweep(dec, settings):
    """Score every setting on the split: one JSON record per setting, appended to `records`."""
    try:  # before any scoring: a run must not end with results it cannot write
        os.makedirs(os.path.dirname(records) or '.', exist_ok=True)
        open(records, 'a').close()
    except OSError as e:
        common.fail(f'cannot write records to {records} ({e.strerror})')
    torch.manual_seed(seed)
    dev, autocast = common.setup_device(device, dtype)
    model, meta, tok, reference, train_config = load_models(ckpt, reference_ckpt, dev)
    name = label or ('RCD' if use_rcd else 'baseline')
    for rule, k, tau, a, T, start, n_res in settings:
        dec.tokens_per_step, dec.threshold, dec.alpha_scale = k, tau, a
        dec.residual_temperature, dec.first_step, dec.residual_steps = T, start, n_res
        t0 = time.perf_counter()
        right, valid, passes = score(model, tok, meta, split, n_problems, batch_size, autocast, name, dec,
                                     reference, torch.Generator(dev).manual_seed(seed))
        wall = time.perf_counter() - t0  # score reads every answer back to the CPU: the GPU is done
        n, correct = len(right), sum(right)
        record = dict(label=name, ckpt=ckpt, train_seed=train_config.get('seed'), dataset=meta['dataset'],
                      split=split, block_size=model.cfg.block_size, use_rcd=use_rcd,
                      alpha_mode=alpha_mode if use_rcd else 'none', alpha_scale=a, first_step=start,
                      residual_temperature=T, residual_steps=n_res, rule=rule,
                      tokens_per_step=k if rule == 'static' else None,
                      threshold=tau if rule == 'threshold' else None, n=n, correct=correct, accuracy=correct / n,
                      ci95=wilson_interval(correct, n), valid=valid, items=''.join('01'[x] for x in right),
                      mean_passes=passes, wall_s=wall,
                      device=torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu')
        lo, hi = record['ci95']
        grids = f', {valid} valid grids' if valid is not None else ''
        print(f'{name}, {setting_of(record)}: accuracy {100 * correct / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] '
              f'on {n} {split}{grids}, {passes:.1f} passes per answer, {wall:.1f}s', flush=True)
        try:
            with open(records, 'a') as f:
                f.write(json.dumps(record) + '\n')
        except OSError as e:
            common.fail(f'could not write {records} ({e.strerror}); the line above is the result')


if __name__ == '__main__':
    configure(globals(), [k for k, v in globals().items()
                          if not k.startswith('_') and type(v) in (int, float, bool, str)], sys.argv[1:])
    main()
