"""
Stage 2: convert a stage-1 model into an RCD model.

The target model (initialised from a stage-1 checkpoint) learns to denoise with residual inputs
(rcd.py), with stage 1's masked-diffusion loss. Its residual rows come from one of two places:
- the paper (rollout_steps=0): the frozen *reference* model (a stage-1 checkpoint, eval mode, no
  gradients, may be smaller than the target) reads the same noised x_t and predicts every masked
  position, playing the part of "the previous denoising step";
- the README's result (rollout_steps > 0, the default): a short no-grad rollout of the target
  itself under the threshold commit rule gives both the state and its residual, as decoding
  makes them (rcd.rollout).
Either way no gradient flows through a chain of denoising steps.

    python train_stage2.py                              # after python train_stage1.py
    python train_stage2.py config/quick_cpu_stage2.py   # after the CPU quick start
    python train_stage2.py --init_from=resume           # continue out_dir/ckpt.pt exactly

Reads top to bottom: config, device, data, models and optimizer, one RCD training step, the loop.
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
import rcd
from checkpoint import build_model, check_compatible, load_checkpoint, save_checkpoint
from configurator import configure
from data.datasets import Batches, load_dataset
from model import add_noise, loss_weights

# ------------------------------------------------------------------------------------------------
# config: the target's architecture comes from its stage-1 checkpoint; override with config files
# and --key=value
out_dir = 'out/stage2'
init_from = 'out/stage1/ckpt.pt'       # a stage-1 checkpoint to start the target from, or 'resume'
reference_ckpt = ''          # the frozen stage-1 model of the paper's recipe (read only with
                             # rollout_steps=0); '' = the checkpoint the target starts from
dataset = 'sudoku'
# residuals; the defaults are the README's RCD arm (rcd_onpolicy)
alpha_mode = 'entropy'       # 'entropy' (paper), 'confidence', 'constant' (its Fig. 5), 'none'
alpha_constant = 0.5         # α for alpha_mode='constant'
alpha_scale = 0.25           # α is multiplied by this (capped at 1): a lighter residual (README)
rollout_steps = 4            # > 0: the rows take state and residual from 0..rollout_steps
                             # no-grad threshold-decoding steps of the target (README); with
                             # alpha_mode='none' the states only: the control without residuals;
                             # 0: the paper's frozen reference on the same x_t
rollout_plain = 0.5          # share of rollout rows that read no residual, as the control's rows
                             # do: the model also learns decoding's states without one (README)
# noise and loss (as stage 1)
mask_rate_min = 0.0          # a block's masking rate t: uniform in (mask_rate_min, mask_rate_max]
mask_rate_max = 1.0
loss_weighting = 'elbo'      # 'elbo' (1/t-weighted, per token) or 'mean' (over masked positions)
# optimization
batch_size = 256
grad_accum_steps = 1
max_iters = 1000
learning_rate = 3e-4
min_lr = 3e-5
warmup_iters = 50
lr_decay_iters = 1000
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
# evaluation, logging, checkpoints
eval_interval = 250
eval_iters = 20
log_interval = 50
always_save_checkpoint = False
eval_only = False            # measure train/val loss at the initial weights and exit
# system
device = 'auto'              # 'auto' (CUDA if present), 'cpu', 'cuda', 'cuda:1', ...
dtype = 'auto'               # 'auto' (bf16 autocast on CUDA, fp32 on CPU), 'bfloat16', 'float32'
compile = True               # torch.compile on CUDA (FlexAttention is fused only when compiled)
seed = 1337
config_keys = [k for k, v in globals().items()
               if not k.startswith('_') and isinstance(v, (int, float, bool, str))]
configure(globals(), config_keys, sys.argv[1:])
config = {k: globals()[k] for k in config_keys}
# ------------------------------------------------------------------------------------------------

common.check_train_config(config)
if alpha_mode not in rcd.ALPHA_MODES:
    common.fail(f"alpha_mode='{alpha_mode}' must be one of {', '.join(rcd.ALPHA_MODES)}")
if not 0.0 <= rollout_plain <= 1.0:
    common.fail(f'need 0 <= rollout_plain <= 1 (got {rollout_plain})')
if not (rollout_steps >= 0 and 0 <= alpha_scale < float('inf') and 0 <= alpha_constant <= 1):
    common.fail(f'need rollout_steps >= 0, a finite alpha_scale >= 0, 0 <= alpha_constant <= 1 '
                f'(got {rollout_steps}, {alpha_scale}, {alpha_constant})')
if reference_ckpt and rollout_steps > 0:
    common.fail('reference_ckpt is read only with rollout_steps=0 (the paper\'s recipe)')
if rollout_plain and rollout_steps == 0:
    common.fail('rollout_plain shapes the rollout: with --rollout_steps=0 set --rollout_plain=0')
torch.manual_seed(seed)
device, autocast = common.setup_device(device, dtype)
rank, n_proc = common.world()
common.check_grad_accum(grad_accum_steps, n_proc)
meta = load_dataset(dataset)

ckpt_path = os.path.join(out_dir, 'ckpt.pt')
if init_from == 'resume':
    ckpt = load_checkpoint(ckpt_path, stage=2)
    print(f"resuming {ckpt_path} at iteration {ckpt['iter_num']}")
    reference_ckpt = reference_ckpt or ckpt['config']['reference_ckpt']
else:
    if os.path.isfile(ckpt_path) and not eval_only:
        common.fail(f'{ckpt_path} exists and this run would replace it: continue it with '
                    f'--init_from=resume, or train into a fresh --out_dir')
    stage1 = load_checkpoint(init_from, stage=1, key='init_from')
    ckpt = dict(model_args=stage1['model_args'], model=stage1['model'])  # a fresh optimizer
    reference_ckpt = reference_ckpt or init_from
if ckpt['model_args']['vocab_size'] != meta['vocab_size']:
    common.fail(f"the target checkpoint was trained on another vocabulary than dataset '{dataset}'")
model = build_model(ckpt['model_args'], ckpt['model']).to(device)
mask_id, block_size = model.cfg.mask_id, model.cfg.block_size
if rollout_steps > block_size:
    common.fail(f'rollout_steps={rollout_steps}: a block of {block_size} tokens is decoded in at '
                f'most {block_size} steps')
if rollout_steps == 0:
    config['reference_ckpt'] = reference_ckpt  # the one read: a resumed run reads it again
    ref_ckpt = load_checkpoint(reference_ckpt, stage=1, key='reference_ckpt')
    check_compatible(ref_ckpt, ckpt, f"reference_ckpt '{reference_ckpt}'", 'the target',
                     keys=('vocab_size', 'mask_id', 'block_size', 'seq_len'))
    reference = build_model(ref_ckpt['model_args'], ref_ckpt['model']).to(device).eval()
    reference.requires_grad_(False)
    print(f'reference model: {reference.num_params() / 1e6:.2f}M parameters, frozen')
optimizer = model.configure_optimizer(weight_decay, learning_rate, (beta1, beta2), device.type)
if init_from == 'resume':
    optimizer.load_state_dict(ckpt['optimizer'])
ckpt.update(config=config, meta=meta)
batches = Batches(meta, model.cfg.seq_len, batch_size, device)
on_cuda = compile and device.type == 'cuda'
compiled = torch.compile(model) if on_cuda else model
forward = compiled
if n_proc > 1:
    forward = DDP(compiled, device_ids=[device.index] if device.type == 'cuda' else None)
if rollout_steps == 0:
    reference_forward = torch.compile(reference) if on_cuda else reference
residual = torch.compile(rcd.residual) if on_cuda else rcd.residual  # fuses its (b, L, V) passes


def batch_loss(forward, split, batch_seed):
    """One RCD training step's loss: every row reads residuals (α = 0 with alpha_mode='none'),
    but for the rollout rows that rollout_plain leaves plain."""
    x0, prompt_mask, gen = batches.get(split, batch_seed)
    x_t, masked, t = add_noise(x0, prompt_mask, block_size, mask_id, mask_rate_min, mask_rate_max,
                               gen)
    if alpha_mode == 'none' and rollout_steps == 0:  # no residual, no rollout: stage 1's loss
        return forward(x_t, x0, loss_weights=loss_weights(masked, t, prompt_mask, loss_weighting))
    if rollout_steps > 0:  # the README's result: decoding's own states and residuals
        start, steps, threshold, reads = rcd.rollout_rows(x0, prompt_mask, mask_id, rollout_steps,
                                                          rollout_plain, gen)
        x_t, masked, t, logits, remasked = rcd.rollout(compiled, x0, start, prompt_mask, steps,
                                                       threshold, reads, alpha_mode,
                                                       alpha_constant, alpha_scale)
    else:  # the paper: the frozen reference reads the same x_t and predicts its masked positions
        with torch.no_grad():  # no backpropagation through denoising steps
            logits = reference_forward(x_t, x0)
        remasked = masked
    # the gradient reaches E through Δ = p E
    delta = residual(logits, model.wte.weight, mask_id, remasked, alpha_mode, alpha_constant,
                     alpha_scale)
    weights = loss_weights(masked, t, prompt_mask, loss_weighting)
    return forward(x_t, x0, delta, loss_weights=weights)


# ------------------------------------------------------------------------------------------------
# the training loop
iter_num = start = ckpt.get('iter_num', 0)
best_val_loss = ckpt.get('best_val_loss', float('inf'))
tokens_per_iter = batch_size * grad_accum_steps * model.cfg.seq_len
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
