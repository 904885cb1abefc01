"""Training end to end through the real scripts: loss goes down, checkpoints round-trip, resume is
exact, bad input gets a clear message."""
import json
import os
import pickle
import re
import runpy
import sys

import numpy as np
import pytest
import torch

import checkpoint
import common
from data import datasets
from conftest import ROOT, TINY, run_in_process, run_script


def read_log(out_dir):
    with open(os.path.join(out_dir, 'log.jsonl')) as f:
        return [json.loads(line) for line in f]


def train(tiny_reasoning, out_dir, *extra):
    r = run_script('train_stage1.py', *TINY, f'--dataset={tiny_reasoning}', '--seq_len=64',
                   f'--out_dir={out_dir}', *extra)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_training_lowers_the_loss_and_checkpoint_round_trips(tiny_reasoning, tmp_path):
    out = str(tmp_path / 'run')
    train(tiny_reasoning, out, '--max_iters=30', '--eval_interval=30', '--learning_rate=3e-3')
    evals = [r for r in read_log(out) if 'val_loss' in r]
    assert evals[-1]['val_loss'] < evals[0]['val_loss'] - 0.3, evals
    ckpt = checkpoint.load_checkpoint(os.path.join(out, 'ckpt.pt'))
    assert ckpt['iter_num'] == 30 and ckpt['config']['max_iters'] == 30
    model = checkpoint.build_model(ckpt['model_args'], ckpt['model']).eval()
    path = str(tmp_path / 'again.pt')
    checkpoint.save_checkpoint(dict(ckpt, model=model.state_dict()), path)
    reloaded = checkpoint.load_checkpoint(path)['model']
    again = checkpoint.build_model(ckpt['model_args'], reloaded).eval()
    x = torch.randint(0, ckpt['meta']['vocab_size'], (2, 64))
    assert torch.equal(model(x), again(x)) and torch.equal(model(x, x), again(x, x))
    assert not os.path.exists(path + '.tmp')


def test_resume_continues_with_identical_loss(tiny_reasoning, tmp_path):
    full, part = str(tmp_path / 'full'), str(tmp_path / 'part')
    common = ['--eval_interval=3', '--always_save_checkpoint=True', '--lr_decay_iters=6']
    train(tiny_reasoning, full, '--max_iters=6', *common)
    train(tiny_reasoning, part, '--max_iters=3', *common)
    train(tiny_reasoning, part, '--max_iters=6', '--init_from=resume', *common)
    losses = lambda d: {r['iter']: r['loss'] for r in read_log(d) if 'loss' in r}  # noqa: E731
    assert losses(full) == losses(part) and len(losses(full)) == 6


@pytest.mark.parametrize('args,message', [
    (['--no_such_key=1'], "unknown key 'no_such_key'"),
    (['--lerning_rate=0.1'], 'did you mean learning_rate'),
    (['--batch_size=big'], "batch_size='big' in command line is a str; expected a int"),
    (['--compile'], "flag '--compile' has no value"),
    (['config/no_such_file.py'], "config file 'config/no_such_file.py' not found"),
    (['--block_size=5'], 'block_size=5 must divide seq_len=64'),
    (['--dataset=no_such_dataset'], "no dataset 'no_such_dataset'"),
    (['--dataset=/no/such/dir'], "no dataset '/no/such/dir'"),
    (['--seq_len=32'], 'has examples of 64 tokens: set --seq_len=64'),
    (['--init_from=resume', '--out_dir=/no/such/run'],
     "checkpoint '/no/such/run/ckpt.pt' not found"),
    (['--loss_weighting=l2'], "loss_weighting='l2' must be 'elbo' or 'mean'"),
    (['--batch_size=0'], 'batch_size=0 must be >= 1'),
    (['--eval_interval=0'], 'eval_interval=0 must be >= 1'),
    (['--eval_iters=0'], 'eval_iters=0 must be >= 1'),
    (['--log_interval=0'], 'log_interval=0 must be >= 1'),
    (['--grad_accum_steps=0'], 'grad_accum_steps=0 must be >= 1'),
    (['--max_iters=-1'], 'max_iters=-1 must be >= 0'),
    (['--warmup_iters=-5'], 'warmup_iters=-5 must be >= 0'),
    (['--lr_decay_iters=0'], 'lr_decay_iters=0 must be >= 1'),
    (['--weight_decay=-0.1'], 'weight_decay=-0.1 must be >= 0'),
    (['--grad_clip=-1.0'], 'grad_clip=-1.0 must be >= 0'),
    (['--learning_rate=0'], 'learning_rate > 0'),
    (['--beta2=1.5'], 'beta1, beta2 < 1'),
    (['--dropout=1.0'], 'dropout=1.0 must be in [0, 1)'),
    (['--mask_rate_min=0.9', '--mask_rate_max=0.5'],
     'need 0 <= mask_rate_min < mask_rate_max <= 1'),
    (['--n_head=0'], 'n_head=0 must be >= 1'),
    (['--n_embd=0'], 'n_embd=0 must be >= 1'),
    (['--n_layer=-1'], 'n_layer=-1 must be >= 1'),
    (['--block_size=0'], 'block_size=0 must be >= 1'),
    (['--n_embd=30', '--n_head=4'], 'must split into n_head=4 even heads'),
    (['--dtype=float16'], "dtype='float16' is not supported"),
    (['--device=cuda:7'] if not __import__('torch').cuda.is_available() else ['--device=tpu'],
     'device='),
    (['--init_from=latest'], "init_from='latest' must be 'scratch' or 'resume'"),
])
def test_bad_input_is_a_clear_error(tiny_reasoning, tmp_path, monkeypatch, args, message):
    """In-process for speed: a clear error is a SystemExit carrying the message (anything else fails
    the test)."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, 'argv', ['train_stage1.py', *TINY, f'--dataset={tiny_reasoning}',
                                      '--seq_len=64', f'--out_dir={tmp_path}', '--max_iters=1',
                                      *args])
    with pytest.raises(SystemExit) as e:
        runpy.run_path('train_stage1.py', run_name='__main__')
    assert message in str(e.value) and len(str(e.value).splitlines()) <= 2


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    """torchrun --nproc_per_node=4 on a 2-GPU machine: said before torch fails on an invalid device
    ordinal."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    for k, v in dict(RANK='2', LOCAL_RANK='2', WORLD_SIZE='4', LOCAL_WORLD_SIZE='4').items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit) as e:
        common.setup_device('auto', 'auto')
    want = 'started 4 processes on this machine but it has 2 GPUs: use --nproc_per_node=2'
    assert want in str(e.value)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, monkeypatch, capsys):
    bad = tmp_path / 'ckpt.pt'
    bad.write_bytes(b'not a checkpoint')
    code, said = run_in_process(['sample.py', f'--ckpt={bad}', '--device=cpu'], monkeypatch, capsys)
    assert code != 0 and 'is not a readable checkpoint' in said and 'Traceback' not in said


def test_reasoning_data_is_what_the_loader_expects(tiny_reasoning):
    meta = datasets.load_dataset(tiny_reasoning)
    with open(os.path.join(tiny_reasoning, 'test.pkl'), 'rb') as f:
        test = pickle.load(f)
    batches = datasets.Batches(meta, meta['row_len'], 8, torch.device('cpu'))
    x0, prompt, _ = batches.get('train', 0)
    itos = meta['itos']
    for row, p in zip(x0.tolist(), prompt.tolist()):
        text = ''.join(itos[i] for i in row)
        n_prompt = text.index('\n') + 1
        # prompt = up to its first newline
        assert p == [True] * n_prompt + [False] * (len(row) - n_prompt)
        problem, solution = text[:n_prompt], text[n_prompt:].split('<eos>')[0]
        terms = [int(t) for t in problem[:-3].replace('-', '+-').split('+')]
        *steps, answer = solution.splitlines()
        value, used = terms[0], []
        for line in steps:  # each line folds one more term into the running value, correctly
            a, op, b, c = re.fullmatch(r'(-?\d+)([+-])(\d+)=(-?\d+)', line).groups()
            assert int(a) == value and int(c) == (value + int(b) if op == '+' else value - int(b))
            value = int(c)
            used.append(int(b) if op == '+' else -int(b))
        assert sorted(used) == sorted(terms[1:]) and answer == f'#### {sum(terms)}'
        assert problem not in {q for q, _ in test}  # held-out problems never appear in train
    assert meta['mask_id'] == meta['vocab_size'] - 1 and meta['eos_id'] == meta['vocab_size'] - 2


def test_shakespeare_prepare(tmp_path):
    r = run_script('data/shakespeare_char/prepare.py')
    assert r.returncode == 0, r.stderr
    meta = datasets.load_dataset('shakespeare_char')
    batches = datasets.Batches(meta, 64, 4, torch.device('cpu'))
    x0, prompt, _ = batches.get('val', 0)
    assert x0.shape == (4, 64) and not prompt.any() and x0.max() < meta['eos_id']
    assert 'HAMLET' in ''.join(meta['itos'][i] for i in np.fromfile(
        os.path.join(datasets.dataset_dir('shakespeare_char'), 'train.bin'), dtype=np.uint16)[:200])


def test_bpe_prepare_reads_local_files_and_fails_clearly_without_them(tmp_path):
    import base64
    corpus = tmp_path / 'corpus.txt'
    corpus.write_text('To be, or not to be: that is the question.\n' * 50)
    r = run_script('data/text_bpe/prepare.py', f'--input={corpus}', f'--out_dir={tmp_path}')
    assert r.returncode != 0 and 'GPT-2 BPE files are needed' in r.stderr
    assert 'Traceback' not in r.stderr
    # a byte-level stand-in for gpt2.tiktoken (the same file format: base64 token, rank)
    bpe = tmp_path / 'bytes.tiktoken'
    bpe.write_text(''.join(f'{base64.b64encode(bytes([i])).decode()} {i}\n' for i in range(256)))
    r = run_script('data/text_bpe/prepare.py', f'--input={corpus}', f'--bpe_path={bpe}',
                   f'--out_dir={tmp_path}')
    assert r.returncode == 0, r.stderr
    meta = datasets.load_dataset(str(tmp_path))
    assert (meta['eos_id'], meta['mask_id'], meta['vocab_size']) == (256, 257, 258)
    ids = np.fromfile(tmp_path / 'train.bin', dtype=np.uint16)
    from data.tokenizer import Tokenizer
    assert Tokenizer(meta).decode(ids[:10].tolist()) == 'To be, or '


def assert_same_losses(a, b):
    assert [sorted(x) for x in a] == [sorted(x) for x in b]
    for x, y in zip(a, b):
        for key in ('loss', 'train_loss', 'val_loss'):
            if key in x:
                assert abs(x[key] - y[key]) < 1e-4 * abs(x[key]), (key, x, y)


@pytest.mark.seconds(120)  # seven runs, three of them two processes each: about a minute on 2 cores
def test_two_process_ddp_matches_one_process(tiny_reasoning, tmp_path, monkeypatch, capsys):
    """torchrun with 2 processes (gloo on CPU) and grad_accum_steps=2 sees the same micro-batches as
    one process, in stage 1 and in stage 2: the logged losses agree to float rounding, and only rank
    0 writes. Stage 2's rollout commits tokens by threshold, which turns the rounding of the
    averaged gradient into other states after the first update: its default path is compared before
    that update, the paper's path (no rollout) at every iteration."""
    torchrun = ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2']
    common = ['--device=cpu', '--batch_size=16', '--eval_iters=2', '--log_interval=1',
              '--warmup_iters=2', f'--dataset={tiny_reasoning}', '--max_iters=4',
              '--eval_interval=4', '--grad_accum_steps=2']
    stage1 = [*TINY, *common, '--seq_len=64']
    code, said = run_in_process(['train_stage1.py', *stage1, f'--out_dir={tmp_path / "one"}'],
                                monkeypatch, capsys)  # one process: this one
    assert code == 0, said
    r = run_script(*torchrun, 'train_stage1.py', *stage1, f'--out_dir={tmp_path / "two"}')
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count('config:') == 1 and 'x 2 processes' in r.stdout
    assert_same_losses(read_log(tmp_path / 'one'), read_log(tmp_path / 'two'))
    ckpt = tmp_path / 'one' / 'ckpt.pt'
    stage2 = [*common, f'--init_from={ckpt}']  # the paper's reference: the same checkpoint
    for name, flags in (('default', []), ('paper', ['--rollout_steps=0', '--rollout_plain=0'])):
        code, said = run_in_process(['train_stage2.py', *stage2, *flags,
                                     f'--out_dir={tmp_path / name / "one"}'], monkeypatch, capsys)
        assert code == 0, said
        r = run_script(*torchrun, 'train_stage2.py', *stage2, *flags,
                       f'--out_dir={tmp_path / name / "two"}')
        assert r.returncode == 0, r.stdout + r.stderr
        one, two = read_log(tmp_path / name / 'one'), read_log(tmp_path / name / 'two')
        if name == 'default':  # iteration 1 logs the loss at the initial weights
            one, two = [[x for x in log if x['iter'] <= 1] for log in (one, two)]
        assert_same_losses(one, two)
    r = run_script(*torchrun, 'train_stage1.py', *stage1, '--grad_accum_steps=3',
                   f'--out_dir={tmp_path / "two"}')
    said = (r.stdout + r.stderr).count('must be a multiple of the number of processes (2)')
    assert r.returncode != 0 and said == 1


def test_lr_schedule_by_hand():
    lr = lambda it: common.lr_at(it, 1.0, 0.1, 4, 10)  # noqa: E731  warm-up 4, decay to 0.1 at 10
    assert [lr(0), lr(3)] == [pytest.approx(0.2), pytest.approx(0.8)]  # (it + 1) / (warmup + 1)
    # the cosine's top and middle
    assert lr(4) == pytest.approx(1.0) and lr(7) == pytest.approx(0.55)
    assert lr(10) == lr(500) == 0.1  # the floor is min_lr, not 0


def test_micro_batch_seeds_are_distinct_and_never_an_eval_batch():
    for seed in (1, 2, 3, 1337):
        seeds = {common.micro_batch_seed(seed, i, m, 4) for i in range(2000) for m in range(4)}
        assert len(seeds) == 8000 and not seeds & {common.EVAL_SEED + k for k in range(100)}
    assert common.micro_batch_seed(1, 0, 1, 4) != common.micro_batch_seed(2, 0, 1, 4)


@pytest.mark.parametrize('script', ['train_stage1.py', 'train_stage2.py'])
def test_each_stage_clips_follows_its_schedule_and_averages_its_micro_batches(script, tiny_reasoning,
                                                                              tiny_ckpt, tmp_path,
                                                                              monkeypatch):
    """The update step of either stage (stage 2: the paper's recipe, whose loss reads the
    frozen reference only): clipped at grad_clip, the learning rate of common.lr_at, and the
    logged loss the mean over the micro-batches."""
    calls = []
    real_clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, 'clip_grad_norm_',
                        lambda p, c: calls.append(c) or real_clip(p, c))
    monkeypatch.chdir(ROOT)
    args = [f'--dataset={tiny_reasoning}', f'--out_dir={tmp_path}', '--max_iters=3',
            '--grad_clip=0.37', '--grad_accum_steps=2', '--eval_interval=3', '--lr_decay_iters=3']
    if script == 'train_stage1.py':
        args += [*TINY, '--seq_len=64']
    else:
        args += [a for a in TINY if a.startswith(('--device', '--batch', '--eval_it', '--log',
                                                  '--warmup'))]
        args += [f'--init_from={tiny_ckpt}', '--rollout_steps=0', '--rollout_plain=0']
    monkeypatch.setattr(sys, 'argv', [script, *args])
    g = runpy.run_path(script, run_name='__main__')
    assert calls == [0.37] * 3
    log = [json.loads(line) for line in open(tmp_path / 'log.jsonl')]
    schedule = [common.lr_at(i, g['learning_rate'], g['min_lr'], 2, 3) for i in range(3)]
    assert [r['lr'] for r in log if 'loss' in r] == schedule
    # iteration 1's logged loss is the mean of iteration 0's two micro-batch losses, each on its own
    # seed, at the initial weights (stage 1: rebuilt from the same torch seed)
    torch.manual_seed(1337)
    initial = checkpoint.build_model(g['ckpt']['model_args']).state_dict()
    if script == 'train_stage2.py':
        initial = checkpoint.load_checkpoint(tiny_ckpt)['model']
    g['model'].load_state_dict(initial)
    with torch.no_grad():
        seeds = [common.micro_batch_seed(1337, 0, m, 2) for m in range(2)]
        want = sum(g['batch_loss'](g['model'], 'train', s) for s in seeds) / 2
    logged = [r['loss'] for r in log if r['iter'] == 1 and 'loss' in r]
    assert logged == [pytest.approx(want.item(), rel=1e-5)]
