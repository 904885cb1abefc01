import os
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def run_script(*args):
    """Run a repo script in a fresh interpreter, as a user would; returns the CompletedProcess
    (text)."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope='session')
def tiny_reasoning(tmp_path_factory):
    """A small reasoning dataset (same generator as the default, fewer problems) in a temporary
    directory."""
    out = tmp_path_factory.mktemp('reasoning')
    r = run_script('data/reasoning/prepare.py', '--n_train=3000', '--n_val=200', '--n_test=50',
                   '--min_terms=2', '--max_terms=3', f'--out_dir={out}')
    assert r.returncode == 0, r.stderr
    return str(out)


@pytest.fixture(scope='session')
def tiny_ckpt(tiny_reasoning, tmp_path_factory):
    """A stage-1 checkpoint of a tiny model trained for 20 iterations on the tiny reasoning set."""
    out = str(tmp_path_factory.mktemp('eval_stage1'))
    r = run_script('train_stage1.py', *TINY, f'--dataset={tiny_reasoning}', '--seq_len=64',
                   f'--out_dir={out}', '--max_iters=20', '--eval_interval=20',
                   '--learning_rate=3e-3')
    assert r.returncode == 0, r.stderr
    return os.path.join(out, 'ckpt.pt')


TEST_SECONDS = 60  # a test past this fails at once: no bug can hang the suite (CI: 2 CPU cores)


def pytest_configure(config):
    config.addinivalue_line('markers', 'seconds(n): the wall-time limit of a test that starts many '
                                       'processes, instead of TEST_SECONDS')


@pytest.fixture(autouse=True)
def time_limit(request):
    """Each test (not the session's shared fixtures) gets TEST_SECONDS of wall time, or what its
    `seconds` mark says."""
    mark = request.node.get_closest_marker('seconds')
    limit = mark.args[0] if mark else TEST_SECONDS

    def stop(signum, frame):
        raise TimeoutError(f'{request.node.nodeid} ran past {limit} s')
    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(limit)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


# a model small enough that a training run takes seconds on a CPU
TINY = ['--device=cpu', '--n_layer=2', '--n_head=2', '--n_embd=32', '--batch_size=16',
        '--eval_iters=2', '--log_interval=1', '--warmup_iters=2', '--seq_len=64', '--block_size=8']


@pytest.fixture(scope='session')
def counting_model():
    """A tiny model trained for a few CPU seconds to continue counting (x[i] = x[i-1] + 1 mod 9; 9 =
    <eos>, 10 = [MASK]). Its greedy output depends on the context, so a sampler equality (cache = no
    cache, α = 0 = baseline) compares real sequences, not one token repeated."""
    import torch
    from model import BlockDiffusionLM, ModelConfig, add_noise, loss_weights
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=11, mask_id=10, seq_len=32, block_size=4, n_layer=2, n_head=2,
                      n_embd=32)
    model = BlockDiffusionLM(cfg)
    opt = model.configure_optimizer(0.0, 3e-3, (0.9, 0.95), 'cpu')
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        x0 = (torch.randint(0, 9, (32, 1), generator=gen) + torch.arange(32)) % 9
        prompt_mask = torch.zeros_like(x0, dtype=torch.bool)
        x_t, masked, t = add_noise(x0, prompt_mask, cfg.block_size, cfg.mask_id, 0.0, 1.0, gen)
        loss = model(x_t, x0, loss_weights=loss_weights(masked, t, prompt_mask, 'elbo'))
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def decode(model, prompt, max_new_tokens, eos_id=None, reference=None, generator=None,
           use_cache=True, cuda_graph=True, alpha_mode=None, **settings):
    """sample.generate with the decoding settings as keywords; alpha_mode given = RCD decoding with
    it."""
    from sample import Decoding, generate
    if alpha_mode is not None:
        settings.update(use_rcd=True, alpha_mode=alpha_mode)
    return generate(model, prompt, max_new_tokens, Decoding(**settings), eos_id, reference,
                    generator, use_cache, cuda_graph)


# files in this order: fast unit checks first, so that `pytest -x` stops early on a bug; end-to-end
# scripts last
ORDER = ['test_model', 'test_rcd', 'test_sample', 'test_sudoku', 'test_train', 'test_robust',
         'test_eval', 'test_gpu']


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(ORDER)}
    items.sort(key=lambda item: rank.get(item.module.__name__, len(ORDER)))


def run_in_process(args, monkeypatch, capsys):
    """Run a repo script in this process (fast: torch is imported once), as `python *args` would
    from the repo root. Returns (exit code, stdout + stderr): a SystemExit's message is printed to
    stderr, as Python does."""
    import runpy
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, 'argv', [str(a) for a in args])
    code, said = 0, ''
    try:
        runpy.run_path(str(args[0]), run_name='__main__')
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
        said = '' if isinstance(e.code, int) or e.code is None else str(e.code)
    out = capsys.readouterr()
    return code, out.out + out.err + said
