"""
Checkpoints: one file per run (out_dir/ckpt.pt) holding the weights, the optimizer, the model's
arguments, the config and the dataset's meta, with a checksum of every tensor. A save never leaves a
corrupt or non-finite checkpoint behind; a load verifies the checksum. Used by both training scripts
and by everything that samples.
"""
import hashlib
import os

import torch

from common import fail
from model import BlockDiffusionLM, ModelConfig


def checksum(obj):
    """SHA-256 of every tensor in a (nested) checkpoint dict, with its place in it: what a load
    verifies."""
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
    """Write to a temporary file, then rename: an interrupted save never leaves a corrupt checkpoint
    behind. Non-finite weights are never written (a diverged run must not replace a good
    checkpoint)."""
    if not all(torch.isfinite(t).all() for t in ckpt['model'].values() if t.is_floating_point()):
        fail(f'the weights are no longer finite: {path} was not written')
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    tmp = path + '.tmp'
    try:
        torch.save(dict(ckpt, checksum=checksum(ckpt)), tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # disk full, no permission (torch: RuntimeError)
        if os.path.isfile(tmp):
            os.remove(tmp)
        kept = f'the previous {path} is intact' if os.path.isfile(path) else f'{path} not written'
        why = str(e).splitlines()[0][:120]
        if 'enforce fail' in why or 'No space' in why:  # torch's words for a full disk
            why = 'the disk is full?'
        fail(f'could not save the checkpoint ({why}); {kept}')


def load_checkpoint(path, stage=None, key='checkpoint'):
    """A checkpoint dict, its tensors verified against the checksum it was saved with (and of the
    training `stage`, 1 or 2, where given); anything else is one line. `key`: the setting that
    named the file, for the message."""
    if os.path.isdir(path):
        fail(f"{key} '{path}' is a directory: give the ckpt.pt file in it")
    if not os.path.isfile(path):
        fail(f"{key} '{path}' not found")
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception:  # a truncated or foreign file: say so instead of a deep unpickling trace
        fail(f"'{path}' is not a readable checkpoint (truncated, corrupted, or not a torch file)")
    if not isinstance(ckpt, dict) or not {'model', 'model_args', 'meta'} <= ckpt.keys():
        fail(f"'{path}' is not a nanoRCD checkpoint (needs model, model_args and meta)")
    if 'checksum' in ckpt and ckpt['checksum'] != checksum(ckpt):
        fail(f"'{path}' is corrupted: its tensors do not match the checksum saved with them")
    found = 2 if 'rollout_steps' in ckpt.get('config', {}) else 1  # only stage 2 has the knob
    if stage is not None and found != stage:
        fail(f"'{path}' is a stage-{found} checkpoint where a stage-{stage} one belongs")
    return ckpt


def check_compatible(ckpt_a, ckpt_b, name_a, name_b, keys=('vocab_size', 'mask_id', 'block_size')):
    """Models that hand residuals to each other must share the vocabulary, the [MASK] id and the
    block size."""
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
