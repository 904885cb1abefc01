"""
Sample from a trained block-diffusion model, block by block (SPEC §6).

Each block starts as B copies of [MASK]. At every denoising step one forward pass over the block (attending to the KV
cache of the prompt and finished blocks) predicts every masked position; the most confident predictions are committed,
the rest go back to [MASK]. Commit rules: a fixed number of tokens per step (threshold=0), or every position whose top
probability reaches `threshold` (at least one per step). A finished block is run once more to append its keys/values to
the cache. Cost = forward passes per answer (denoising steps + cache fills; the prompt's prefill is not counted).

    python sample.py --ckpt=out/stage1/ckpt.pt --prompt='12+34-5=?\\n'
    python sample.py --ckpt=out/stage1/ckpt.pt --eval_test=True --tokens_per_step=4   # reasoning test accuracy
"""
import math
import os
import pickle
import sys
import time

import torch
from tqdm import tqdm

import trainer
from configurator import configure
from data.tokenizer import Tokenizer
from model import KVCache

# -----------------------------------------------------------------------------------------------------------------
ckpt = 'out/stage1/ckpt.pt'
prompt = ''                  # text to continue ('\n' is a newline); '' = from scratch (reasoning: test prompts)
num_samples = 4
max_new_tokens = 0           # 0 = up to the model's context length
tokens_per_step = 1          # static rule: tokens committed per denoising step (spread evenly over the block)
threshold = 0.0              # > 0: threshold rule instead, commit every position with top probability >= threshold
temperature = 0.0            # 0 = greedy; otherwise sample committed tokens from softmax(logits / temperature)
use_cache = True             # False: re-run the whole sequence at every step (same tokens, slower)
eval_test = False            # score exact-answer accuracy on the dataset's test split (reasoning)
n_test = 0                   # how many test problems to score (0 = all)
batch_size = 256
device = 'auto'
dtype = 'auto'
seed = 1337
# -----------------------------------------------------------------------------------------------------------------


def commit_counts(n_masked, tokens_per_step):
    """Static rule: how many tokens each step commits, ceil(n / k) steps with the n tokens spread as evenly as possible."""
    steps = math.ceil(n_masked / tokens_per_step)
    return [n_masked // steps + (s < n_masked % steps) for s in range(steps)]


@torch.no_grad()
def generate(model, prompt_ids, max_new_tokens, tokens_per_step=1, threshold=0.0, temperature=0.0, eos_id=None,
             use_cache=True, generator=None):
    """Continue prompt_ids (b, p) by max_new_tokens, block by block. Blocks are aligned to multiples of B from
    position 0, as in training, so the prompt's last partial block is completed in place. A row stops after the
    block in which it commits eos_id. Returns (tokens (b, p + max_new_tokens), forward passes per row (b,))."""
    cfg, (b, p) = model.cfg, prompt_ids.shape
    B, mask_id, dev = cfg.block_size, cfg.mask_id, prompt_ids.device
    end = -(-(p + max_new_tokens) // B) * B  # whole blocks
    if end > cfg.seq_len:
        raise ValueError(f'prompt ({p}) + max_new_tokens ({max_new_tokens}) exceed the context seq_len={cfg.seq_len}')
    x = torch.cat((prompt_ids, torch.full((b, end - p), mask_id, dtype=torch.long, device=dev)), dim=1)
    cache, first = (KVCache(cfg.n_layer) if use_cache else None), p // B
    if use_cache and first > 0:
        model(x[:, :first * B], cache=cache, write_cache=True)  # prefill the prompt's whole blocks
    done = torch.zeros(b, dtype=torch.bool, device=dev)
    passes = torch.zeros(b, dtype=torch.long, device=dev)
    rows = torch.arange(b, device=dev)
    for blk in range(first, end // B):
        s, e = blk * B, (blk + 1) * B
        schedule = commit_counts(int((x[0, s:e] == mask_id).sum()), tokens_per_step)  # same prompt length per row
        step = 0
        while True:
            is_masked = (x[:, s:e] == mask_id) & ~done[:, None]
            live = is_masked.any(1)
            if not live.any():
                break
            logits = model(x[:, s:e], cache=cache) if use_cache else model(x[:, :e])[:, s:]
            passes += live
            logits[..., mask_id] = float('-inf')  # never predict [MASK] itself
            probs = torch.softmax(logits.float() / (temperature or 1.0), dim=-1)
            pred = torch.multinomial(probs.flatten(0, 1), 1, generator=generator).view(b, B) if temperature > 0 \
                else probs.argmax(-1)
            conf = probs.gather(-1, pred[..., None]).squeeze(-1).masked_fill(~is_masked, -1.0)
            if threshold > 0:
                commit = conf >= threshold
                commit[rows, conf.argmax(1)] = True  # at least the single most confident position
            else:
                commit = torch.zeros_like(is_masked)
                commit.scatter_(1, conf.topk(schedule[min(step, len(schedule) - 1)], dim=1).indices, True)
            commit &= is_masked
            x[:, s:e] = torch.where(commit, pred, x[:, s:e])  # the rest stays [MASK]: remasked
            step += 1
        if eos_id is not None:
            done |= (x[:, s:e] == eos_id).any(1)
        if done.all() or e == end:
            break
        if use_cache:
            model(x[:, s:e], cache=cache, write_cache=True)  # append the finished block's keys/values
            passes += ~done
    return x[:, :p + max_new_tokens], passes


def answer_of(text, prefix):
    """The final answer: what follows the last `prefix` on its line, or None."""
    return text.rsplit(prefix, 1)[1].split('\n')[0].strip() if prefix in text else None


def score_test(model, tok, meta, n_test, batch_size, autocast, **decode):
    """Exact-answer accuracy on data/<dataset>/test.pkl and mean forward passes per answer. Problems are batched by
    prompt length, so every row of a batch shares the same block alignment."""
    path = os.path.join(trainer.dataset_dir(meta['dataset']), 'test.pkl')
    if 'answer_prefix' not in meta or not os.path.isfile(path):
        trainer.fail(f"dataset '{meta['dataset']}' has no scorable test split ({path}); run its prepare.py")
    with open(path, 'rb') as f:
        problems = pickle.load(f)[:n_test or None]
    by_len = {}
    for q, solution in problems:
        by_len.setdefault(len(tok.encode(q)), []).append((q, solution))
    correct, passes, dev = 0, 0, model.wte.weight.device
    bar = tqdm(total=len(problems), desc='test', dynamic_ncols=True)
    for p_len, group in sorted(by_len.items()):
        for i in range(0, len(group), batch_size):
            chunk = group[i:i + batch_size]
            ids = torch.tensor([tok.encode(q) for q, _ in chunk], device=dev)
            with autocast:
                out, n_pass = generate(model, ids, meta['row_len'] - p_len, eos_id=meta['eos_id'], **decode)
            for (q, solution), row in zip(chunk, out[:, p_len:].tolist()):
                pred = answer_of(tok.decode(row), meta['answer_prefix'])
                correct += pred is not None and pred == answer_of(solution, meta['answer_prefix'])
            passes += int(n_pass.sum())
            bar.update(len(chunk))
    bar.close()
    return correct / len(problems), passes / len(problems), len(problems)


if __name__ == '__main__':
    configure(globals(), [k for k, v in globals().items() if not k.startswith('_') and type(v) in (int, float, bool, str)],
              sys.argv[1:])
    if tokens_per_step < 1 or not 0.0 <= threshold <= 1.0 or temperature < 0:
        trainer.fail('need tokens_per_step >= 1, 0 <= threshold <= 1 and temperature >= 0')
    torch.manual_seed(seed)
    dev, autocast = trainer.setup_device(device, dtype)
    state = trainer.load_checkpoint(ckpt)
    model = trainer.build_model(state['model_args'], state['model']).to(dev).eval()
    meta, tok = state['meta'], Tokenizer(state['meta'])
    rule = f'threshold {threshold}' if threshold > 0 else f'{tokens_per_step} tokens/step'
    decode = dict(tokens_per_step=tokens_per_step, threshold=threshold, temperature=temperature, use_cache=use_cache,
                  generator=torch.Generator(dev).manual_seed(seed))
    if eval_test:
        t0 = time.perf_counter()
        acc, mean_passes, n = score_test(model, tok, meta, n_test, batch_size, autocast, **decode)
        print(f'{rule}: accuracy {100 * acc:.1f}% on {n} test problems, {mean_passes:.1f} forward passes per answer, '
              f'{time.perf_counter() - t0:.1f}s (block_size {model.cfg.block_size})')
    else:
        texts = [prompt.replace('\\n', '\n')] * num_samples
        if not prompt and 'answer_prefix' in meta:  # reasoning: the first few test problems
            with open(os.path.join(trainer.dataset_dir(meta['dataset']), 'test.pkl'), 'rb') as f:
                texts = [q for q, _ in pickle.load(f)[:num_samples]]
        for text in texts:
            ids = torch.tensor([tok.encode(text)], dtype=torch.long, device=dev)
            with autocast:
                out, n_pass = generate(model, ids, max_new_tokens or model.cfg.seq_len - ids.shape[1],
                                       eos_id=meta['eos_id'], **decode)
            print(f'--- {rule}, {int(n_pass)} forward passes\n{text}{tok.decode(out[0, ids.shape[1]:].tolist())}')
