""" What the two training scripts share, besides checkpoints: errors, the device (and torchrun),
datasets and batches, the learning-rate schedule, and the run's log and progress. Each script keeps
its own loop; these are its parts.

Multi-GPU: run either script under `torchrun --standalone --nproc_per_node=N`. Each rank runs every
N-th micro-batch of an iteration's grad_accum_steps (a multiple of N), so an iteration sees exactly
the examples and noise a one-GPU run with the same grad_accum_steps sees; DDP averages the
gradients; rank 0 alone logs and saves.
"""
import atexit
import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

ROOT = os.path.dirname(os.path.abspath(__file__))
EVAL_SEED = 10**9  # eval batch k is seeded EVAL_SEED + k: every eval scores the same examples and noise


def fail(msg):
    raise SystemExit(f'error: {msg}')


def check_train_config(c):
    """The settings both stages share: a bad value is one clear line here, not a traceback from
    inside torch."""
    if c['loss_weighting'] not in ('elbo', 'mean'):
        fail(f"loss_weighting='{c['loss_weighting']}' must be 'elbo' or 'mean'")
    if not 0.0 <= c['mask_rate_min'] < c['mask_rate_max'] <= 1.0:
        fail(f"need 0 <= mask_rate_min < mask_rate_max <= 1 "
             f"(got {c['mask_rate_min']}, {c['mask_rate_max']})")
    least = dict(batch_size=1, grad_accum_steps=1, max_iters=0, eval_interval=1, eval_iters=1, log_interval=1,
                 warmup_iters=0, lr_decay_iters=1, min_lr=0, weight_decay=0, grad_clip=0)
    for key, low in least.items():
        if c[key] < low:
            fail(f'{key}={c[key]} must be >= {low}')
    if os.path.exists(c['out_dir']) and not os.path.isdir(c['out_dir']):
        fail(f"out_dir='{c['out_dir']}' is a file, not a directory")
    if c['lr_decay_iters'] < c['warmup_iters']:
        fail(f"lr_decay_iters={c['lr_decay_iters']} must be >= warmup_iters={c['warmup_iters']}")
    if not c['learning_rate'] > 0 or not (0 <= c['beta1'] < 1 and 0 <= c['beta2'] < 1):
        fail('need learning_rate > 0 and 0 <= beta1, beta2 < 1')
    if not 0 <= c.get('dropout', 0.0) < 1:
        fail(f"dropout={c['dropout']} must be in [0, 1)")


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
        fail(f"device='{device}' is not a device torch knows; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if 'RANK' in os.environ:
        if device.type == 'cuda':
            n_gpu = torch.cuda.device_count()
            if int(os.environ['LOCAL_RANK']) >= n_gpu:
                fail(f"torchrun started {os.environ['LOCAL_WORLD_SIZE']} processes on this machine but it has "
                     f"{n_gpu} GPUs: use --nproc_per_node={n_gpu} or fewer")
            device = torch.device('cuda', int(os.environ['LOCAL_RANK']))
            torch.cuda.set_device(device)
            dist.init_process_group(backend='nccl', device_id=device)  # device_id: NCCL need not guess
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
        fail(f'grad_accum_steps={grad_accum_steps} must be a multiple of the number of processes ({n_proc})')


def sum_over_ranks(total):
    """A tensor each rank computed over its share of the work, summed over the ranks (in place)."""
    if world()[1] > 1:
        dist.all_reduce(total)
    return total


def leave(forward, n_proc):
    """End a run: under torchrun every rank leaves together (rank 0 may still be saving)."""
    if n_proc > 1:
        dist.barrier()
        del forward  # the DDP wrapper before its process group: the other order can hang at exit
        dist.destroy_process_group()


def peak_flops(device):
    """Datasheet dense bf16 peak of the GPU (FLOP/s), or None where unknown (then no MFU is
    shown)."""
    if device.type != 'cuda':
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in (('H100 PCIe', 756e12), ('H100 NVL', 835e12), ('H100', 989e12), ('H200', 989e12),
                       ('A100', 312e12)):
        if key in name:
            return flops
    return None


# --------------------------------------------------------------------------------------------------
# Data

def dataset_dir(dataset):
    """A dataset is a name under data/ ('reasoning') or a path to a directory ('/tmp/my_data')."""
    return dataset if os.sep in dataset else os.path.join(ROOT, 'data', dataset)


def load_dataset(dataset):
    """The meta dict of a dataset, running its prepare.py first if train.bin is missing."""
    data_dir = dataset_dir(dataset)
    if not os.path.isdir(data_dir):
        have = sorted(d for d in os.listdir(os.path.join(ROOT, 'data'))
                      if os.path.isfile(os.path.join(ROOT, 'data', d, 'prepare.py')))
        fail(f"no dataset '{dataset}': {data_dir} is not a directory (datasets under data/: {', '.join(have)})")
    prepare = os.path.join(data_dir, 'prepare.py')
    missing = not os.path.isfile(os.path.join(data_dir, 'train.bin'))
    if world()[0] == 0 and missing and os.path.isfile(prepare):
        print(f'{data_dir}/train.bin is missing: running {prepare}')
        if subprocess.run([sys.executable, prepare]).returncode != 0:
            fail(f'{prepare} failed (see above); run it by hand with the arguments it needs')
    if world()[1] > 1:
        dist.barrier()  # the other ranks wait for rank 0 to prepare the data
    for name in ('train.bin', 'val.bin', 'meta.pkl'):
        if not os.path.isfile(os.path.join(data_dir, name)):
            fail(f"dataset '{dataset}' has no {name} in {data_dir}")
    with open(os.path.join(data_dir, 'meta.pkl'), 'rb') as f:
        return dict(pickle.load(f), dataset=dataset)


class Batches:
    """Random training/validation sequences from data/<name>/{train,val}.bin (uint16, read through
    np.memmap). Row datasets (meta has 'row_len') hold one example per row: a batch is a set of
    rows, and a row's prompt (up to its first meta['prompt_sep_id']) is never noised. Other datasets
    are one token stream: random windows."""

    def __init__(self, meta, seq_len, batch_size, device):
        self.meta, self.seq_len, self.batch_size, self.device = meta, seq_len, batch_size, device
        self.noise = torch.Generator(device=device)
        if 'row_len' in meta and meta['row_len'] != seq_len:
            fail(f"dataset '{meta['dataset']}' has examples of {meta['row_len']} tokens: "
                 f"set --seq_len={meta['row_len']}")
        for split in ('train', 'val'):
            n = os.path.getsize(os.path.join(dataset_dir(meta['dataset']), f'{split}.bin')) // 2
            if n <= seq_len:
                fail(f"{split}.bin of dataset '{meta['dataset']}' has {n} tokens, "
                     f"fewer than seq_len={seq_len} + 1")

    def get(self, split, seed):
        """(x0, prompt_mask, generator): the examples and the noise generator of one micro-batch,
        both drawn from `seed` alone, so a resumed run (or one on more GPUs) sees exactly the
        batches of an uninterrupted one."""
        rng = np.random.default_rng(seed)
        self.noise.manual_seed(seed)
        path = os.path.join(dataset_dir(self.meta['dataset']), f'{split}.bin')
        data = np.memmap(path, dtype=np.uint16, mode='r')
        L = self.seq_len
        if 'row_len' in self.meta:
            starts = rng.integers(0, len(data) // L, self.batch_size) * L
        else:
            starts = rng.integers(0, len(data) - L, self.batch_size)
        x0 = torch.from_numpy(np.stack([data[s:s + L] for s in starts]).astype(np.int64))
        if self.device.type == 'cuda':
            x0 = x0.pin_memory().to(self.device, non_blocking=True)
        else:
            x0 = x0.to(self.device)
        if 'prompt_sep_id' not in self.meta:
            return x0, torch.zeros_like(x0, dtype=torch.bool), self.noise
        sep = (x0 == self.meta['prompt_sep_id']).int()
        return x0, (sep.cumsum(1) - sep) == 0, self.noise  # no separator strictly before: prompt and separator


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
# The run's log (out_dir/log.jsonl) and progress on the terminal

class RunLog:
    """One JSON line per log/eval in out_dir/log.jsonl, and progress: a bar on a wide terminal, else
    plain lines with `iter N/total`, the elapsed time and an estimate of the time left. Rank 0 alone
    writes."""

    def __init__(self, out_dir, start, max_iters, rank, tokens_per_iter, flops_per_iter, device, n_proc):
        self.path = os.path.join(out_dir, 'log.jsonl')
        self.start, self.max_iters, self.rank, self.t0 = start, max_iters, rank, time.perf_counter()
        self.out_dir, self.iter_num, self.saved = out_dir, start, start
        self.tokens_per_iter, self.flops_per_iter = tokens_per_iter, flops_per_iter
        self.peak = peak_flops(device)
        self.peak_all = self.peak * n_proc if self.peak else None
        self.restart_clock(start)
        if rank == 0:
            os.makedirs(out_dir, exist_ok=True)
            self.lock()
            signal.signal(signal.SIGINT, self.interrupted)
            stale = os.path.join(out_dir, 'ckpt.pt.tmp')  # left by a run killed mid-save; ckpt.pt is whole
            if os.path.isfile(stale):
                os.remove(stale)
        if rank == 0 and start > 0 and os.path.isfile(self.path):  # drop what the interrupted run logged later
            with open(self.path) as f:
                kept = [line for line in f if line.endswith('}\n') and  # not a line cut short by a kill
                        json.loads(line)['iter'] < start + ('val_loss' not in line)]  # evals at start run again
            with open(self.path, 'w') as f:
                f.writelines(kept)
        wide = sys.stderr.isatty() and shutil.get_terminal_size((0, 0)).columns >= 80
        self.bar = tqdm(total=max_iters, initial=start, desc=os.path.basename(out_dir), dynamic_ncols=True,
                        disable=rank != 0 or not wide)

    def write(self, record):
        if self.rank == 0:
            with open(self.path, 'a') as f:
                f.write(json.dumps(record) + '\n')

    def say(self, text):
        if self.rank == 0:
            tqdm.write(text)

    def lock(self):
        """One training per out_dir: a lock file with our process id; a dead process's lock is taken over."""
        path = os.path.join(self.out_dir, 'train.lock')
        if os.path.isfile(path):
            with open(path) as f:
                pid = f.read().strip()
            alive = pid.isdigit() and os.path.exists(f'/proc/{pid}') if os.path.isdir('/proc') else True
            if alive and pid != str(os.getpid()):
                fail(f'{self.out_dir} is in use by another training (process {pid}); if it is gone, '
                     f'remove {path}')
            print(f'note: taking over the stale lock of process {pid} in {self.out_dir}')
        with open(path, 'w') as f:
            f.write(str(os.getpid()))
        atexit.register(lambda: os.path.isfile(path) and os.remove(path))

    def interrupted(self, signum, frame):
        """Ctrl-C: one line with where the run stopped and how to continue it, no traceback."""
        self.bar.close()
        ckpt = os.path.join(self.out_dir, 'ckpt.pt')
        if self.saved > 0 and os.path.isfile(ckpt):
            args = ' '.join(a for a in sys.argv[1:] if not a.startswith('--init_from='))
            raise SystemExit(f'stopped at iteration {self.iter_num}; the last checkpoint is {ckpt} (iteration '
                             f'{self.saved}). Continue with: python {sys.argv[0]} {args} --init_from=resume')
        raise SystemExit(f'stopped at iteration {self.iter_num}, before the first checkpoint: nothing to resume')

    def tick(self, iter_num):
        self.iter_num = iter_num
        self.bar.update(1)

    def restart_clock(self, iter_num):
        """Training time and loss are measured from here (after an eval: eval is not training time)."""
        self.t_last, self.it_last = time.perf_counter(), iter_num

    def train(self, iter_num, loss_total, lr):
        """A training log: mean loss since the last one, tokens/s and MFU; the bar's postfix, or a plain line
        with the elapsed time and the time left."""
        n = iter_num - self.it_last
        loss = loss_total.item() / n  # .item() waits for the GPU
        check_finite(dict(train=loss), iter_num)
        dt = (time.perf_counter() - self.t_last) / n
        mfu = self.flops_per_iter / dt / self.peak_all if self.peak_all else None
        self.write(dict(iter=iter_num, loss=loss, lr=lr, ms_per_iter=1000 * dt,
                        tokens_per_s=self.tokens_per_iter / dt, mfu=mfu))
        line = f'loss {loss:.4f} | {self.tokens_per_iter / dt:,.0f} tok/s'
        line += (f' | MFU {100 * mfu:.1f}%' if mfu else '') + f' | lr {lr:.2e}'
        if not self.bar.disable:
            self.bar.set_postfix_str(line, refresh=False)
        elif self.rank == 0:
            elapsed = time.perf_counter() - self.t0
            left = elapsed / (iter_num - self.start) * (self.max_iters - iter_num)
            print(f'iter {iter_num}/{self.max_iters}: {line} | {elapsed:.0f}s, ~{left:.0f}s left', flush=True)
        self.restart_clock(iter_num)

    def close(self):
        self.bar.close()


def run_summary(model, tokens_per_iter, device, n_proc, peak):
    """The first line of a run: size, tokens per iteration, device (and why no MFU is shown, if
    it is not)."""
    gpu = f' ({torch.cuda.get_device_name(device)})' if device.type == 'cuda' else ''
    procs = f' x {n_proc} processes' if n_proc > 1 else ''
    no_mfu = '' if peak else '; no MFU: the peak FLOP/s of this device is not known'
    return (f'{model.num_params() / 1e6:.2f}M parameters; {tokens_per_iter:,} tokens per iteration; '
            f'device {device}{gpu}{procs}{no_mfu}')


def check_finite(losses, iter_num):
    """Stop a diverged run before it writes a checkpoint."""
    for split, value in losses.items():
        if not math.isfinite(value):
            fail(f'the {split} loss is {value} at iteration {iter_num}: the run diverged (try a lower '
                 f'--learning_rate); no checkpoint with these weights was written')
