import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def run_script(*args):
    """Run a repo script in a fresh interpreter, as a user would; returns the CompletedProcess (text)."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope='session')
def tiny_reasoning(tmp_path_factory):
    """A small reasoning dataset (same generator as the default, fewer problems) in a temporary directory."""
    out = tmp_path_factory.mktemp('reasoning')
    r = run_script('data/reasoning/prepare.py', '--n_train=3000', '--n_val=200', '--n_test=50', '--min_terms=2',
                   '--max_terms=3', f'--out_dir={out}')
    assert r.returncode == 0, r.stderr
    return str(out)


# a model small enough that a training run takes seconds on a CPU
TINY = ['--device=cpu', '--n_layer=2', '--n_head=2', '--n_embd=32', '--batch_size=16', '--eval_iters=2',
        '--log_interval=1', '--warmup_iters=2']
