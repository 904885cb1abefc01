"""Bad luck and bad input (the table of bad config values is in test_train.py): a diverging run
stops without writing its weights, a trained checkpoint is never silently replaced, a corrupted one
is detected, --help works."""
import json
import os
import re
import runpy
import shutil
import sys

import pytest
import torch

import checkpoint
from conftest import ROOT, TINY, run_in_process, run_script


def stage1_args(data, out, *extra):
    return ['train_stage1.py', *TINY, f'--dataset={data}', '--seq_len=64', f'--out_dir={out}',
            *extra]


def test_a_diverging_run_stops_and_never_replaces_a_good_checkpoint(tiny_reasoning, tmp_path):
    out = str(tmp_path / 'run')
    common = ['--eval_interval=3', '--always_save_checkpoint=True', '--lr_decay_iters=30',
              '--warmup_iters=0']
    assert run_script(*stage1_args(tiny_reasoning, out, '--max_iters=3', *common)).returncode == 0
    path = os.path.join(out, 'ckpt.pt')
    good = os.path.getmtime(path), checkpoint.load_checkpoint(path)['iter_num']
    r = run_script(*stage1_args(tiny_reasoning, out, '--max_iters=30', '--init_from=resume',
                                '--learning_rate=1e6', *common))
    assert r.returncode != 0 and 'diverged' in r.stderr and 'Traceback' not in r.stderr
    assert (os.path.getmtime(path), checkpoint.load_checkpoint(path)['iter_num']) == good


def test_training_again_into_a_trained_out_dir_is_refused(tiny_reasoning, tmp_path, monkeypatch,
                                                         capsys):
    out = str(tmp_path / 'run')
    r = run_script(*stage1_args(tiny_reasoning, out, '--max_iters=2', '--eval_interval=2'))
    assert r.returncode == 0
    before = open(os.path.join(out, 'ckpt.pt'), 'rb').read()
    code, said = run_in_process(stage1_args(tiny_reasoning, out, '--max_iters=2',
                                            '--eval_interval=2'), monkeypatch, capsys)
    assert code != 0 and '--init_from=resume' in said and 'fresh --out_dir' in said
    assert open(os.path.join(out, 'ckpt.pt'), 'rb').read() == before


def test_corrupted_checkpoint_and_stale_files(tiny_reasoning, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / 'run')
    args = ['--eval_interval=2', '--always_save_checkpoint=True', '--lr_decay_iters=4']
    assert run_script(*stage1_args(tiny_reasoning, out, '--max_iters=2', *args)).returncode == 0
    path = os.path.join(out, 'ckpt.pt')
    with open(path + '.tmp', 'wb') as f:  # what a kill in mid-save leaves behind
        f.write(b'partial')
    # records logged after the checkpoint, then killed
    with open(os.path.join(out, 'log.jsonl'), 'a') as f:
        f.write(json.dumps(dict(iter=3, loss=9.0)) + '\n{"iter": 4, "lo')
    r = run_script(*stage1_args(tiny_reasoning, out, '--max_iters=4', '--init_from=resume', *args))
    assert r.returncode == 0
    assert not os.path.exists(path + '.tmp')
    with open(os.path.join(out, 'log.jsonl')) as f:
        records = [json.loads(line) for line in f]
    steps = [r['iter'] for r in records if 'loss' in r]
    evals = [r['iter'] for r in records if 'val_loss' in r]
    assert steps == [1, 2, 3, 4] and evals == [0, 2, 4]
    assert all(r.get('loss') != 9.0 for r in records)
    data = bytearray(open(path, 'rb').read())
    # inside the stored tensors, past the zip entry's header
    tensor_bytes = data.find(b'data/0') + 2000
    data[tensor_bytes:tensor_bytes + 100] = bytes(100)
    open(path, 'wb').write(bytes(data))
    code, said = run_in_process(['sample.py', f'--ckpt={path}', '--device=cpu'], monkeypatch,
                                capsys)
    assert code != 0 and 'is corrupted' in said and 'Traceback' not in said


@pytest.mark.parametrize('args,message', [
    (['--prompt=' + '1+2' * 40], 'leaves no room to generate'),
    (['--max_new_tokens=500', '--prompt=1+2=?\\n'], 'must fit the context'),
])
def test_bad_sampling_input_is_a_clear_error(tiny_ckpt, args, message, monkeypatch, capsys):
    code, out = run_in_process(['sample.py', f'--ckpt={tiny_ckpt}', '--device=cpu',
                                '--num_samples=1', *args], monkeypatch, capsys)
    assert code != 0 and message in out


@pytest.mark.parametrize('script', ['train_stage1.py', 'train_stage2.py', 'sample.py', 'eval.py',
                                    'bench.py'])
def test_help_says_what_the_script_does_and_its_keys(script, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, 'argv', [script, '--help'])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(script, run_name='__main__')
    out = capsys.readouterr().out
    assert e.value.code == 0 and 'config keys' in out and '--device=' in out
    assert len(out.split('config keys')[0].strip()) > 40  # the script's own description comes first


def test_bad_and_surprising_input_table(tiny_reasoning, tiny_ckpt, tmp_path, monkeypatch, capsys):
    """Each row: a clear line and the right exit code, never a traceback, nothing lost."""
    a_file = tmp_path / 'a_file'
    a_file.write_text('x')
    busy = tmp_path / 'busy'
    busy.mkdir()
    # a live process (this test's parent) holds it
    (busy / 'train.lock').write_text(str(os.getppid()))
    stale = tmp_path / 'stale'
    stale.mkdir()
    (stale / 'train.lock').write_text('999999999')  # no such process
    ckpt_dir = os.path.dirname(tiny_ckpt)
    (tmp_path / 'other.jsonl').write_text('{"a": 1}\n')
    latin1 = tmp_path / 'latin1.txt'
    latin1.write_bytes('café\n'.encode('latin-1'))
    (tmp_path / 'lock_dir' / 'train.lock').mkdir(parents=True)
    no_test = tmp_path / 'no_test'  # a dataset that lost its test.pkl, and a checkpoint trained on it
    no_test.mkdir()
    for name in ('train.bin', 'val.bin', 'meta.pkl'):
        shutil.copy(os.path.join(tiny_reasoning, name), no_test / name)
    state = checkpoint.load_checkpoint(tiny_ckpt)
    state['meta'] = dict(state['meta'], dataset=str(no_test))
    checkpoint.save_checkpoint(state, str(no_test / 'ckpt.pt'))
    monkeypatch.setenv('HOME', str(tmp_path))  # where --out_dir=~/home_run lands
    rows = [
        (['sample.py', f'--ckpt={no_test / "ckpt.pt"}', '--device=cpu'], 1,
         'has no scorable test split'),
        (['data/text_bpe/prepare.py', f'--input={latin1}'], 1, 'is not UTF-8 text (byte 3)'),
        (['sample.py', f'--ckpt={tiny_ckpt}', '--device=cpu', '--num_samples=1', '--use_rcd=True'],
         0, 'use_rcd=True is not how the model was trained (use_rcd=False)'),
        (['train_stage2.py', f'--init_from={tiny_ckpt}', f'--reference_ckpt={tiny_ckpt}'], 1,
         'reference_ckpt is read only with rollout_steps=0'),
        (['train_stage2.py', f'--init_from={tiny_ckpt}', f'--reference_ckpt={tiny_ckpt}',
          '--rollout_steps=0', '--rollout_plain=0', '--alpha_mode=none'], 1,
         'reference_ckpt is read only with rollout_steps=0 and a residual'),
        (stage1_args(tiny_reasoning, tmp_path / 'lock_dir', '--max_iters=1'), 1,
         'train.lock is a directory, not a lock file'),
        (stage1_args(tiny_reasoning, '~/home_run', '--max_iters=0'), 0, 'nothing to train'),
        (stage1_args(tiny_reasoning, a_file, '--max_iters=1'), 1, 'is a file, not a directory'),
        (stage1_args(tiny_reasoning, busy, '--max_iters=1'), 1, 'in use by another training'),
        (stage1_args(tiny_reasoning, stale, '--max_iters=1', '--eval_interval=1'), 0,
         'taking over the stale lock'),
        (stage1_args(tiny_reasoning, tmp_path / 'w', '--warmup_iters=5', '--lr_decay_iters=2'), 1,
         'must be >= warmup_iters'),
        (['sample.py', f'--ckpt={ckpt_dir}', '--device=cpu'], 1,
         'is a directory: give the ckpt.pt file'),
        (['sample.py', f'--ckpt={tiny_ckpt}', '--device=cpu', '--num_samples=0'], 1,
         'need 1 <= num_samples'),
        (['sample.py', f'--ckpt={tiny_ckpt}', '--device=tpu'], 1, "runs on 'cpu' or 'cuda'"),
        (['sample.py', f'--ckpt={tiny_ckpt}', '--device=meta'], 1, "runs on 'cpu' or 'cuda'"),
        (['sample.py', f'--ckpt={tiny_ckpt}', '--num_samples=1000000'], 1, 'num_samples <= 1000'),
        (stage1_args(tiny_reasoning, ckpt_dir, '--init_from=resume', '--n_layer=5'), 1,
         'trained with other settings: n_layer 5 (was 2)'),
        (stage1_args(tiny_reasoning, ckpt_dir, '--eval_only=True'), 1, 'score fresh weights'),
        (stage1_args(tiny_reasoning, tmp_path / 's', '--seed=-1'), 1, 'seed=-1 must be >= 0'),
        (stage1_args(tiny_reasoning, tmp_path / 's', '--seed=4294967296'), 1,
         'must be below 2**32'),
        (['sample.py', f'--ckpt={tiny_ckpt}', '--temperature=1e-40'], 1, 'finite and >= 1e-3'),
        (stage1_args(tiny_reasoning, '', '--max_iters=1'), 1, 'out_dir is empty'),
        (stage1_args(tiny_reasoning, tmp_path / 'n', '--learning_rate=nan'), 1,
         'finite learning_rate'),
        (['train_stage2.py', '--device=cpu', f'--dataset={tiny_reasoning}', '--init_from=resume',
          f'--out_dir={ckpt_dir}'], 1, 'a stage-1 checkpoint where a stage-2 one belongs'),
        (['train_stage2.py', '--device=cpu', f'--dataset={tiny_reasoning}',
          f'--init_from={tiny_ckpt}', f'--out_dir={tmp_path / "r"}', '--rollout_steps=1000000'], 1,
         'decoded in at most 8 steps'),
        (['train_stage2.py', '--alpha_scale=nan'], 1, 'a finite alpha_scale >= 0'),
        (['train_stage2.py', '--alpha_scale=1e999'], 1, 'a finite alpha_scale >= 0'),
        (['sample.py', f'--ckpt={tiny_ckpt}', '--residual_temperature=1e-300'], 1,
         '1e-3 <= residual_temperature'),
        (['sample.py', f'--ckpt={tiny_ckpt}', '--use_rcd=True', '--alpha_constant=2'], 1,
         '0 <= alpha_constant <= 1'),
        (['sample.py', f'--ckpt={tiny_ckpt}', '--use_rcd=False', '--first_step=self'], 1,
         'use it with --use_rcd=True'),
        (['sample.py', f'--ckpt={tiny_ckpt}', '--device=cpu', '--num_samples=1',
          '--tokens_per_step=99', '--threshold=0'], 0,
         'more than a block'),
        (['train_stage2.py', '--device=cpu', f'--dataset={tiny_reasoning}',
          f'--init_from={tiny_ckpt}', f'--out_dir={tmp_path / "p"}', '--rollout_steps=0',
          '--rollout_plain=0',
          '--reference_ckpt=/no/such.pt'], 1, "reference_ckpt '/no/such.pt' not found"),
        (['train_stage2.py', '--rollout_plain=2'], 1, 'need 0 <= rollout_plain <= 1'),
        (['eval.py', f'--ckpt={tiny_ckpt}', '--device=cpu', '--n_problems=-1'], 1,
         'need n_problems >= 0'),
        (['bench.py', '--sizes=nosuch'], 1, 'unknown size or section: nosuch'),
        (['bench.py', '--repeats=0'], 1, 'need warmup >= 0 and repeats >= 1'),
        (['bench.py', '--sections=bogus'], 1, 'unknown size or section: bogus'),
        (['data/sudoku/prepare.py', f'--out_dir={a_file}'], 2, 'is a file, not a directory'),
        (['data/reasoning/prepare.py', f'--out_dir={a_file}'], 2, 'is a file, not a directory'),
        (['data/sudoku4/prepare.py', f'--out_dir={a_file}'], 2, 'is a file, not a directory'),
        (['eval.py', f'--ckpt={tiny_ckpt}', '--device=cpu', f'--records={a_file}/r.jsonl'], 1,
         'cannot write records'),
        (['eval.py', f'--ckpt={tiny_ckpt}', '--device=cpu', '--batch_size=0'], 1,
         'batch_size >= 1'),
        (['eval.py', f'--report={a_file}', f'--val={a_file}'], 1, 'line 1: not a JSON record'),
        (['eval.py', f'--report={tmp_path / "other.jsonl"}', f'--val={a_file}'], 1,
         'not an eval.py record'),
        (stage1_args(tiny_reasoning, tmp_path / 'zero', '--max_iters=0'), 0, 'nothing to train'),
    ]
    # a training that starts runs in a subprocess (lock, signal handler)
    for args, code, message in rows:
        if args[0].startswith('train_stage') and code == 0:
            r = run_script(*map(str, args))
            returncode, out = r.returncode, r.stdout + r.stderr
        else:  # the rest in this process: a traceback would surface as an exception here
            returncode, out = run_in_process(args, monkeypatch, capsys)
        assert (returncode != 0) == bool(code), (args, out)
        assert message in out and 'Traceback' not in out, (args, out)
    # nothing lost; lock released; ~ is the home directory, not a directory named '~'
    assert a_file.read_text() == 'x' and not (stale / 'train.lock').exists()
    assert (tmp_path / 'home_run' / 'log.jsonl').is_file() and not os.path.exists(f'{ROOT}/~')


@pytest.mark.parametrize('sig', ['SIGINT', 'SIGTERM'])  # Ctrl-C, and what batch schedulers send
def test_a_stop_signal_says_where_the_run_stopped_and_how_to_resume(tiny_reasoning, tmp_path, sig):
    import signal
    import subprocess
    import time
    out = tmp_path / 'run'
    args = stage1_args(tiny_reasoning, out, '--max_iters=100000', '--lr_decay_iters=100000',
                       '--eval_interval=2')
    p = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / 'ckpt.pt').exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    p.send_signal(getattr(signal, sig))
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode != 0 and 'Traceback' not in stderr, stderr
    assert 'the last checkpoint is' in stderr and '--init_from=resume' in stderr
    assert 'stopped at iteration' in stderr
    assert checkpoint.load_checkpoint(str(out / 'ckpt.pt'))['iter_num'] >= 2
    assert not (out / 'train.lock').exists()


def test_a_checkpoint_trained_on_a_relative_dataset_path_works_from_any_directory(tiny_reasoning,
                                                                                  tmp_path):
    import shutil
    import subprocess
    shutil.copytree(tiny_reasoning, tmp_path / 'data')
    args = [sys.executable, os.path.join(ROOT, 'train_stage1.py'), *TINY, '--dataset=./data',
            '--seq_len=64', '--out_dir=run', '--max_iters=1', '--eval_interval=1']
    assert subprocess.run(args, cwd=tmp_path, capture_output=True, timeout=120).returncode == 0
    # from the repository root, not from where it trained
    r = run_script('sample.py', f'--ckpt={tmp_path / "run" / "ckpt.pt"}', '--device=cpu',
                   '--num_samples=1', '--use_rcd=False')
    assert r.returncode == 0 and 'test problems right' in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize('script', ['eval.py', 'sample.py', 'train_stage1.py', 'train_stage2.py',
                                    'bench.py'])
def test_ctrl_c_while_torch_loads_quits_quietly(script):
    import signal
    import subprocess
    import time
    p = subprocess.Popen([sys.executable, script, '--device=cpu'], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    time.sleep(0.4)  # past the interpreter's start, inside `import torch` (about a second)
    p.send_signal(signal.SIGINT)
    _, stderr = p.communicate(timeout=60)
    assert p.returncode == 130 and stderr == '', stderr  # quietly, as a shell's Ctrl-C


@pytest.mark.parametrize('env,message', [
    ({'EASY_SEEDS': ''}, 'HARD_SEEDS and EASY_SEEDS are both empty'),
    ({'EASY_SEEDS': '1,2'}, "EASY_SEEDS='1,2' must be seeds"),
    ({'JOBS': '0'}, "JOBS='0' must be a whole number >= 1"),
    ({'GPUS': 'x'}, "GPUS='x' must be a whole number 0..10"),
    ({'STAGE2_ITERS': '3'}, 'must be whole numbers >= 5, the warm-up (got 3)'),
    ({'ARMS': 'baseline nosuch'}, "unknown arm 'nosuch'"),
])
def test_bad_recipe_settings_stop_before_any_work(env, message, tmp_path):
    import subprocess
    r = subprocess.run(['bash', 'config/recipe.sh', 'gpu' if 'GPUS' in env else 'cpu'], cwd=ROOT,
                       env={**os.environ, 'RUN_DIR': str(tmp_path / 'run'), **env},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and message in r.stderr and not (tmp_path / 'run').exists(), r.stderr


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / 'ckpt.pt')
    ckpt = dict(model={'w': torch.ones(2)}, model_args={}, meta={}, stage=1)
    checkpoint.save_checkpoint(ckpt, path)

    def disk_full(obj, f):
        open(f, 'wb').write(b'partial')
        raise RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 0 vs 1')
    monkeypatch.setattr(checkpoint.torch, 'save', disk_full)
    with pytest.raises(SystemExit) as e:
        checkpoint.save_checkpoint(dict(ckpt, model={'w': torch.zeros(2)}), path)
    assert 'could not save the checkpoint' in str(e.value) and 'is intact' in str(e.value)
    assert not os.path.exists(path + '.tmp')
    monkeypatch.undo()
    assert torch.equal(checkpoint.load_checkpoint(path)['model']['w'], torch.ones(2))


def test_the_readme_starts_with_two_commands_and_ci_runs_the_second_in_a_fresh_venv():
    from readme_commands import readme_commands
    install, test = readme_commands()
    for command in (install, test):  # one line each, installing the lock first
        assert '\n' not in command and command.startswith('pip install -r requirements.txt && ')
    assert 'train_stage1.py' in install and test.endswith('python -m pytest -q tests')
    with open(os.path.join(ROOT, '.ci', 'run')) as f:
        ci = f.read()
    assert 'python3 -m venv' in ci and 'readme_commands.py 2)' in ci and 'bash -c "$command"' in ci
    with open(os.path.join(ROOT, 'requirements.txt')) as f:  # the lock: every package pinned
        lock = [line.strip() for line in f if line.strip() and not line.startswith('#')]
    assert all(re.fullmatch(r'[A-Za-z0-9_.-]+==[0-9][A-Za-z0-9.]*', line) for line in lock), lock
    assert {'torch', 'numpy', 'tiktoken', 'tqdm', 'pytest'} <= {x.split('==')[0] for x in lock}
