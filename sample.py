"""
Sample from a trained block-diffusion model, block by block.

Each block starts as B copies of [MASK]. At every denoising step one forward pass over the block
(attending to the KV cache of the prompt and finished blocks) predicts every masked position; the
most confident predictions are committed, the rest go back to [MASK]. Commit rules: a fixed number
of tokens per step (threshold=0), or every position whose top probability reaches `threshold` (at
least one per step). A finished block is run once more to append its keys/values to the cache. Cost
= forward passes per answer (denoising steps + cache fills + any pass that seeds a block's first
step; the prompt's prefill is not counted).

With --use_rcd=True the remasked positions do not go back to plain [MASK]: they carry a residual
built from this step's predictions into the next step (rcd.py). It works on any checkpoint: a
stage-2 RCD model was trained to read residuals; a stage-1 model was not (an ablation).
--alpha_mode=none is exactly the plain sampler. --first_step says what a block's first step reads,
which has no previous step.

    python sample.py --ckpt=out/stage1/ckpt.pt --prompt='12+34-5=?\\n'
    python sample.py --ckpt=out/stage2/ckpt.pt --use_rcd=True --threshold=0.99
On a dataset with answers (sudoku, reasoning) and no --prompt it samples the first test problems and
says whether each answer is right. Accuracy over a sweep of decoding budgets: eval.py.
"""
import functools
import math
import os
import pickle
import sys
from dataclasses import dataclass

import torch

import common
from checkpoint import build_model, check_compatible, load_checkpoint
from configurator import configure
from data.tokenizer import Tokenizer
from model import KVCache
from rcd import ALPHA_MODES, dirichlet_logits, logits_residual, residual_probs

FIRST_STEPS = ('zero', 'self', 'reference', 'dirichlet')

# --------------------------------------------------------------------------------------------------
ckpt = 'out/stage1/ckpt.pt'
prompt = ''                  # text to continue ('\\n' is a newline); '' = the dataset's first test problems
num_samples = 8
max_new_tokens = 0           # 0 = up to the model's context length
tokens_per_step = 1          # static rule: tokens committed per denoising step (spread evenly over the block)
threshold = 0.0              # > 0: threshold rule instead: commit every position with top probability >= it
temperature = 0.0            # 0 = greedy; otherwise sample committed tokens from softmax(logits / temperature)
use_cache = True             # False: re-run the whole sequence at every step (same tokens, slower)
use_rcd = False              # residual context: remasked positions carry their residual into the next step
alpha_mode = 'entropy'       # with use_rcd: 'entropy' (paper), 'confidence', 'constant', 'none' (= plain sampler)
alpha_constant = 0.5         # α for alpha_mode='constant'
alpha_scale = 1.0            # α is multiplied by this (capped at 1); use the value the model was trained with
residual_temperature = 1.0   # T_res: with use_rcd, α is the entropy of softmax(logits / T_res) (paper Alg. 2)
first_step = 'zero'          # with use_rcd, the residual of a block's first step: 'zero' (cold start), 'self' (one
                             # extra pass of the model), 'reference' (one pass of reference_ckpt),
                             # 'dirichlet'
residual_steps = 0           # with use_rcd: residuals reach only a block's first N steps (0 = every step); a
                             # rollout-trained model saw them at steps 1..rollout_steps only
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
    residual_steps: int = 0

    def problem(self):
        """What is wrong with these settings, in one line, or None."""
        if self.tokens_per_step < 1 or not 0.0 <= self.threshold <= 1.0 or self.temperature < 0:
            return 'need tokens_per_step >= 1, 0 <= threshold <= 1 and temperature >= 0'
        if self.residual_temperature <= 0 or self.alpha_scale < 0 or self.residual_steps < 0:
            return 'need residual_temperature > 0, alpha_scale >= 0 and residual_steps >= 0'
        if self.alpha_mode not in ALPHA_MODES:
            return f"alpha_mode='{self.alpha_mode}' must be one of {', '.join(ALPHA_MODES)}"
        if self.first_step not in FIRST_STEPS:
            return f"first_step='{self.first_step}' must be one of {', '.join(FIRST_STEPS)}"
        if (self.first_step != 'zero' or self.residual_steps) and not self.use_rcd:
            return 'first_step and residual_steps shape RCD sampling: use them with --use_rcd=True'
        return None


def commit_counts(n_masked, tokens_per_step):
    """Static rule: how many tokens each step commits, ceil(n / k) steps, the n spread as evenly
    as possible."""
    steps = math.ceil(n_masked / tokens_per_step)
    return [n_masked // steps + (s < n_masked % steps) for s in range(steps)]


def predict(probs, masked, dec, generator):
    """Each position's token (greedy, or sampled with temperature) and its probability, the confidence
    (-1 where the position is not masked)."""
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
    return commit & masked


@torch.no_grad()
def generate(model, prompt_ids, max_new_tokens, dec, eos_id=None, reference=None, generator=None, use_cache=True,
             cuda_graph=True):
    """Continue prompt_ids (b, p) by max_new_tokens, block by block, decoding as `dec` says. Blocks
    are aligned to multiples of B from position 0, as in training, so the prompt's last partial
    block is completed in place. A row stops after the block in which it commits eos_id. Returns
    (tokens (b, p + max_new_tokens), forward passes per row (b,)). `reference`: the model of
    first_step='reference'. cuda_graph: on CUDA with the cache, each model's one-block pass is a
    replayed CUDA graph (same tokens, faster)."""
    cfg, (b, p), dev = model.cfg, prompt_ids.shape, prompt_ids.device
    B, mask_id = cfg.block_size, cfg.mask_id
    end = -(-(p + max_new_tokens) // B) * B  # whole blocks
    check_fits(p, max_new_tokens, end, cfg.seq_len, dec, reference)
    x = torch.cat((prompt_ids, torch.full((b, end - p), mask_id, dtype=torch.long, device=dev)), dim=1)
    target = BlockRunner(model, x, use_cache, cuda_graph)
    runners = [target] + ([BlockRunner(reference, x, use_cache, cuda_graph)] if reference is not None else [])
    probs_of, residual_of = step_functions(dev)
    for runner in runners:
        runner.prefill(p // B * B)  # the prompt's whole blocks
    done = torch.zeros(b, dtype=torch.bool, device=dev)
    passes = torch.zeros(b, dtype=torch.long, device=dev)
    for blk in range(p // B, end // B):
        s, e = blk * B, (blk + 1) * B
        schedule = commit_counts(int((x[0, s:e] == mask_id).sum()), dec.tokens_per_step)
        # RCD: the next step's residual is built from res_logits at the remasked positions; a
        # block's first step has none, unless first_step seeds one
        masked = (x[:, s:e] == mask_id) & ~done[:, None]
        res_logits, remasked = None, masked
        if dec.use_rcd and dec.first_step == 'dirichlet':
            res_logits = dirichlet_logits((b, B, cfg.vocab_size), mask_id, generator, dev)
        elif dec.use_rcd and dec.first_step in ('self', 'reference'):  # one extra pass seeds the residual
            res_logits = runners[-1](s, e) if dec.first_step == 'reference' else target(s, e)
            passes += masked.any(1)
        step = 0
        while True:
            masked = (x[:, s:e] == mask_id) & ~done[:, None]
            live = masked.any(1)
            if not live.any():
                break
            delta = None  # built before the pass: a replayed graph overwrites its logits at the next replay
            if res_logits is not None and (dec.residual_steps == 0 or step < dec.residual_steps):
                delta = residual_of(res_logits, model.wte.weight, mask_id, remasked, dec.alpha_mode,
                                    dec.alpha_constant, dec.alpha_scale, dec.residual_temperature)
            logits = target(s, e, delta)
            passes += live
            pred, conf = predict(probs_of(logits, mask_id, dec.temperature or 1.0), masked, dec, generator)
            commit = commit_rule(conf, masked, dec, schedule[min(step, len(schedule) - 1)])
            if (live & ~commit.any(1)).any():  # a rule that commits nothing would loop forever
                raise RuntimeError(f'a denoising step committed no token (block {blk}, step {step})')
            x[:, s:e] = torch.where(commit, pred, x[:, s:e])  # the rest stays [MASK]: remasked
            if dec.use_rcd:  # RCD: the remasked positions keep what this step computed for them
                res_logits, remasked = logits, masked & ~commit
            step += 1
        if eos_id is not None:
            done |= (x[:, s:e] == eos_id).any(1)
        if done.all() or e == end:
            break
        for runner in runners if use_cache else []:
            runner.keep(s, e)  # the next blocks read the finished block's keys/values
            passes += ~done
    return x[:, :p + max_new_tokens], passes


# --------------------------------------------------------------------------------------------------
# The machinery under generate: a model's pass on one block (KV cache, CUDA graph or full re-run),
# compiled helpers

def check_fits(p, max_new_tokens, end, seq_len, dec, reference):
    if max_new_tokens < 1 or end > seq_len:
        raise ValueError(f'a prompt of {p} tokens and {max_new_tokens} new tokens must fit the context '
                         f'(seq_len={seq_len}) with at least one new token')
    if (dec.first_step == 'reference') != (reference is not None):
        raise ValueError("first_step='reference', and only it, needs a reference model")


class BlockRunner:
    """One model's forward pass over one block [s, e) of the sequence x: against its KV cache (a
    replayed CUDA graph on CUDA), or, without a cache, by re-running the whole prefix."""

    def __init__(self, model, x, use_cache, cuda_graph):
        self.model, self.x = model, x
        self.cache = KVCache(model.cfg.n_layer, x.shape[1], x.device) if use_cache else None
        self.use_graph = use_cache and cuda_graph and x.device.type == 'cuda'
        self.graph = None  # captured on first use

    def prefill(self, n):
        if self.cache is not None and n > 0:
            self.model(self.x[:, :n], cache=self.cache)
            self.cache.advance(n)

    def __call__(self, s, e, delta=None):
        """Logits of block [s, e), its inputs shifted by delta (b, e - s, d) where given."""
        if self.cache is None:
            if delta is not None:
                delta = torch.cat((delta.new_zeros(len(delta), s, delta.shape[-1]), delta), dim=1)
            return self.model(self.x[:, :e], delta=delta)[:, s:]
        if self.use_graph:
            if self.graph is None:
                self.graph = step_graph(self.model, self.cache, len(self.x))
            return self.graph(self.x[:, s:e], delta)
        return self.model(self.x[:, s:e], cache=self.cache, delta=delta)

    def keep(self, s, e):
        """Run the finished block once more and keep its keys/values in the cache."""
        self(s, e)
        self.cache.advance(e - s)  # keep the block's keys/values


def step_functions(device):
    """(token probabilities, RCD residual) of a step's logits; on CUDA compiled, so that their
    passes over the (b, B, V) float32 probabilities fuse into a few kernels."""
    if device.type == 'cuda':
        return compiled(residual_probs), compiled(logits_residual)
    return residual_probs, logits_residual


@functools.cache
def compiled(fn):
    """torch.compile(fn), once per function or model: every generate() call reuses it."""
    return torch.compile(fn)


def step_graph(model, cache, b):
    """model's forward on one block against `cache`, compiled and captured once as a CUDA graph: a
    replay launches the whole pass at once, where an eager pass is ~400 kernel launches and the
    host, not the GPU, bounds the sampler; compiled, its elementwise work is fused (at large batches
    the GPU bounds it). The cache's position lives on the device, so one graph serves every step of
    every block. Returns replay(x_block, delta)."""
    cfg, forward = model.cfg, compiled(model)
    x = torch.full((b, cfg.block_size), cfg.mask_id, dtype=torch.long, device=cache.start.device)
    delta = torch.zeros(b, cfg.block_size, cfg.n_embd, device=x.device)  # no residual = a zero residual
    # the weight casts become part of the graph: autocast must not cache them across the capture
    amp = torch.autocast('cuda', dtype=torch.get_autocast_dtype('cuda'),
                         enabled=torch.is_autocast_enabled('cuda'), cache_enabled=False)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), amp:  # warm-up off the main stream, as capture requires
        for _ in range(2):  # compiles; once more if the first call made the cache's buffers
            forward(x, cache=cache, delta=delta)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), amp:
        logits = forward(x, cache=cache, delta=delta)

    def replay(x_block, delta_block):
        x.copy_(x_block)
        if delta_block is None:
            delta.zero_()
        else:
            delta.copy_(delta_block)
        graph.replay()
        return logits  # overwritten by the next replay
    return replay


def load_models(ckpt, reference_ckpt, dev):
    """(model, meta, tokenizer, reference or None, training config) from a checkpoint (and a
    reference one)."""
    state = load_checkpoint(ckpt)
    model = build_model(state['model_args'], state['model']).to(dev).eval()
    reference = None
    if reference_ckpt:
        ref_state = load_checkpoint(reference_ckpt)
        check_compatible(ref_state, state, 'reference_ckpt', 'ckpt')
        reference = build_model(ref_state['model_args'], ref_state['model']).to(dev).eval()
    return model, state['meta'], Tokenizer(state['meta']), reference, state.get('config', {})


def check_decoding(dec, reference_ckpt):
    """A bad decoding setting is one clear line."""
    problem = dec.problem()
    if problem:
        common.fail(problem)
    if (dec.first_step == 'reference') != bool(reference_ckpt):
        common.fail("first_step='reference' needs --reference_ckpt=PATH, and reference_ckpt needs it")


def answer_of(text, prefix):
    """The final answer: what follows the last `prefix` on its line ('' = the first line), or
    None."""
    if not prefix:
        return text.split('\n')[0].strip()
    return text.rsplit(prefix, 1)[1].split('\n')[0].strip() if prefix in text else None


def is_right(pred, solution, prefix):
    """A parsed answer `pred` is right when it equals the reference solution's answer exactly."""
    return pred is not None and pred == answer_of(solution, prefix)


def main():
    dec = Decoding(tokens_per_step, threshold, temperature, use_rcd, alpha_mode, alpha_constant, alpha_scale,
                   residual_temperature, first_step, residual_steps)
    check_decoding(dec, reference_ckpt)
    if num_samples < 1 or max_new_tokens < 0:
        common.fail(f'need num_samples >= 1 and max_new_tokens >= 0 (got {num_samples}, {max_new_tokens})')
    torch.manual_seed(seed)
    dev, autocast = common.setup_device(device, dtype)
    model, meta, tok, reference, _ = load_models(ckpt, reference_ckpt, dev)
    rule = f'threshold {threshold}' if threshold > 0 else f'{tokens_per_step} tokens/step'
    if use_rcd:
        rule += f', RCD alpha={alpha_mode}, first step {first_step}'
        rule += f', residuals in the first {residual_steps} steps' if residual_steps else ''
    if tokens_per_step > model.cfg.block_size and threshold == 0:
        print(f'note: tokens_per_step={tokens_per_step} is more than a block ({model.cfg.block_size} tokens): '
              f'each step commits the whole block')
    generator = torch.Generator(dev).manual_seed(seed)
    examples = [(prompt.replace('\\n', '\n'), None)] * num_samples
    if not prompt and 'answer_prefix' in meta:  # a dataset with answers: the first few test problems
        with open(os.path.join(common.dataset_dir(meta['dataset']), 'test.pkl'), 'rb') as f:
            examples = pickle.load(f)[:num_samples]
    n_right = 0
    for text, solution in examples:
        ids = torch.tensor([tok.encode(text)], dtype=torch.long, device=dev)
        if ids.shape[1] >= model.cfg.seq_len:
            common.fail(f'the prompt has {ids.shape[1]} tokens: the context (seq_len={model.cfg.seq_len}) '
                        f'leaves no room to generate')
        budget = max_new_tokens or model.cfg.seq_len - ids.shape[1]
        try:
            with autocast:
                out, n_pass = generate(model, ids, budget, dec, meta['eos_id'], reference, generator, use_cache)
        except ValueError as e:  # a prompt and budget beyond the context
            common.fail(str(e))
        sample = tok.decode(out[0, ids.shape[1]:].tolist())
        print(f'--- {rule}, {int(n_pass)} forward passes\n{text}{sample}')
        if solution is not None:
            answer = answer_of(solution, meta['answer_prefix'])
            right = is_right(answer_of(sample, meta['answer_prefix']), solution, meta['answer_prefix'])
            print(f"reference answer: {answer}  ({'right' if right else 'wrong'})")
            n_right += right
    if examples[0][1] is not None:
        print(f'{n_right} of {len(examples)} test problems right ({rule})')


if __name__ == '__main__':
    configure(globals(), [k for k, v in globals().items()
                          if not k.startswith('_') and type(v) in (int, float, bool, str)], sys.argv[1:])
    main()
