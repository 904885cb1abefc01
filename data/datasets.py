"""Datasets as the training scripts read them: data/<name>/ (train.bin and val.bin of uint16 token
ids, meta.pkl) or a prepared directory anywhere, and the random batches drawn from them."""
import os
import pickle
import subprocess
import sys

import numpy as np
import torch
import torch.distributed as dist

from common import fail, world

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dataset_dir(dataset):
    """A dataset is a name under data/ ('reasoning') or a path to a directory ('/tmp/my_data')."""
    return dataset if os.sep in dataset else os.path.join(ROOT, 'data', dataset)


def load_dataset(dataset):
    """The meta dict of a dataset, running its prepare.py first if train.bin is missing. A path is
    stored absolute, so checkpoints that name it work from any directory."""
    data_dir = dataset_dir(dataset)
    if not os.path.isdir(data_dir):
        have = sorted(d for d in os.listdir(os.path.join(ROOT, 'data'))
                      if os.path.isfile(os.path.join(ROOT, 'data', d, 'prepare.py')))
        fail(f"no dataset '{dataset}': {data_dir} is not a directory "
             f"(datasets under data/: {', '.join(have)})")
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
    try:
        with open(os.path.join(data_dir, 'meta.pkl'), 'rb') as f:
            meta = pickle.load(f)
    except Exception:  # empty, truncated or foreign: say so instead of an unpickling trace
        fail(f"{data_dir}/meta.pkl is not a readable meta file: run its prepare.py again")
    if not isinstance(meta, dict) or 'vocab_size' not in meta:
        fail(f"{data_dir}/meta.pkl holds no vocabulary: run its prepare.py again")
    return dict(meta, dataset=dataset if os.sep not in dataset else os.path.abspath(dataset))


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
            size = os.path.getsize(os.path.join(dataset_dir(meta['dataset']), f'{split}.bin'))
            if size % 2:
                fail(f"{split}.bin of dataset '{meta['dataset']}' is not uint16 token ids "
                     f"({size} bytes): run its prepare.py again")
            n = size // 2
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
        return x0, (sep.cumsum(1) - sep) == 0, self.noise  # no separator before: prompt, separator


def load_problems(meta, split, n=0):
    """The first n (0 = all) (question, solution) pairs of a row dataset's val or test split."""
    path = os.path.join(dataset_dir(meta['dataset']), f'{split}.pkl')
    if 'answer_prefix' not in meta or not os.path.isfile(path):
        fail(f"dataset '{meta['dataset']}' has no scorable {split} split ({path}); run its "
             f"prepare.py")
    with open(path, 'rb') as f:
        problems = pickle.load(f)[:n or None]
    if not problems:
        fail(f'{path} holds no problems')
    return problems


def answer_of(text, prefix):
    """The final answer: what follows the last `prefix` on its line ('' = the first line), or
    None."""
    if not prefix:
        return text.split('\n')[0].strip()
    return text.rsplit(prefix, 1)[1].split('\n')[0].strip() if prefix in text else None


def is_right(pred, solution, prefix):
    """A parsed answer `pred` is right when it equals the reference solution's answer exactly."""
    return pred is not None and pred == answer_of(solution, prefix)
