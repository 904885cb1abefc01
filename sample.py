"""
Sample from a trained block-diffusion model, block by block.

Each block starts as B copies of [MASK]. At every denoising step one forward pass over the block
(attending to the KV cache of the prompt and finished blocks) predicts every masked position; the
most confident predictions are committed, the rest go back to [MASK]. Commit rules: a fixed number
of tokens per step (threshold=0), or every position whose top probability reaches `threshold` (at
least one per step). A finished block is run once more to append its keys/values to the cache. Cost
= forward passes per answer (denoising steps + cache fills + any pass that seeds a block's first
step; the prompt's prefill is not counted).

With RCD (use_rcd) the remasked positions do not go back to plain [MASK]: they carry a residual
built from this step's predictions into the next step (rcd.py). A model is decoded as it was
trained unless told otherwise: a stage-2 RCD model with its residual settings, a stage-1 model (or
an arm trained without residuals) by the plain sampler. --alpha_mode=none is exactly the plain
sampler. --first_step says what a block's first step reads, which has no previous step.

    python sample.py                                  # out/stage2/ckpt.pt as trained, 1 token/step
    python sample.py --threshold=0.99                 # the threshold rule
    python sample.py --use_rcd=False                  # the same weights, plain sampler
    python sample.py --ckpt=out/stage1/ckpt.pt        # stage 1: the plain sampler
On a dataset with answers (sudoku, reasoning) and no --prompt it samples the first test problems
and says whether each answer is right. Accuracy over a sweep of decoding budgets: eval.py.
"""
import itertools
import math
import os
import signal
from dataclasses import dataclass

if __name__ == '__main__':  # Ctrl-C while torch loads: quit quietly (until configure())
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))

import torch

import common
import engine
import rcd
from configurator import configure_and_run
from data.datasets import answer_of, is_right, load_problems
from model import token_probs

FIRST_STEPS = ('zero', 'self', 'reference', 'dirichlet')  # the paper's Table 5

# --------------------------------------------------------------------------------------------------
ckpt = 'out/stage2/ckpt.pt'
prompt = ''                  # text to continue ('\\n' is a newline); '' = the first test problems
num_samples = 8
max_new_tokens = 0           # 0 = up to the model's context length
tokens_per_step = 1          # static rule: tokens committed per step (spread evenly over the block)
threshold = 0.0              # > 0: threshold rule: commit every position with top probability >= it
temperature = 0.0            # 0 = greedy; else sample committed tokens from softmax(logits / T)
use_cache = True             # False: re-run the whole sequence at every step (same tokens, slower)
# RCD's settings: where not set here, as the model was trained (its checkpoint says)
use_rcd = False              # residual context: remasked positions carry their residual onward
alpha_mode = 'entropy'       # with use_rcd: 'entropy' (paper), 'confidence', 'constant', 'none'
alpha_constant = 0.5         # α for alpha_mode='constant'
alpha_scale = 1.0            # α is multiplied by this (capped at 1)
residual_temperature = 1.0   # T_res: with use_rcd, α is the entropy of softmax(logits / T_res)
first_step = 'zero'          # with use_rcd, the residual of a block's first step: 'zero' (cold
                             # start), 'self' (one extra pass of the model), 'reference' (one
                             # pass of reference_ckpt), 'dirichlet' (the paper's Table 5)
reference_ckpt = ''          # the checkpoint of first_step='reference' (a stage-1 model)
device = 'auto'
dtype = 'auto'
seed = 1337
# --------------------------------------------------------------------------------------------------


@dataclass
class Decoding:
    """How to decode: the commit rule, and RCD's settings (used only with use_rcd)."""
    tokens_per_step: int = 1
    threshold: float = 0.0
    temperature: float = 0.0
    use_rcd: bool = False
    alpha_mode: str = 'entropy'
    alpha_constant: float = 0.5
    alpha_scale: float = 1.0
    residual_temperature: float = 1.0
    first_step: str = 'zero'

    def problem(self):
        """What is wrong with these settings, in one line, or None."""
        if self.tokens_per_step < 1 or not 0.0 <= self.threshold <= 1.0 or \
                not (self.temperature == 0 or 1e-3 <= self.temperature < math.inf):
            return ('need tokens_per_step >= 1, 0 <= threshold <= 1 and a temperature of 0 '
                    '(greedy) or finite and >= 1e-3')
        if not (1e-3 <= self.residual_temperature < math.inf and 0 <= self.alpha_scale < math.inf
                and 0 <= self.alpha_constant <= 1):
            return ('need 1e-3 <= residual_temperature and alpha_scale >= 0 both finite, and '
                    '0 <= alpha_constant <= 1')
        if self.alpha_mode not in rcd.ALPHA_MODES:
            return f"alpha_mode='{self.alpha_mode}' must be one of {', '.join(rcd.ALPHA_MODES)}"
        if self.first_step not in FIRST_STEPS:
            return f"first_step='{self.first_step}' must be one of {', '.join(FIRST_STEPS)}"
        if self.first_step != 'zero' and not self.use_rcd:
            return 'first_step shapes RCD sampling: use it with --use_rcd=True'
        return None


def commit_counts(n_masked, tokens_per_step):
    """Static rule: how many tokens each step commits, ceil(n / k) steps, the n spread as evenly
    as possible."""
    steps = math.ceil(n_masked / tokens_per_step)
    return [n_masked // steps + (s < n_masked % steps) for s in range(steps)]


def predict(probs, masked, dec, generator):
    """Each position's token (greedy, or sampled with temperature) and its probability, the
    confidence (-1 where the position is not masked)."""
    if dec.temperature > 0:
        pred = torch.multinomial(probs.flatten(0, 1), 1, generator=generator).view(probs.shape[:2])
    else:
        pred = probs.argmax(-1)
    return pred, probs.gather(-1, pred[..., None]).squeeze(-1).masked_fill(~masked, -1.0)


def commit_rule(conf, masked, dec, k):
    """Which masked positions a step commits, from their confidences conf (b, B; -1 where not
    masked): every one at or above the threshold and at least the most confident one, or (static
    rule) the k most confident."""
    if dec.threshold > 0:
        commit = conf >= dec.threshold
        rows = torch.arange(len(conf), device=conf.device)
        commit[rows, conf.argmax(1)] = True  # at least the single most confident position
    else:
        commit = torch.zeros_like(masked)
        commit.scatter_(1, conf.topk(k, dim=1).indices, True)
    commit &= masked
    if (masked.any(1) & ~commit.any(1)).any():  # NaN confidences: the block would never finish
        raise RuntimeError('a denoising step committed no token (are the logits finite?)')
    return commit


def first_step_logits(dec, target, reference, s, e, generator):
    """What a block's first step builds its residual from (the paper's Table 5): nothing for a
    cold start ('zero') or the plain sampler; a Dirichlet(1) draw; or the logits of one extra pass
    of the target ('self') or of the reference model."""
    if not dec.use_rcd or dec.first_step == 'zero':
        return None
    if dec.first_step == 'dirichlet':
        cfg, x = target.model.cfg, target.x
        return rcd.dirichlet_logits((len(x), e - s, cfg.vocab_size), generator, x.device)
    if dec.first_step == 'reference' and reference is None:
        raise ValueError("first_step='reference' needs a reference model")
    return (reference if dec.first_step == 'reference' else target)(s, e)


def denoise_block(x, s, e, done, dec, target, reference, generator):
    """Denoise block [s, e) of x (b, L) in place until no [MASK] is left, in the rows not `done`:
    the paper's Alg. 2 inside one block. `target` and `reference` run one model's pass over the
    block (engine.BlockRunner). Returns the forward passes each row took."""
    model = target.model
    mask_id, weight = model.cfg.mask_id, model.wte.weight
    fused = common.fused_on(x.device)  # fused(f): f compiled on CUDA, f itself on a CPU
    schedule = commit_counts(int((x[0, s:e] == mask_id).sum()), dec.tokens_per_step)
    passes = torch.zeros(len(x), dtype=torch.long, device=x.device)
    # RCD: each step's residual comes from res_logits at the remasked positions
    res_logits = first_step_logits(dec, target, reference, s, e, generator)
    remasked = (x[:, s:e] == mask_id) & ~done[:, None]
    if dec.use_rcd and dec.first_step in ('self', 'reference'):  # an extra pass
        passes += remasked.any(1)
    for step in itertools.count():
        masked = (x[:, s:e] == mask_id) & ~done[:, None]
        live = masked.any(1)
        if not live.any():
            return passes
        delta = None  # built before the pass: a replayed graph overwrites its logits
        if res_logits is not None:
            delta = fused(rcd.residual)(res_logits, weight, mask_id, remasked, dec.alpha_mode,
                                        dec.alpha_constant, dec.alpha_scale,
                                        dec.residual_temperature)
        logits = target(s, e, delta)
        passes += live
        probs = fused(token_probs)(logits, mask_id, dec.temperature or 1.0)
        pred, conf = predict(probs, masked, dec, generator)
        commit = commit_rule(conf, masked, dec, schedule[min(step, len(schedule) - 1)])
        x[:, s:e] = torch.where(commit, pred, x[:, s:e])  # the rest stays [MASK]: remasked
        if dec.use_rcd:  # RCD: the remasked positions keep what this step computed for them
            res_logits, remasked = logits, masked & ~commit


@torch.no_grad()
def generate(model, prompt_ids, max_new_tokens, dec, eos_id=None, reference=None, generator=None,
             use_cache=True, cuda_graph=True):
    """Continue prompt_ids (b, p) by max_new_tokens, block by block, decoding as `dec` says. Blocks
    are aligned to multiples of B from position 0, as in training, so the prompt's last partial
    block is completed in place. A row stops after the block in which it commits eos_id. Returns
    (tokens (b, p + max_new_tokens), forward passes per row (b,)). `reference`: the model of
    first_step='reference'. cuda_graph: on CUDA each one-block pass replays a CUDA graph."""
    cfg, (b, p), dev = model.cfg, prompt_ids.shape, prompt_ids.device
    B, mask_id = cfg.block_size, cfg.mask_id
    end = -(-(p + max_new_tokens) // B) * B  # whole blocks
    if max_new_tokens < 1 or end > cfg.seq_len:
        raise ValueError(f'a prompt of {p} tokens and {max_new_tokens} new tokens must fit the '
                         f'context (seq_len={cfg.seq_len}) with at least one new token')
    x = torch.cat((prompt_ids, torch.full((b, end - p), mask_id, dtype=torch.long, device=dev)), 1)
    target, ref = [engine.BlockRunner(m, x, p // B * B, use_cache, cuda_graph)
                   if m is not None else None for m in (model, reference)]  # prompt prefilled
    done = torch.zeros(b, dtype=torch.bool, device=dev)
    passes = torch.zeros(b, dtype=torch.long, device=dev)
    for s in range(p // B * B, end, B):
        passes += denoise_block(x, s, s + B, done, dec, target, ref, generator)
        if eos_id is not None:
            done |= (x[:, s:s + B] == eos_id).any(1)
        if done.all() or s + B == end:
            break
        for runner in (r for r in (target, ref) if r is not None and use_cache):
            runner.keep(s, s + B)  # the next blocks read the finished block's keys/values
            passes += ~done
    return x[:, :p + max_new_tokens], passes


# --------------------------------------------------------------------------------------------------
# The command line: load, decode the first test problems (or a prompt), say which are right

def main(told):
    if not (1 <= num_samples <= 1000 and max_new_tokens >= 0 and 0 <= seed < 2**32):
        common.fail(f'need 1 <= num_samples <= 1000, max_new_tokens >= 0 and 0 <= seed < 2**32 '
                    f'(got {num_samples}, {max_new_tokens}, {seed}); eval.py scores whole splits')
    torch.manual_seed(seed)
    dev, autocast = common.setup_device(device, dtype)
    model, meta, tok, reference, trained = engine.load_models(ckpt, reference_ckpt, dev)
    dec = Decoding(tokens_per_step, threshold, temperature, use_rcd, alpha_mode, alpha_constant,
                   alpha_scale, residual_temperature, first_step)
    dec = engine.as_trained(dec, trained, told)  # RCD's settings the checkpoint's, unless told
    engine.check_decoding(dec, reference_ckpt)  # a bad setting is one line
    rule = f'threshold {threshold}' if threshold > 0 else f'{tokens_per_step} tokens/step'
    if dec.use_rcd:
        rule += f', RCD alpha={dec.alpha_mode} x {dec.alpha_scale}, first step {first_step}'
    if tokens_per_step > model.cfg.block_size and threshold == 0:
        print(f'note: tokens_per_step={tokens_per_step} is more than a block '
              f'({model.cfg.block_size} tokens): each step commits the whole block')
    generator = torch.Generator(dev).manual_seed(seed)
    examples = [(prompt.replace('\\n', '\n'), None)] * num_samples
    if not prompt and 'answer_prefix' in meta:  # a dataset with answers: its first test problems
        examples = load_problems(meta, 'test', num_samples)
    n_right = 0
    for text, solution in examples:
        ids = torch.tensor([tok.encode(text)], dtype=torch.long, device=dev)
        if ids.shape[1] >= model.cfg.seq_len:
            common.fail(f'the prompt has {ids.shape[1]} tokens: the context '
                        f'(seq_len={model.cfg.seq_len}) leaves no room to generate')
        budget = max_new_tokens or model.cfg.seq_len - ids.shape[1]
        try:
            with autocast:
                out, n_pass = generate(model, ids, budget, dec, meta['eos_id'], reference,
                                       generator, use_cache)
        except ValueError as e:  # a prompt and budget beyond the context
            common.fail(str(e))
        sample = tok.decode(out[0, ids.shape[1]:].tolist())
        print(f'--- {rule}, {int(n_pass)} forward passes\n{text}{sample}')
        if solution is not None:
            answer = answer_of(solution, meta['answer_prefix'])
            prefix = meta['answer_prefix']
            right = is_right(answer_of(sample, prefix), solution, prefix)
            print(f"reference answer: {answer}  ({'right' if right else 'wrong'})")
            n_right += right
    if examples[0][1] is not None:
        print(f'{n_right} of {len(examples)} test problems right ({rule})')


if __name__ == '__main__':
    configure_and_run(main, globals())
