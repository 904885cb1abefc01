"""
Residual Context Diffusion (RCD): what remasking throws away, kept as a residual for the next step.

At a denoising step the model predicts a distribution p_i for every masked position i of the
current block. The sampler commits a few of them; the rest are *remasked*. A plain sampler feeds
[MASK] back at those positions, so the next step starts from nothing there. RCD feeds back what
the model already computed (the paper's Eq. 1-3):

    residual     Δ_i = Σ_v p_i(v) · E[v] = p_i E          (E: the model's own input embeddings)
    weight       α_i = H(p_i) / log V                    (normalized entropy: 0 certain, 1 uniform)
    next input   e_i = (1 − α_i) · E[MASK] + α_i · Δ_i    (instead of E[MASK])

The model reads E[MASK] at a masked position already, so it is handed the change e_i − E[MASK]
(model.forward's `delta`); committed positions, and positions with no prediction yet, get none.
Used by train_stage2.py and sample.py alike. The rollout at the end (not in the paper) draws stage
2's training states the way threshold decoding draws them.
"""
import math

import torch

from model import token_probs

ALPHA_MODES = ('entropy', 'confidence', 'constant', 'none')  # the paper's Fig. 5 ablation, + none


def residual_weight(probs, mode, constant=0.5, scale=1.0):
    """α_i of each position: scale × the weight of `mode`, capped at 1:
    'entropy'     H(p) / log V, V the tokens p can put mass on (all but [MASK]): the paper;
    'confidence'  max_v p(v);
    'constant'    constant;
    'none'        0: no residual at all, exactly the plain sampler."""
    if mode == 'entropy':
        support = probs.shape[-1] - 1  # [MASK] has probability 0
        weight = torch.special.entr(probs).sum(-1) / math.log(support)
    elif mode == 'confidence':
        weight = probs.amax(-1)
    elif mode == 'constant':
        weight = torch.full(probs.shape[:-1], float(constant), device=probs.device)
    else:  # 'none'; modes are checked before
        weight = torch.zeros(probs.shape[:-1], device=probs.device)
    return (scale * weight).clamp(max=1.0)


def residual(logits, embedding, mask_id, remasked, mode, constant=0.5, scale=1.0,
             temperature=1.0):
    """The change e − E[MASK] (b, n, d) at the `remasked` positions (bool (b, n)), 0 elsewhere,
    from a step's logits (b, n, V). scale multiplies α (capped at 1): a lighter residual, as at
    the paper's vocabulary, where the same uncertainty gives a smaller H(p) / log V (the README's
    result). temperature is T_res (inference only, the paper's Alg. 2): α is read from
    softmax(logits / T_res) while Δ keeps the untempered p."""
    probs = token_probs(logits, mask_id)
    tempered = probs if temperature == 1.0 else token_probs(logits, mask_id, temperature)
    alpha = residual_weight(tempered, mode, constant, scale)[..., None].to(embedding.dtype)
    delta_soft = probs.to(embedding.dtype) @ embedding  # Eq. 1: Δ = p E
    e = (1 - alpha) * embedding[mask_id] + alpha * delta_soft  # Eq. 2
    return (e - embedding[mask_id]) * remasked[..., None].to(e.dtype)


def dirichlet_logits(shape, generator=None, device=None):
    """Logits of p ~ Dirichlet(1, ..., 1) over the tokens: the non-informative first-step
    residual of the paper's Table 5 (it names no concentration; 1 is uniform over the simplex).
    A Dirichlet(1) draw is Exp(1) draws normalized."""
    u = torch.rand(shape, generator=generator, device=device).clamp_min(1e-12)
    return torch.log(-torch.log(u))  # log of an Exp(1) draw; [MASK] is dropped by token_probs


# --------------------------------------------------------------------------------------------------
# Stage 2's rollout (the README's result, not in the paper): training states and residuals drawn
# from the target itself under the threshold commit rule, as decoding draws them.

def stratified_steps(n, high, device=None):
    """n rollout step counts, 0..high in equal groups. The rows are drawn at random, so each row's
    count is still uniform; fixed counts give each rollout step the same batch size every time (no
    recompiles of the compiled model)."""
    return torch.arange(n, device=device) * (high + 1) // max(n, 1)


def rollout_rows(x0, prompt_mask, mask_id, max_steps, plain=0.0, generator=None):
    """How stage 2 sets up its rollout rows: (start, n_steps, threshold, reads_residual). Rows start
    at a block's start, all [MASK]; step counts are stratified over 0..max_steps; thresholds are
    1 − 10^-u, u ~ U(1, 4); a `plain` share of the rows, spread evenly, reads no residual."""
    n, device = len(x0), x0.device
    start = torch.where(prompt_mask, x0, mask_id)
    n_steps = stratified_steps(n, max_steps, device)
    threshold = 1 - 10 ** -(1 + 3 * torch.rand(n, device=device, generator=generator))
    row = torch.arange(n, device=device)
    reads = (row * plain).floor() == ((row + 1) * plain).floor()
    return start, n_steps, threshold, reads


@torch.no_grad()
def rollout(model, x0, x_t, prompt_mask, n_steps, threshold, reads_residual, alpha_mode,
            alpha_constant=0.5, alpha_scale=1.0):
    """From the state x_t (all [MASK] is a block's start), row r takes n_steps[r] no-grad
    denoising steps of `model`, each fed the previous step's residual: commit the masked positions
    whose top probability reaches threshold[r] (at least the most confident one of each block)
    with their true tokens, and keep the rest's predictions for the next step. Rows where
    reads_residual (b,) is False never read one. Returns (x_t, masked, t, logits, remasked): the
    state the next step reads, its masked positions, each block's masked fraction, and what its
    residual is built from."""
    b, L = x0.shape
    B, mask_id, embedding = model.cfg.block_size, model.cfg.mask_id, model.wte.weight
    order = n_steps.argsort(descending=True, stable=True)  # step s runs the first rows (> s steps)
    x0, threshold, reads = x0[order], threshold[order], reads_residual[order]
    x_t = x_t[order]  # a copy: the caller's x_t stays as it was
    logits = torch.zeros(b, L, model.cfg.vocab_size, device=x0.device)
    remasked = torch.zeros_like(prompt_mask)  # a block's first step: no residual
    counts = n_steps.tolist()  # one read back to the host per rollout
    for k in [sum(c > s for c in counts) for s in range(max(counts, default=0))]:  # rows at step s
        masked = x_t[:k] == mask_id
        delta = residual(logits[:k], embedding, mask_id, remasked[:k], alpha_mode, alpha_constant,
                         alpha_scale)
        logits[:k] = model(x_t[:k], x0[:k], delta).float()
        conf = token_probs(logits[:k], mask_id).amax(-1).masked_fill(~masked, -1.0)
        conf = conf.view(k, L // B, B)
        commit = (conf >= threshold[:k, None, None]) | (conf == conf.amax(-1, keepdim=True))
        commit = commit.view(k, L) & masked
        x_t[:k] = torch.where(commit, x0[:k], x_t[:k])
        remasked[:k] = masked & ~commit & reads[:k, None]
    back = order.argsort()  # the caller's row order
    x_t, logits, remasked = x_t[back], logits[back], remasked[back]
    masked = x_t == mask_id
    noisable = (~prompt_mask).view(b, L // B, B).sum(-1).clamp(min=1)
    t = (masked.view(b, L // B, B).sum(-1) / noisable).clamp(min=1 / B).repeat_interleave(B, dim=1)
    return x_t, masked, t, logits, remasked
