"""Masks against brute-force predicates, attention back ends, the KV cache, the autoregressive
special case, the loss."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from model import (BlockDiffusionLM, KVCache, ModelConfig, add_noise, apply_rope, attention,
                   diffusion_loss, inference_mask, loss_weights, training_len, training_mask,
                   training_mask_mod)

CPU = torch.device('cpu')


def tiny_model(**kw):
    torch.manual_seed(0)
    args = dict(vocab_size=11, mask_id=10, seq_len=24, block_size=4, n_layer=2, n_head=2, n_embd=32)
    return BlockDiffusionLM(ModelConfig(**{**args, **kw})).eval()


@pytest.mark.parametrize('L,B', [(12, 4), (16, 16), (8, 1), (24, 8)])
def test_training_mask_matches_spec(L, B):
    mask = training_mask(L, B, CPU, False)
    assert mask.shape == (2 * L - B, 2 * L - B)  # x_0's last block is no x_t block's context
    for q in range(2 * L - B):
        for k in range(2 * L - B):
            q_clean, k_clean = q >= L, k >= L
            bq, bk = (q % L) // B, (k % L) // B
            if not q_clean and not k_clean:
                want = bq == bk          # x_t sees its own noised block
            elif not q_clean and k_clean:
                want = bk < bq           # ... and the clean blocks before it
            elif q_clean and k_clean:
                want = bk <= bq          # x_0 is block-causal
            else:
                want = False             # x_0 never sees x_t
            assert bool(mask[q, k]) == want, (q, k)
    assert mask.float().sum() == L * L  # the pair count flops_per_sequence() assumes


@pytest.mark.parametrize('n_q,offset,n_kv,B', [(12, 0, 12, 4), (4, 8, 12, 4), (4, 8, 24, 4),
                                               (5, 0, 5, 1), (6, 3, 15, 3)])
def test_inference_mask_is_block_causal(n_q, offset, n_kv, B):
    """Queries at positions offset.. against a key buffer of n_kv positions: earlier and own blocks
    only."""
    mask = inference_mask(offset + torch.arange(n_q), n_kv, B)
    want = torch.zeros(n_q, n_kv, dtype=torch.bool)
    for q in range(n_q):  # a query sees the key prefix that ends where its own block ends
        block_end = B
        while block_end <= offset + q:
            block_end += B
        want[q, :block_end] = True
    assert torch.equal(mask, want)


def test_block_size_one_is_causal():
    causal = torch.ones(10, 10, dtype=torch.bool).tril()
    assert torch.equal(inference_mask(torch.arange(10), 10, 1), causal)
    m = training_mask(6, 1, CPU, False)
    # an x_t token sees only itself ...
    assert torch.equal(m[:6, :6], torch.eye(6, dtype=torch.bool))
    # ... and the clean strict prefix
    assert torch.equal(m[:6, 6:], torch.ones(6, 5, dtype=torch.bool).tril(-1))


@pytest.mark.parametrize('device', ['cpu', pytest.param('cuda', marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason='CUDA only'))])
# unfused on CPU on purpose
@pytest.mark.filterwarnings('ignore:flex_attention called without torch.compile')
def test_flex_attention_agrees_with_sdpa(device):
    L, B = 64, 8
    torch.manual_seed(0)
    n = training_len(L, B)
    q, k, v = (torch.randn(2, 2, n, 16, device=device) for _ in range(3))
    mask = training_mask(L, B, torch.device(device), False)
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if device == 'cuda':  # the model's own path: compiled FlexAttention with the cached BlockMask
        flex = attention(q, k, v, training_mask(L, B, torch.device(device), True))
    else:  # FlexAttention runs (unfused) on CPU too: the same predicate drives both back ends
        block_mask = create_block_mask(training_mask_mod(L, B), None, None, n, n, device='cpu')
        flex = flex_attention(q, k, v, block_mask=block_mask)
    assert torch.allclose(flex, dense, atol=2e-5 if device == 'cpu' else 2e-3)


def test_kv_cache_matches_full_forward():
    model = tiny_model()
    x = torch.randint(0, 10, (3, 24))
    full = model(x)
    # a buffer of 16 positions: the unwritten ones must stay invisible
    cache = KVCache(model.cfg.n_layer, 16, CPU)
    first = model(x[:, :8], cache=cache)  # a two-block chunk (block-causal inside), kept
    cache.advance(8)
    # a step with other tokens, overwritten below
    other = model(x[:, 12:16], cache=cache)
    # one block read against the cache, not stored
    second = model(x[:, 8:12], cache=cache)
    assert cache.length == 8 and int(cache.start) == 8
    third = model(x[:, 8:12], cache=cache)
    cache.advance(4)
    assert cache.length == 12 and int(cache.start) == 12
    assert torch.allclose(first, full[:, :8], atol=1e-5)
    assert torch.allclose(second, full[:, 8:12], atol=1e-5) and torch.allclose(third, second)
    assert not torch.allclose(other, second)
    with pytest.raises(ValueError, match='exceed the context'):
        model(x[:, 12:20], cache=cache)  # past the buffer's 16 positions


def test_training_logits_equal_per_block_inference():
    """The x_t ⊕ x0 pass equals denoising each block separately with its clean prefix."""
    model = tiny_model()
    x0 = torch.randint(0, 10, (2, 24))
    x_t = torch.where(torch.rand(2, 24) < 0.5, 10, x0)
    train_logits = model(x_t, x0)
    for blk in range(6):
        s, e = 4 * blk, 4 * blk + 4
        ref = model(torch.cat((x0[:, :s], x_t[:, s:e]), dim=1))[:, s:e]
        assert torch.allclose(train_logits[:, s:e], ref, atol=1e-5), blk


def test_delta_is_added_to_input_embeddings():
    model = tiny_model()
    x = torch.randint(0, 10, (1, 8))
    delta = torch.zeros(1, 8, 32)
    delta[0, 5] = torch.randn(32)
    injected = model(x, delta=delta)
    # the same, done by hand
    hook = model.wte.register_forward_hook(lambda mod, inp, out: out + delta)
    by_hand = model(x)
    hook.remove()
    assert torch.allclose(injected, by_hand, atol=1e-6)
    assert torch.allclose(injected[0, :4], model(x)[0, :4])  # block 0 does not see position 5
    assert not torch.allclose(injected[0, 4:], model(x)[0, 4:])


def test_bad_block_size_is_a_clear_error():
    with pytest.raises(ValueError, match='block_size=5 must divide seq_len=24'):
        ModelConfig(seq_len=24, block_size=5)


def test_add_noise_never_masks_the_prompt_and_follows_the_rate():
    x0 = torch.randint(0, 10, (64, 96))
    prompt = torch.zeros_like(x0, dtype=torch.bool)
    prompt[:, :20] = True
    g = torch.Generator().manual_seed(0)
    x_t, masked, t = add_noise(x0, prompt, 8, 10, 0.3, 0.8, g)
    assert not masked[:, :20].any() and torch.equal(x_t == 10, masked)
    assert ((t > 0.3) & (t <= 0.8)).all()
    assert (t.view(64, 12, 8) == t.view(64, 12, 8)[..., :1]).all()  # one t per block
    assert abs(masked[:, 20:].float().mean().item() - 0.55) < 0.02


def test_loss_on_a_hand_made_batch():
    x0 = torch.tensor([[1, 2, 0, 1]])
    logits = torch.zeros(1, 4, 3)
    logits[0, 1, 2] = math.log(3.0)  # p(2) = 3/5 at position 1
    masked = torch.tensor([[False, True, True, False]])
    t = torch.tensor([[0.5, 0.5, 0.25, 0.25]])
    prompt = torch.tensor([[True, False, False, False]])
    # position 1 (p = 3/5), position 2 (uniform over 3)
    ce1, ce2 = -math.log(3 / 5), -math.log(1 / 3)
    elbo = diffusion_loss(logits, x0, loss_weights(masked, t, prompt, 'elbo'))
    # 3 noisable tokens
    assert math.isclose(elbo.item(), (ce1 / 0.5 + ce2 / 0.25) / 3, rel_tol=1e-5)
    mean = diffusion_loss(logits, x0, loss_weights(masked, t, prompt, 'mean'))
    assert math.isclose(mean.item(), (ce1 + ce2) / 2, rel_tol=1e-5)


def test_the_loss_of_a_batch_of_rows_by_hand():
    """Rows of unequal prompts and masks: 'elbo' sums ce / t over the batch's masked tokens and
    divides by the batch's noisable tokens; 'mean' averages over the batch's masked tokens."""
    g = torch.Generator().manual_seed(0)
    x0, logits = torch.randint(0, 3, (3, 6), generator=g), torch.randn(3, 6, 3, generator=g)
    prompt = torch.tensor([[True] * 2 + [False] * 4, [False] * 6, [True] * 5 + [False]])
    masked = torch.rand(3, 6, generator=g) < 0.6
    masked[:, -1] = True
    masked &= ~prompt
    t = torch.tensor([[0.5] * 6, [0.25] * 6, [1.0] * 6])
    ce = -logits.log_softmax(-1).gather(-1, x0[..., None]).squeeze(-1)
    hand = [(ce[r, i].item(), t[r, i].item()) for r in range(3) for i in range(6) if masked[r, i]]
    noisable = 4 + 6 + 1
    elbo = diffusion_loss(logits, x0, loss_weights(masked, t, prompt, 'elbo'))
    assert math.isclose(elbo.item(), sum(c / w for c, w in hand) / noisable, rel_tol=1e-5)
    mean = diffusion_loss(logits, x0, loss_weights(masked, t, prompt, 'mean'))
    assert math.isclose(mean.item(), sum(c for c, _ in hand) / len(hand), rel_tol=1e-5)


@pytest.mark.parametrize('u,want', [(0.0, 1.0), (1 - 2 ** -24, 2 ** -24)])
def test_the_noise_rate_stays_in_its_range_at_the_ends_of_the_draw(u, want, monkeypatch):
    """t lies in (t_min, t_max]: a draw of exactly 0 gives t_max, never a rate of 0 (an infinite
    weight 1/t); the largest draw below 1 gives a rate just above t_min."""
    real = torch.rand
    draws = [torch.full((2, 2), u)]  # the first draw picks each block's rate
    monkeypatch.setattr(torch, 'rand', lambda *a, **k: draws.pop() if draws else real(*a, **k))
    x0, prompt = torch.zeros(2, 8, dtype=torch.long), torch.zeros(2, 8, dtype=torch.bool)
    _, masked, t = add_noise(x0, prompt, 4, 10, 0.0, 1.0, torch.Generator().manual_seed(0))
    assert torch.allclose(t, torch.full((2, 8), want)) and (t > 0).all()
    assert torch.isfinite(loss_weights(masked, t, prompt, 'elbo')).all()


def test_flops_count():
    """Counted independently: torch's FLOP counter over a real training pass (forward + backward)
    for the matmuls, plus 12·d FLOPs per layer for each (query, key) pair the training mask allows,
    counted on the mask itself."""
    from torch.utils.flop_counter import FlopCounterMode
    cfg = ModelConfig(vocab_size=100, seq_len=32, block_size=8, n_layer=2, n_head=2, n_embd=16)
    model = BlockDiffusionLM(cfg)
    x = torch.randint(0, 99, (1, 32))
    with FlopCounterMode(display=False) as counter:
        model(x, x, loss_weights=torch.ones(1, 32)).backward()
    matmuls = counter.get_flop_counts()['Global'][torch.ops.aten.mm]
    pairs = int(training_mask(32, 8, CPU, False).sum())
    assert model.flops_per_sequence() == matmuls + 12 * cfg.n_embd * cfg.n_layer * pairs


def test_rotary_positions_rotate_so_attention_sees_relative_position():
    model = BlockDiffusionLM(ModelConfig(seq_len=32, block_size=8, n_layer=1, n_head=2, n_embd=16))
    cos, sin = model.rope_cos, model.rope_sin
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(i, j):  # the attention logit of a query at position i and a key at position j
        return float((apply_rope(q, cos[i:i + 1], sin[i:i + 1])
                      * apply_rope(k, cos[j:j + 1], sin[j:j + 1])).sum())
    assert score(3, 1) == pytest.approx(score(10, 8), abs=1e-5)  # shifted together: the same
    assert score(0, 0) == pytest.approx(float((q * k).sum()), abs=1e-5)
    assert abs(score(3, 1) - score(3, 2)) > 1e-3  # but the distance matters
    rotated = apply_rope(q, cos[5:6], sin[5:6])
    # a rotation keeps the length
    assert float(rotated.norm()) == pytest.approx(float(q.norm()), rel=1e-5)
