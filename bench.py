"""
Benchmark on one GPU: (a) training step time, tokens/s and MFU of stage 1 and stage 2 (every row
with residuals from the reference, or through the target's own 4-step decoding rollout, as
--rollout_steps=4), (b) attention alone: FlexAttention with the block-diffusion masks vs SDPA with
the same mask as a dense boolean tensor vs causal SDPA, (c) sampling tokens/s and forward passes,
baseline vs RCD, with the KV cache (replayed as a CUDA graph, and eager) and without. For a
GPT-2-small-sized model (12 layers, 768 wide, seq_len 1024, block 32, GPT-2 vocabulary padded to
50304), the tiny default model and the Sudoku model (train_stage1.py's defaults; sampled as eval.py
does, 500 at once). GPU times are CUDA events after warm-up, median of repeats. Random weights and
tokens: speed does not depend on them, and the sampler's static rule makes the number of forward
passes fixed. On CPU a tiny smoke version runs.

    python bench.py                                   # everything: one table
    python bench.py --sections=attention --sizes=gpt2
    python bench.py --sections=train --sizes=tiny --profile=True  # where a step's time goes
"""
import json
import os
import signal
import statistics
import sys
import time

if __name__ == '__main__':  # Ctrl-C while torch loads: quit quietly (until configure())
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))

import torch

import common
import rcd
from configurator import configure
from model import (BlockDiffusionLM, ModelConfig, add_noise, attention, inference_mask,
                   loss_weights, training_len, training_mask, uses_flex)
from sample import Decoding, generate

# ------------------------------------------------------------------------------------------------
sizes = 'gpt2,tiny'              # which model sizes (SIZES below), comma-separated
sections = 'train,attention,sample'
warmup = 5
repeats = 20                     # training and attention; sampling uses max(3, repeats // 5)
compile = True
device = 'auto'
out = ''                         # also write the rows as JSON lines to this file
profile = False                  # also print the kernels that take each training step's time
                                 # (torch.profiler)
configure(globals(), ['sizes', 'sections', 'warmup', 'repeats', 'compile', 'device', 'out',
                     'profile'], sys.argv[1:])
# ------------------------------------------------------------------------------------------------
if warmup < 0 or repeats < 1:
    sys.exit(f'error: need warmup >= 0 and repeats >= 1 (got {warmup}, {repeats})')
if out:  # before the benchmark: its rows must not be lost to an unwritable path at the end
    try:
        open(out, 'a').close()
    except OSError as e:
        sys.exit(f'error: cannot write --out={out} ({e.strerror})')

# model shape, training batch, attention batch per length, sampling batches and number of generated
# blocks
SIZES = {
    'gpt2': dict(model=dict(vocab_size=50304, mask_id=50257, seq_len=1024, block_size=32,
                            n_layer=12, n_head=12, n_embd=768),
                 train_batch=16, attn={1024: 8, 4096: 2}, sample_batches=(1, 64), blocks=8),
    'tiny': dict(model=dict(vocab_size=19, mask_id=18, seq_len=96, block_size=8, n_layer=6,
                            n_head=6, n_embd=384),
                 train_batch=256, attn={96: 256}, sample_batches=(1, 64), blocks=8),
    'sudoku': dict(model=dict(vocab_size=14, mask_id=13, seq_len=192, block_size=96, n_layer=6,
                              n_head=6, n_embd=384),
                   train_batch=256, attn={192: 256}, sample_batches=(500,),  # eval.py's batch
                   blocks=1),
    'smoke': dict(model=dict(vocab_size=19, mask_id=18, seq_len=64, block_size=8, n_layer=2,
                             n_head=2, n_embd=32),
                  train_batch=4, attn={64: 2}, sample_batches=(1, 4), blocks=2),  # CPU
}
unknown = [name for name in sizes.split(',') if name not in SIZES] + \
    [name for name in sections.split(',') if name not in ('train', 'attention', 'sample')]
if unknown:
    common.fail(f"unknown size or section: {', '.join(unknown)} (sizes: {', '.join(SIZES)}; "
                f"sections: train, attention, sample)")
dev, autocast = common.setup_device(device, 'auto')
cuda = dev.type == 'cuda'
# one process samples every size, batch and cache mode: more shapes per compiled function than the
# default 8, past which dynamo would run the rest eagerly (and time those functions uncompiled)
torch._dynamo.config.recompile_limit = 64
if not cuda:
    sizes, warmup, repeats = 'smoke', 1, 2
    print('no GPU: a tiny smoke run (the numbers mean nothing)')
rows = []


def row(**r):
    rows.append(r)
    print('  '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}' for k, v in r.items()),
          flush=True)


def timed(fn, n_warmup, n_repeat):
    """Median milliseconds of fn(): CUDA events on the GPU, perf_counter on CPU."""
    for _ in range(n_warmup):
        fn()
    times = []
    for _ in range(n_repeat):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def print_profile(fn, label, steps=3):
    """The ops and kernels that take fn's time, summed over a few calls (run after the timing: warm
    and compiled)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        if cuda:
            torch.cuda.synchronize()
    print(f'profile: {label}, {steps} calls')
    sort_by = 'self_cuda_time_total' if cuda else 'self_cpu_time_total'
    print(prof.key_averages().table(sort_by=sort_by, row_limit=15))


peak, measured_peak = common.peak_flops(dev), None
if cuda:
    a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    ms = timed(lambda: a @ a, 5, 20)
    measured_peak = 2 * 8192 ** 3 / (ms / 1000)
    row(what='peak', gpu=torch.cuda.get_device_name(dev), datasheet_tflops=peak / 1e12,
        matmul_8192_tflops=measured_peak / 1e12)
    del a


def bench_train(size, spec, cfg):
    """Step time, tokens/s and MFU of a stage-1 step and of stage-2 steps (every row from the
    reference, or every row through the rollout)."""
    L, B, V = cfg.seq_len, cfg.block_size, cfg.vocab_size
    torch.manual_seed(0)
    model = BlockDiffusionLM(cfg).to(dev)
    reference = BlockDiffusionLM(cfg).to(dev).eval().requires_grad_(False)
    fwd = torch.compile(model) if compile and cuda else model
    opt = model.configure_optimizer(0.1, 1e-4, (0.9, 0.95), dev.type)
    b = spec['train_batch']
    x0 = torch.randint(0, V - 2, (b, L), device=dev)
    prompt_mask = torch.zeros_like(x0, dtype=torch.bool)
    gen = torch.Generator(dev).manual_seed(0)
    residual_fn = torch.compile(rcd.residual) if compile and cuda else rcd.residual
    ref_fwd = torch.compile(reference) if compile and cuda else reference
    step_ms = {}

    def residual(logits, remasked):
        return residual_fn(logits, model.wte.weight, cfg.mask_id, remasked, 'entropy')
    # rollout: --rollout_steps=4 (4 steps once a batch has more than a few rows)
    for stage in ('stage1', 'stage2', 'stage2 rollout'):
        def step():  # as train_stage2.py's batch_loss (the reference reads x_t, or the rollout)
            with autocast:
                x_t, masked, t = add_noise(x0, prompt_mask, B, cfg.mask_id, 0.0, 1.0, gen)
                delta = None
                if stage == 'stage2 rollout':
                    start, steps, threshold, reads = rcd.rollout_rows(x0, prompt_mask, cfg.mask_id,
                                                                      4, generator=gen)
                    x_t, masked, t, logits, remasked = rcd.rollout(fwd, x0, start, prompt_mask,
                                                                   steps, threshold, reads,
                                                                   'entropy')
                    delta = residual(logits, remasked)
                elif stage == 'stage2':
                    with torch.no_grad():
                        logits = ref_fwd(x_t, x0)
                    delta = residual(logits, masked)
                weights = loss_weights(masked, t, prompt_mask, 'elbo')
                loss = fwd(x_t, x0, delta, loss_weights=weights)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        ms = step_ms[stage] = timed(step, warmup, repeats)
        flops = model.flops_per_sequence() * b / (ms / 1000)
        mfu = {'mfu_datasheet': flops / peak, 'mfu_matmul': flops / measured_peak} if cuda else {}
        row(what=f'train {stage}', size=size, batch=b, ms_per_step=ms,
            tokens_per_s=b * L / (ms / 1000), tflops=flops / 1e12, **mfu)
        if profile:
            print_profile(step, f'{size} {stage} training step')
    row(what='train stage2/stage1', size=size, every_row=step_ms['stage2'] / step_ms['stage1'],
        every_row_rollout_4=step_ms['stage2 rollout'] / step_ms['stage1'])
    del model, reference, fwd, ref_fwd, opt
    if cuda:
        torch.cuda.empty_cache()


def bench_attention(size, spec, cfg):
    """Training attention (2L - B tokens) fwd+bwd: FlexAttention, SDPA with the dense mask, causal
    SDPA; and the sampler's attention of one block against the cache."""
    B = cfg.block_size
    H, D = cfg.n_head, cfg.n_embd // cfg.n_head
    for n, b in spec['attn'].items():
        def fwd_bwd(attend, length):  # forward only on CPU, where FlexAttention has no backward
            q, k, v = (torch.randn(b, H, length, D, device=dev, dtype=torch.bfloat16,
                                   requires_grad=cuda) for _ in range(3))
            grad = torch.randn(b, H, length, D, device=dev, dtype=torch.bfloat16)
            return lambda: attend(q, k, v).backward(grad) if cuda else attend(q, k, v)
        dense = training_mask(n, B, dev, False)
        sdpa = torch.nn.functional.scaled_dot_product_attention
        block_mask = training_mask(n, B, dev, True)
        variants = {'flex': lambda q, k, v: attention(q, k, v, block_mask)} if cuda else {}
        variants.update(sdpa_dense_mask=lambda q, k, v: sdpa(q, k, v, attn_mask=dense),
                        sdpa_causal=lambda q, k, v: sdpa(q, k, v, is_causal=True))
        length = training_len(n, B)  # the 2L - B tokens the model's training attention reads
        t = {name: timed(fwd_bwd(fn, length), warmup, repeats) for name, fn in variants.items()}
        row(what='attention train fwd+bwd (2L)', size=size, L=n, batch=b,
            **{f'{k}_ms': v for k, v in t.items()},
            **({'flex_over_causal': t['flex'] / t['sdpa_causal']} if cuda else {}),
            model_uses='flex' if uses_flex(length, dev) else 'sdpa_dense_mask')
        # inference: the last block's B queries against a cache buffer of n keys, under the
        # sampler's mask (all visible here) vs SDPA with no mask at all, the lower bound
        q = torch.randn(64, H, B, D, device=dev, dtype=torch.bfloat16)
        k, v = (torch.randn(64, H, n, D, device=dev, dtype=torch.bfloat16) for _ in range(2))
        t_sdpa = timed(lambda: sdpa(q, k, v), warmup, repeats)

        def sampler_attention():
            positions = n - B + torch.arange(B, device=dev)
            return sdpa(q, k, v, attn_mask=inference_mask(positions, n, B))
        t_mask = timed(sampler_attention, warmup, repeats)
        row(what='attention inference fwd (block vs cache)', size=size, L=n, batch=64,
            sdpa_no_mask_ms=t_sdpa, sampler_ms=t_mask)


def bench_sample(size, spec, cfg):
    """Sampling time and forward passes, baseline vs RCD, with the cache (graph, eager) and
    without."""
    B, V = cfg.block_size, cfg.vocab_size
    torch.manual_seed(0)
    model = BlockDiffusionLM(cfg).to(dev).eval()
    for b in spec['sample_batches']:
        # one block of prompt, then `blocks` new blocks
        prompt = torch.randint(0, V - 2, (b, B), device=dev)
        new = spec['blocks'] * B
        t_ms, per_pass = {}, {}
        # graph: the sampler's default on CUDA
        caches = ('graph', 'eager', 'none') if cuda else ('eager', 'none')
        for cache in caches:
            for k in (1, 2, 4, 8):
                for method in ('baseline', 'rcd'):
                    def run():
                        with autocast:
                            dec = Decoding(tokens_per_step=k, use_rcd=method == 'rcd')
                            return generate(model, prompt, new, dec, use_cache=cache != 'none',
                                            cuda_graph=cache == 'graph')
                    passes = int(run()[1][0])  # also the warm-up
                    ms = t_ms[method, cache, k] = timed(run, 0, max(3, repeats // 5))
                    per_pass[method, cache, k] = ms / passes
                    row(what='sample', size=size, batch=b, method=method, kv_cache=cache,
                        tokens_per_step=k, forward_passes=passes, ms=ms,
                        tokens_per_s=b * new / (ms / 1000), ms_per_pass=ms / passes)
        for k in (1, 2, 4, 8):
            base = t_ms['baseline', caches[0], k]  # the sampler's default cache
            rcd_cost = per_pass['rcd', caches[0], k] / per_pass['baseline', caches[0], k] - 1
            graph = {}
            if cuda:
                graph['graph_over_eager_speedup'] = t_ms['baseline', 'eager', k] / base
            row(what='sample summary', size=size, batch=b, tokens_per_step=k,
                rcd_overhead_per_pass=rcd_cost, kv_cache_speedup=t_ms['baseline', 'none', k] / base,
                **graph)
    del model


for size in sizes.split(','):
    torch._dynamo.reset()  # each size compiled afresh: a recompile for a new shape goes dynamic
    for name in sections.split(','):
        globals()[f'bench_{name}'](size, SIZES[size], ModelConfig(**SIZES[size]['model']))

if out:
    try:
        with open(out, 'w') as f:
            f.writelines(json.dumps(r) + '\n' for r in rows)
    except OSError as e:  # a disk that filled up while the benchmark ran
        sys.exit(f'error: could not write --out={out} ({e.strerror}); the table above has the rows')
