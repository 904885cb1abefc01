"""GPU paths against the CPU reference (skipped without CUDA; run on a GPU machine): the compiled
training pass (FlexAttention), the compiled residual of the sampler and stage 2, stage 2's rollout
on the compiled model, and bf16 autocast against float32. The CUDA-graph sampler is checked in
test_sample.py and FlexAttention alone in test_model.py."""
import copy

import pytest
import torch

import rcd
from model import (FLEX_MIN_TOKENS, BlockDiffusionLM, ModelConfig, loss_weights, training_len,
                   uses_flex)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='CUDA only')


def model_pair(seq_len=64):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50, mask_id=49, seq_len=seq_len, block_size=8, n_layer=2, n_head=2,
                      n_embd=64)
    cpu = BlockDiffusionLM(cfg)
    return cfg, cpu, copy.deepcopy(cpu).cuda()


# FlexAttention; SDPA with the dense mask
@pytest.mark.parametrize('seq_len', [FLEX_MIN_TOKENS, 48])
def test_compiled_training_pass_matches_the_cpu_path(seq_len):
    cfg, cpu, gpu = model_pair(seq_len)
    assert uses_flex(training_len(seq_len, 8), torch.device('cuda')) == (seq_len > 48)
    x0 = torch.randint(0, 48, (4, seq_len))
    x_t = torch.where(torch.rand(4, seq_len) < 0.5, cfg.mask_id, x0)
    w = loss_weights(x_t == cfg.mask_id, torch.full((4, seq_len), 0.5),
                     torch.zeros(4, seq_len, dtype=torch.bool), 'elbo')
    want = cpu(x_t, x0, loss_weights=w)
    got = torch.compile(gpu)(x_t.cuda(), x0.cuda(), loss_weights=w.cuda())
    assert torch.allclose(got.cpu(), want, rtol=1e-3, atol=1e-4)
    want.backward()
    got.backward()
    for (name, p), q in zip(cpu.named_parameters(), gpu.parameters()):
        assert (q.grad.cpu() - p.grad).norm() <= 1e-2 * p.grad.norm(), name


@pytest.mark.parametrize('temperature', [1.0, 0.7])
def test_compiled_residual_matches_eager(temperature):
    torch.manual_seed(0)
    logits, emb = torch.randn(8, 16, 50) * 3, torch.randn(50, 32)
    remasked = torch.rand(8, 16) < 0.6
    want = rcd.residual(logits, emb, 49, remasked, 'entropy', temperature=temperature)
    got = torch.compile(rcd.residual)(logits.cuda(), emb.cuda(), 49, remasked.cuda(), 'entropy',
                                      temperature=temperature)
    assert torch.allclose(got.cpu(), want, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_stays_close_to_float32():
    cfg, _, gpu = model_pair()
    x = torch.randint(0, 50, (4, 64), device='cuda')
    with torch.no_grad():
        full = gpu(x).float()
        with torch.autocast('cuda', dtype=torch.bfloat16):
            half = gpu(x).float()
    assert (half - full).abs().max() < 0.05 * full.abs().max()
    assert (half.argmax(-1) == full.argmax(-1)).float().mean() > 0.95


def test_compiled_rollout_matches_the_cpu_path():
    # stage 2's rollout on the compiled CUDA model: each step runs a different number of rows (as
    # training does)
    cfg, cpu, gpu = model_pair()
    # confident predictions: commits far from the thresholds, so both paths commit alike
    with torch.no_grad():
        for m in (cpu, gpu):
            m.lm_head.weight.mul_(40)
    x0 = torch.randint(0, 48, (12, 64))
    prompt = torch.zeros_like(x0, dtype=torch.bool)
    prompt[:, :8] = True
    start = torch.where(prompt, x0, cfg.mask_id)
    steps, threshold = torch.arange(12) % 5, torch.linspace(0.9, 0.999, 12)
    reads = torch.arange(12) % 3 != 0  # a third of the rows read no residual (rollout_plain)
    outs = []
    for m, dev in ((cpu, 'cpu'), (torch.compile(gpu), 'cuda')):
        outs.append(rcd.rollout(m, x0.to(dev), start.to(dev), prompt.to(dev), steps.to(dev),
                                threshold.to(dev), reads.to(dev), 'entropy'))
    (x_cpu, _, t_cpu, logits_cpu, remasked_cpu), (x_gpu, _, t_gpu, logits_gpu, remasked_gpu) = outs
    assert not remasked_cpu[~reads].any() and not remasked_gpu[~reads.cuda()].any()
    assert (x_gpu.cpu() == x_cpu).float().mean() > 0.99 and (x_cpu != start).any()
    assert torch.allclose(t_gpu.cpu(), t_cpu, atol=0.05)
    assert (logits_gpu.cpu().argmax(-1) == logits_cpu.argmax(-1)).float().mean() > 0.99
