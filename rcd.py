"""
Residual Context Diffusion (RCD), SPEC §4: what remasking throws away, kept as a residual for the next step.

At a denoising step the model predicts a distribution p_i for every masked position i of the current block. The
sampler commits a few of them; the rest are *remasked*. A plain block-diffusion sampler feeds [MASK] back at those
positions, so the next step starts from nothing there. RCD feeds back what the model already computed:

    soft token    r_i = Σ_v p_i(v) · E[v] = p_i E              (E: the model's own input embedding matrix)
    weight        α_i = H(p_i) / log V                         (normalized entropy: 0 = certain, 1 = uniform)
    next input    e_i = (1 − α_i) · E[MASK] + α_i · r_i         (instead of E[MASK])

A remasked position reads E[MASK] as its token embedding already, so the injection is the additive change
e_i − E[MASK] = α_i · (r_i − E[MASK]), handed to model.forward(delta=...). Committed positions and positions with no
prediction yet (a block's first step, unless sample.py's first_step seeds one) get no change: E[token] and E[MASK].
The state carried from step to step is this delta for the current block; it is recomputed after every step and
dropped when the block is finished.

Everything here is a pure function of tensors, used by both train_stage2.py (p from the frozen reference model) and
sample.py (p from the model's own previous step).
"""
import math

import torch

ALPHA_MODES = ('entropy', 'confidence', 'constant', 'none')


def residual_probs(logits, mask_id, temperature=1.0):
    """p_i = softmax(logits_i / T_res) over the vocabulary without [MASK] (SPEC §4: the distribution a residual is
    built from). Returned in float32: entropies of low-precision probabilities are noisy."""
    logits = logits.float().clone()
    logits[..., mask_id] = float('-inf')  # the model never predicts [MASK]; it gets probability 0
    return torch.softmax(logits / temperature, dim=-1)


def soft_tokens(probs, embedding):
    """SPEC §4 residual projection: r_i = Σ_v p_i(v)·E[v], the probability-weighted average of the input
    embeddings, one (V × d) matmul. probs (..., V), embedding E (V, d) -> (..., d)."""
    return probs.to(embedding.dtype) @ embedding


def residual_weight(probs, mode, constant=0.5):
    """SPEC §4 weight α_i of the residual at each position, by `mode`:
    'entropy'    α = H(p)/log V, V the number of tokens p can put mass on (all but [MASK]): the paper's default,
                 an uncertain position leans more on its residual;
    'confidence' α = max_v p(v);
    'constant'   α = constant;
    'none'       α = 0: no residual at all, exactly the plain sampler (the baseline of every ablation)."""
    if mode == 'entropy':
        support = probs.shape[-1] - 1  # [MASK] has probability 0
        return torch.special.entr(probs).sum(-1) / math.log(support)
    if mode == 'confidence':
        return probs.amax(-1)
    if mode == 'constant':
        return torch.full(probs.shape[:-1], float(constant), device=probs.device)
    if mode == 'none':
        return torch.zeros(probs.shape[:-1], device=probs.device)
    raise ValueError(f"alpha_mode='{mode}' must be one of {', '.join(ALPHA_MODES)}")


def residual_inputs(probs, embedding, mask_id, alpha):
    """SPEC §4 injected input embedding at every position: e = (1 − α)·E[MASK] + α·r, α (...) of residual_weight.
    (..., V) -> (..., d). The explicit form of the interpolation; residual_delta() is what the model is given."""
    alpha = alpha[..., None].to(embedding.dtype)
    return (1 - alpha) * embedding[mask_id] + alpha * soft_tokens(probs, embedding)


def residual_delta(probs, embedding, mask_id, remasked, alpha):
    """SPEC §4 injection as an additive change to the input embeddings: e − E[MASK] at `remasked` positions
    (bool, the positions that stay [MASK] into the next step), 0 everywhere else. (b, n, V) -> (b, n, d)."""
    delta = residual_inputs(probs, embedding, mask_id, alpha) - embedding[mask_id]
    return delta * remasked[..., None].to(delta.dtype)


def logits_residual(logits, embedding, mask_id, remasked, mode, constant=0.5, temperature=1.0):
    """residual_delta of the distributions p = softmax(logits): what both stages and the sampler inject.
    T_res = temperature (paper Alg. 2, inference only): α is the entropy of softmax(logits / T_res) while the soft
    token is built from the untempered p, so T_res moves how much residual a position gets, not what it says.
    (b, n, V) -> (b, n, d). Compiled on CUDA, its passes over the (b, n, V) probabilities fuse into a few kernels."""
    probs = residual_probs(logits, mask_id)
    tempered = probs if temperature == 1.0 else residual_probs(logits, mask_id, temperature)
    return residual_delta(probs, embedding, mask_id, remasked, residual_weight(tempered, mode, constant))


def dirichlet_logits(shape, mask_id, generator=None, device=None):
    """Logits of p ~ Dirichlet(1, ..., 1) over the tokens other than [MASK] (paper Table 5's non-informative first-step
    residual; the paper gives no concentration, 1 is the uniform distribution over the simplex). shape (..., V).
    A Dirichlet(1) draw is a vector of Exp(1) draws normalized, so its logits are their logs."""
    u = torch.rand(shape, generator=generator, device=device).clamp_min(1e-12)
    return torch.log(-torch.log(u))  # log of an Exp(1) draw; [MASK] is dropped by residual_probs


def step_aligned(x_t, visible, mask_id, rate, generator=None):
    """Stage 2's step-aligned reference input (not in the paper; closes the gap of SPEC §5): x_t with each `visible`
    position (bool: unmasked, not prompt) also masked with probability `rate`. At inference a residual comes from the
    previous step, which read the tokens that step then committed as [MASK]; this hands the reference that view."""
    extra = (torch.rand(x_t.shape, generator=generator, device=x_t.device) < rate) & visible
    return torch.where(extra, mask_id, x_t)


def reference_residual(reference, embedding, mask_id, x_t, x0, remasked, mode, constant=0.5, n_rows=None):
    """Stage 2 (SPEC §5): the residual inputs (delta) the target reads. The frozen reference model reads x_t (or, for
    a step-aligned reference, x_t with more positions masked) and predicts its masked positions (no gradient: no
    backpropagation through denoising steps); the `remasked` positions get those predictions as residuals, built with
    the target's own `embedding`. Only the first n_rows rows (all by default) get residuals, so only they go through
    the reference; the other rows get delta 0 (plain [MASK]). (b, L) -> (b, L, d)."""
    n = x_t.shape[0] if n_rows is None else n_rows
    with torch.no_grad():
        logits = reference(x_t[:n], x0[:n])
    delta = logits_residual(logits, embedding, mask_id, remasked[:n], mode, constant)
    return torch.cat((delta, delta.new_zeros(x_t.shape[0] - n, *delta.shape[1:])))
