"""
RCD's residual where the model reads it: what stage 2 trained the model on against what decoding
hands it, on the same val puzzles (a measuring helper; the method is in rcd.py and sample.py).

    python residual_trace.py --ckpt=out/stage2/ckpt.pt --records=out/residual_trace.jsonl
    python residual_trace.py --ckpt=RCD_PAPER_CKPT --reference_ckpt=out/stage1/ckpt.pt

For every masked position that reads a residual it takes its block's masked fraction, α as fed,
and whether the residual's top token is the answer, from three sources:
- 'training': the rows stage 2 trained this checkpoint on, by its own recipe (the frozen
  reference on add_noise's x_t, or the rollout of the model itself);
- 'decoding': the residual each decoding step reads (the model's own previous step), per commit
  rule, with the checkpoint's α mode and scale and a cold first step;
- 'reference_on_decoding': with --reference_ckpt, the residual the paper's stage 2 would feed on
  those same decoding states (the frozen reference reading the same x_t).
One JSON record per (source, commit rule): per masked-fraction bin the count, mean α, an α
histogram and the top token's accuracy.
"""
import json
import os

import numpy as np
import torch

import common
import engine
import rcd
from configurator import configure_and_run
from data.datasets import dataset_dir
from model import add_noise, token_probs
from sample import Decoding, generate

# --------------------------------------------------------------------------------------------------
ckpt = 'out/stage2/ckpt.pt'
reference_ckpt = ''          # a stage-1 model: also score decoding's states as the paper feeds them
n_problems = 1000            # val puzzles (the first ones of val.bin)
batch_size = 500
tokens_per_step_grid = '1,8'  # decoding's static commit rules
threshold_grid = '0.9'       # decoding's threshold commit rules
records = 'out/residual_trace.jsonl'
device = 'auto'
dtype = 'auto'
seed = 1337
# --------------------------------------------------------------------------------------------------

FRACTION_BINS = (0.0, 0.25, 0.5, 0.75, 1.0)  # a block's masked fraction
ALPHA_BINS = 10  # the α histogram over [0, 1]
STEPS = []  # (block start, block before the pass, logits): every pass of a traced decoding


class TracedRunner(engine.BlockRunner):
    """engine.BlockRunner that keeps each pass's input block and logits in STEPS."""

    def __call__(self, s, e, delta=None):
        logits = super().__call__(s, e, delta)
        STEPS.append((s, self.x[:, s:e].clone(), logits.float().clone()))
        return logits


class Tally:
    """Residual-reading positions, binned by their block's masked fraction."""

    def __init__(self):
        n = len(FRACTION_BINS) - 1
        self.count, self.alpha, self.right = np.zeros(n), np.zeros(n), np.zeros(n)
        self.hist = np.zeros((n, ALPHA_BINS))

    def add(self, fraction, alpha, right):
        """fraction, alpha, right: 1-d tensors over the residual-reading positions."""
        fraction, alpha, right = (v.float().cpu().numpy() for v in (fraction, alpha, right))
        where = np.clip(np.searchsorted(FRACTION_BINS, fraction, side='left') - 1, 0,
                        len(self.count) - 1)
        np.add.at(self.count, where, 1)
        np.add.at(self.alpha, where, alpha)
        np.add.at(self.right, where, right)
        np.add.at(self.hist, (where, np.minimum((alpha * ALPHA_BINS).astype(int), ALPHA_BINS - 1)),
                  1)

    def record(self, **about):
        bins = [dict(fraction=[lo, hi], n=int(n), mean_alpha=a / max(n, 1),
                     top_right=r / max(n, 1), alpha_hist=h.astype(int).tolist())
                for lo, hi, n, a, r, h in zip(FRACTION_BINS, FRACTION_BINS[1:], self.count,
                                              self.alpha, self.right, self.hist)]
        n = self.count.sum()
        return dict(about, n=int(n), mean_alpha=self.alpha.sum() / max(n, 1),
                    top_right=self.right.sum() / max(n, 1), bins=bins)


def fed(logits, answer, train):
    """(α as the model is fed it, whether the residual's top token is the answer) per position."""
    probs = token_probs(logits, train['mask_id'])
    alpha = train['alpha_scale'] * rcd.residual_weight(probs, train['alpha_mode'],
                                                       train['alpha_constant'])
    return alpha.clamp(max=1.0), probs.argmax(-1) == answer


def masked_fraction(masked, noisable, block_size):
    """Each position's block: masked / noisable tokens."""
    b, L = masked.shape
    per_block = masked.view(b, L // block_size, block_size).sum(-1)
    total = noisable.view(b, L // block_size, block_size).sum(-1).clamp(min=1)
    return (per_block / total).repeat_interleave(block_size, dim=1)


def training_rows(model, reference, train, x0, prompt_mask, generator):
    """(x_t, logits the residual is built from, positions that read it) as stage 2 draws them."""
    if train['rollout_steps'] > 0:
        start, steps, threshold, reads = rcd.rollout_rows(
            x0, prompt_mask, train['mask_id'], train['rollout_steps'], train['rollout_plain'],
            generator)
        x_t, _, _, logits, remasked = rcd.rollout(
            model, x0, start, prompt_mask, steps, threshold, reads, train['alpha_mode'],
            train['alpha_constant'], train['alpha_scale'])
        return x_t, logits, remasked
    x_t, masked, _ = add_noise(x0, prompt_mask, model.cfg.block_size, train['mask_id'],
                               train['mask_rate_min'], train['mask_rate_max'], generator)
    return x_t, reference(x_t, x0), masked


def decoding_steps(model, prompt, new_tokens, dec, eos_id, generator):
    """Decode as sample.generate does, keeping every pass: [(block start, block before, logits)]."""
    STEPS.clear()
    plain_runner, engine.BlockRunner = engine.BlockRunner, TracedRunner
    try:
        generate(model, prompt, new_tokens, dec, eos_id, generator=generator, cuda_graph=False)
    finally:
        engine.BlockRunner = plain_runner
    return [step for step in STEPS if (step[1] == model.cfg.mask_id).any()]  # no cache fills


def trace_decoding(model, reference, train, x0, prompt_len, dec, tallies, generator):
    """Add each decoding step's residual (the previous step's logits at the positions masked now)
    to tallies['decoding'], and, with a reference, what it would feed on the same x_t."""
    mask_id, B = train['mask_id'], model.cfg.block_size
    steps = decoding_steps(model, x0[:, :prompt_len], x0.shape[1] - prompt_len, dec, None,
                           generator)
    for (s, _, before), (s_now, block, _) in zip(steps, steps[1:]):
        if s_now != s:  # a new block: its first step reads no residual (cold start)
            continue
        masked, answer = block == mask_id, x0[:, s:s + B]
        fraction = masked.float().sum(1, keepdim=True).expand_as(masked) / B
        alpha, right = fed(before, answer, train)
        tallies['decoding'].add(fraction[masked], alpha[masked], right[masked])
        if reference is not None:
            x_t = torch.cat((x0[:, :s], block), dim=1)
            alpha, right = fed(reference(x_t)[:, s:].float(), answer, train)
            tallies['reference_on_decoding'].add(fraction[masked], alpha[masked], right[masked])


def val_rows(meta, n):
    """The first n val rows (x0) and their prompt length, which every row must share (sudoku)."""
    path = os.path.join(dataset_dir(meta['dataset']), 'val.bin')
    data = np.memmap(path, dtype=np.uint16, mode='r')
    x0 = torch.from_numpy(data.reshape(-1, meta['row_len'])[:n].astype(np.int64))
    prompt_lens = (x0 == meta['prompt_sep_id']).int().argmax(1) + 1
    if (prompt_lens != prompt_lens[0]).any():
        common.fail('residual_trace.py reads a dataset whose prompts share one length (sudoku)')
    return x0, int(prompt_lens[0])


def main(told):
    dev, autocast = common.setup_device(device, dtype)
    model, meta, _, reference, config = engine.load_models(ckpt, reference_ckpt, dev)
    if 'rollout_steps' not in config:
        common.fail(f"'{ckpt}' is a stage-1 checkpoint: the residual is traced for RCD models")
    if config['rollout_steps'] == 0 and reference is None:
        common.fail('this checkpoint trained on a frozen reference: give it as --reference_ckpt')
    if 'row_len' not in meta or not 1 <= n_problems:
        common.fail('residual_trace.py reads a row dataset (sudoku), n_problems >= 1')
    train = dict(config, mask_id=model.cfg.mask_id)
    x0_all, prompt_len = val_rows(meta, n_problems)
    rules = [Decoding(tokens_per_step=int(k)) for k in tokens_per_step_grid.split(',') if k]
    rules += [Decoding(threshold=float(t)) for t in threshold_grid.split(',') if t]
    tallies = {'training': Tally()}
    generator = torch.Generator(dev).manual_seed(seed)
    out = []
    with torch.no_grad(), autocast:
        for k in range(0, len(x0_all), batch_size):
            x0 = x0_all[k:k + batch_size].to(dev)
            sep = (x0 == meta['prompt_sep_id']).int()
            prompt_mask = (sep.cumsum(1) - sep) == 0
            x_t, logits, reads = training_rows(model, reference, train, x0, prompt_mask,
                                               generator)
            fraction = masked_fraction(x_t == model.cfg.mask_id, ~prompt_mask,
                                       model.cfg.block_size)
            alpha, right = fed(logits.float(), x0, train)
            tallies['training'].add(fraction[reads], alpha[reads], right[reads])
        for dec in rules:
            dec.use_rcd, dec.alpha_mode = True, config['alpha_mode']
            dec.alpha_scale, dec.alpha_constant = config['alpha_scale'], config['alpha_constant']
            rule = f'{dec.tokens_per_step} tokens/step' if not dec.threshold else \
                f'threshold {dec.threshold}'
            tallies.update(decoding=Tally(), reference_on_decoding=Tally())
            for k in range(0, len(x0_all), batch_size):
                trace_decoding(model, reference, train, x0_all[k:k + batch_size].to(dev),
                               prompt_len, dec, tallies, generator)
            out += [tallies[src].record(source=src, rule=rule) for src in tallies
                    if src != 'training' and tallies[src].count.sum()]
    out.insert(0, tallies['training'].record(source='training', rule='stage 2'))
    os.makedirs(os.path.dirname(records) or '.', exist_ok=True)
    with open(records, 'a') as f:
        for r in out:
            r.update(ckpt=ckpt, alpha_mode=config['alpha_mode'], alpha_scale=config['alpha_scale'],
                     rollout_steps=config['rollout_steps'], dataset=meta['dataset'])
            f.write(json.dumps(r) + '\n')
            print(f"{r['source']:>22} {r['rule']:>15}: {r['n']:>8} positions, mean α "
                  f"{r['mean_alpha']:.3f}, top token right {100 * r['top_right']:.1f}%  by masked "
                  f"fraction: " + ', '.join(f"{b['mean_alpha']:.2f}/{100 * b['top_right']:.0f}%"
                                            for b in r['bins']))


if __name__ == '__main__':
    configure_and_run(main, globals())
