"""
Accuracy against decoding budget: sweep tokens per step and confidence thresholds over the test split of a row dataset
(reasoning) and append one JSON line per setting to `records`: method, rule, accuracy with a 95% confidence interval,
mean forward passes per answer (denoising steps + cache fills; the reference's passes too with a warm start) and wall
time. Every setting runs the same sampler (sample.generate); the baseline is RCD with alpha = 0 (`--rcd=False`).

    python eval.py --ckpt=out/recipe/baseline/ckpt.pt --label=baseline
    python eval.py --ckpt=out/recipe/rcd/ckpt.pt --label=RCD --rcd=True
    python eval.py --plot=out/recipe/results.jsonl        # accuracy vs forward passes -> results.png (matplotlib)
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
from sample import check_decoding, generate, load_models

# -----------------------------------------------------------------------------------------------------------------
ckpt = 'out/stage1/ckpt.pt'
label = ''                   # the method's name in records and plot ('' = 'RCD' with rcd, else 'baseline')
rcd = False                  # RCD sampling (residual context); False = the plain sampler, alpha = 0
alpha_mode = 'entropy'       # with rcd: 'entropy', 'confidence', 'constant', 'none'
alpha_constant = 0.5
residual_temperature = 1.0
warm_start = ''              # with rcd: a reference checkpoint whose predictions seed each block's first step
tokens_per_step = '1,2,4,8'  # static rule settings ('' = none)
thresholds = '0.9,0.7,0.5'   # threshold rule settings ('' = none)
n_test = 0                   # test problems per setting (0 = all)
batch_size = 256
records = 'out/results.jsonl'
plot = ''                    # a records file: draw it (PNG next to it) and exit; needs matplotlib
device = 'auto'
dtype = 'auto'
seed = 1337
# -----------------------------------------------------------------------------------------------------------------


def answer_of(text, prefix):
    """The final answer: what follows the last `prefix` on its line, or None."""
    return text.rsplit(prefix, 1)[1].split('\n')[0].strip() if prefix in text else None


def score_test(model, tok, meta, n_test, batch_size, autocast, desc='test', **decode):
    """(correct answers, mean forward passes per answer, problems) on data/<dataset>/test.pkl. Problems are batched by
    prompt length, so every row of a batch shares the same block alignment."""
    path = os.path.join(trainer.dataset_dir(meta['dataset']), 'test.pkl')
    if 'answer_prefix' not in meta or not os.path.isfile(path):
        trainer.fail(f"dataset '{meta['dataset']}' has no scorable test split ({path}); run its prepare.py")
    with open(path, 'rb') as f:
        problems = pickle.load(f)[:n_test or None]
    by_len = {}
    for q, solution in problems:
        by_len.setdefault(len(tok.encode(q)), []).append((q, solution))
    correct, passes, dev = 0, 0, model.wte.weight.device
    bar = tqdm(total=len(problems), desc=desc, dynamic_ncols=True)
    for p_len, group in sorted(by_len.items()):
        for i in range(0, len(group), batch_size):
            chunk = group[i:i + batch_size]
            ids = torch.tensor([tok.encode(q) for q, _ in chunk], device=dev)
            with autocast:
                out, n_pass = generate(model, ids, meta['row_len'] - p_len, eos_id=meta['eos_id'], **decode)
            for (q, solution), row in zip(chunk, out[:, p_len:].tolist()):
                pred = answer_of(tok.decode(row), meta['answer_prefix'])
                correct += pred is not None and pred == answer_of(solution, meta['answer_prefix'])
            passes += int(n_pass.sum())
            bar.update(len(chunk))
    bar.close()
    return correct, passes / len(problems), len(problems)


def wilson_interval(correct, n, z=1.96):
    """95% confidence interval of a binomial proportion (Wilson score): sound near 0% and 100%, unlike p ± 2·se."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def draw(path):
    """Accuracy (with 95% CI) against mean forward passes per answer, one line per method and rule."""
    if not os.path.isfile(path):
        trainer.fail(f"records file '{path}' not found; run eval.py on a checkpoint first")
    try:
        import matplotlib
        import matplotlib.ticker
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        trainer.fail('the plot needs matplotlib (pip install matplotlib); the records are plain JSON lines')
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {m: f'C{i}' for i, m in enumerate(dict.fromkeys(r['label'] for r in rows))}  # one colour per method
    for (method, rule) in dict.fromkeys((r['label'], r['rule']) for r in rows):
        pts = sorted((r for r in rows if r['label'] == method and r['rule'] == rule), key=lambda r: r['mean_passes'])
        x, y = [r['mean_passes'] for r in pts], [100 * r['accuracy'] for r in pts]
        err = [[100 * (r['accuracy'] - r['ci95'][0]) for r in pts], [100 * (r['ci95'][1] - r['accuracy']) for r in pts]]
        ax.errorbar(x, y, yerr=err, marker='o' if rule == 'static' else 's', linestyle='-' if rule == 'static' else
                    '--', capsize=3, color=colors[method], label=f'{method} ({rule})')
    ax.set_xlabel('forward passes per answer (denoising steps + cache fills)')
    ax.set_ylabel('exact-answer accuracy (%)')
    ax.set_xscale('log')
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{rows[0]['dataset']}: accuracy vs decoding budget ({rows[0]['n']} test problems, 95% CI)")
    png = os.path.splitext(path)[0] + '.png'
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    print(f'wrote {png}')


def main():
    if plot:
        return draw(plot)
    check_decoding(1, 0.0, 0.0, alpha_mode, residual_temperature, rcd, warm_start)
    try:
        settings = [('static', int(k), 0.0) for k in tokens_per_step.split(',') if k] + \
                   [('threshold', 1, float(tau)) for tau in thresholds.split(',') if tau]
    except ValueError:
        trainer.fail(f"tokens_per_step='{tokens_per_step}' and thresholds='{thresholds}' must be comma-separated numbers")
    if not settings or any(k < 1 or not 0.0 <= tau <= 1.0 for _, k, tau in settings):
        trainer.fail('need at least one setting, tokens per step >= 1 and thresholds in [0, 1]')
    torch.manual_seed(seed)
    dev, autocast = trainer.setup_device(device, dtype)
    model, meta, tok, reference = load_models(ckpt, warm_start, dev)
    name = label or ('RCD' if rcd else 'baseline')
    os.makedirs(os.path.dirname(records) or '.', exist_ok=True)
    for rule, k, tau in settings:
        decode = dict(tokens_per_step=k, threshold=tau, generator=torch.Generator(dev).manual_seed(seed),
                      alpha_mode=alpha_mode if rcd else None, alpha_constant=alpha_constant,
                      residual_temperature=residual_temperature, reference=reference)
        setting = f'{k} tokens/step' if rule == 'static' else f'threshold {tau}'
        t0 = time.perf_counter()
        correct, passes, n = score_test(model, tok, meta, n_test, batch_size, autocast, f'{name}, {setting}', **decode)
        wall = time.perf_counter() - t0  # score_test reads every answer back to the CPU: the GPU is done
        acc = correct / n
        record = dict(label=name, ckpt=ckpt, dataset=meta['dataset'], block_size=model.cfg.block_size, rcd=rcd,
                      alpha_mode=alpha_mode if rcd else 'none', warm_start=warm_start, rule=rule,
                      tokens_per_step=k if rule == 'static' else None, threshold=tau if rule == 'threshold' else None,
                      n=n, correct=correct, accuracy=acc, ci95=wilson_interval(correct, n), mean_passes=passes,
                      wall_s=wall, device=torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu')
        with open(records, 'a') as f:
            f.write(json.dumps(record) + '\n')
        print(f'{name}, {setting}: accuracy {100 * acc:.1f}% [{100 * record["ci95"][0]:.1f}, '
              f'{100 * record["ci95"][1]:.1f}] on {n}, {passes:.1f} passes per answer, {wall:.1f}s')


if __name__ == '__main__':
    configure(globals(), [k for k, v in globals().items() if not k.startswith('_') and type(v) in (int, float, bool, str)],
              sys.argv[1:])
    main()
