"""
Stage 1: train the ordinary block-diffusion model. Its checkpoint is stage 2's starting point (and
the frozen reference of the paper's recipe). The defaults are the README's result: 9x9 Sudoku on one
GPU, the 81-digit answer one diffusion block.

    python train_stage1.py                                  # 9x9 Sudoku, one GPU (minutes)
    python train_stage1.py config/quick_cpu.py              # 4x4 Sudoku: minutes on a CPU
    python train_stage1.py config/reasoning_gpu.py          # the arithmetic task
    python train_stage1.py --init_from=resume               # continue out_dir/ckpt.pt exactly

Reads top to bottom: config, device, data, model and optimizer, then the training loop.
"""
import os
import signal
import sys
from functools import partial

# Ctrl-C while torch loads: quit quietly (until configure())
signal.signal(signal.SIGINT, lambda *_: os._exit(130))

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

import common
from checkpoint import build_model, load_checkpoint, save_checkpoint
from configurator import configure
from data.datasets import Batches, load_dataset
from model import add_noise, loss_weights

# --------------------------------------------------------------------------------------------------
# config: override with config/*.py files and --key=value flags
out_dir = 'out/stage1'
init_from = 'scratch'        # 'scratch', or 'resume' from out_dir/ckpt.pt
dataset = 'sudoku'           # data/<dataset>/ (prepared on first use), or a prepared directory
# model
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.0
seq_len = 192                # L, the context; for row datasets it must equal the rows' length
block_size = 96              # B, the diffusion block; must divide seq_len
# noise and loss
mask_rate_min = 0.0          # a block's masking rate t: uniform in (mask_rate_min, mask_rate_max]
mask_rate_max = 1.0
loss_weighting = 'elbo'      # 'elbo' (1/t-weighted, per token) or 'mean' (over masked positions)
# optimization
batch_size = 256
grad_accum_steps = 1
max_iters = 2500
learning_rate = 1e-3
min_lr = 1e-4
warmup_iters = 100
lr_decay_iters = 2500
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
# evaluation, logging, checkpoints
eval_interval = 500
eval_iters = 20
log_interval = 50
always_save_checkpoint = False
eval_only = False            # measure train/val loss once and exit: no training, no checkpoint
# system
device = 'auto'              # 'auto' (CUDA if present), 'cpu', 'cuda', 'cuda:1', ...
dtype = 'auto'               # 'auto' (bf16 autocast on CUDA, fp32 on CPU), 'bfloat16', 'float32'
compile = True               # torch.compile on CUDA (FlexAttention is fused only when compiled)
seed = 1337
config_keys = [k for k, v in globals().items()
               if not k.startswith('_') and isinstance(v, (int, float, bool, str))]
configure(globals(), config_keys, sys.argv[1:])
config = {k: globals()[k] for k in config_keys}
# --------------------------------------------------------------------------------------------------

if init_from not in ('scratch', 'resume'):
    common.fail(f"init_from='{init_from}' must be 'scratch' or 'resume'")
common.check_train_config(config)
torch.manual_seed(seed)
device, autocast = common.setup_device(device, dtype)
rank, n_proc = common.world()
common.check_grad_accum(grad_accum_steps, n_proc)
meta = load_dataset(dataset)
batches = Batches(meta, seq_len, batch_size, device)

ckpt_path = os.path.join(out_dir, 'ckpt.pt')
model_args = dict(vocab_size=meta['vocab_size'], mask_id=meta['mask_id'], seq_len=seq_len,
                  block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                  dropout=dropout)
if init_from == 'resume':
    ckpt = load_checkpoint(ckpt_path, stage=1)
    changed = [f'{k} {v} (was {ckpt["model_args"][k]})' for k, v in model_args.items()
               if ckpt['model_args'].get(k) != v]
    if changed:  # a resumed run keeps its model and data: a flag that changes them is refused
        common.fail(f"{ckpt_path} was trained with other settings: {', '.join(changed)}")
    print(f"resuming {ckpt_path} at iteration {ckpt['iter_num']}")
else:
    if os.path.isfile(ckpt_path):
        common.fail(f'{ckpt_path} exists and this run would replace it (or, with eval_only, score '
                    f'fresh weights beside it): continue it with --init_from=resume, or use a '
                    f'fresh --out_dir')
    ckpt = dict(model_args=model_args, model=None)
model = build_model(ckpt['model_args'], ckpt['model']).to(device)
optimizer = model.configure_optimizer(weight_decay, learning_rate, (beta1, beta2), device.type)
if init_from == 'resume':
    optimizer.load_state_dict(ckpt['optimizer'])
ckpt.update(config=config, meta=meta)
compiled = torch.compile(model) if compile and device.type == 'cuda' else model
forward = compiled
if n_proc > 1:
    forward = DDP(compiled, device_ids=[device.index] if device.type == 'cuda' else None)


def batch_loss(forward, split, batch_seed):
    """Noise every block at its own rate, denoise all blocks in one pass against their clean
    prefixes, and score the masked positions."""
    x0, prompt_mask, gen = batches.get(split, batch_seed)
    x_t, masked, t = add_noise(x0, prompt_mask, block_size, meta['mask_id'], mask_rate_min,
                               mask_rate_max, gen)
    return forward(x_t, x0, loss_weights=loss_weights(masked, t, prompt_mask, loss_weighting))


# --------------------------------------------------------------------------------------------------
# the training loop
iter_num = start = ckpt.get('iter_num', 0)
best_val_loss = ckpt.get('best_val_loss', float('inf'))
tokens_per_iter = batch_size * grad_accum_steps * seq_len
flops_per_iter = model.flops_per_sequence() * batch_size * grad_accum_steps
log = common.RunLog(out_dir, start, max_iters, rank, tokens_per_iter, flops_per_iter, device,
                    n_proc)
log.say(common.run_summary(model, tokens_per_iter, device, n_proc, log.peak))
if start >= max_iters and not eval_only:
    log.say(f'note: the run starts at iteration {start}, max_iters={max_iters}: nothing to train')
loss_sum = torch.zeros((), device=device)
while True:
    lr = common.lr_at(iter_num, learning_rate, min_lr, warmup_iters, lr_decay_iters)
    for group in optimizer.param_groups:
        group['lr'] = lr
    if iter_num % eval_interval == 0 or iter_num == max_iters:
        losses = common.estimate_loss(model, partial(batch_loss, compiled), eval_iters, autocast)
        common.check_finite(losses, iter_num)
        log.say(f"iter {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        log.write(dict(iter=iter_num, train_loss=losses['train'], val_loss=losses['val']))
        if eval_only:
            break
        if iter_num > start and (losses['val'] < best_val_loss or always_save_checkpoint):
            best_val_loss = min(best_val_loss, losses['val'])
            if rank == 0:
                ckpt.update(model=model.state_dict(), optimizer=optimizer.state_dict(),
                            iter_num=iter_num, best_val_loss=best_val_loss)
                save_checkpoint(ckpt, ckpt_path)
                log.saved = iter_num
                log.say(f'saved {ckpt_path}')
        log.restart_clock(iter_num)  # eval is not training time
        loss_sum = torch.zeros((), device=device)
    if iter_num >= max_iters:
        break
    my_micros = range(rank, grad_accum_steps, n_proc)  # this rank's share of the micro-batches
    for micro in my_micros:
        if n_proc > 1:  # all-reduce the gradients once, after the last micro-batch
            forward.require_backward_grad_sync = micro == my_micros[-1]
        with autocast:
            batch_seed = common.micro_batch_seed(seed, iter_num, micro, grad_accum_steps)
            loss = batch_loss(forward, 'train', batch_seed) / (grad_accum_steps // n_proc)
        loss.backward()
        loss_sum += loss.detach() / n_proc
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    iter_num += 1
    log.tick(iter_num)
    if iter_num % log_interval == 0:
        log.train(iter_num, common.sum_over_ranks(loss_sum), lr)  # loss, tokens/s, MFU
        loss_sum = torch.zeros((), device=device)
common.leave(forward, n_proc)
