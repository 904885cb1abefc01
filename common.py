"""
What the two training scripts share, besides checkpoints and data: errors, the config's checks, the
device (and torchrun), the learning-rate schedule, and a run's bookkeeping (log, progress, evals,
saving). Each script keeps its own loop; these are the calls it makes.

Multi-GPU: run either script under `torchrun --standalone --nproc_per_node=N`. Each rank runs every
N-th micro-batch of an iteration's grad_accum_steps (a multiple of N), so an iteration sees exactly
the examples and noise a one-GPU run with the same grad_accum_steps sees; DDP averages the
gradients; rank 0 alone logs and saves.
"""
import atexit
import functools
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import checkpoint  # its module, not its names: checkpoint.py imports this file too
from rcd import ALPHA_MODES

EVAL_SEED = 10**9  # eval batch k is seeded EVAL_SEED + k: every eval scores the same examples


def fail(msg):
    raise SystemExit(f'error: {msg}')


def check_train_config(c, stage):
    """A training script's settings (stage 1 or 2): a bad value is one clear line here, not a
    traceback from inside torch."""
    if stage == 1 and c['init_from'] not in ('scratch', 'resume'):
        fail(f"init_from='{c['init_from']}' must be 'scratch' or 'resume'")
    if stage == 2:
        check_rcd_config(c)
    if c['loss_weighting'] not in ('elbo', 'mean'):
        fail(f"loss_weighting='{c['loss_weighting']}' must be 'elbo' or 'mean'")
    if not 0.0 <= c['mask_rate_min'] < c['mask_rate_max'] <= 1.0:
        fail(f"need 0 <= mask_rate_min < mask_rate_max <= 1 "
             f"(got {c['mask_rate_min']}, {c['mask_rate_max']})")
    least = dict(batch_size=1, grad_accum_steps=1, max_iters=0, eval_interval=1, eval_iters=1,
                 log_interval=1, warmup_iters=0, lr_decay_iters=1, min_lr=0, weight_decay=0,
                 grad_clip=0, seed=0)
    for key, low in least.items():
        if c[key] < low:
            fail(f'{key}={c[key]} must be >= {low}')
    if c['seed'] >= 2**32:  # micro-batch seeds are built from it and must fit in 64 bits
        fail(f"seed={c['seed']} must be below 2**32")
    if not c['out_dir']:
        fail('out_dir is empty: name a directory for the checkpoint and log')
    if os.path.exists(c['out_dir']) and not os.path.isdir(c['out_dir']):
        fail(f"out_dir='{c['out_dir']}' is a file, not a directory")
    if c['lr_decay_iters'] < c['warmup_iters']:
        fail(f"lr_decay_iters={c['lr_decay_iters']} must be >= warmup_iters={c['warmup_iters']}")
    if not (0 < c['learning_rate'] < math.inf and 0 <= c['beta1'] < 1 and 0 <= c['beta2'] < 1):
        fail('need a finite learning_rate > 0 and 0 <= beta1, beta2 < 1')
    finite = c['weight_decay'] < math.inf and c['grad_clip'] < math.inf  # False for NaN too
    if not (c['min_lr'] <= c['learning_rate'] and finite):
        fail('need min_lr <= learning_rate, and a finite weight_decay and grad_clip')
    if not 0 <= c.get('dropout', 0.0) < 1:
        fail(f"dropout={c['dropout']} must be in [0, 1)")


def reads_reference(c):
    """Whether stage 2 runs the paper's recipe: no rollout and a residual, read by a frozen
    stage-1 reference on the same x_t."""
    return c['rollout_steps'] == 0 and c['alpha_mode'] != 'none'


def check_rcd_config(c):
    """Stage 2's own settings: the residual and where its rows come from."""
    if c['alpha_mode'] not in ALPHA_MODES:
        fail(f"alpha_mode='{c['alpha_mode']}' must be one of {', '.join(ALPHA_MODES)}")
    if not 0.0 <= c['rollout_plain'] <= 1.0:
        fail(f"need 0 <= rollout_plain <= 1 (got {c['rollout_plain']})")
    if not (c['rollout_steps'] >= 0 and 0 <= c['alpha_scale'] < math.inf
            and 0 <= c['alpha_constant'] <= 1):
        fail(f"need rollout_steps >= 0, a finite alpha_scale >= 0, 0 <= alpha_constant <= 1 "
             f"(got {c['rollout_steps']}, {c['alpha_scale']}, {c['alpha_constant']})")
    if c['reference_ckpt'] and not reads_reference(c):
        fail("reference_ckpt is read only with rollout_steps=0 and a residual "
             "(the paper's recipe)")


def setup(c):
    """Seed, device and torchrun's processes for a training run: (device, autocast, n_proc)."""
    torch.manual_seed(c['seed'])
    device, autocast = setup_device(c['device'], c['dtype'])
    n_proc = world()[1]
    check_grad_accum(c['grad_accum_steps'], n_proc)
    return device, autocast, n_proc


@functools.cache
def compiled(fn):
    """torch.compile(fn), once per function or model."""
    return torch.compile(fn)


def fused_on(device, compile=True):
    """fused(fn): on CUDA fn through torch.compile, which fuses its elementwise passes over
    (b, n, V) tensors into a few kernels (FlexAttention is fused only when compiled); fn itself
    elsewhere."""
    return lambda fn: compiled(fn) if compile and device.type == 'cuda' else fn


def compile_and_wrap(model, compile, device, n_proc):
    """(compiled, forward): the model through torch.compile on CUDA, and that wrapped in DDP under
    torchrun (what the training steps call)."""
    fast = fused_on(device, compile)(model)
    if n_proc == 1:
        return fast, fast
    return fast, DDP(fast, device_ids=[device.index] if device.type == 'cuda' else None)


def world():
    """(rank, number of processes): (0, 1) unless launched by torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def setup_device(device, dtype):
    """'auto' picks CUDA when present. Returns (torch.device, autocast context): bf16 autocast on
    CUDA, none on CPU. Under torchrun it joins the process group (NCCL on CUDA, gloo on CPU) on GPU
    number LOCAL_RANK."""
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if device.startswith('cuda') and not torch.cuda.is_available():
        fail(f"device='{device}' but CUDA is not available here; use --device=cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        device = None
    if device is None or device.type not in ('cpu', 'cuda'):
        fail("this code runs on 'cpu' or 'cuda' (or 'cuda:N'); use --device=auto, cpu or cuda")
    if 'RANK' in os.environ:
        if device.type == 'cuda':
            n_gpu = torch.cuda.device_count()
            if int(os.environ['LOCAL_RANK']) >= n_gpu:
                fail(f"torchrun started {os.environ['LOCAL_WORLD_SIZE']} processes on this machine "
                     f"but it has {n_gpu} GPUs: use --nproc_per_node={n_gpu} or fewer")
            device = torch.device('cuda', int(os.environ['LOCAL_RANK']))
            torch.cuda.set_device(device)
            dist.init_process_group(backend='nccl', device_id=device)  # NCCL need not guess
        else:
            dist.init_process_group(backend='gloo')
    if dtype == 'auto':
        dtype = 'bfloat16' if device.type == 'cuda' else 'float32'
    if dtype not in ('bfloat16', 'float32'):
        fail(f"dtype='{dtype}' is not supported; use 'bfloat16', 'float32' or 'auto'")
    if dtype == 'float32':
        return device, nullcontext()
    return device, torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def check_grad_accum(grad_accum_steps, n_proc):
    """Every rank fails alike on a bad split of the micro-batches; rank 0 alone says why."""
    if grad_accum_steps % n_proc:
        if world()[0] > 0:
            sys.exit(1)
        fail(f'grad_accum_steps={grad_accum_steps} must be a multiple of the number of processes '
             f'({n_proc})')


def sum_over_ranks(total):
    """A tensor each rank computed over its share of the work, summed over the ranks (in place)."""
    if world()[1] > 1:
        dist.all_reduce(total)
    return total


@torch.no_grad()
def estimate_loss(model, loss_of, eval_iters, autocast):
    """Mean loss_of(split, seed) over eval_iters fixed batches of each split: the same batches at
    every eval, so evals compare. Under torchrun each rank scores its share."""
    rank, n_proc = world()
    device = next(model.parameters()).device
    model.eval()
    out = {}
    for split in ('train', 'val'):
        total = torch.zeros((), device=device)
        for k in range(rank, eval_iters, n_proc):
            with autocast:
                total += loss_of(split, EVAL_SEED + k)
        out[split] = sum_over_ranks(total).item() / eval_iters
    model.train()
    return out


def peak_flops(device):
    """Datasheet dense bf16 peak of the GPU (FLOP/s), or None where unknown (then no MFU is
    shown)."""
    if device.type != 'cuda':
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in (('H100 PCIe', 756e12), ('H100 NVL', 835e12), ('H100', 989e12),
                       ('H200', 989e12), ('A100', 312e12)):
        if key in name:
            return flops
    return None


def micro_batch_seed(seed, iter_num, micro, grad_accum_steps):
    """The seed of micro-batch `micro` of iteration `iter_num`: distinct for every (iteration,
    micro-batch)."""
    return seed * 1_000_003 + iter_num * grad_accum_steps + micro


def lr_at(it, learning_rate, min_lr, warmup_iters, lr_decay_iters):
    """Linear warm-up to learning_rate, then cosine decay to min_lr at lr_decay_iters."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it >= lr_decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


# --------------------------------------------------------------------------------------------------
# A run's bookkeeping: what a training loop does besides training

class Run:
    """A training run's bookkeeping, behind the few calls its loop makes: the evals (which save a
    better model), each iteration's micro-batch seeds, and the log: one JSON line per log/eval in
    out_dir/log.jsonl, and progress as plain lines (`iter N/total`, loss, tokens/s, MFU, the time
    spent and left). It also holds out_dir: one training at a time (a lock file), and a Ctrl-C or
    SIGTERM that says where the run stopped and how to continue it. Rank 0 alone writes."""

    def __init__(self, c, ckpt, model, optimizer, device, n_proc):
        self.c, self.ckpt, self.model, self.optimizer = c, ckpt, model, optimizer
        self.rank, self.n_proc, self.t0 = world()[0], n_proc, time.perf_counter()
        self.start = self.iter_num = self.saved = ckpt.get('iter_num', 0)
        self.best_val_loss = ckpt.get('best_val_loss', float('inf'))
        self.path = os.path.join(c['out_dir'], 'log.jsonl')
        self.ckpt_path = os.path.join(c['out_dir'], 'ckpt.pt')
        self.micro_batches_per_process = c['grad_accum_steps'] // n_proc
        self.tokens_per_iter = c['batch_size'] * c['grad_accum_steps'] * model.cfg.seq_len
        self.flops_per_iter = model.flops_per_sequence() * c['batch_size'] * c['grad_accum_steps']
        peak = peak_flops(device)
        self.peak_all = peak * n_proc if peak else None
        self.loss_sum = torch.zeros((), device=device)
        self.restart_clock(self.start)
        if self.rank == 0:
            self.take_out_dir()
        self.say(run_summary(model, self.tokens_per_iter, device, n_proc, peak))
        if self.start >= c['max_iters'] and not c['eval_only']:
            self.say(f"note: the run starts at iteration {self.start}, max_iters={c['max_iters']}: "
                     f"nothing to train")

    def take_out_dir(self):
        """The lock, the signal handlers, and what a killed run left: a half-written checkpoint,
        log lines past the iteration a resumed run starts at."""
        out_dir = self.c['out_dir']
        try:
            os.makedirs(out_dir, exist_ok=True)
            self.lock()
        except OSError as e:
            fail(f"cannot write to out_dir='{out_dir}' ({e.strerror})")
        signal.signal(signal.SIGINT, self.interrupted)
        signal.signal(signal.SIGTERM, self.interrupted)  # what batch schedulers send
        stale = os.path.join(out_dir, 'ckpt.pt.tmp')  # left by a run killed mid-save
        if os.path.isfile(stale):
            os.remove(stale)
        if self.start > 0 and os.path.isfile(self.path):  # drop what was logged later
            with open(self.path) as f:
                lines = f.readlines()
            kept = [line for line in lines if self.kept_on_resume(line, self.start)]
            with open(self.path, 'w') as f:
                f.writelines(kept)
            if len(kept) < len(lines):
                self.say(f'{self.path}: dropped {len(lines) - len(kept)} lines logged after '
                         f'iteration {self.start} or damaged')

    @staticmethod
    def kept_on_resume(line, start):
        """A log line of a resumed run's past: whole (not cut short by a kill), before `start` (an
        eval at `start` runs again)."""
        if not line.endswith('\n'):  # cut short by a kill
            return False
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            return False
        if not isinstance(record, dict):
            return False
        return record.get('iter', start) < start + ('val_loss' not in record)

    def write(self, record):
        if self.rank == 0:
            with open(self.path, 'a') as f:
                f.write(json.dumps(record) + '\n')

    def say(self, text):
        if self.rank == 0:
            print(text, flush=True)

    def lock(self):
        """One training per out_dir: a lock file with our process id; a dead process's lock is
        taken over."""
        path = os.path.join(self.c['out_dir'], 'train.lock')
        if os.path.isdir(path):
            fail(f'{path} is a directory, not a lock file: remove it')
        if os.path.isfile(path):
            with open(path) as f:
                pid = f.read().strip()
            alive = pid.isdigit() and (os.path.exists(f'/proc/{pid}') or not os.path.isdir('/proc'))
            if alive and pid != str(os.getpid()):
                fail(f"{self.c['out_dir']} is in use by another training (process {pid}); if it "
                     f"is gone, remove {path}")
            print(f"note: taking over the stale lock of process {pid} in {self.c['out_dir']}")
        with open(path, 'w') as f:
            f.write(str(os.getpid()))
        atexit.register(lambda: os.path.isfile(path) and os.remove(path))

    def interrupted(self, signum, frame):
        """Ctrl-C or SIGTERM: one line with where the run stopped and how to continue it."""
        ckpt = self.ckpt_path
        if self.saved > 0 and os.path.isfile(ckpt):
            args = ' '.join(a for a in sys.argv[1:] if not a.startswith('--init_from='))
            raise SystemExit(f'stopped at iteration {self.iter_num}; the last checkpoint is '
                             f'{ckpt} (iteration {self.saved}). Continue with: '
                             f'python {sys.argv[0]} {args} --init_from=resume')
        raise SystemExit(f'stopped at iteration {self.iter_num}, before the first checkpoint: '
                         f'nothing to resume')

    def evaluate(self, iter_num, loss_of, autocast):
        """Train and val loss on fixed batches, logged; past the start, a better val loss (or
        always_save_checkpoint) saves the checkpoint. A diverged run stops here, unsaved."""
        c = self.c
        losses = estimate_loss(self.model, loss_of, c['eval_iters'], autocast)
        check_finite(losses, iter_num)
        self.say(f"iter {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        self.write(dict(iter=iter_num, train_loss=losses['train'], val_loss=losses['val']))
        better = losses['val'] < self.best_val_loss or c['always_save_checkpoint']
        if iter_num > self.start and better and not c['eval_only']:
            self.best_val_loss = min(self.best_val_loss, losses['val'])
            if self.rank == 0:
                self.ckpt.update(model=self.model.state_dict(),
                                 optimizer=self.optimizer.state_dict(), iter_num=iter_num,
                                 best_val_loss=self.best_val_loss)
                checkpoint.save_checkpoint(self.ckpt, self.ckpt_path)
                self.saved = iter_num
                self.say(f'saved {self.ckpt_path}')
        self.restart_clock(iter_num)  # eval is not training time

    def micro_batches(self, forward, iter_num):
        """The seeds of this process's share of the iteration's micro-batches; under torchrun DDP
        all-reduces the gradients once, after the last of them."""
        accum = self.c['grad_accum_steps']
        mine = range(self.rank, accum, self.n_proc)
        for micro in mine:
            if self.n_proc > 1:
                forward.require_backward_grad_sync = micro == mine[-1]
            yield micro_batch_seed(self.c['seed'], iter_num, micro, accum)

    def add_loss(self, loss):
        self.loss_sum += loss.detach() / self.n_proc

    def restart_clock(self, iter_num):
        """Training time and loss are measured from here (eval is not training time)."""
        self.t_last, self.it_last = time.perf_counter(), iter_num
        self.loss_sum.zero_()

    def log(self, iter_num, lr):
        """Every log_interval iterations: the mean loss since the last log, tokens/s, MFU, the time
        spent and left."""
        self.iter_num = iter_num
        if iter_num % self.c['log_interval']:
            return
        n = iter_num - self.it_last
        loss = sum_over_ranks(self.loss_sum).item() / n  # .item() waits for the GPU
        check_finite(dict(train=loss), iter_num)
        dt = (time.perf_counter() - self.t_last) / n
        mfu = self.flops_per_iter / dt / self.peak_all if self.peak_all else None
        self.write(dict(iter=iter_num, loss=loss, lr=lr, ms_per_iter=1000 * dt,
                        tokens_per_s=self.tokens_per_iter / dt, mfu=mfu))
        elapsed = time.perf_counter() - self.t0
        left = elapsed / (iter_num - self.start) * (self.c['max_iters'] - iter_num)
        mfu_text = f' | MFU {100 * mfu:.1f}%' if mfu else ''
        self.say(f"iter {iter_num}/{self.c['max_iters']}: loss {loss:.4f} | "
                 f'{self.tokens_per_iter / dt:,.0f} tok/s{mfu_text} | lr {lr:.2e} | '
                 f'{elapsed:.0f}s, ~{left:.0f}s left')
        self.restart_clock(iter_num)

    def leave(self, forward):
        """End a run: under torchrun every rank leaves together (rank 0 may still be saving)."""
        if self.n_proc > 1:
            dist.barrier()
            del forward  # the DDP wrapper before its process group: the other order can hang
            dist.destroy_process_group()


def run_summary(model, tokens_per_iter, device, n_proc, peak):
    """The first line of a run: size, tokens per iteration, device (and why no MFU is shown, if
    it is not)."""
    gpu = f' ({torch.cuda.get_device_name(device)})' if device.type == 'cuda' else ''
    procs = f' x {n_proc} processes' if n_proc > 1 else ''
    no_mfu = '' if peak else '; no MFU: the peak FLOP/s of this device is not known'
    return (f'{model.num_params() / 1e6:.2f}M parameters; {tokens_per_iter:,} tokens per '
            f'iteration; device {device}{gpu}{procs}{no_mfu}')


def check_finite(losses, iter_num):
    """Stop a diverged run before it writes a checkpoint."""
    for split, value in losses.items():
        if not math.isfinite(value):
            fail(f'the {split} loss is {value} at iteration {iter_num}: the run diverged (try a '
                 f'lower --learning_rate); no checkpoint with these weights was written')
