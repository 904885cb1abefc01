"""
One Sudoku puzzle's decoding, drawn: the grid after every denoising step, one row of grids per
model, all at one commit rule. A cell committed at that step is green (right) or red (wrong); a
cell still masked shows the model's top candidate for it, shaded by the α its residual carries into
the next step (no shade: a model decoded without residuals). Each model decodes as it was trained
(its checkpoint's RCD settings), with a cold first step. Beside the grids, from stored records: the
α that stage 2 trained RCD models on against the α decoding fed them, on the same val puzzles.

    python picture.py        # the CPU quick start's onpolicy and RCD models, first 4x4 puzzle
    S=out/recipe_gpu/hard/s1 # the README's: the recipe's seed 1, hard test puzzle 0, 3 passes
    python picture.py --tokens_per_step=32 --ckpts=$S/onpolicy/ckpt.pt,$S/rcd_onpolicy/ckpt.pt
Needs matplotlib; reads a Sudoku dataset (sudoku, sudoku4).
"""
import json
import math
import os
import signal

if __name__ == '__main__':  # Ctrl-C while torch loads: quit quietly (until configure())
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))

import torch

import common
import engine
import rcd
from configurator import configure_and_run
from data.datasets import load_problems
from model import token_probs
from sample import Decoding, generate

# --------------------------------------------------------------------------------------------------
ckpts = 'out/quick_onpolicy/ckpt.pt,out/quick_cpu_stage2/ckpt.pt'  # the models, one row each
labels = ''                  # a name per model ('' = each checkpoint's directory)
puzzle = 0                   # which test puzzle (its index in the test split)
tokens_per_step = 8          # the commit rule: tokens per step, or
threshold = 0.0              # > 0: every position whose top probability reaches it
alpha_records = 'results/residual_trace.jsonl'  # the α panel's records ('' = no panel)
alpha_rule = '8 tokens/step'  # the decoding rule of the α panel
png = 'out/decoding_picture.png'
device = 'auto'
dtype = 'auto'
# --------------------------------------------------------------------------------------------------


class TracedRunner(engine.BlockRunner):
    """engine.BlockRunner that keeps the block each pass reads and the logits it returns."""
    passes = []

    def __call__(self, s, e, delta=None):
        logits = super().__call__(s, e, delta)
        TracedRunner.passes.append((self.x[:, s:e].clone(), logits.float().clone()))
        return logits


def decode_traced(model, prompt_ids, new_tokens, dec, eos_id):
    """generate() with every denoising step kept: (tokens, [(block before the step, logits)])."""
    TracedRunner.passes = []
    plain, engine.BlockRunner = engine.BlockRunner, TracedRunner
    try:
        out, _ = generate(model, prompt_ids, new_tokens, dec, eos_id, cuda_graph=False)
    finally:
        engine.BlockRunner = plain
    mask_id = model.cfg.mask_id
    return out, [(b, l) for b, l in TracedRunner.passes if (b == mask_id).any()]  # no cache fills


def grid_steps(model, dec, prompt_ids, solution, eos_id):
    """Per denoising step of the answer's block, each cell as (token, state, α): state 'new' (right
    commit), 'wrong' (wrong commit), 'masked' (token: its top candidate; α: what its residual
    carries to the next step, None without residuals) or 'done' (committed earlier)."""
    p, B, mask_id = prompt_ids.shape[1], model.cfg.block_size, model.cfg.mask_id
    out, steps = decode_traced(model, prompt_ids, len(solution) + 1, dec, eos_id)
    cells = slice(p - p // B * B, p - p // B * B + len(solution))  # the answer inside its block
    blocks = [block for block, _ in steps[1:]] + [out[:, p // B * B:p // B * B + B]]
    frames = []
    for (before, logits), after in zip(steps, blocks):
        probs = token_probs(logits, mask_id, dec.residual_temperature)
        alpha = rcd.residual_weight(probs, dec.alpha_mode, dec.alpha_constant, dec.alpha_scale)
        alpha = alpha.tolist() if dec.use_rcd else None  # None: plain [MASK]
        top = probs.argmax(-1)
        frame = []
        for i in range(cells.start, cells.stop):
            right = int(after[0, i]) == solution[i - cells.start]
            if after[0, i] == mask_id:
                frame.append((int(top[0, i]), 'masked', None if alpha is None else alpha[0][i]))
            elif before[0, i] == mask_id:
                frame.append((int(after[0, i]), 'new' if right else 'wrong', None))
            else:
                frame.append((int(after[0, i]), 'done', None))
        frames.append(frame)
    return frames


def draw_grid(ax, frame, itos, clues, shade, title):
    """One step's grid: commits green (right) or red (wrong), the puzzle's clues in light grey,
    masked cells with their top candidate in small type on their α's shade (grey: no residual)."""
    from matplotlib.colors import to_rgb
    from matplotlib.patches import Rectangle
    n = math.isqrt(len(frame))
    colour = dict(new='#b8e6b8', wrong='#f4a6a6', done='white')  # masked: grey, or α's shade
    for k, (token, state, alpha) in enumerate(frame):
        r, c = divmod(k, n)
        face = colour.get(state) or ('#e4e4e4' if alpha is None else shade(alpha))
        ax.add_patch(Rectangle((c, n - 1 - r), 1, 1, facecolor=face, edgecolor='#cccccc'))
        if state == 'masked':  # a candidate: small type, light on a deep shade
            ink = 'white' if sum(to_rgb(face)) < 1.5 else '#444444'
        else:
            ink = '#999999' if k in clues else 'black'
        ax.text(c + 0.5, n - 0.5 - r, itos[token], ha='center', va='center',
                fontsize=5 if state == 'masked' else 7, color=ink)
    box = math.isqrt(n)
    for k in range(0, n + 1, box):  # the boxes' borders
        ax.plot([0, n], [k, k], 'k', lw=1)
        ax.plot([k, k], [0, n], 'k', lw=1)
    ax.set_xlim(0, n)
    ax.set_ylim(0, n)
    ax.set_aspect('equal')
    ax.axis('off')
    ax.set_title(title, fontsize=7)


def draw_alphas(ax, path, rule):
    """Share of residual-reading positions by α: training (stage 2's rows) against decoding."""
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    for r in records:
        if r['source'] == 'training' or (r['source'] == 'decoding' and r['rule'] == rule):
            hist = [sum(b['alpha_hist'][k] for b in r['bins']) for k in range(10)]
            name = os.path.basename(os.path.dirname(r['ckpt']))
            share = [h / sum(hist) if h else math.nan for h in hist]  # log axis: no zeros
            ax.plot([k / 10 + 0.05 for k in range(10)], share,
                    marker='o', ms=3, ls='-' if r['source'] == 'training' else '--',
                    label=f"{name}, {r['source']} (mean {r['mean_alpha']:.2f})")
    ax.set_yscale('log')
    ax.set_xlabel('α fed with the residual', fontsize=7)
    ax.set_ylabel('share of residual-reading positions', fontsize=7)
    ax.set_title(f'α: stage 2 trained on vs decoding fed ({rule})\n{path}', fontsize=8)
    ax.tick_params(labelsize=6)
    ax.legend(fontsize=6)


def draw(plt, rows):
    """The figure: a row of grids per model (with α's colour scale if it reads residuals), and
    the α panel beside them."""
    steps = max(len(frames) for _, frames, _, _ in rows)
    fig = plt.figure(figsize=(1.5 * steps + 1 + 3.5 * bool(alpha_records), 1.9 * len(rows)))
    grids, side = fig.subfigures(1, 2, width_ratios=(1.5 * steps + 1, 3.5 * bool(alpha_records)))
    top = max((a or 0 for _, frames, _, _ in rows for f in frames for *_, a in f), default=0) or 1
    cmap = plt.get_cmap('Oranges')
    shade = lambda alpha: cmap(0.85 * alpha / top)  # noqa: E731
    panels = grids.subfigures(len(rows), 1, squeeze=False)[:, 0]
    for sub, (title, frames, itos, clues) in zip(panels, rows):
        sub.suptitle(title, fontsize=8, x=0.02, ha='left')
        axes = sub.subplots(1, steps + 1, squeeze=False,
                            gridspec_kw=dict(width_ratios=[1] * steps + [0.12]))[0]
        for j, ax in enumerate(axes[:-1]):
            if j >= len(frames):
                ax.axis('off')
                continue
            wrong = sum(state == 'wrong' for _, state, _ in frames[j])
            draw_grid(ax, frames[j], itos, clues, shade,
                      f'step {j + 1}' + (f', {wrong} wrong' if wrong else ''))
        if all(a is None for frame in frames for *_, a in frame):  # no residuals: no scale
            axes[-1].axis('off')
            continue
        bar = plt.cm.ScalarMappable(plt.Normalize(0, top / 0.85), cmap)
        sub.colorbar(bar, cax=axes[-1]).set_label('α of a masked cell', fontsize=6)
        axes[-1].tick_params(labelsize=5)
    if alpha_records:
        draw_alphas(side.subplots(), alpha_records, alpha_rule)
    return fig


def main(told):
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        common.fail('the picture needs matplotlib (pip install matplotlib)')
    paths = [p for p in ckpts.split(',') if p]
    names = labels.split(',') if labels else [os.path.basename(os.path.dirname(p)) for p in paths]
    if not paths or len(names) != len(paths):
        common.fail('give one or more --ckpts, and as many --labels (or none)')
    if alpha_records and not os.path.isfile(alpha_records):
        common.fail(f"alpha_records '{alpha_records}' not found ('' draws no α panel)")
    dev, autocast = common.setup_device(device, dtype)
    rows = []
    for path, name in zip(paths, names):
        model, meta, tok, _, trained = engine.load_models(path, '', dev)
        if meta.get('task') not in ('sudoku', 'sudoku4'):
            common.fail(f"'{path}' was trained on '{meta['dataset']}': the picture draws Sudoku")
        problems = load_problems(meta, 'test')
        if not 0 <= puzzle < len(problems):
            common.fail(f'puzzle={puzzle}: the test split has puzzles 0..{len(problems) - 1}')
        question, solution = problems[puzzle]
        dec = engine.as_trained(Decoding(tokens_per_step, threshold), trained, told)
        engine.check_decoding(dec, '')
        ids = torch.tensor([tok.encode(question)], device=dev)
        with autocast:
            frames = grid_steps(model, dec, ids, tok.encode(solution), meta['eos_id'])
        rule = f'τ {threshold}' if threshold else f'{tokens_per_step} tokens/step'
        residual = f'residual α × {dec.alpha_scale}' if dec.use_rcd else 'no residual'
        clues = {k for k, cell in enumerate(question[:len(solution)]) if cell != '.'}
        rows.append((f'{name}: {rule}, {residual}', frames, meta['itos'], clues))
    fig = draw(plt, rows)
    os.makedirs(os.path.dirname(png) or '.', exist_ok=True)
    fig.savefig(png, dpi=150)
    print(f'wrote {png}')


if __name__ == '__main__':
    configure_and_run(main, globals())
