"""
Sample from a trained block-diffusion model, block by block (SPEC §6).

Each block starts as B copies of [MASK]. At every denoising step one forward pass over the block (attending to the KV
cache of the prompt and finished blocks) predicts every masked position; the most confident predictions are committed,
the rest go back to [MASK]. Commit rules: a fixed number of tokens per step (threshold=0), or every position whose top
probability reaches `threshold` (at least one per step). A finished block is run once more to append its keys/values to
the cache. Cost = forward passes per answer (denoising steps + cache fills + the extra pass that seeds a block's first
step with first_step='self' or 'reference', and that reference's cache fills; the prompt's prefill is not counted).

With --rcd=True the remasked positions do not go back to plain [MASK]: they carry a residual built from this step's
predictions into the next step (rcd.py, SPEC §4). It works on any checkpoint: a stage-2 RCD model was trained to read
residuals; a stage-1 model was not (an ablation). --rcd=True --alpha_mode=none is exactly the plain sampler.
--first_step says what a block's first step reads, which has no previous step (SPEC §6).

    python sample.py --ckpt=out/stage1/ckpt.pt --prompt='12+34-5=?\\n'
    python sample.py --ckpt=out/stage2/ckpt.pt --rcd=True --tokens_per_step=4
On a dataset with answers (sudoku, reasoning) and no --prompt it samples the first test problems and says whether
each answer is right. Accuracy over a sweep of decoding budgets: eval.py.
"""
import functools
import math
import os
import pickle
import sys

import torch

import trainer
from configurator import configure
from data.tokenizer import Tokenizer
from model import KVCache
from rcd import ALPHA_MODES, dirichlet_logits, logits_residual, residual_probs

FIRST_STEPS = ('zero', 'self', 'reference', 'dirichlet')

# -----------------------------------------------------------------------------------------------------------------
ckpt = 'out/stage1/ckpt.pt'
prompt = ''                  # text to continue ('\n' is a newline); '' = from scratch (reasoning: test prompts)
num_samples = 4
max_new_tokens = 0           # 0 = up to the model's context length
tokens_per_step = 1          # static rule: tokens committed per denoising step (spread evenly over the block)
threshold = 0.0              # > 0: threshold rule instead, commit every position with top probability >= threshold
temperature = 0.0            # 0 = greedy; otherwise sample committed tokens from softmax(logits / temperature)
use_cache = True             # False: re-run the whole sequence at every step (same tokens, slower)
rcd = False                  # residual context: remasked positions carry their residual into the next step (rcd.py)
alpha_mode = 'entropy'       # with rcd: 'entropy' (paper), 'confidence', 'constant', 'none' (= the plain sampler)
alpha_constant = 0.5         # α for alpha_mode='constant'
residual_temperature = 1.0   # T_res: with rcd, α is the entropy of softmax(logits / T_res) (paper Alg. 2)
first_step = 'zero'          # with rcd, the residual of a block's first step: 'zero' (cold start), 'self' (one extra
                             # pass of the model), 'reference' (one pass of reference_ckpt: warm start), 'dirichlet'
reference_ckpt = ''          # the checkpoint of first_step='reference' (a stage-1 model)
device = 'auto'
dtype = 'auto'
seed = 1337
# -----------------------------------------------------------------------------------------------------------------


def commit_counts(n_masked, tokens_per_step):
    """Static rule: how many tokens each step commits, ceil(n / k) steps with the n tokens spread as evenly as possible."""
    steps = math.ceil(n_masked / tokens_per_step)
    return [n_masked // steps + (s < n_masked % steps) for s in range(steps)]


@torch.no_grad()
def generate(model, prompt_ids, max_new_tokens, tokens_per_step=1, threshold=0.0, temperature=0.0, eos_id=None,
             use_cache=True, generator=None, alpha_mode=None, alpha_constant=0.5, residual_temperature=1.0,
             first_step='zero', reference=None, cuda_graph=True):
    """Continue prompt_ids (b, p) by max_new_tokens, block by block. Blocks are aligned to multiples of B from
    position 0, as in training, so the prompt's last partial block is completed in place. A row stops after the
    block in which it commits eos_id. Returns (tokens (b, p + max_new_tokens), forward passes per row (b,)).
    RCD (alpha_mode set, see rcd.py): remasked positions carry their residual into the next step instead of [MASK].
    A block's first step has no previous step; first_step (SPEC §6) seeds its residual: 'zero' none (cold start),
    'self' one extra pass of the model, 'reference' one pass of `reference` (warm start), 'dirichlet' a random p.
    cuda_graph: on CUDA with the cache, each model's one-block pass is a replayed CUDA graph (same tokens, faster).
    On CUDA each step's work on the logits (token probabilities, the residual) runs compiled: fused kernels."""
    cfg, (b, p) = model.cfg, prompt_ids.shape
    B, mask_id, dev = cfg.block_size, cfg.mask_id, prompt_ids.device
    end = -(-(p + max_new_tokens) // B) * B  # whole blocks
    if max_new_tokens < 1 or end > cfg.seq_len:
        raise ValueError(f'a prompt of {p} tokens and max_new_tokens={max_new_tokens} must fit the context '
                         f'(seq_len={cfg.seq_len}) with at least one new token')
    if first_step not in FIRST_STEPS or (first_step == 'reference') != (reference is not None):
        raise ValueError(f"first_step='{first_step}' must be one of {', '.join(FIRST_STEPS)}; 'reference', and only "
                         f"it, needs a reference model")
    x = torch.cat((prompt_ids, torch.full((b, end - p), mask_id, dtype=torch.long, device=dev)), dim=1)
    models = [model] + ([reference] if reference is not None else [])
    caches = [KVCache(m.cfg.n_layer, end, dev) if use_cache else None for m in models]
    graphs = [None] * len(models)  # made on first use when replaying CUDA graphs
    probs_of, residual_of = (fused(residual_probs), fused(logits_residual)) if dev.type == 'cuda' else \
        (residual_probs, logits_residual)
    first = p // B
    if use_cache and first > 0:
        for m, cache in zip(models, caches):
            m(x[:, :first * B], cache=cache)  # prefill the prompt's whole blocks
            cache.advance(first * B)

    def run(i, s, e, delta=None, write=False):
        """Logits of block [s, e) from models[i]: against its cache, or (no cache) by re-running the whole prefix."""
        m, cache = models[i], caches[i]
        if use_cache:
            if cuda_graph and dev.type == 'cuda':
                if graphs[i] is None:
                    graphs[i] = block_graph(m, cache, b)
                logits = graphs[i](x[:, s:e], delta)
            else:
                logits = m(x[:, s:e], cache=cache, delta=delta)
            if write:
                cache.advance(e - s)  # keep the block's keys/values: the next block's passes read them
            return logits
        full = None if delta is None else torch.cat((delta.new_zeros(b, s, delta.shape[-1]), delta), dim=1)
        return m(x[:, :e], delta=full)[:, s:]

    done = torch.zeros(b, dtype=torch.bool, device=dev)
    passes = torch.zeros(b, dtype=torch.long, device=dev)
    rows = torch.arange(b, device=dev)
    for blk in range(first, end // B):
        s, e = blk * B, (blk + 1) * B
        schedule = commit_counts(int((x[0, s:e] == mask_id).sum()), tokens_per_step)  # same prompt length per row
        # (logits, positions) the next step's residual is built from: at a block's first step none, or first_step's.
        # A replayed graph overwrites its logits at its next replay, so the residual is built before the next pass.
        residual = None
        is_masked = (x[:, s:e] == mask_id) & ~done[:, None]
        if alpha_mode is not None and first_step == 'dirichlet':
            residual = (dirichlet_logits((b, B, cfg.vocab_size), mask_id, generator, dev), is_masked)
        elif alpha_mode is not None and first_step in ('self', 'reference'):  # one extra pass seeds the residual
            residual = (run(int(first_step == 'reference'), s, e), is_masked)
            passes += is_masked.any(1)
        step = 0
        while True:
            is_masked = (x[:, s:e] == mask_id) & ~done[:, None]
            live = is_masked.any(1)
            if not live.any():
                break
            delta = None
            if residual is not None:  # built only when a step reads it: no p·E after a block's last step
                res_logits, remasked = residual
                delta = residual_of(res_logits, model.wte.weight, mask_id, remasked, alpha_mode, alpha_constant,
                                    residual_temperature)
            logits = run(0, s, e, delta)
            passes += live
            probs = probs_of(logits, mask_id, temperature or 1.0)  # never predicts [MASK] itself
            pred = torch.multinomial(probs.flatten(0, 1), 1, generator=generator).view(b, B) if temperature > 0 \
                else probs.argmax(-1)
            conf = probs.gather(-1, pred[..., None]).squeeze(-1).masked_fill(~is_masked, -1.0)
            if threshold > 0:
                commit = conf >= threshold
                commit[rows, conf.argmax(1)] = True  # at least the single most confident position
            else:
                commit = torch.zeros_like(is_masked)
                commit.scatter_(1, conf.topk(schedule[min(step, len(schedule) - 1)], dim=1).indices, True)
            commit &= is_masked
            if (live & ~commit.any(1)).any():  # a rule that commits nothing would loop forever
                raise RuntimeError(f'a denoising step committed no token (block {blk}, step {step})')
            x[:, s:e] = torch.where(commit, pred, x[:, s:e])  # the rest stays [MASK]: remasked
            if alpha_mode is not None:  # RCD: the remasked positions keep what this step computed for them
                residual = (logits, is_masked & ~commit)
            step += 1
        if eos_id is not None:
            done |= (x[:, s:e] == eos_id).any(1)
        if done.all() or e == end:
            break
        if use_cache:
            for i in range(len(models)):
                run(i, s, e, write=True)  # keep the finished block's keys/values
                passes += ~done
    return x[:, :p + max_new_tokens], passes


@functools.cache
def fused(fn):
    """fn compiled: inductor fuses its passes over the (b, B, V) float32 probabilities, which eager runs one by one."""
    return torch.compile(fn)


def block_graph(model, cache, b):
    """model's forward on one block against `cache`, captured once as a CUDA graph: a replay launches the whole pass
    at once, where an eager pass is ~400 kernel launches and the host, not the GPU, bounds the sampler. The cache's
    position lives on the device, so one graph serves every step of every block. Returns replay(x_block, delta)."""
    cfg = model.cfg
    x = torch.full((b, cfg.block_size), cfg.mask_id, dtype=torch.long, device=cache.start.device)
    delta = torch.zeros(b, cfg.block_size, cfg.n_embd, device=x.device)  # no residual = a zero residual
    # the weight casts become part of the graph: autocast must not cache them across the capture
    amp = torch.autocast('cuda', dtype=torch.get_autocast_dtype('cuda'), enabled=torch.is_autocast_enabled('cuda'),
                         cache_enabled=False)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), amp:
        model(x, cache=cache, delta=delta)  # warm-up off the main stream, as capture requires
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), amp:
        logits = model(x, cache=cache, delta=delta)

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
    """(model, meta, tokenizer, reference or None, training config) from a checkpoint and an optional reference
    checkpoint."""
    state = trainer.load_checkpoint(ckpt)
    model = trainer.build_model(state['model_args'], state['model']).to(dev).eval()
    reference = None
    if reference_ckpt:
        ref_state = trainer.load_checkpoint(reference_ckpt)
        trainer.check_compatible(ref_state, state, 'reference_ckpt', 'ckpt')
        reference = trainer.build_model(ref_state['model_args'], ref_state['model']).to(dev).eval()
    return model, state['meta'], Tokenizer(state['meta']), reference, state.get('config', {})


def check_decoding(tokens_per_step, threshold, temperature, alpha_mode, residual_temperature, rcd, first_step,
                   reference_ckpt):
    if tokens_per_step < 1 or not 0.0 <= threshold <= 1.0 or temperature < 0 or residual_temperature <= 0:
        trainer.fail('need tokens_per_step >= 1, 0 <= threshold <= 1, temperature >= 0 and residual_temperature > 0')
    if alpha_mode not in ALPHA_MODES:
        trainer.fail(f"alpha_mode='{alpha_mode}' must be one of {', '.join(ALPHA_MODES)}")
    if first_step not in FIRST_STEPS:
        trainer.fail(f"first_step='{first_step}' must be one of {', '.join(FIRST_STEPS)}")
    if first_step != 'zero' and not rcd:
        trainer.fail('first_step seeds the residual of RCD sampling: use it with --rcd=True')
    if (first_step == 'reference') != bool(reference_ckpt):
        trainer.fail("first_step='reference' needs --reference_ckpt=PATH, and reference_ckpt needs it")


def answer_of(text, prefix):
    """The final answer: what follows the last `prefix` on its line ('' = the first line), or None."""
    if not prefix:
        return text.split('\n')[0].strip()
    return text.rsplit(prefix, 1)[1].split('\n')[0].strip() if prefix in text else None


def is_right(pred, solution, prefix):
    """A parsed answer `pred` is right when it equals the reference solution's answer exactly."""
    return pred is not None and pred == answer_of(solution, prefix)


if __name__ == '__main__':
    configure(globals(), [k for k, v in globals().items() if not k.startswith('_') and type(v) in (int, float, bool, str)],
              sys.argv[1:])
    check_decoding(tokens_per_step, threshold, temperature, alpha_mode, residual_temperature, rcd, first_step,
                   reference_ckpt)
    torch.manual_seed(seed)
    dev, autocast = trainer.setup_device(device, dtype)
    model, meta, tok, reference, _ = load_models(ckpt, reference_ckpt, dev)
    rule = (f'threshold {threshold}' if threshold > 0 else f'{tokens_per_step} tokens/step') + \
        (f', RCD alpha={alpha_mode}, first step {first_step}' if rcd else '')
    decode = dict(tokens_per_step=tokens_per_step, threshold=threshold, temperature=temperature, use_cache=use_cache,
                  generator=torch.Generator(dev).manual_seed(seed), alpha_mode=alpha_mode if rcd else None,
                  alpha_constant=alpha_constant, residual_temperature=residual_temperature, first_step=first_step,
                  reference=reference)
    examples = [(prompt.replace('\\n', '\n'), None)] * num_samples
    if not prompt and 'answer_prefix' in meta:  # a dataset with answers: the first few test problems
        with open(os.path.join(trainer.dataset_dir(meta['dataset']), 'test.pkl'), 'rb') as f:
            examples = pickle.load(f)[:num_samples]
    for text, solution in examples:
        ids = torch.tensor([tok.encode(text)], dtype=torch.long, device=dev)
        budget = max_new_tokens or model.cfg.seq_len - ids.shape[1]
        try:
            with autocast:
                out, n_pass = generate(model, ids, budget, eos_id=meta['eos_id'], **decode)
        except ValueError as e:  # a prompt or budget beyond the context
            trainer.fail(str(e))
        sample = tok.decode(out[0, ids.shape[1]:].tolist())
        print(f'--- {rule}, {int(n_pass)} forward passes\n{text}{sample}')
        if solution is not None:
            right = is_right(answer_of(sample, meta['answer_prefix']), solution, meta['answer_prefix'])
            print(f"reference answer: {answer_of(solution, meta['answer_prefix'])}  ({'right' if right else 'wrong'})")
