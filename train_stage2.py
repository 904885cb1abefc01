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

import common
import rcd
from checkpoint import build_model, load_reference, start_run
from configurator import configure
from data.datasets import Batches, load_dataset
from model import add_noise, loss_weights

# ------------------------------------------------------------------------------------------------
# config: the target's architecture comes from its stage-1 checkpoint; override with config files
# and --key=value
out_dir = 'out/stage2'
init_from = 'out/stage1/ckpt.pt'       # a stage-1 checkpoint to start the target from, or 'resume'
reference_ckpt = ''          # the frozen stage-1 model of the paper's recipe (read only with
                             # rollout_steps=0 and a residual); '' = the checkpoint the target
                             # starts from
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
                             # do: the model also learns decoding's states without one (README);
                             # read only with rollout_steps > 0
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

common.check_train_config(config, stage=2)  # a bad setting is one line, before any work
device, autocast, n_proc = common.setup(config)  # seed, device, torchrun's processes
meta = load_dataset(dataset)
ckpt = start_run(config, meta, 2)  # the target from init_from, or out_dir/ckpt.pt resumed
model = build_model(ckpt['model_args'], ckpt['model']).to(device)
mask_id, block_size = model.cfg.mask_id, model.cfg.block_size
optimizer = model.configure_optimizer(weight_decay, learning_rate, (beta1, beta2), device.type)
if init_from == 'resume':
    optimizer.load_state_dict(ckpt['optimizer'])
batches = Batches(meta, model.cfg.seq_len, batch_size, device)
compiled, forward = common.compile_and_wrap(model, compile, device, n_proc)
fused = common.fused_on(device, compile)  # fused(f): f compiled on CUDA, f itself on a CPU
if common.reads_reference(config):  # the paper: no rollout, a frozen model reads the same x_t
    reference = load_reference(config['reference_ckpt'], ckpt, device)


def batch_loss(forward, split, batch_seed):
    """One RCD training step's loss: every row reads residuals (α = 0 with alpha_mode='none'),
    but for the rollout rows that rollout_plain leaves plain."""
    x0, prompt_mask, gen = batches.get(split, batch_seed)
    if rollout_steps > 0:  # the README's result: decoding's own states and residuals
        start, steps, threshold, reads = rcd.rollout_rows(x0, prompt_mask, mask_id, rollout_steps,
                                                          rollout_plain, gen)
        x_t, masked, t, logits, remasked = rcd.rollout(compiled, x0, start, prompt_mask, steps,
                                                       threshold, reads, alpha_mode,
                                                       alpha_constant, alpha_scale)
    else:  # the paper: stage 1's noise, and the frozen reference reads the same x_t
        x_t, masked, t = add_noise(x0, prompt_mask, block_size, mask_id, mask_rate_min,
                                   mask_rate_max, gen)
        if alpha_mode == 'none':  # no residual, no rollout: stage 1's loss
            return forward(x_t, x0,
                           loss_weights=loss_weights(masked, t, prompt_mask, loss_weighting))
        with torch.no_grad():  # no backpropagation through denoising steps
            logits = fused(reference)(x_t, x0)
        remasked = masked
    # the gradient reaches E through Δ = p E
    delta = fused(rcd.residual)(logits, model.wte.weight, mask_id, remasked, alpha_mode,
                                alpha_constant, alpha_scale)
    weights = loss_weights(masked, t, prompt_mask, loss_weighting)
    return forward(x_t, x0, delta, loss_weights=weights)


# ------------------------------------------------------------------------------------------------
# the training loop
run = common.Run(config, ckpt, model, optimizer, device, n_proc)  # log, progress, MFU, saving
iter_num = run.start
while True:
    lr = common.lr_at(iter_num, learning_rate, min_lr, warmup_iters, lr_decay_iters)
    for group in optimizer.param_groups:
        group['lr'] = lr
    if iter_num % eval_interval == 0 or iter_num == max_iters:
        run.evaluate(iter_num, partial(batch_loss, compiled), autocast)  # saves a better model
        if eval_only:
            break
    if iter_num >= max_iters:
        break
    for batch_seed in run.micro_batches(forward, iter_num):  # this process's share of them
        with autocast:
            loss = batch_loss(forward, 'train', batch_seed) / run.micro_batches_per_process
        loss.backward()  # reaches E through the residual too (Δ = p E), never a rollout step
        run.add_loss(loss)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    iter_num += 1
    run.log(iter_num, lr)  # every log_interval: loss, tokens/s, MFU, time left
run.leave(forward)
