"""RCD: the residual math against a hand computation, α = 0 is the baseline sampler, stage 2 trains
only the target, resumes exactly and refuses incompatible checkpoints."""
import json
import math
import os
import runpy
import sys

import pytest
import torch

import rcd
import checkpoint
from conftest import ROOT, TINY, run_in_process, run_script
from model import BlockDiffusionLM, ModelConfig
from conftest import decode

# a vocabulary of 3 ordinary tokens + [MASK] (id 3), 2-dimensional embeddings
E = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, -1.0]])
MASK = 3


def test_residual_math_by_hand():
    # position 0: p = (0.5, 0.25, 0.25), its [MASK] logit ignored; position 1: uniform over the 3
    # tokens
    logits = torch.tensor([[[math.log(0.5), math.log(0.25), math.log(0.25), 7.0],
                            [0.0, 0.0, 0.0, 0.0]]])
    before = logits.clone()
    p = rcd.token_probs(logits, MASK)
    assert torch.allclose(p[0, 0], torch.tensor([0.5, 0.25, 0.25, 0.0]))
    # the caller's logits (the sampler reuses them) are left alone
    assert torch.equal(logits, before)
    h = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))  # = 1.5 log 2
    alpha = rcd.residual_weight(p, 'entropy')
    assert torch.allclose(alpha, torch.tensor([[h / math.log(3), 1.0]]))
    assert torch.allclose(rcd.residual_weight(p, 'confidence'), torch.tensor([[0.5, 1 / 3]]))
    assert torch.allclose(rcd.residual_weight(p, 'constant', 0.3), torch.tensor([[0.3, 0.3]]))
    assert torch.equal(rcd.residual_weight(p, 'none'), torch.zeros(1, 2))
    assert torch.allclose(rcd.residual_weight(p, 'constant', 0.3, scale=0.5),
                          torch.tensor([[0.15, 0.15]]))
    assert torch.equal(rcd.residual_weight(p, 'constant', 0.3, scale=4.0), torch.ones(1, 2))
    # Δ = p E = 0.5·[1,0] + 0.25·[0,1] + 0.25·[1,1] = [0.75, 0.5]; e = (1 - α)·E[MASK] + α·Δ
    a = h / math.log(3)
    e0 = (1 - a) * torch.tensor([-1.0, -1.0]) + a * torch.tensor([0.75, 0.5])
    delta = rcd.residual(logits, E, MASK, torch.tensor([[True, False]]), 'entropy')
    assert torch.allclose(delta[0, 0], e0 - E[MASK]) and torch.equal(delta[0, 1], torch.zeros(2))
    # the second position is remasked too: uniform p, α = 1, so e = Δ = [2/3, 2/3]
    both = rcd.residual(logits, E, MASK, torch.tensor([[True, True]]), 'entropy')
    assert torch.allclose(both[0, 1], torch.tensor([2 / 3, 2 / 3]) - E[MASK])


def test_residual_temperature_moves_alpha_not_the_soft_token():
    """Paper Alg. 2: α from softmax(z / T_res), the soft token from the untempered softmax(z)."""
    logits = torch.tensor([[[2.0, 1.0, 0.0, 5.0]]])
    p = torch.softmax(torch.tensor([2.0, 1.0, 0.0]), 0)
    cold = torch.softmax(torch.tensor([4.0, 2.0, 0.0]), 0)  # T_res = 0.5
    alpha = float(-(cold * cold.log()).sum() / math.log(3))
    want = alpha * (p @ E[:3] - E[MASK])
    got = rcd.residual(logits, E, MASK, torch.tensor([[True]]), 'entropy', temperature=0.5)
    assert torch.allclose(got[0, 0], want)
    warm = rcd.residual(logits, E, MASK, torch.tensor([[True]]), 'entropy', temperature=2.0)
    # a higher T_res: more entropy, more residual, the same direction
    assert warm.norm() > got.norm()
    assert torch.allclose(warm[0, 0] / warm.norm(), got[0, 0] / got.norm())


def test_dirichlet_first_step_is_uniform_over_the_simplex():
    logits = rcd.dirichlet_logits((20000, 4), torch.Generator().manual_seed(0))
    p = rcd.token_probs(logits, MASK)
    assert torch.allclose(p.sum(-1), torch.ones(20000)) and (p[:, MASK] == 0).all()
    k = 3  # Dirichlet(1, 1, 1): each coordinate is Beta(1, 2), mean 1/3, variance 2/36
    assert torch.allclose(p[:, :k].mean(0), torch.full((k,), 1 / k), atol=0.01)
    variance = (k - 1) / (k * k * (k + 1))
    assert torch.allclose(p[:, :k].var(0), torch.full((k,), variance), atol=0.005)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=11, mask_id=10, seq_len=32, block_size=4, n_layer=2, n_head=2,
                      n_embd=32)
    return BlockDiffusionLM(cfg).eval()


@pytest.mark.parametrize('rule', [dict(tokens_per_step=1), dict(tokens_per_step=2),
                                  dict(threshold=0.4)])
def test_alpha_zero_is_the_baseline_sampler(counting_model, rule):
    prompt = torch.randint(0, 9, (3, 5))
    base = decode(counting_model, prompt, 20, **rule)
    none = decode(counting_model, prompt, 20, alpha_mode='none', **rule)
    assert torch.equal(base[0], none[0]) and torch.equal(base[1], none[1])
    if 'tokens_per_step' in rule:  # and the residual does change what later steps predict
        rcd_out = decode(counting_model, prompt, 20, alpha_mode='entropy', **rule)
        assert not torch.equal(base[0], rcd_out[0])


def test_residuals_reach_only_remasked_positions_of_later_steps():
    model = tiny_model()
    calls, forward = [], model.forward

    def spy(x_t, x0=None, delta=None, cache=None):
        calls.append((x_t.clone(), None if delta is None else delta.clone()))
        return forward(x_t, x0, delta, cache)
    model.forward = spy
    decode(model, torch.randint(0, 9, (2, 4)), 12, tokens_per_step=1, alpha_mode='entropy')
    # denoising steps; a cache fill reads a finished block
    steps = [(x, d) for x, d in calls if (x == 10).any()]
    assert len(steps) == 3 * 4  # 3 blocks of 4, 4 steps each
    for i, (x, delta) in enumerate(steps):
        step = i % 4
        if step == 0:
            assert delta is None  # a block's first step has no residual yet
        else:
            carries = delta.abs().sum(-1) > 0
            # exactly the positions still [MASK]
            assert carries.any() and torch.equal(carries, x == 10)


def spy_on(model):
    """Record (tokens, delta, logits) of every forward pass of `model` (a denoising step or a cache
    fill)."""
    calls, forward = [], model.forward

    def spy(x_t, x0=None, delta=None, cache=None):
        logits = forward(x_t, x0, delta, cache)
        calls.append((x_t.clone(), None if delta is None else delta.clone(), logits.clone()))
        return logits
    model.forward = spy
    return calls


@pytest.mark.parametrize('first_step', ['zero', 'self', 'reference', 'dirichlet'])
def test_first_step_seeds_the_residual_as_named(first_step):
    """A block's first step reads no residual ('zero'), the model's own extra pass ('self'), the
    reference's pass ('reference', warm start), or a random distribution ('dirichlet'); the extra
    passes are counted."""
    model, reference = tiny_model(0), tiny_model(1)
    prompt = torch.randint(0, 9, (2, 4))
    plain = decode(model, prompt, 12, tokens_per_step=2, alpha_mode='entropy')
    calls, ref_calls = spy_on(model), spy_on(reference)
    _, passes = decode(model, prompt, 12, tokens_per_step=2, alpha_mode='entropy',
                       first_step=first_step,
                       reference=reference if first_step == 'reference' else None,
                       generator=torch.Generator().manual_seed(0))
    # passes that read [MASK]: not cache fills
    steps = [(x, d, z) for x, d, z in calls if (x == 10).any()]
    # a block's first (or extra) pass
    firsts = [k for k, (x, _, _) in enumerate(steps) if (x == 10).all()]
    # + the reference's cache fills
    extra = {'zero': 0, 'self': 3, 'reference': 3 + 2, 'dirichlet': 0}[first_step]
    assert (passes - plain[1]).tolist() == [extra] * 2
    if first_step == 'zero':
        assert len(firsts) == 3 and all(steps[k][1] is None for k in firsts)
    elif first_step == 'self':
        # the model's extra pass without residual, then the first step reads its residual
        assert len(firsts) == 6
        for k in firsts[::2]:
            want = rcd.residual(steps[k][2], model.wte.weight, 10,
                                torch.ones(2, 4, dtype=torch.bool), 'entropy')
            assert steps[k][1] is None and torch.allclose(steps[k + 1][1], want)
    elif first_step == 'reference':
        # the reference's pass (its own weights) gives the first step's residual
        ref_steps = [z for x, _, z in ref_calls if (x == 10).all()]
        assert len(firsts) == 3 and len(ref_steps) == 3
        for k, z in zip(firsts, ref_steps):
            want = rcd.residual(z, model.wte.weight, 10, torch.ones(2, 4, dtype=torch.bool),
                                'entropy')
            assert torch.allclose(steps[k][1], want)
    else:
        assert len(firsts) == 3 and all((steps[k][1].abs().sum(-1) > 0).all() for k in firsts)
    assert first_step == 'reference' or not ref_calls


def test_rcd_with_a_warm_start_and_the_cache_agree(counting_model):
    model, reference = counting_model, tiny_model(1)
    prompt = torch.randint(0, 9, (2, 6))
    outs = [decode(model, prompt, 18, tokens_per_step=2, alpha_mode='entropy',
                   first_step='reference', reference=reference, use_cache=c)
            for c in (True, False)]
    assert torch.equal(outs[0][0], outs[1][0])
    # warm start adds one reference pass per block (and the reference's cache fills when the cache
    # is on)
    plain = decode(model, prompt, 18, tokens_per_step=2, alpha_mode='entropy')
    assert (outs[0][1] - plain[1]).tolist() == [5 + 4] * 2


def stage1(tiny_reasoning, out_dir, *extra):
    r = run_script('train_stage1.py', *TINY, f'--dataset={tiny_reasoning}', '--seq_len=64',
                   f'--out_dir={out_dir}', '--max_iters=4', '--eval_interval=4', *extra)
    assert r.returncode == 0, r.stderr
    return os.path.join(out_dir, 'ckpt.pt')


@pytest.fixture(scope='module')
def stage1_ckpts(tiny_reasoning, tmp_path_factory):
    d = tmp_path_factory.mktemp('stage1')
    return (stage1(tiny_reasoning, str(d / 'a')),
            stage1(tiny_reasoning, str(d / 'small'), '--n_embd=16'))


def stage2_args(tiny_reasoning, target, reference, out_dir):
    # stage 2 reads them from its init
    model_flags = ('--n_', '--device', '--seq_len', '--block_size')
    return ['train_stage2.py', *[a for a in TINY if not a.startswith(model_flags)], '--device=cpu',
            f'--dataset={tiny_reasoning}', f'--init_from={target}', f'--reference_ckpt={reference}',
            f'--out_dir={out_dir}', '--eval_interval=2', '--always_save_checkpoint=True',
            '--rollout_steps=0', '--alpha_scale=1']  # the paper's recipe: no rollout, full α


def test_stage2_updates_the_target_only_and_resumes_exactly(tiny_reasoning, stage1_ckpts, tmp_path,
                                                            monkeypatch, capsys):
    target, small_ref = stage1_ckpts
    full, part = str(tmp_path / 'full'), str(tmp_path / 'part')
    # a reference smaller than the target
    args = stage2_args(tiny_reasoning, target, small_ref, full)
    r = run_script(*args, '--max_iters=4', '--lr_decay_iters=4')
    assert r.returncode == 0, r.stderr
    after = checkpoint.load_checkpoint(os.path.join(full, 'ckpt.pt'))
    before = checkpoint.load_checkpoint(target)
    assert after['iter_num'] == 4
    # target moved
    assert any(not torch.equal(after['model'][k], before['model'][k]) for k in before['model'])
    args = stage2_args(tiny_reasoning, target, small_ref, part)
    assert run_script(*args, '--max_iters=2', '--lr_decay_iters=4').returncode == 0
    r = run_script(*args, '--max_iters=4', '--lr_decay_iters=4', '--init_from=resume')
    assert r.returncode == 0

    def losses(d):
        with open(os.path.join(d, 'log.jsonl')) as f:
            return {r['iter']: r['loss'] for r in map(json.loads, f) if 'loss' in r}
    assert losses(full) == losses(part) and len(losses(full)) == 4
    # as stage 1 does, with the same words: a resumed run keeps how it trains, and a fresh one (or
    # an eval_only) never lands on a trained checkpoint
    for extra, said in ((['--init_from=resume', '--alpha_scale=0.5'],
                         'was trained with other settings: alpha_scale 0.5 (was 1.0)'),
                        (['--init_from=resume', '--rollout_steps=2', '--reference_ckpt='],
                         'was trained with other settings: rollout_steps 2 (was 0)'),
                        (['--eval_only=True'], 'exists and this run would replace it')):
        code, out = run_in_process([*args, '--max_iters=6', *extra], monkeypatch, capsys)
        assert code != 0 and said in out and 'Traceback' not in out, out


def test_stage2_reference_stays_frozen_and_its_predictions_are_what_the_target_reads(
        tiny_reasoning, stage1_ckpts, tmp_path, monkeypatch):
    target, small_ref = stage1_ckpts
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, 'argv', stage2_args(tiny_reasoning, target, small_ref, str(tmp_path))
                        + ['--max_iters=3', '--lr_decay_iters=3'])
    # trains 3 iterations in this process
    g = runpy.run_path('train_stage2.py', run_name='__main__')
    model, reference = g['model'], g['reference']
    ref_ckpt = checkpoint.load_checkpoint(small_ref)['model']
    target_ckpt = checkpoint.load_checkpoint(target)['model']
    # the reference's own weights
    assert all(torch.equal(reference.state_dict()[k], ref_ckpt[k]) for k in ref_ckpt)
    # the target moved
    assert any(not torch.equal(model.state_dict()[k], target_ckpt[k]) for k in target_ckpt)
    seen, ref_forward = {}, reference.forward

    def ref_spy(x_t, x0=None, *args, **kwargs):
        seen['ref_x_t'], seen['ref_logits'] = x_t, ref_forward(x_t, x0, *args, **kwargs)
        return seen['ref_logits']

    def target_spy(x_t, x0, delta, loss_weights):
        seen['x_t'], seen['delta'] = x_t, delta
        return torch.zeros(())
    reference.forward = ref_spy
    x0, prompt_mask, _ = g['batches'].get('train', 0)
    g['batch_loss'](target_spy, 'train', 0)
    masked = seen['x_t'] == model.cfg.mask_id
    want = rcd.residual(seen['ref_logits'], model.wte.weight, model.cfg.mask_id, masked, 'entropy')
    assert masked.any() and torch.allclose(seen['delta'], want)
    assert torch.equal(seen['ref_x_t'], seen['x_t'])
    # the rollout: where it starts and how many steps each row takes
    calls, real_rollout = [], rcd.rollout

    def rollout_spy(*args):
        calls.append(args[2:5])  # start, prompt_mask, n_steps
        return real_rollout(*args)
    monkeypatch.setattr(rcd, 'rollout', rollout_spy)
    g['batch_loss'].__globals__.update(rollout_steps=1)
    g['batch_loss'](target_spy, 'train', 0)
    start, prompt, n_steps = calls[0]
    assert not ((start != model.cfg.mask_id) & ~prompt).any() and n_steps.max() == 1  # all [MASK]
    # the control: rollout states, no residual
    g['batch_loss'].__globals__.update(alpha_mode='none')
    g['batch_loss'](target_spy, 'train', 0)
    assert len(calls) == 2 and calls[1][0].shape[0] == x0.shape[0] and not seen['delta'].any()
    # steps committed
    assert (seen['x_t'] != model.cfg.mask_id).sum() > (calls[1][0] != model.cfg.mask_id).sum()
    # every other rollout row: no residual, as the control's
    g['batch_loss'].__globals__.update(alpha_mode='entropy', rollout_plain=0.5)
    g['batch_loss'](target_spy, 'train', 0)
    reads = seen['delta'].abs().sum((1, 2)) > 0
    assert reads[0::2].any() and not reads[1::2].any()


def test_stage2_step_sees_the_residual(tiny_reasoning, stage1_ckpts, tmp_path):
    """With α = 0 stage 2 is continued stage 1: the first logged loss differs once residuals are on,
    and not when a constant α of 0 puts every input back at E[MASK]."""
    target, _ = stage1_ckpts
    first = {}
    for mode, alpha in (('none', 0.5), ('constant', 0.5), ('constant', 0.0)):
        out = str(tmp_path / f'{mode}_{alpha}')
        r = run_script(*stage2_args(tiny_reasoning, target, '', out), '--max_iters=1',
                       f'--alpha_mode={mode}', f'--alpha_constant={alpha}')
        assert r.returncode == 0, r.stderr
        with open(os.path.join(out, 'log.jsonl')) as f:
            first[mode, alpha] = next(r['loss'] for r in map(json.loads, f) if 'loss' in r)
    assert first['none', 0.5] != first['constant', 0.5]
    # α = 0: the residual rows read plain [MASK]
    assert first['none', 0.5] == first['constant', 0.0]


@pytest.mark.parametrize('extra,message', [
    (['--n_embd=24', '--block_size=4'], 'incompatible checkpoints (block_size 4 vs 8)'),
    (['--seq_len=32'], 'incompatible checkpoints (seq_len 32 vs 64)'),
])
def test_incompatible_reference_is_a_clear_error(tiny_reasoning, stage1_ckpts, tmp_path,
                                                 monkeypatch, extra, message):
    target, _ = stage1_ckpts
    other = str(tmp_path / 'other')
    # a model of another context length (the row dataset only trains seq_len=64)
    if '--seq_len=32' in extra:
        ckpt = checkpoint.load_checkpoint(target)
        ckpt['model_args'] = dict(ckpt['model_args'], seq_len=32)
        checkpoint.save_checkpoint(ckpt, os.path.join(other, 'ckpt.pt'))
    else:
        stage1(tiny_reasoning, other, *extra)
    monkeypatch.chdir(ROOT)
    args = stage2_args(tiny_reasoning, target, os.path.join(other, 'ckpt.pt'),
                       str(tmp_path / 'out'))
    monkeypatch.setattr(sys, 'argv', args + ['--max_iters=1'])
    with pytest.raises(SystemExit) as e:
        runpy.run_path('train_stage2.py', run_name='__main__')
    assert message in str(e.value)


def test_missing_stage1_checkpoint_is_a_clear_error(tiny_reasoning, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    args = stage2_args(tiny_reasoning, '/no/such/ckpt.pt', '/no/such/ckpt.pt', str(tmp_path))
    monkeypatch.setattr(sys, 'argv', args)
    with pytest.raises(SystemExit, match="init_from '/no/such/ckpt.pt' not found"):
        runpy.run_path('train_stage2.py', run_name='__main__')


def test_alpha_scale_by_hand():
    # tokens 0 and 1, [MASK] = 2; E[0] = (1, 0), E[1] = (0, 1), E[MASK] = (5, 5)
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    # p = (1/2, 1/2): the soft token is (1/2, 1/2) and α = log 2 / log 2 = 1
    logits = torch.zeros(1, 1, 3)
    remasked = torch.ones(1, 1, dtype=torch.bool)
    light = rcd.residual(logits, emb, 2, remasked, 'entropy', scale=0.25)
    assert torch.allclose(light, torch.tensor([[[-1.125, -1.125]]]))  # 0.25 · ((1/2, 1/2) − (5, 5))
    capped = rcd.residual(logits, emb, 2, remasked, 'entropy', scale=4.0)
    assert torch.allclose(capped, torch.tensor([[[-4.5, -4.5]]]))  # α is capped at 1


class FixedModel:
    """A stand-in model whose predictions never change: position i's top token has probability
    conf[i], on a token that is never the true one, so a committed position shows whether it took
    the true token."""

    def __init__(self, conf, vocab=5, block_size=4):
        self.cfg = ModelConfig(vocab_size=vocab, mask_id=vocab - 1, seq_len=len(conf),
                               block_size=block_size, n_layer=1, n_head=1, n_embd=2)
        probs = torch.full((len(conf), vocab), 0.0)
        for i, c in enumerate(conf):
            probs[i, :vocab - 1] = (1 - c) / (vocab - 2)
            probs[i, 3] = c  # the true tokens below are 0, 1 or 2: token 3 is always wrong
        self.logits, self.deltas = probs.clamp_min(1e-9).log(), []
        # E[v] = (1, 1), E[MASK] = 0: at α = 1 a position's residual is (1, 1) exactly where it
        # reads one
        self.wte = torch.nn.Embedding(vocab, 2)
        self.wte.weight.data = torch.ones(vocab, 2)
        self.wte.weight.data[-1] = 0.0

    def __call__(self, x_t, x0, delta):
        self.deltas.append(delta.clone())
        return self.logits.expand(len(x_t), -1, -1).clone()


def test_rollout_commits_like_threshold_decoding_by_hand():
    model = FixedModel([0.95, 0.5, 0.92, 0.3, 0.6, 0.7, 0.99, 0.2])
    x0 = torch.tensor([[0, 1, 2, 0, 1, 2, 0, 1], [2, 2, 2, 2, 1, 1, 1, 1]])
    reads = torch.ones(2, dtype=torch.bool)
    start = torch.full_like(x0, 4)  # every block all [MASK]
    no_prompt = torch.zeros_like(x0, dtype=torch.bool)
    x_t, masked, t, logits, remasked = rcd.rollout(model, x0, start, no_prompt,
                                                   torch.tensor([2, 0]), torch.tensor([0.9, 0.9]),
                                                   reads, 'constant', 1.0)
    # row 0, step 1: 0.95, 0.92 and 0.99 reach 0.9 (positions 0, 2, 6); step 2: nothing left reaches
    # it, so each block commits its most confident (positions 1 and 5). Committed positions take the
    # true token, not token 3.
    M = 4
    assert x_t[0].tolist() == [0, 1, 2, M, M, 2, 0, M]
    assert x_t[1].tolist() == [M] * 8  # no steps: a block's first step, all [MASK], no residual
    assert masked[0].tolist() == [False, False, False, True, True, False, False, True]
    assert t[0].tolist() == [0.25] * 4 + [0.5] * 4 and t[1].tolist() == [1.0] * 8
    assert remasked[0].tolist() == masked[0].tolist() and not remasked[1].any()
    assert torch.equal(logits[0], model.logits) and not logits[1].any()
    # step 1 read no residual; step 2 read the residual of step 1's remasked positions
    assert not model.deltas[0].any()
    read = (model.deltas[1][0, :, 0] > 0.5).tolist()
    assert read == [False, True, False, True, True, True, False, True]
    # step s runs only the rows with more than s steps: row 1 (no steps) never reaches the model
    assert [len(d) for d in model.deltas] == [1, 1]
    # the rows come back in the caller's order, whatever the order of their step counts
    flipped = rcd.rollout(model, x0.flip(0), start, no_prompt, torch.tensor([0, 2]),
                          torch.tensor([0.9, 0.9]), reads, 'constant', 1.0)
    outs = (x_t, masked, t, logits, remasked)
    assert all(torch.equal(a.flip(0), b) for a, b in zip(outs, flipped))
    # a row that reads no residual (the control's rows): the same commits, no residual at any step
    model.deltas.clear()
    plain = rcd.rollout(model, x0, start, no_prompt, torch.tensor([2, 2]), torch.tensor([0.9, 0.9]),
                        torch.tensor([True, False]), 'constant', 1.0)
    assert torch.equal(plain[1][0], masked[0]) and torch.equal(plain[1][1], masked[0])
    row0 = (model.deltas[1][0, :, 0] > 0.5).tolist()  # row 0 as before
    assert row0 == [False, True, False, True, True, True, False, True]
    assert not model.deltas[1][1].any() and not plain[4][1].any()
    assert torch.equal(plain[4][0], remasked[0])


def test_stratified_steps_are_equal_groups():
    assert rcd.stratified_steps(10, 4).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert rcd.stratified_steps(0, 4).tolist() == []


def test_rollout_from_a_noised_state_by_hand():
    # the same fixed predictions; the row starts with positions 0, 3 (a prompt) and 6 already
    # visible
    model = FixedModel([0.95, 0.5, 0.92, 0.3, 0.6, 0.7, 0.99, 0.2])
    x0 = torch.tensor([[0, 1, 2, 0, 1, 2, 0, 1]])
    M = 4
    start = torch.tensor([[0, M, M, 0, M, M, 0, M]])
    prompt = torch.zeros_like(x0, dtype=torch.bool)
    prompt[0, 3] = True
    x_t, masked, t, _, remasked = rcd.rollout(model, x0, start, prompt, torch.tensor([1]),
                                              torch.tensor([0.9]), torch.ones(1, dtype=torch.bool),
                                              'constant', 1.0)
    # one step: position 2 (0.92) reaches 0.9; block 2 has none above 0.9, so its most confident
    # masked one (5)
    assert x_t[0].tolist() == [0, M, 2, 0, M, 2, 0, M]
    assert remasked[0].tolist() == [False, True, False, False, True, False, False, True]
    # masked over noisable: 1 of 3 (the prompt is not), 2 of 4
    assert t[0].tolist() == pytest.approx([1 / 3] * 4 + [0.5] * 4)
    assert not model.deltas[0].any()  # the first step from a given state still reads no residual
