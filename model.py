"""
A block-diffusion language model in one file (SDAR / BD3-LM family).

A bidirectional transformer whose attention is block-causal: token i sees token j iff
j // B <= i // B, with B the diffusion block size. It is a denoiser, not a next-token predictor:
the output at position i predicts the clean token at position i. Training reads the noised
sequence x_t and the clean sequence x_0 side by side (length 2L - B: x_0's last block is no
block's context) so that one pass denoises every block against its clean prefix; inference
denoises one block at a time against a KV cache of finished blocks. The file reads: config,
attention masks, the transformer, the training objective, and last the attention backend
(FlexAttention or SDPA, both driven by the same mask predicate).
"""
import functools
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention


@dataclass
class ModelConfig:
    vocab_size: int = 19    # ordinary tokens + <eos> + <mask>
    mask_id: int = 18       # the [MASK] token id (part of the vocabulary)
    seq_len: int = 96       # L: the context length
    block_size: int = 8     # B: the diffusion block size; must divide seq_len
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0

    def __post_init__(self):
        sizes = ('vocab_size', 'seq_len', 'block_size', 'n_layer', 'n_head', 'n_embd')
        small = [f'{k}={getattr(self, k)}' for k in sizes if getattr(self, k) < 1]
        if small:
            raise ValueError(f"bad model config: {', '.join(small)} must be >= 1")
        problems = []
        if self.seq_len % self.block_size:
            problems.append(f'block_size={self.block_size} must divide seq_len={self.seq_len}')
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            problems.append(f'n_embd={self.n_embd} must split into n_head={self.n_head} even heads')
        if not 0 <= self.mask_id < self.vocab_size:
            problems.append(f'mask_id={self.mask_id} must be below vocab_size={self.vocab_size}')
        if problems:
            raise ValueError('bad model config: ' + '; '.join(problems))


# --------------------------------------------------------------------------------------------------
# Attention masks. Each is one predicate (b, h, q, kv) -> bool over tensors, used by FlexAttention
# as a mask_mod and evaluated on a grid of (query, key) positions to get SDPA's dense boolean mask.

def training_len(seq_len, block_size):
    """Tokens of the training input x_t ⊕ x_0: x_0's last block is left out, as no block of x_t
    reads it."""
    return 2 * seq_len - block_size


def training_mask_mod(seq_len, block_size):
    """x_t (positions < L) sees its own noised block and the clean earlier blocks; x_0 is
    block-causal."""
    L, B = seq_len, block_size

    def mask_mod(b, h, q, kv):
        q0, k0 = q >= L, kv >= L
        bq, bk = (q % L) // B, (kv % L) // B
        return (~q0 & ~k0 & (bq == bk)) | (~q0 & k0 & (bk < bq)) | (q0 & k0 & (bk <= bq))
    return mask_mod


def block_causal_mask_mod(block_size):
    """Inference: a query at absolute position q sees the keys at positions kv of the same or an
    earlier block."""
    def mask_mod(b, h, q, kv):
        return kv // block_size <= q // block_size
    return mask_mod


def dense_mask(mask_mod, q_pos, kv_pos):
    """The predicate on every (query, key) pair of positions: a (len(q_pos), len(kv_pos)) bool
    tensor for SDPA."""
    return mask_mod(None, None, q_pos[:, None], kv_pos[None, :])


# --------------------------------------------------------------------------------------------------
# The transformer

def apply_rope(x, cos, sin):
    """Rotary position embedding on (b, h, n, d) with cos/sin of shape (n, d/2): rotate channel
    pairs (i, i + d/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


class KVCache:
    """Keys and values of the finished blocks, one preallocated (2, b, h, max_len, d) buffer per
    layer (zeros, made on first use). Each forward writes its chunk's keys/values at positions
    length.. and attends to the whole buffer under the block-causal mask (positions past the chunk
    are later blocks: masked). So every denoising step has the same shapes and no copy of the cache,
    and a CUDA graph of one step can be replayed at any position. advance(n) keeps the chunk (once
    per finished block); a denoising step's chunk is overwritten by the next step."""

    def __init__(self, n_layer, max_len, device):
        self.kv, self.max_len, self.length = [None] * n_layer, max_len, 0
        # length again, on the device: where a replayed CUDA graph reads it
        self.start = torch.zeros((), dtype=torch.long, device=device)

    def advance(self, n):
        self.length += n
        self.start += n  # in place: a captured graph sees the new value

    def extend(self, layer, pos, k, v):
        """Write k, v at positions pos; returns this layer's whole key and value buffers."""
        if self.kv[layer] is None:
            b, h, _, d = k.shape
            self.kv[layer] = torch.zeros(2, b, h, self.max_len, d, dtype=k.dtype, device=k.device)
        self.kv[layer][0].index_copy_(2, pos, k)
        self.kv[layer][1].index_copy_(2, pos, v)
        return self.kv[layer][0], self.kv[layer][1]


class SelfAttention(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        self.layer, self.n_head = layer, cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, pos, cos, sin, mask, cache):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.extend(self.layer, pos, k, v)
        y = attention(q, k, v, mask).transpose(1, 2).reshape(b, n, d)
        return self.dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class TransformerLayer(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        self.norm1, self.attn = nn.RMSNorm(cfg.n_embd), SelfAttention(cfg, layer)
        self.norm2, self.mlp = nn.RMSNorm(cfg.n_embd), MLP(cfg)

    def forward(self, x, pos, cos, sin, mask, cache):
        x = x + self.attn(self.norm1(x), pos, cos, sin, mask, cache)
        return x + self.mlp(self.norm2(x))


class BlockDiffusionLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)  # E: rcd.py builds soft tokens from it
        self.layers = nn.ModuleList(TransformerLayer(cfg, i) for i in range(cfg.n_layer))
        self.norm = nn.RMSNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied input/output embeddings
        head_dim = cfg.n_embd // cfg.n_head
        inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
        angles = torch.outer(torch.arange(cfg.seq_len).float(), inv_freq)
        self.register_buffer('rope_cos', angles.cos(), persistent=False)
        self.register_buffer('rope_sin', angles.sin(), persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale the residual projections by depth
            if name.endswith('proj.weight'):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def forward(self, x_t, x0=None, delta=None, cache=None, loss_weights=None):
        """Logits (b, n, V) for the tokens x_t (b, n); with loss_weights (training), the diffusion
        loss instead. Training (x0 given, n = L): reads x_t ⊕ x0 (without x0's last block) under
        training_mask_mod; both halves use positions from 0. Inference (no x0): x_t is a chunk of
        whole blocks that starts where `cache` ends (at 0 without a cache); it attends to the cache
        and, block-causally, to itself. Its keys/values are written at the cache's end and stay
        there only if the caller then calls cache.advance(n) (the next chunk overwrites them
        otherwise). delta (b, n, d), optional: added to x_t's input embeddings (the hook RCD
        injects residuals through). loss_weights (b, n), optional: per-token weights of the
        cross-entropy against x0 (see loss_weights()); the loss is computed here so that
        torch.compile fuses it with the output head (and DDP sees one forward)."""
        b, n = x_t.shape
        start = cache.length if cache is not None else 0
        limit = self.cfg.seq_len if cache is None else min(self.cfg.seq_len, cache.max_len)
        if start + n > limit:
            raise ValueError(f'positions {start}..{start + n - 1} exceed the context of {limit} '
                             f'positions (seq_len={self.cfg.seq_len})')
        if x0 is not None:
            n_all = training_len(n, self.cfg.block_size)
            mask = training_mask(n, self.cfg.block_size, x_t.device, uses_flex(n_all, x_t.device))
            pos = torch.arange(n_all, device=x_t.device) % n
        else:  # positions from the cache's device-side start: the code a replayed CUDA graph runs
            pos = torch.arange(n, device=x_t.device) + (cache.start if cache is not None else 0)
            n_kv = cache.max_len if cache is not None else n
            mask = inference_mask(pos, n_kv, self.cfg.block_size)
        h = self.wte(x_t) if delta is None else self.wte(x_t) + delta.to(self.wte.weight.dtype)
        if x0 is not None:
            h = torch.cat((h, self.wte(x0[:, :n_all - n])), dim=1)
        cos, sin = self.rope_cos[pos], self.rope_sin[pos]
        for layer in self.layers:
            h = layer(h, pos, cos, sin, mask, cache)
        logits = self.lm_head(self.norm(h[:, :n]))  # x_t's logits only: the x0 half is context
        return logits if loss_weights is None else diffusion_loss(logits, x0, loss_weights)

    def configure_optimizer(self, weight_decay, lr, betas, device_type):
        """AdamW; weight decay on matrices only (not norms)."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{'params': [p for p in params if p.dim() >= 2], 'weight_decay': weight_decay},
                  {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}]
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=device_type == 'cuda')

    def flops_per_sequence(self):
        """Useful FLOPs of one training sequence, forward + backward (the x_t ⊕ x0 layout, counted
        honestly): 6 FLOPs per parameter per token for the 2L - B tokens through the transformer
        body, the output head on the L tokens of x_t only, and 12·d FLOPs per layer for each
        (query, key) pair the mask allows: L² pairs, about a quarter of the grid."""
        c, L = self.cfg, self.cfg.seq_len
        body = 12 * c.n_layer * c.n_embd ** 2
        head = c.vocab_size * c.n_embd
        pairs = L * L
        return 6 * body * training_len(L, c.block_size) + 6 * head * L \
            + 12 * c.n_layer * c.n_embd * pairs


# --------------------------------------------------------------------------------------------------
# The masked block-diffusion objective

def add_noise(x0, prompt_mask, block_size, mask_id, t_min, t_max, generator):
    """x_t: each block of each row draws a rate t in (t_min, t_max] and masks each non-prompt token
    with probability t. Returns (x_t, masked positions, per-token rate t)."""
    b, L = x0.shape
    u = torch.rand(b, L // block_size, device=x0.device, generator=generator)
    t = (t_max - (t_max - t_min) * u).repeat_interleave(block_size, dim=1)  # 1 - u lies in (0, 1]
    masked = (torch.rand(b, L, device=x0.device, generator=generator) < t) & ~prompt_mask
    return torch.where(masked, mask_id, x0), masked, t


def loss_weights(masked, t, prompt_mask, weighting):
    """Per-token weights of the cross-entropy: masked positions only. 'elbo': each weighted by 1/t
    and divided by the number of noisable tokens (the diffusion ELBO per token); 'mean': a plain
    mean over the masked positions."""
    if weighting == 'elbo':
        return masked / t / (~prompt_mask).sum().clamp(min=1)
    return masked / masked.sum().clamp(min=1)


def token_probs(logits, mask_id, temperature=1.0):
    """p = softmax(logits / T) over the tokens the model predicts: all but [MASK]. Float32:
    entropies of low-precision probabilities are noisy. The sampler's confidence, RCD's p."""
    logits = logits.float().clone()
    logits[..., mask_id] = float('-inf')
    return torch.softmax(logits / temperature, dim=-1)


def diffusion_loss(logits, x0, weights):
    """Σ weights · cross-entropy of the clean tokens x0 under logits (in float32: bf16
    log-probabilities are coarse)."""
    ce = F.cross_entropy(logits.float().flatten(0, 1), x0.flatten(), reduction='none').view_as(x0)
    return (ce * weights).sum()



# --------------------------------------------------------------------------------------------------
# The attention backend: FlexAttention (fused by torch.compile) for long training inputs on CUDA,
# SDPA with the dense mask everywhere else. Both read the same predicate; results/PERFORMANCE.md has
# the timings behind the switch.

FLEX_MIN_TOKENS = 1536  # shorter inputs (2L - B) use SDPA: a tie at 1024 tokens, flex ahead at 2048


def uses_flex(n_tokens, device):
    """Whether the training attention over n_tokens = 2L - B tokens is FlexAttention (else SDPA
    with the dense mask)."""
    return device.type == 'cuda' and n_tokens >= FLEX_MIN_TOKENS


@torch.compiler.disable  # built eagerly, once per shape, outside any compiled graph
@functools.lru_cache(maxsize=None)
def training_mask(seq_len, block_size, device, use_flex):
    """The training mask over the 2L - B positions: a FlexAttention BlockMask (CUDA) or a dense
    bool tensor (CPU)."""
    mod, n = training_mask_mod(seq_len, block_size), training_len(seq_len, block_size)
    if use_flex:
        return create_block_mask(mod, B=None, H=None, Q_LEN=n, KV_LEN=n, device=device)
    pos = torch.arange(n, device=device)
    return dense_mask(mod, pos, pos)


def inference_mask(q_pos, n_kv, block_size):
    """Queries at absolute positions q_pos (n_q,) against keys at positions 0..n_kv-1. Built from
    the position tensor on every call (a few tiny kernels), so a replayed CUDA graph follows a cache
    position held on the device."""
    kv_pos = torch.arange(n_kv, device=q_pos.device)
    return dense_mask(block_causal_mask_mod(block_size), q_pos, kv_pos)


@functools.cache
def compiled_flex_attention():
    """flex_attention is only fused when compiled; compiled on first use (importing the compiler
    costs seconds)."""
    return torch.compile(flex_attention, dynamic=False)


def attention(q, k, v, mask):
    """Scaled dot-product attention under a mask: a dense bool tensor (SDPA) or a flex BlockMask
    (FlexAttention)."""
    if isinstance(mask, BlockMask):  # inside a compiled model flex_attention is fused as it is
        flex = flex_attention if torch.compiler.is_compiling() else compiled_flex_attention()
        return flex(q, k, v, block_mask=mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
