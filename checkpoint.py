"""
Checkpoints: one file per run (out_dir/ckpt.pt) holding the weights, the optimizer, the model's
arguments, the training stage, its config and the dataset's meta, with a checksum of every tensor. A
save never leaves a corrupt or non-finite checkpoint behind; a load verifies the checksum. Used by
both training scripts (which start, resume and refuse runs here) and by everything that samples.
"""
import hashlib
import os

import torch

import common
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
        common.fail(f'the weights are no longer finite: {path} was not written')
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
        common.fail(f'could not save the checkpoint ({why}); {kept}')


def load_checkpoint(path, stage=None, key='checkpoint'):
    """A checkpoint dict, its tensors verified against the checksum it was saved with (and of the
    training `stage`, 1 or 2, where given); anything else is one line. `key`: the setting that
    named the file, for the message."""
    if os.path.isdir(path):
        common.fail(f"{key} '{path}' is a directory: give the ckpt.pt file in it")
    if not os.path.isfile(path):
        common.fail(f"{key} '{path}' not found")
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception:  # a truncated or foreign file: say so instead of a deep unpickling trace
        common.fail(f"'{path}' is not a readable checkpoint (truncated, corrupted, or not a "
                    f"torch file)")
    if not isinstance(ckpt, dict) or not {'model', 'model_args', 'meta', 'stage'} <= ckpt.keys():
        common.fail(f"'{path}' is not a nanoRCD checkpoint (needs model, model_args, meta and "
                    f"stage)")
    if 'checksum' in ckpt and ckpt['checksum'] != checksum(ckpt):
        common.fail(f"'{path}' is corrupted: its tensors do not match the checksum saved with "
                    f"them")
    if stage is not None and ckpt['stage'] != stage:
        common.fail(f"'{path}' is a stage-{ckpt['stage']} checkpoint where a stage-{stage} one "
                    f"belongs")
    return ckpt


def build_model(model_args, state_dict=None):
    """A BlockDiffusionLM from its arguments (and weights); a bad architecture is a clear error."""
    try:
        model = BlockDiffusionLM(ModelConfig(**model_args))
    except (ValueError, TypeError) as e:
        common.fail(str(e))
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model


# what a resumed run trains with as before (and the model's arguments): a flag that changes one is
# refused, as it would make the run something else
KEPT_ON_RESUME = ('dataset', 'mask_rate_min', 'mask_rate_max', 'loss_weighting', 'alpha_mode',
                  'alpha_constant', 'alpha_scale', 'rollout_steps', 'rollout_plain',
                  'reference_ckpt')


def start_run(c, meta, stage, model_args=None):
    """The checkpoint a training run starts from, holding its config: out_dir/ckpt.pt with
    init_from='resume', else a fresh one (stage 1: model_args, new weights; stage 2: the target
    from the stage-1 checkpoint init_from). A fresh run never replaces a trained checkpoint; a
    resumed one keeps its settings. In the paper's recipe stage 2's reference_ckpt '' becomes the
    checkpoint the target started from."""
    path = os.path.join(c['out_dir'], 'ckpt.pt')
    if c['init_from'] == 'resume':
        ckpt = load_checkpoint(path, stage=stage)
        if stage == 2:
            c['reference_ckpt'] = c['reference_ckpt'] or ckpt['config']['reference_ckpt']
        was, now = dict(ckpt['config'], **ckpt['model_args']), dict(c, **(model_args or {}))
        keys = KEPT_ON_RESUME + tuple(model_args or ())
        changed = [f'{k} {now[k]} (was {was[k]})' for k in keys if k in now and now[k] != was[k]]
        if changed:
            common.fail(f"{path} was trained with other settings: {', '.join(changed)}")
        print(f"resuming {path} at iteration {ckpt['iter_num']}")
    else:
        if os.path.isfile(path):
            common.fail(f'{path} exists and this run would replace it (or, with eval_only, score '
                        f'fresh weights beside it): continue it with --init_from=resume, or use '
                        f'a fresh --out_dir')
        ckpt = dict(model_args=model_args, model=None)
        if stage == 2:
            stage1 = load_checkpoint(c['init_from'], stage=1, key='init_from')
            ckpt = dict(model_args=stage1['model_args'], model=stage1['model'])
            if common.reads_reference(c):
                c['reference_ckpt'] = c['reference_ckpt'] or c['init_from']
    if ckpt['model_args']['vocab_size'] != meta['vocab_size']:
        common.fail(f"the checkpoint was trained on another vocabulary than dataset "
                    f"'{c['dataset']}'")
    if stage == 2 and c['rollout_steps'] > ckpt['model_args']['block_size']:
        common.fail(f"rollout_steps={c['rollout_steps']}: a block of "
                    f"{ckpt['model_args']['block_size']} tokens is decoded in at most "
                    f"{ckpt['model_args']['block_size']} steps")
    ckpt.update(config=c, meta=meta, stage=stage)
    return ckpt


def load_reference(path, target, device):
    """The paper's frozen reference: a stage-1 model (eval mode, no gradients) that shares the
    target's vocabulary, [MASK] id, block size and context, as it hands the target residuals (stage
    2) or a block's first step (decoding)."""
    ref = load_checkpoint(path, stage=1, key='reference_ckpt')
    a, b = ref['model_args'], target['model_args']
    keys = ('vocab_size', 'mask_id', 'block_size', 'seq_len')
    diffs = [f'{k} {a[k]} vs {b[k]}' for k in keys if a[k] != b[k]]
    if diffs:
        common.fail(f"reference_ckpt '{path}' and the target are incompatible checkpoints "
                    f"({'; '.join(diffs)})")
    reference = build_model(ref['model_args'], ref['model']).to(device).eval()
    reference.requires_grad_(False)
    print(f'reference model: {reference.num_params() / 1e6:.2f}M parameters, frozen')
    return reference
