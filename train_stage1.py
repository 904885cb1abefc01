"""
Stage 1: train the ordinary block-diffusion model (SPEC §3). Its checkpoint is stage 2's frozen reference model.

    python train_stage1.py                                # one GPU: the embedded reasoning dataset
    python train_stage1.py config/quick_cpu.py            # 2 CPU cores, a few minutes
    python train_stage1.py config/shakespeare_char.py --max_iters=2000
    python train_stage1.py --init_from=resume             # continue out_dir/ckpt.pt exactly
"""
import os
import sys

import torch

import trainer
from configurator import configure
from model import training_loss

# -----------------------------------------------------------------------------------------------------------------
# config: defaults train the reasoning dataset on one GPU; override with config/*.py files and --key=value flags
out_dir = 'out/stage1'
init_from = 'scratch'        # 'scratch', or 'resume' from out_dir/ckpt.pt
dataset = 'reasoning'        # data/<dataset>/; prepared on first use where its prepare.py needs no arguments
# model
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.0
seq_len = 96                 # L, the context; for row datasets (reasoning) it must equal the rows' length
block_size = 8               # B, the diffusion block; must divide seq_len
# noise and loss
mask_rate_min = 0.0          # each block's masking rate t is drawn uniformly from (mask_rate_min, mask_rate_max]
mask_rate_max = 1.0
loss_weighting = 'elbo'      # 'elbo' (1/t-weighted, per token) or 'mean' (mean over masked positions)
# optimization
batch_size = 256
grad_accum_steps = 1
max_iters = 4000
learning_rate = 1e-3
min_lr = 1e-4
warmup_iters = 100
lr_decay_iters = 4000
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
compile = True               # torch.compile the model on CUDA (FlexAttention is fused only when compiled)
seed = 1337
config_keys = [k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))]
configure(globals(), config_keys, sys.argv[1:])
config = {k: globals()[k] for k in config_keys}
# -----------------------------------------------------------------------------------------------------------------

if init_from not in ('scratch', 'resume'):
    trainer.fail(f"init_from='{init_from}' must be 'scratch' or 'resume'")
trainer.check_config(config)

torch.manual_seed(seed)
device, autocast = trainer.setup_device(device, dtype)
meta = trainer.load_dataset(dataset)
batches = trainer.Batches(meta, seq_len, batch_size, device)
if init_from == 'resume':
    ckpt = trainer.load_checkpoint(os.path.join(out_dir, 'ckpt.pt'))
    if ckpt['meta']['vocab_size'] != meta['vocab_size']:
        trainer.fail(f"{out_dir}/ckpt.pt was trained on another vocabulary than dataset '{dataset}'")
    print(f"resuming {out_dir}/ckpt.pt at iteration {ckpt['iter_num']}")
else:
    model_args = dict(vocab_size=meta['vocab_size'], mask_id=meta['mask_id'], seq_len=seq_len, block_size=block_size,
                      n_layer=n_layer, n_head=n_head, n_embd=n_embd, dropout=dropout)
    ckpt = dict(model_args=model_args, model=None)
model = trainer.build_model(ckpt['model_args'], ckpt['model']).to(device)
optimizer = model.configure_optimizer(weight_decay, learning_rate, (beta1, beta2), device.type)
if init_from == 'resume':
    optimizer.load_state_dict(ckpt['optimizer'])
ckpt.update(config=config, meta=meta)


def loss_fn(forward, x0, prompt_mask, generator):
    """SPEC §3: noise every block at its own rate, denoise all blocks in one pass against their clean prefixes."""
    return training_loss(forward, model.cfg, x0, prompt_mask, generator, mask_rate_min, mask_rate_max, loss_weighting)


trainer.train(config, model, optimizer, loss_fn, batches, ckpt, device, autocast)
