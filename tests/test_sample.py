"""Sampler invariants: the KV cache changes nothing, commit schedules, forward-pass counts, block
size 1 is autoregressive decoding."""
import copy

import pytest
import torch

from model import BlockDiffusionLM, ModelConfig
from conftest import decode
from sample import commit_counts

MASK, EOS = 10, 9


def tiny_model(block_size=4):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=11, mask_id=MASK, seq_len=32, block_size=block_size, n_layer=2,
                      n_head=2, n_embd=32)
    return BlockDiffusionLM(cfg).eval()


def test_commit_counts():
    assert commit_counts(8, 1) == [1] * 8
    assert commit_counts(8, 3) == [3, 3, 2]
    assert commit_counts(7, 2) == [2, 2, 2, 1]
    assert commit_counts(5, 8) == [5]
    assert commit_counts(10, 4) == [4, 3, 3]  # spread evenly, not 4, 4, 2


@pytest.mark.parametrize('rule', [dict(tokens_per_step=1), dict(tokens_per_step=3),
                                  dict(threshold=0.3), dict(tokens_per_step=2, temperature=1.0)])
def test_kv_cache_gives_the_same_tokens(counting_model, rule):
    prompt = torch.randint(0, 9, (3, 6))
    outs = [decode(counting_model, prompt, 20, use_cache=c,
                   generator=torch.Generator().manual_seed(1), **rule)
            for c in (True, False)]
    assert torch.equal(outs[0][0], outs[1][0])
    # a context-dependent sequence, not one token
    assert len(set(outs[0][0][:, 6:].flatten().tolist())) > 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason='CUDA only')
@pytest.mark.parametrize('rule', [
    dict(tokens_per_step=2), dict(threshold=0.3, alpha_mode='entropy'),
    dict(tokens_per_step=1, alpha_mode='entropy', first_step='reference'),
    dict(tokens_per_step=2, alpha_mode='entropy', first_step='self')])
def test_cuda_graph_gives_the_eager_tokens(counting_model, rule):
    """The replayed CUDA graph of a block's pass (the sampler's default on CUDA) against the eager
    pass, under bf16 autocast as in sample.py and eval.py, with a prompt that ends inside a block
    and rows stopping at <eos>."""
    model = copy.deepcopy(counting_model).cuda()
    reference = tiny_model(4).cuda() if rule.get('first_step') == 'reference' else None
    prompt = torch.randint(0, 9, (3, 6), device='cuda')
    with torch.autocast('cuda', dtype=torch.bfloat16):
        graph, eager = (decode(model, prompt, 20, eos_id=EOS, reference=reference, cuda_graph=g,
                               **rule)
                        for g in (True, False))
    assert torch.equal(graph[0], eager[0]) and torch.equal(graph[1], eager[1])


def test_static_rule_invariants_and_pass_count():
    model = tiny_model()
    prompt = torch.randint(0, 9, (2, 6))  # blocks of 4: prompt fills block 0 and half of block 1
    out, passes = decode(model, prompt, 18, tokens_per_step=2)
    assert torch.equal(out[:, :6], prompt) and not (out == MASK).any() and out.shape == (2, 24)
    # block 1: 2 masks -> 1 step; blocks 2..5: 4 masks -> 2 steps each; a cache fill after every
    # block but the last
    assert passes.tolist() == [1 + 4 * 2 + 4] * 2


def test_threshold_one_commits_one_token_per_step():
    model = tiny_model()
    out, passes = decode(model, torch.randint(0, 9, (2, 4)), 8, threshold=1.0)
    assert passes.tolist() == [4 + 1 + 4] * 2 and not (out == MASK).any()


def test_rows_stop_after_their_eos_block():
    model = tiny_model()
    with torch.no_grad():
        model.lm_head.weight.data[EOS] *= 0
        # make <eos> very likely wherever feature 0 is positive
        model.lm_head.weight.data[EOS, 0] = 50.0
    out, passes = decode(model, torch.randint(0, 9, (4, 4)), 24, tokens_per_step=4, eos_id=EOS)
    for row, n in zip(out.tolist(), passes.tolist()):
        gen = row[4:]
        first_eos_block = next(i // 4 for i, t in enumerate(gen) if t == EOS)
        # one step per block + a fill per finished, non-final block
        assert n == 2 * first_eos_block + 1


def test_block_size_one_is_autoregressive_decoding():
    model = tiny_model(block_size=1)
    prompt = torch.randint(0, 9, (2, 3))
    out, passes = decode(model, prompt, 7, tokens_per_step=1, use_cache=False)
    x = prompt
    # greedy AR: each new position is read as [MASK] after the clean prefix, one at a time
    for _ in range(7):
        logits = model(torch.cat((x, torch.full((2, 1), MASK)), dim=1))[:, -1]
        logits[:, MASK] = float('-inf')
        x = torch.cat((x, logits.argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(out, x) and passes.tolist() == [7, 7]


class ScriptedModel(torch.nn.Module):
    """A stand-in whose predictions are fixed per row: row r predicts token favourite[r] everywhere,
    with the confidence rising along the block (so the static rule's order is known). It ignores the
    cache and residuals."""

    def __init__(self, favourite, vocab=11, block_size=4, seq_len=16):
        super().__init__()
        self.cfg = ModelConfig(vocab_size=vocab, mask_id=vocab - 1, seq_len=seq_len,
                               block_size=block_size, n_layer=1, n_head=1, n_embd=2)
        self.wte = torch.nn.Embedding(vocab, 2)
        self.favourite = torch.tensor(favourite)

    def forward(self, x, x0=None, delta=None, cache=None):
        logits = torch.zeros(*x.shape, self.cfg.vocab_size)
        rise = torch.arange(x.shape[1], dtype=torch.float)[None, :] / 10
        logits.scatter_(2, self.favourite[:, None, None].expand(-1, x.shape[1], 1),
                        (3 + rise).expand(len(x), -1)[..., None])
        return logits


@pytest.mark.parametrize('use_cache', [True, False])
def test_exact_pass_counts_with_eos_in_the_middle_of_a_batch(use_cache):
    EOS = 9
    # row 0 writes eos in its first new block; rows 1 and 2 never do
    model = ScriptedModel([EOS, 1, 2])
    prompt = torch.ones(3, 4, dtype=torch.long)  # one whole block: prefilled, not counted
    out, passes = decode(model, prompt, 12, eos_id=EOS, tokens_per_step=2, use_cache=use_cache)
    # row 0: block 1 in 2 steps (4 masks, 2 per step), then done: no cache fill. Rows 1, 2: 3 blocks
    # of 2 steps, and with the cache one fill after each of the first two blocks (none after the
    # last).
    fills = 2 if use_cache else 0
    assert passes.tolist() == [2, 6 + fills, 6 + fills]
    assert (out[0, 4:8] == EOS).all() and (out[1, 4:] == 1).all() and (out[2, 4:] == 2).all()
    _, passes = decode(model, prompt, 12, eos_id=EOS, threshold=0.5, use_cache=use_cache)
    # every position is confident: one step a block
    assert passes.tolist() == [1, 3 + fills, 3 + fills]


@pytest.mark.parametrize('temperature,want', [(0.5, [0.36, 0.09, 0.01]),
                                              (2.0, [0.6 ** 0.5, 0.3 ** 0.5, 0.1 ** 0.5])])
def test_sampling_temperature_on_a_known_distribution(temperature, want):
    from model import token_probs
    from sample import Decoding, predict
    logits = torch.tensor([0.6, 0.3, 0.1, 1e-30]).log().expand(20000, 1, 4)  # token 3 is [MASK]
    probs = token_probs(logits, 3, temperature)
    pred, conf = predict(probs, torch.ones(20000, 1, dtype=torch.bool),
                         Decoding(temperature=temperature), torch.Generator().manual_seed(0))
    freq = torch.bincount(pred.flatten(), minlength=4).float() / 20000
    want = torch.tensor(want + [0.0]) / sum(want)  # p^(1/T), normalised
    assert torch.allclose(freq, want, atol=0.01) and freq[3] == 0
    # a committed token's confidence is its p
    assert torch.allclose(conf.flatten(), want[pred.flatten()])


class FixedLogits(BlockDiffusionLM):
    """A model that predicts the same distribution everywhere, whatever it reads."""

    def __init__(self, probs):
        super().__init__(ModelConfig(vocab_size=len(probs) + 1, mask_id=len(probs), seq_len=1,
                                     block_size=1, n_layer=1, n_head=1, n_embd=2))
        self.logits = torch.tensor(probs + [1e-30]).log()  # the last token is [MASK]

    def forward(self, x_t, x0=None, delta=None, cache=None, loss_weights=None):
        return self.logits.expand(*x_t.shape, -1)


@pytest.mark.parametrize('temperature,want', [(0.5, [0.36, 0.09, 0.01]), (1.0, [0.6, 0.3, 0.1])])
def test_generate_samples_the_committed_tokens_at_its_temperature(temperature, want):
    """The whole sampler, seeded: the committed tokens follow p^(1/T), normalised."""
    model = FixedLogits([0.6, 0.3, 0.1])
    out, _ = decode(model, torch.zeros(20000, 0, dtype=torch.long), 1, temperature=temperature,
                    generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(out.flatten(), minlength=4).float() / 20000
    assert torch.allclose(freq, torch.tensor(want + [0.0]) / sum(want), atol=0.01)


def test_threshold_rule_commits_a_confidence_exactly_at_the_threshold():
    from sample import Decoding, commit_rule
    conf = torch.tensor([[0.5, 0.4375, 0.75, -1.0], [0.25, 0.125, 0.25, 0.0]])  # -1: not masked
    masked = conf >= 0
    commit = commit_rule(conf, masked, Decoding(threshold=0.5), 1)
    assert commit[0].tolist() == [True, False, True, False]  # 0.5 >= 0.5 commits, 0.4375 does not
    assert commit[1].tolist() == [True, False, False, False]  # none reaches it: the most confident


def test_sample_decoding_and_eval_share_their_defaults_and_take_rcd_from_the_checkpoint(capsys):
    """One source: sample.py's and eval.py's decoding settings default to Decoding's, and RCD's
    settings a command line leaves alone come from how the checkpoint's model was trained."""
    import dataclasses

    import eval as evaluate
    import sample
    from engine import as_trained
    from sample import Decoding
    defaults = {f.name: f.default for f in dataclasses.fields(Decoding)}
    assert {k: getattr(sample, k) for k in defaults} == defaults
    shared = ('use_rcd', 'alpha_mode', 'alpha_constant')
    assert {k: getattr(evaluate, k) for k in shared} == {k: defaults[k] for k in shared}
    assert (evaluate.alpha_scales, evaluate.residual_temperatures) == ('', '1.0')
    rcd_arm = dict(alpha_mode='confidence', alpha_constant=0.3, alpha_scale=0.25)
    dec = as_trained(Decoding(threshold=0.9), rcd_arm, told={'threshold'})
    assert (dec.use_rcd, dec.alpha_mode, dec.alpha_constant, dec.alpha_scale, dec.threshold) == \
        (True, 'confidence', 0.3, 0.25, 0.9)
    assert capsys.readouterr().out == ''
    dec = as_trained(Decoding(alpha_scale=1.0), rcd_arm, told={'alpha_scale'})  # an ablation
    assert dec.alpha_scale == 1.0 and dec.use_rcd
    assert 'alpha_scale=1.0 is not how the model was trained (alpha_scale=0.25)' in \
        capsys.readouterr().out
    for trained in ({}, dict(rcd_arm, alpha_mode='none')):  # stage 1, an arm without residuals
        assert not as_trained(Decoding(), trained, told=set()).use_rcd


@pytest.mark.seconds(90)
def test_the_picture_draws_each_step_of_the_decoding_it_traced(tmp_path, monkeypatch, capsys):
    """picture.py on the CPU toy (4x4 Sudoku, a stage-1 model and an RCD model): its steps are
    the sampler's own, every cell committed once, α only where a residual is read."""
    from conftest import run_in_process, run_script
    import engine
    import picture
    from data.datasets import load_problems
    from sample import Decoding, generate
    data, out = tmp_path / 'data', tmp_path / 'run'
    assert run_script('data/sudoku4/prepare.py', '--n_train=400', '--n_val=8', '--n_test=4',
                      f'--out_dir={data}').returncode == 0
    small = ['--device=cpu', '--batch_size=8', '--max_iters=2', '--eval_interval=2',
             '--eval_iters=1', f'--dataset={data}']
    code, said = run_in_process(['train_stage1.py', *small, '--n_layer=1', '--n_head=2',
                                 '--n_embd=16', '--seq_len=40', '--block_size=20',
                                 f'--out_dir={out / "s1"}'], monkeypatch, capsys)
    assert code == 0, said
    code, said = run_in_process(['train_stage2.py', *small, f'--init_from={out / "s1/ckpt.pt"}',
                                 f'--out_dir={out / "s2"}'], monkeypatch, capsys)
    assert code == 0, said
    for ckpt, reads in ((out / 's1/ckpt.pt', False), (out / 's2/ckpt.pt', True)):
        model, meta, tok, _, trained = engine.load_models(str(ckpt), '', torch.device('cpu'))
        dec = engine.as_trained(Decoding(tokens_per_step=4), trained, set())
        question, solution = load_problems(meta, 'test')[0]
        ids = torch.tensor([tok.encode(question)])
        frames = picture.grid_steps(model, dec, ids, tok.encode(solution), meta['eos_id'])
        assert len(frames) == 5  # 20 tokens of the answer's block, 4 per step
        states = [[state for _, state, _ in frame] for frame in frames]
        assert 'masked' not in states[-1]
        firsts = [sum(s[k] in ('new', 'wrong') for s in states) for k in range(16)]
        assert firsts == [1] * 16  # each cell committed at exactly one step
        out_ids, _ = generate(model, ids, 17, dec, meta['eos_id'])
        assert [t for t, _, _ in frames[-1]] == out_ids[0, 20:36].tolist()  # the sampler's answer
        alphas = [a for frame in frames for _, state, a in frame if state == 'masked']
        assert alphas and all((a is not None) == reads for a in alphas)
        assert not reads or all(0 <= a <= dec.alpha_scale for a in alphas)
    pytest.importorskip('matplotlib')
    png = tmp_path / 'picture.png'
    code, said = run_in_process(['picture.py', f'--ckpts={out / "s1/ckpt.pt"},{out / "s2/ckpt.pt"}',
                                 '--device=cpu', '--tokens_per_step=4', f'--png={png}'],
                                monkeypatch, capsys)
    assert code == 0 and png.stat().st_size > 10_000, said
