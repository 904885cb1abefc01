"""
The inference machinery under sample.generate, which a reader of the method may skip: each
model's forward pass over one block (against its KV cache, as a replayed CUDA graph on CUDA, or by
re-running the whole prefix), and loading the models to sample from.
"""
from dataclasses import replace

import torch

import common
from checkpoint import build_model, load_checkpoint, load_reference
from data.tokenizer import Tokenizer
from model import KVCache


class BlockRunner:
    """One model's forward pass over one block [s, e) of the sequence x: against its KV cache (a
    replayed CUDA graph on CUDA), or, without a cache, by re-running the whole prefix. The first
    `prefill` tokens (the prompt's whole blocks) go into the cache at once."""

    def __init__(self, model, x, prefill, use_cache, cuda_graph):
        self.model, self.x = model, x
        self.cache = KVCache(model.cfg.n_layer, x.shape[1], x.device) if use_cache else None
        self.use_graph = use_cache and cuda_graph and x.device.type == 'cuda'
        self.graph = None  # captured on first use
        if self.cache is not None and prefill > 0:
            model(x[:, :prefill], cache=self.cache)
            self.cache.advance(prefill)

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


def step_graph(model, cache, b):
    """model's forward on one block against `cache`, compiled and captured once as a CUDA graph: a
    replay launches the whole pass at once, where an eager pass is ~400 kernel launches and the
    host, not the GPU, bounds the sampler; compiled, its elementwise work is fused (at large batches
    the GPU bounds it). The cache's position lives on the device, so one graph serves every step of
    every block. Returns replay(x_block, delta)."""
    cfg, forward = model.cfg, common.compiled(model)
    x = torch.full((b, cfg.block_size), cfg.mask_id, dtype=torch.long, device=cache.start.device)
    delta = torch.zeros(b, cfg.block_size, cfg.n_embd, device=x.device)  # no residual: zeros
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


def as_trained(dec, trained, told):
    """dec with RCD's settings as the model was trained (its checkpoint's config) wherever the
    command line left them (`told`: the keys it set): residuals on for a model trained to read
    them, at its α mode, constant and scale. A setting told otherwise says so in one line (taken on
    purpose: the ablations decode so)."""
    reads = trained.get('alpha_mode', 'none') != 'none'  # stage 1, or an arm without residuals
    knobs = dict(use_rcd=reads)
    if reads:
        knobs.update({k: trained[k] for k in ('alpha_mode', 'alpha_constant', 'alpha_scale')})
    for key, value in knobs.items():
        if key not in told:
            dec = replace(dec, **{key: value})
        elif getattr(dec, key) != value and (key == 'use_rcd' or dec.use_rcd):
            print(f'note: {key}={getattr(dec, key)!r} is not how the model was trained '
                  f'({key}={value!r})')
    return dec


def check_decoding(dec, reference_ckpt):
    """A bad decoding setting is one clear line."""
    problem = dec.problem()
    if problem:
        common.fail(problem)
    if (dec.first_step == 'reference') != bool(reference_ckpt):
        common.fail("first_step='reference' needs --reference_ckpt=PATH, and reference_ckpt "
                    "needs it")


def load_models(ckpt, reference_ckpt, dev):
    """(model, meta, tokenizer, reference or None, training config) from a checkpoint (and a
    reference one)."""
    state = load_checkpoint(ckpt, key='ckpt')
    model = build_model(state['model_args'], state['model']).to(dev).eval()
    reference = load_reference(reference_ckpt, state, dev) if reference_ckpt else None
    return model, state['meta'], Tokenizer(state['meta']), reference, state.get('config', {})
