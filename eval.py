"""
Accuracy against decoding budget: sweep tokens per step and confidence thresholds over the val or test split of a row
dataset (sudoku, reasoning) and append one JSON line per setting to `records`: method, rule, accuracy with a 95%
confidence interval, which items were right (so two methods on the same items compare *paired*), valid Sudoku grids,
mean forward passes per answer (denoising steps + cache fills + any first-step pass) and wall time. Every setting runs
the same sampler (sample.generate); the baseline is the plain sampler, alpha = 0 (`--rcd=False`).

    python eval.py --ckpt=out/recipe/baseline/ckpt.pt --label=baseline
    python eval.py --ckpt=out/recipe/rcd/ckpt.pt --label=RCD --rcd=True
    python eval.py --compare=out/recipe/results.jsonl     # paired differences to the baseline, per setting and seed
    python eval.py --plot=out/recipe/results.jsonl        # accuracy vs forward passes -> results.png (matplotlib)
Choose decoding settings on --split=val; report --split=test.
"""
import json
import math
import os
import pickle
import sys
import time

import torch
from tqdm import tqdm

import trainer
from configurator import configure
from sample import answer_of, check_decoding, generate, is_right, load_models

# -----------------------------------------------------------------------------------------------------------------
ckpt = 'out/stage1/ckpt.pt'
label = ''                   # the method's name in records and plot ('' = 'RCD' with rcd, else 'baseline')
rcd = False                  # RCD sampling (residual context); False = the plain sampler, alpha = 0
alpha_mode = 'entropy'       # with rcd: 'entropy', 'confidence', 'constant', 'none'
alpha_constant = 0.5
residual_temperature = 1.0   # with rcd: T_res, α from softmax(logits / T_res)
first_step = 'zero'          # with rcd: 'zero', 'self', 'reference' (needs reference_ckpt), 'dirichlet'
reference_ckpt = ''
split = 'test'               # 'val' to choose settings, 'test' to report
tokens_per_step = '1,2,4,8'  # static rule settings ('' = none)
thresholds = '0.9,0.7,0.5'   # threshold rule settings ('' = none)
n_problems = 0               # problems per setting (0 = all of the split)
batch_size = 500
records = 'out/results.jsonl'
plot = ''                    # a records file: draw it (PNG next to it) and exit; needs matplotlib
compare = ''                 # a records file: print each method's paired difference to `baseline` and exit
select = ''                  # a records file of val runs: print each method's best decoding settings and exit
baseline = 'baseline'        # the label the others are compared with
device = 'auto'
dtype = 'auto'
seed = 1337
# -----------------------------------------------------------------------------------------------------------------


def score(model, tok, meta, split, n_problems, batch_size, autocast, desc='test', **decode):
    """(per-problem correctness list, valid Sudoku grids or None, mean forward passes per answer) on
    data/<dataset>/<split>.pkl. Problems are batched by prompt length, so every row of a batch shares the same block
    alignment; the list is in the file's order, the same for every method."""
    path = os.path.join(trainer.dataset_dir(meta['dataset']), f'{split}.pkl')
    if 'answer_prefix' not in meta or not os.path.isfile(path):
        trainer.fail(f"dataset '{meta['dataset']}' has no scorable {split} split ({path}); run its prepare.py")
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
                out, n_pass = generate(model, ids, meta['row_len'] - p_len, eos_id=meta['eos_id'], **decode)
            for i, row in zip(chunk, out[:, p_len:].tolist()):
                pred = answer_of(tok.decode(row), meta['answer_prefix'])
                right[i] = is_right(pred, problems[i][1], meta['answer_prefix'])
                valid += grids and is_valid_grid(pred)
            passes += int(n_pass.sum())
            bar.update(len(chunk))
    bar.close()
    return right, valid if grids else None, passes / len(problems)


def wilson_interval(correct, n, z=1.96):
    """95% confidence interval of a binomial proportion (Wilson score): sound near 0% and 100%, unlike p ± 2·se."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def binomial_interval(k, n, level=0.95):
    """Exact (Clopper-Pearson) interval of a binomial proportion from k successes in n: the p at which seeing >= k
    (for the lower end), or <= k (for the upper end), has probability (1 - level) / 2. Solved by bisection."""
    def tail(p, lo, hi):  # P(lo <= X <= hi) for X ~ Binomial(n, p), 0 < p < 1, in log space: no overflow
        return sum(math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                            + i * math.log(p) + (n - i) * math.log1p(-p)) for i in range(lo, hi + 1))

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


def setting_of(r):
    return f"{r['tokens_per_step']} tokens/step" if r['rule'] == 'static' else f"threshold {r['threshold']}"


def read_records(path):
    if not os.path.isfile(path):
        trainer.fail(f"records file '{path}' not found; run eval.py on a checkpoint first")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def comparison(rows, baseline_label):
    """Markdown table: per setting, each method's accuracy and paired difference to the baseline (95% CI) for every
    training seed, and their mean over seeds. Records pair up by (split, setting, train_seed)."""
    key = lambda r: (r['split'], setting_of(r), r['train_seed'])  # noqa: E731
    base = {key(r): r for r in rows if r['label'] == baseline_label}
    if not base:
        trainer.fail(f"no records labelled '{baseline_label}' to compare with (set --baseline=LABEL)")
    lines = ['| method | setting | passes | seed: baseline → method, difference [95% CI] | mean difference |',
             '|---|---|---|---|---|']
    for method in dict.fromkeys(r['label'] for r in rows if r['label'] != baseline_label):
        for setting in dict.fromkeys(setting_of(r) for r in rows if r['label'] == method):
            cells, diffs, passes = [], [], []
            for r in (r for r in rows if r['label'] == method and setting_of(r) == setting):
                b = base.get(key(r))
                if b is None:
                    continue
                d, lo, hi = paired_difference([c == '1' for c in r['items']], [c == '1' for c in b['items']])
                cells.append(f"{r['train_seed']}: {100 * b['accuracy']:.1f} → {100 * r['accuracy']:.1f}, "
                             f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]")
                diffs.append(d)
                passes.append(f"{b['mean_passes']:.0f} / {r['mean_passes']:.0f}")
            if cells:
                lines.append(f"| {method} | {setting} | {passes[0]} | {'<br>'.join(cells)} | "
                             f"{100 * sum(diffs) / len(diffs):+.1f} |")
    return '\n'.join(lines)


def selection(rows, baseline_label):
    """Each RCD method's decoding knobs (first step, T_res) by mean val accuracy over the settings swept. Every
    combination is listed as a comment; the chosen one per method, among first steps that add no forward pass (so
    it spends the baseline's budget), as a line 'label first_step T_res accuracy' that config/recipe.sh reads."""
    groups = {}
    for r in rows:
        if r['label'] != baseline_label:
            groups.setdefault((r['label'], r['first_step'], r['residual_temperature']), []).append(r['accuracy'])
    mean = {k: sum(v) / len(v) for k, v in groups.items()}
    lines = [f'# {label} first_step={first} T_res={t}: mean val accuracy {100 * acc:.2f}%'
             for (label, first, t), acc in sorted(mean.items(), key=lambda kv: -kv[1])]
    for method in dict.fromkeys(label for label, _, _ in mean):
        best = max((k for k in mean if k[0] == method and k[1] in ('zero', 'dirichlet')), default=None,
                   key=lambda k: (mean[k], k[1] == 'zero', k[2] == 1.0))  # ties: the paper's cold start, T_res = 1
        if best is not None:
            lines.append(f'{best[0]} {best[1]} {best[2]} {mean[best]:.4f}')
    return '\n'.join(lines)


def draw(path):
    """Accuracy (with 95% CI) against mean forward passes per answer, one line per method and rule; several training
    seeds are pooled (mean accuracy, interval over all their answers)."""
    rows = read_records(path)
    try:
        import matplotlib
        import matplotlib.ticker
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        trainer.fail('the plot needs matplotlib (pip install matplotlib); the records are plain JSON lines')
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {m: f'C{i}' for i, m in enumerate(dict.fromkeys(r['label'] for r in rows))}  # one colour per method
    for (method, rule) in dict.fromkeys((r['label'], r['rule']) for r in rows):
        points = []
        for setting in dict.fromkeys(setting_of(r) for r in rows if (r['label'], r['rule']) == (method, rule)):
            runs = [r for r in rows if (r['label'], setting_of(r)) == (method, setting)]
            correct, n = sum(r['correct'] for r in runs), sum(r['n'] for r in runs)
            points.append((sum(r['mean_passes'] for r in runs) / len(runs), correct / n, *wilson_interval(correct, n)))
        x, y, lo, hi = zip(*sorted(points))
        err = [[100 * (a - b) for a, b in zip(y, lo)], [100 * (b - a) for a, b in zip(y, hi)]]
        ax.errorbar(x, [100 * a for a in y], yerr=err, marker='o' if rule == 'static' else 's', capsize=3,
                    linestyle='-' if rule == 'static' else '--', color=colors[method], label=f'{method} ({rule})')
    ax.set_xlabel('forward passes per answer (denoising steps + cache fills)')
    ax.set_ylabel('exact-answer accuracy (%)')
    ax.set_xscale('log')
    fewest, most = min(r['mean_passes'] for r in rows), max(r['mean_passes'] for r in rows)
    ax.set_xticks([t for t in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192)
                   if fewest / 1.5 <= t <= most * 1.5])
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    seeds = len({r['train_seed'] for r in rows})
    ax.set_title(f"{rows[0]['dataset']}: accuracy vs decoding budget ({rows[0]['n']} {rows[0]['split']} problems"
                 + (f' x {seeds} seeds' if seeds > 1 else '') + ', 95% CI)', fontsize=10)
    png = os.path.splitext(path)[0] + '.png'
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    print(f'wrote {png}')


def main():
    if plot:
        return draw(plot)
    if compare:
        return print(comparison(read_records(compare), baseline))
    if select:
        return print(selection(read_records(select), baseline))
    check_decoding(1, 0.0, 0.0, alpha_mode, residual_temperature, rcd, first_step, reference_ckpt)
    if split not in ('val', 'test'):
        trainer.fail(f"split='{split}' must be 'val' or 'test'")
    try:
        settings = [('static', int(k), 0.0) for k in tokens_per_step.split(',') if k] + \
                   [('threshold', 1, float(tau)) for tau in thresholds.split(',') if tau]
    except ValueError:
        trainer.fail(f"tokens_per_step='{tokens_per_step}' and thresholds='{thresholds}' must be comma-separated numbers")
    if not settings or any(k < 1 or not 0.0 <= tau <= 1.0 for _, k, tau in settings):
        trainer.fail('need at least one setting, tokens per step >= 1 and thresholds in [0, 1]')
    torch.manual_seed(seed)
    dev, autocast = trainer.setup_device(device, dtype)
    model, meta, tok, reference, train_config = load_models(ckpt, reference_ckpt, dev)
    train_seed = train_config.get('seed')
    name = label or ('RCD' if rcd else 'baseline')
    os.makedirs(os.path.dirname(records) or '.', exist_ok=True)
    for rule, k, tau in settings:
        decode = dict(tokens_per_step=k, threshold=tau, generator=torch.Generator(dev).manual_seed(seed),
                      alpha_mode=alpha_mode if rcd else None, alpha_constant=alpha_constant,
                      residual_temperature=residual_temperature, first_step=first_step, reference=reference)
        setting = f'{k} tokens/step' if rule == 'static' else f'threshold {tau}'
        t0 = time.perf_counter()
        right, valid, passes = score(model, tok, meta, split, n_problems, batch_size, autocast, f'{name}, {setting}',
                                     **decode)
        wall = time.perf_counter() - t0  # score reads every answer back to the CPU: the GPU is done
        n, correct = len(right), sum(right)
        record = dict(label=name, ckpt=ckpt, train_seed=train_seed, dataset=meta['dataset'], split=split,
                      block_size=model.cfg.block_size, rcd=rcd, alpha_mode=alpha_mode if rcd else 'none',
                      first_step=first_step, residual_temperature=residual_temperature, rule=rule,
                      tokens_per_step=k if rule == 'static' else None, threshold=tau if rule == 'threshold' else None,
                      n=n, correct=correct, accuracy=correct / n, ci95=wilson_interval(correct, n), valid=valid,
                      items=''.join('1' if x else '0' for x in right), mean_passes=passes, wall_s=wall,
                      device=torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu')
        with open(records, 'a') as f:
            f.write(json.dumps(record) + '\n')
        print(f'{name}, {setting}: accuracy {100 * correct / n:.1f}% [{100 * record["ci95"][0]:.1f}, '
              f'{100 * record["ci95"][1]:.1f}] on {n} {split}' + (f', {valid} valid grids' if valid is not None else '')
              + f', {passes:.1f} passes per answer, {wall:.1f}s')


if __name__ == '__main__':
    configure(globals(), [k for k, v in globals().items() if not k.startswith('_') and type(v) in (int, float, bool, str)],
              sys.argv[1:])
    main()
