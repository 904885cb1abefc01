"""
Stage 2: convert a stage-1 model into an RCD model (SPEC §5).

The *reference* model (a stage-1 checkpoint, frozen: eval mode, no gradients, may be smaller than the target) plays the
part of "the previous denoising step": for each batch it reads the noised x_t and predicts every masked position. Those
predictions become residual inputs (rcd.py) and the *target* model (initialised from a stage-1 checkpoint) learns to
denoise x_t with them, with the ordinary masked-diffusion loss of stage 1. The residuals come from a frozen model, so
no gradient flows through a chain of denoising steps: no backpropagation through time, one extra forward pass.

    python train_stage2.py                                 # from out/stage1/ckpt.pt (reference = target init)
    python train_stage2.py config/quick_cpu_stage2.py      # after the CPU quick start
    python train_stage2.py --init_from=resume              # continue out_dir/ckpt.pt exactly
"""
import os
import sys

import torch

import rcd
import trainer
from configurator import configure
from model import training_loss

# -----------------------------------------------------------------------------------------------------------------
# config: the target's architecture comes from its stage-1 checkpoint; override with config/*.py and --key=value
out_dir = 'out/stage2'
init_from = 'out/stage1/ckpt.pt'       # a stage-1 checkpoint to start the target from, or 'resume' (out_dir/ckpt.pt)
reference_ckpt = 'out/stage1/ckpt.pt'  # the frozen stage-1 model that produces the residuals, or 'self': the target's
                                       # own current predictions (no gradient through them; an ablation)
dataset = 'reasoning'
# residuals (SPEC §4)
alpha_mode = 'entropy'       # 'entropy' (paper), 'confidence', 'constant', 'none' (no residual: continued stage 1)
alpha_constant = 0.5         # α for alpha_mode='constant'
residual_fraction = 0.5      # share of rows trained with residuals; the others see plain [MASK], as a block's cold
                             # first step does (measured, SPEC §8: the paper's 1.0 lost 19 of Sudoku's points at 1 token
                             # per step against 0.5, and 16 at 16 tokens per step)
reference_extra_mask = 0.0   # step-aligned reference: it reads x_t with each visible token also masked with this
                             # probability, as the previous denoising step did (0 = the paper: the same x_t)
# noise and loss (as stage 1)
mask_rate_min = 0.0
mask_rate_max = 1.0
loss_weighting = 'elbo'
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
eval_only = False            # measure train/val loss at the initial weights and exit (no training, no checkpoint)
# system
device = 'auto'
dtype = 'auto'
compile = True
seed = 1337
config_keys = [k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))]
configure(globals(), config_keys, sys.argv[1:])
config = {k: globals()[k] for k in config_keys}
# -----------------------------------------------------------------------------------------------------------------

trainer.check_config(config)
if alpha_mode not in rcd.ALPHA_MODES:
    trainer.fail(f"alpha_mode='{alpha_mode}' must be one of {', '.join(rcd.ALPHA_MODES)}")
if not (0.0 <= residual_fraction <= 1.0 and 0.0 <= reference_extra_mask < 1.0):
    trainer.fail('need 0 <= residual_fraction <= 1 and 0 <= reference_extra_mask < 1')

torch.manual_seed(seed)
device, autocast = trainer.setup_device(device, dtype)
meta = trainer.load_dataset(dataset)
if init_from == 'resume':
    ckpt = trainer.load_checkpoint(os.path.join(out_dir, 'ckpt.pt'))
    print(f"resuming {out_dir}/ckpt.pt at iteration {ckpt['iter_num']}")
else:
    stage1 = trainer.load_checkpoint(init_from)
    ckpt = dict(model_args=stage1['model_args'], model=stage1['model'])  # weights only: a fresh optimizer and count
if ckpt['model_args']['vocab_size'] != meta['vocab_size']:
    trainer.fail(f"the target checkpoint was trained on another vocabulary than dataset '{dataset}'")
model = trainer.build_model(ckpt['model_args'], ckpt['model']).to(device)
if reference_ckpt == 'self':
    reference = model
else:
    ref_ckpt = trainer.load_checkpoint(reference_ckpt)
    trainer.check_compatible(ref_ckpt, ckpt, f"reference_ckpt '{reference_ckpt}'", 'the target',
                             keys=('vocab_size', 'mask_id', 'block_size', 'seq_len'))
    reference = trainer.build_model(ref_ckpt['model_args'], ref_ckpt['model']).to(device).eval().requires_grad_(False)
    print(f'reference model: {reference.num_params() / 1e6:.2f}M parameters, frozen')
residual_fn = torch.compile(rcd.reference_residual) if compile and device.type == 'cuda' else rcd.reference_residual
optimizer = model.configure_optimizer(weight_decay, learning_rate, (beta1, beta2), device.type)
if init_from == 'resume':
    optimizer.load_state_dict(ckpt['optimizer'])
ckpt.update(config=config, meta=meta)
batches = trainer.Batches(meta, model.cfg.seq_len, batch_size, device)


def loss_fn(forward, x0, prompt_mask, generator):
    """SPEC §5: the reference's predictions on x_t become residual inputs; the target denoises x_t with them. The
    first round(residual_fraction · batch) rows train with residuals (rows are drawn at random: a random subset), and
    only they go through the reference."""
    n_rows = round(residual_fraction * x0.shape[0])

    def residual(x_t, x0, masked):
        if reference_extra_mask > 0:
            x_t = rcd.step_aligned(x_t, ~masked & ~prompt_mask, model.cfg.mask_id, reference_extra_mask, generator)
        return residual_fn(reference, model.wte.weight, model.cfg.mask_id, x_t, x0, masked, alpha_mode,
                           alpha_constant, n_rows)
    return training_loss(forward, model.cfg, x0, prompt_mask, generator, mask_rate_min, mask_rate_max,
                         loss_weighting, residual if alpha_mode != 'none' and n_rows > 0 else None)  # no reference pass


trainer.train(config, model, optimizer, loss_fn, batches, ckpt, device, autocast)
