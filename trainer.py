"""
What both training stages share: device setup, data batches, the learning-rate schedule, checkpoints, evaluation,
logging and the loop itself. train_stage1.py and train_stage2.py differ only in how they build their models and in
their loss function, which they hand to train().

Multi-GPU: run either script under `torchrun --standalone --nproc_per_node=N`. Each rank runs every N-th micro-batch
of an iteration's grad_accum_steps (which must be a multiple of N), so an iteration sees exactly the examples and noise
a single-GPU run with the same grad_accum_steps sees; gradients are averaged by DDP; rank 0 alone logs and saves.
"""
import hashlib
import json
import math
import os
import pickle
import subprocess
import sys
import time
from contextlib import nullcontext
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from model import BlockDiffusionLM, ModelConfig

ROOT = os.path.dirname(os.path.abspath(__file__))


def fail(msg):
    raise SystemExit(f'error: {msg}')


def check_config(c):
    """The settings both stages share: a bad value is one clear line here, not a traceback from deep inside torch."""
    if c['loss_weighting'] not in ('elbo', 'mean'):
        fail(f"loss_weighting='{c['loss_weighting']}' must be 'elbo' or 'mean'")
    if not 0.0 <= c['mask_rate_min'] < c['mask_rate_max'] <= 1.0:
        fail(f"need 0 <= mask_rate_min < mask_rate_max <= 1 (got {c['mask_rate_min']}, {c['mask_rate_max']})")
    rules = [('batch_size', 1), ('grad_accum_steps', 1), ('max_iters', 0), ('eval_interval', 1), ('eval_iters', 1),
             ('log_interval', 1), ('warmup_iters', 0), ('lr_decay_iters', 1), ('min_lr', 0), ('weight_decay', 0),
             ('grad_clip', 0)]
    for key, least in rules:
        if c[key] < least:
            fail(f'{key}={c[key]} must be >= {least}')
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
    """'auto' picks CUDA when present. Returns (torch.device, autocast context): bf16 autocast on CUDA, none on CPU.
    Under torchrun it joins the process group (NCCL on CUDA, gloo on CPU) and takes GPU number LOCAL_RANK."""
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if device.startswith('cuda') and not torch.cuda.is_available():
        fail(f"device='{device}' but CUDA is not available here; use --device=cpu")
    if 'RANK' in os.environ:
        if device.startswith('cuda'):
            if int(os.environ['LOCAL_RANK']) >= torch.cuda.device_count():
                fail(f"torchrun started {os.environ['LOCAL_WORLD_SIZE']} processes on this machine but it has "
                     f"{torch.cuda.device_count()} GPUs: use --nproc_per_node={torch.cuda.device_count()} or fewer")
            device = f"cuda:{os.environ['LOCAL_RANK']}"
            torch.cuda.set_device(device)
        dist.init_process_group(backend='nccl' if device.startswith('cuda') else 'gloo')
    device = torch.device(device)
    if dtype == 'auto':
        dtype = 'bfloat16' if device.type == 'cuda' else 'float32'
    if dtype not in ('bfloat16', 'float32'):
        fail(f"dtype='{dtype}' is not supported; use 'bfloat16', 'float32' or 'auto'")
    if dtype == 'float32':
        return device, nullcontext()
    return device, torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def dataset_dir(dataset):
    """A dataset is a name under data/ ('reasoning') or a path to a directory ('/tmp/my_data')."""
    return dataset if os.sep in dataset else os.path.join(ROOT, 'data', dataset)


def load_dataset(dataset):
    """The meta dict of a dataset, running its prepare.py first if train.bin is missing."""
    data_dir = dataset_dir(dataset)
    if not os.path.isdir(data_dir):
        have = sorted(d for d in os.listdir(os.path.join(ROOT, 'data')) if os.path.isfile(os.path.join(ROOT, 'data', d, 'prepare.py')))
        fail(f"no dataset '{dataset}': {data_dir} is not a directory (datasets under data/: {', '.join(have)})")
    prepare = os.path.join(data_dir, 'prepare.py')
    if world()[0] == 0 and not os.path.isfile(os.path.join(data_dir, 'train.bin')) and os.path.isfile(prepare):
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
    """Random training/validation sequences from data/<name>/{train,val}.bin (uint16, read through np.memmap).
    Row datasets (meta has 'row_len') hold one example per row: a batch is a set of rows, and a row's prompt (up to
    its first meta['prompt_sep_id']) is never noised. Other datasets are one token stream: a batch is random windows."""

    def __init__(self, meta, seq_len, batch_size, device):
        self.meta, self.seq_len, self.batch_size, self.device = meta, seq_len, batch_size, device
        if 'row_len' in meta and meta['row_len'] != seq_len:
            fail(f"dataset '{meta['dataset']}' has examples of {meta['row_len']} tokens: set --seq_len={meta['row_len']}")
        for split in ('train', 'val'):
            n = os.path.getsize(os.path.join(dataset_dir(meta['dataset']), f'{split}.bin')) // 2
            if n <= seq_len:
                fail(f"{split}.bin of dataset '{meta['dataset']}' has {n} tokens, fewer than seq_len={seq_len} + 1")

    def get(self, split, rng):
        """(x0, prompt_mask), both (batch_size, seq_len) on the device; rng (np.random.Generator) picks the examples."""
        data = np.memmap(os.path.join(dataset_dir(self.meta['dataset']), f'{split}.bin'), dtype=np.uint16, mode='r')
        L = self.seq_len
        if 'row_len' in self.meta:
            rows = rng.integers(0, len(data) // L, self.batch_size)
            x0 = torch.from_numpy(np.stack([data[r * L:(r + 1) * L] for r in rows]).astype(np.int64))
        else:
            starts = rng.integers(0, len(data) - L, self.batch_size)
            x0 = torch.from_numpy(np.stack([data[s:s + L] for s in starts]).astype(np.int64))
        if self.device.type == 'cuda':
            x0 = x0.pin_memory().to(self.device, non_blocking=True)
        else:
            x0 = x0.to(self.device)
        if 'prompt_sep_id' not in self.meta:
            return x0, torch.zeros_like(x0, dtype=torch.bool)
        sep = (x0 == self.meta['prompt_sep_id']).int()
        return x0, (sep.cumsum(1) - sep) == 0  # no separator strictly before: the prompt, separator included


def lr_at(it, c):
    """Linear warm-up to learning_rate, then cosine decay to min_lr at lr_decay_iters."""
    if it < c.warmup_iters:
        return c.learning_rate * (it + 1) / (c.warmup_iters + 1)
    if it >= c.lr_decay_iters:
        return c.min_lr
    ratio = (it - c.warmup_iters) / (c.lr_decay_iters - c.warmup_iters)
    return c.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (c.learning_rate - c.min_lr)


def checksum(obj):
    """SHA-256 of every tensor in a (nested) checkpoint dict, with its place in it: what a load verifies."""
    h = hashlib.sha256()

    def walk(x, name):
        if isinstance(x, torch.Tensor):
            h.update(name.encode())
            h.update(x.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            for k in sorted(x, key=str):
                walk(x[k], f'{name}/{k}')
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(v, f'{name}/{i}')
    walk({k: v for k, v in obj.items() if k != 'checksum'}, '')
    return h.hexdigest()


def save_checkpoint(ckpt, path):
    """Write to a temporary file, then rename: an interrupted save never leaves a corrupt checkpoint behind. Non-finite
    weights are never written (a diverged run must not replace a good checkpoint)."""
    if not all(torch.isfinite(t).all() for t in ckpt['model'].values() if t.is_floating_point()):
        fail(f'the weights are no longer finite: {path} was not written')
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    tmp = path + '.tmp'
    torch.save(dict(ckpt, checksum=checksum(ckpt)), tmp)
    os.replace(tmp, path)


def load_checkpoint(path):
    """A checkpoint dict, its tensors verified against the checksum it was saved with; anything else is one line."""
    if not os.path.isfile(path):
        fail(f"checkpoint '{path}' not found")
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception:  # a truncated or foreign file: say so instead of a deep unpickling trace
        fail(f"'{path}' is not a readable checkpoint (truncated, corrupted, or not a torch file)")
    if not isinstance(ckpt, dict) or not {'model', 'model_args', 'meta'} <= ckpt.keys():
        fail(f"'{path}' is not a nanoRCD checkpoint (needs model, model_args and meta)")
    if 'checksum' in ckpt and ckpt['checksum'] != checksum(ckpt):
        fail(f"'{path}' is corrupted: its tensors do not match the checksum saved with them")
    return ckpt


def check_compatible(ckpt_a, ckpt_b, name_a, name_b, keys=('vocab_size', 'mask_id', 'block_size')):
    """Models that hand residuals to each other must share the vocabulary, the [MASK] id and the block size."""
    a, b = ckpt_a['model_args'], ckpt_b['model_args']
    diffs = [f'{k} {a[k]} vs {b[k]}' for k in keys if a[k] != b[k]]
    if diffs:
        fail(f"{name_a} and {name_b} are incompatible checkpoints ({'; '.join(diffs)})")


def build_model(model_args, state_dict=None):
    """A BlockDiffusionLM from its arguments (and weights); a bad architecture is a clear error."""
    try:
        model = BlockDiffusionLM(ModelConfig(**model_args))
    except (ValueError, TypeError) as e:
        fail(str(e))
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model


def peak_flops(device):
    """Datasheet dense bf16 peak of the GPU (FLOP/s), or None where unknown (then no MFU is shown)."""
    if device.type != 'cuda':
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in (('H100 PCIe', 756e12), ('H100 NVL', 835e12), ('H100', 989e12), ('H200', 989e12),
                       ('A100', 312e12)):
        if key in name:
            return flops
    return None


def train(config, model, optimizer, loss_fn, batches, ckpt, device, autocast):
    """The loop: warm-up/cosine learning rate, gradient accumulation, clipping, periodic eval and checkpoints,
    a progress bar with loss, tokens/s and MFU, and one JSON line per log/eval in out_dir/log.jsonl.
    loss_fn(forward, x0, prompt_mask, generator) -> scalar loss. ckpt: what every checkpoint holds besides the
    weights and optimizer (model_args, config, meta, ...); its iter_num / best_val_loss say where a resumed run is.
    Every micro-batch draws its examples and noise from generators seeded by (seed, iteration, micro-batch), so a
    resumed run, or one on another number of GPUs, sees exactly the batches the uninterrupted one would have."""
    c = SimpleNamespace(**config)
    rank, n_proc = world()
    if c.grad_accum_steps % n_proc:
        if rank > 0:
            sys.exit(1)  # every rank fails alike: rank 0 alone says why
        fail(f'grad_accum_steps={c.grad_accum_steps} must be a multiple of the number of processes ({n_proc})')
    compiled = torch.compile(model) if c.compile and device.type == 'cuda' else model
    fwd = DDP(compiled, device_ids=[device.index] if device.type == 'cuda' else None) if n_proc > 1 else compiled
    start = iter_num = ckpt.get('iter_num', 0)
    best_val_loss = ckpt.get('best_val_loss', float('inf'))
    noise_gen = torch.Generator(device=device)
    log_path, ckpt_path = os.path.join(c.out_dir, 'log.jsonl'), os.path.join(c.out_dir, 'ckpt.pt')
    if start == 0 and not c.eval_only and os.path.isfile(ckpt_path):
        fail(f'{ckpt_path} exists and this run would replace it: continue it with --init_from=resume, or train into '
             f'a fresh --out_dir')
    if rank == 0:
        os.makedirs(c.out_dir, exist_ok=True)
        if os.path.isfile(ckpt_path + '.tmp'):
            os.remove(ckpt_path + '.tmp')  # left by a run killed mid-save; the checkpoint itself is whole
        if start > 0 and os.path.isfile(log_path):  # drop what the interrupted run logged after its checkpoint
            with open(log_path) as f:
                kept = [line for line in f if line.endswith('}\n') and  # not a line cut short by a kill
                        json.loads(line)['iter'] < start + ('val_loss' not in line)]  # evals at start run again
            with open(log_path, 'w') as f:
                f.writelines(kept)

    def batch_and_noise(split, seed):
        noise_gen.manual_seed(seed)
        return (*batches.get(split, np.random.default_rng(seed)), noise_gen)

    def log(record):
        if rank == 0:
            with open(log_path, 'a') as f:
                f.write(json.dumps(record) + '\n')

    def sum_over_ranks(total):
        """A sum computed by each rank over its share of the work, summed over ranks (in place)."""
        if n_proc > 1:
            dist.all_reduce(total)
        return total

    @torch.no_grad()
    def estimate_loss():
        model.eval()
        out = {}
        for split in ('train', 'val'):
            total = torch.zeros((), device=device)
            for k in range(rank, c.eval_iters, n_proc):  # the same examples and noise at every eval: comparable
                with autocast:
                    total += loss_fn(compiled, *batch_and_noise(split, 10**9 + k))
            out[split] = sum_over_ranks(total).item() / c.eval_iters
            if not math.isfinite(out[split]):
                fail(f'the {split} loss is {out[split]} at iteration {iter_num}: the run diverged (try a lower '
                     f'--learning_rate); no checkpoint was written')
        model.train()
        return out

    tokens_per_iter = c.batch_size * c.grad_accum_steps * model.cfg.seq_len
    flops_per_iter = model.flops_per_sequence() * c.batch_size * c.grad_accum_steps
    peak = peak_flops(device)
    if rank == 0:
        print(f'{model.num_params() / 1e6:.2f}M parameters; {tokens_per_iter:,} tokens per iteration; device {device}'
              + (f' ({torch.cuda.get_device_name(device)})' if device.type == 'cuda' else '')
              + (f' x {n_proc} processes' if n_proc > 1 else ''))
    pbar = tqdm(total=c.max_iters, initial=iter_num, desc=os.path.basename(c.out_dir), dynamic_ncols=True,
                disable=rank != 0 or not sys.stderr.isatty())  # a log file gets plain lines instead
    t_last, it_last, loss_sum = time.perf_counter(), iter_num, torch.zeros((), device=device)
    last_loss = None
    while True:
        lr = lr_at(iter_num, c)
        for group in optimizer.param_groups:
            group['lr'] = lr
        if iter_num % c.eval_interval == 0 or iter_num == c.max_iters:
            losses = estimate_loss()
            if rank == 0:
                tqdm.write(f"iter {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
            log(dict(iter=iter_num, train_loss=losses['train'], val_loss=losses['val']))
            if c.eval_only:
                break
            if iter_num > start and (losses['val'] < best_val_loss or c.always_save_checkpoint):
                best_val_loss = min(best_val_loss, losses['val'])
                if rank == 0:
                    ckpt.update(model=model.state_dict(), optimizer=optimizer.state_dict(), iter_num=iter_num,
                                best_val_loss=best_val_loss)
                    save_checkpoint(ckpt, ckpt_path)
                    tqdm.write(f'saved {ckpt_path}')
            t_last, it_last, loss_sum = time.perf_counter(), iter_num, torch.zeros((), device=device)  # eval is not training time
        if iter_num >= c.max_iters:
            break
        my_micros = range(rank, c.grad_accum_steps, n_proc)  # this rank's share of the iteration's micro-batches
        for micro in my_micros:
            x0, prompt_mask, gen = batch_and_noise('train', c.seed * 1_000_003 + iter_num * c.grad_accum_steps + micro)
            if n_proc > 1:
                fwd.require_backward_grad_sync = micro == my_micros[-1]  # all-reduce once, after the last micro-batch
            with autocast:
                loss = loss_fn(fwd, x0, prompt_mask, gen) / (c.grad_accum_steps // n_proc)
            loss.backward()
            loss_sum += loss.detach() / n_proc
        if c.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        iter_num += 1
        pbar.update(1)
        if iter_num % c.log_interval == 0:
            lossf = sum_over_ranks(loss_sum).item() / (iter_num - it_last)  # .item() waits for the GPU
            if not math.isfinite(lossf):
                fail(f'the training loss is {lossf} at iteration {iter_num} (last finite: {last_loss}): the run '
                     f'diverged; try a lower --learning_rate. No checkpoint with these weights was written')
            last_loss = lossf
            dt = (time.perf_counter() - t_last) / (iter_num - it_last)
            mfu = flops_per_iter / dt / (peak * n_proc) if peak else None
            line = f'loss {lossf:.4f} | {tokens_per_iter / dt:,.0f} tok/s' \
                + (f' | MFU {100 * mfu:.1f}%' if mfu else '') + f' | lr {lr:.2e}'
            if not pbar.disable:
                pbar.set_postfix_str(line)
            elif rank == 0:
                print(f'iter {iter_num}: {line}', flush=True)
            log(dict(iter=iter_num, loss=lossf, lr=lr, ms_per_iter=1000 * dt, tokens_per_s=tokens_per_iter / dt,
                     mfu=mfu))
            t_last, it_last, loss_sum = time.perf_counter(), iter_num, torch.zeros((), device=device)
    pbar.close()
    if n_proc > 1:
        dist.barrier()  # rank 0 may still be saving: leave together
        del fwd  # the DDP wrapper before its process group: torn down the other way round, a rank can hang at exit
        dist.destroy_process_group()
    return best_val_loss
