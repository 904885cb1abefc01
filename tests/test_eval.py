"""The decoding sweep (eval.py), its records and confidence intervals, its report, and the
benchmark's CPU smoke run."""
import contextlib
import json
import os

import pytest

from conftest import run_in_process, run_script
from eval import row_of, setting_of


def sweep(ckpt, records, *extra):
    r = run_script('eval.py', f'--ckpt={ckpt}', f'--records={records}', '--device=cpu',
                   '--n_problems=20', '--tokens_per_step_grid=1,8', '--threshold_grid=0.9', *extra)
    assert r.returncode == 0, r.stdout + r.stderr
    with open(records) as f:
        return [json.loads(line) for line in f]


def test_sweep_writes_one_record_per_setting(tiny_ckpt, tmp_path):
    records = str(tmp_path / 'results.jsonl')
    base = sweep(tiny_ckpt, records)
    assert [(r['rule'], r['tokens_per_step'], r['threshold']) for r in base] == \
        [('static', 1, None), ('static', 8, None), ('threshold', None, 0.9)]
    for r in base:
        assert r['label'] == 'baseline' and r['n'] == 20
        assert r['correct'] == round(r['accuracy'] * 20)
        assert r['wall_s'] > 0
    # 8 tokens per step needs fewer passes than 1
    assert base[1]['mean_passes'] < base[0]['mean_passes']
    # RCD's knobs per rule: each alpha scale with each T_res and first step, then the residual off
    # (alpha x 0) once, which is the plain sampler: the same answers at the same cost, appended to
    # the same file
    rows = sweep(tiny_ckpt, records, '--use_rcd=True', '--alpha_scales=0.5,0',
                 '--residual_temperatures=2', '--first_steps=zero,self', '--label=rcd')[3:]
    knobs = [(r['alpha_scale'], r['residual_temperature'], r['first_step']) for r in rows]
    assert knobs == [(0.5, 2.0, 'zero'), (0.5, 2.0, 'self'), (0.0, 1.0, 'zero')] * 3
    for a, on, off in zip(base, rows[0::3], rows[2::3]):
        assert (a['items'], a['mean_passes']) == (off['items'], off['mean_passes'])
        assert off['label'] == 'rcd'
        assert setting_of(off) == setting_of(a) and row_of(off) == 'rcd_off' != row_of(on) == 'rcd'
        assert setting_of(on).endswith(', α × 0.5, T_res 2.0, first step zero')
    # the 'self' first step costs one more pass per block
    assert all(b['mean_passes'] > a['mean_passes'] for a, b in zip(rows[::3], rows[1::3]))


def test_report_and_plot_from_records(tiny_ckpt, tmp_path, monkeypatch, capsys):
    test, val = str(tmp_path / 'test.jsonl'), str(tmp_path / 'val.jsonl')
    for records, split in ((test, 'test'), (val, 'val')):
        for extra in ([], ['--use_rcd=True', '--label=rcd', '--alpha_scales=1,0']):
            code, out = run_in_process(['eval.py', f'--ckpt={tiny_ckpt}', f'--records={records}',
                                        '--device=cpu', '--n_problems=20',
                                        '--tokens_per_step_grid=1,8', '--threshold_grid=0.9',
                                        f'--split={split}', *extra], monkeypatch, capsys)
            assert code == 0, out
    code, out = run_in_process(['eval.py', f'--report={test}', f'--val={val}', '--budgets=4,100'],
                               monkeypatch, capsys)
    assert code == 0 and '| rcd − baseline |' in out and '| rcd_off − baseline |' in out, out
    code, out = run_in_process(['eval.py', f'--report={val}', f'--val={test}'], monkeypatch, capsys)
    assert code != 0 and 'a test record where val records belong' in out
    with open(test) as f:  # a row in val but not in test must not vanish from the tables
        lines = f.readlines()
    with open(val) as f:  # val records pasted into the test file: never read as test records
        (tmp_path / 'pasted.jsonl').write_text(''.join(lines) + f.read())
    code, out = run_in_process(['eval.py', f'--report={tmp_path / "pasted.jsonl"}', f'--val={val}'],
                               monkeypatch, capsys)
    assert code != 0 and 'a val record where test records belong' in out, out
    # one row scored on fewer puzzles: paired differences must not be cut to the shorter row
    fewer = [json.loads(x) for x in lines]
    fewer = [{**r, 'n': 10, 'items': r['items'][:10]} if r['label'] == 'rcd' else r for r in fewer]
    (tmp_path / 'fewer.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in fewer))
    code, out = run_in_process(['eval.py', f'--report={tmp_path / "fewer.jsonl"}', f'--val={val}'],
                               monkeypatch, capsys)
    assert code != 0 and 'records over different numbers of items ([10, 20])' in out, out
    code, out = run_in_process(['eval.py', f'--report={tiny_ckpt}', f'--val={val}'],
                               monkeypatch, capsys)
    assert code != 0 and 'line 1: not a JSON record' in out and 'Traceback' not in out, out
    (tmp_path / 'no_rcd.jsonl').write_text(''.join(x for x in lines if '"rcd"' not in x))
    code, out = run_in_process(['eval.py', f'--report={tmp_path / "no_rcd.jsonl"}', f'--val={val}'],
                               monkeypatch, capsys)
    assert code != 0 and "row 'rcd', seed 1337 has val records but no test records" in out, out
    other = [json.dumps({**json.loads(x), 'dataset': 'sudoku4'}) + '\n' for x in lines[:1]]
    (tmp_path / 'mixed.jsonl').write_text(''.join(other + lines[1:]))  # another task's record
    code, out = run_in_process(['eval.py', f'--report={tmp_path / "mixed.jsonl"}', f'--val={val}'],
                               monkeypatch, capsys)
    assert code != 0 and 'records of 2 datasets (dataset, data seed) mixed' in out, out
    no_rule = {k: v for k, v in json.loads(lines[0]).items() if k != 'tokens_per_step'}
    (tmp_path / 'no_rule.jsonl').write_text(json.dumps(no_rule) + '\n')
    code, out = run_in_process(['eval.py', f'--report={tmp_path / "no_rule.jsonl"}',
                                f'--val={val}'], monkeypatch, capsys)
    assert code != 0
    assert "line 1: not an eval.py record (a rule 'static' with tokens_per_step" in out
    no_items = {**json.loads(lines[0]), 'items': 5}
    (tmp_path / 'no_items.jsonl').write_text(json.dumps(no_items) + '\n')
    code, out = run_in_process(['eval.py', f'--report={tmp_path / "no_items.jsonl"}',
                                f'--val={val}'], monkeypatch, capsys)
    assert code != 0 and 'line 1: not an eval.py record (items: a string of 0s and 1s' in out
    pytest.importorskip('matplotlib')
    code, out = run_in_process(['eval.py', f'--plot={test}', f'--val={val}',
                                '--differences=rcd-baseline,rcd-rcd_off'], monkeypatch, capsys)
    assert code == 0 and os.path.getsize(tmp_path / 'test.png') > 1000, out


@pytest.mark.parametrize('args,message', [
    (['--threshold_grid=a,b'], "must be comma-separated numbers"),
    (['--tokens_per_step_grid=0'], 'tokens_per_step >= 1'),
    (['--alpha_scales=0.5'], 'use them with --use_rcd=True'),
    (['--use_rcd=True', '--alpha_scales=nan'], 'alpha_scale >= 0 both finite'),
    (['--first_steps=self'], 'use it with --use_rcd=True'),
    (['--use_rcd=True', '--first_steps=zero,reference'], "needs --reference_ckpt=PATH"),
    (['--use_rcd=True', '--first_steps=zero,nosuch'], "nosuch"),
    (['--use_rcd=True', '--reference_ckpt=x.pt'],
     "reference_ckpt is read only by first_steps 'reference'"),
    (['--use_rcd=True', '--residual_temperatures=2.5x'],
     "residual_temperatures='2.5x' must be comma-separated"),
    (['--split=train'], "split='train' must be 'val' or 'test'"),
    (['--n_problems=-1'], 'need n_problems >= 0'),
    (['--batch_size=0'], 'batch_size >= 1'),
    (['--plot=/no/such/records.jsonl', '--val=/no/such/val.jsonl'],
     "records file '/no/such/records.jsonl' not found"),
    (['--report=/no/such/records.jsonl'], 'give --val=VAL_RECORDS'),
    (['--budgets=0,3'], 'each >= 1'),
    (['--budgets=3,nan'], 'each >= 1 and finite'),
    (['--seed=99999999999999999999'], '0 <= seed < 2**32'),
])
def test_bad_eval_input_is_a_clear_error(tiny_ckpt, args, message, monkeypatch, capsys):
    code, out = run_in_process(['eval.py', f'--ckpt={tiny_ckpt}', '--device=cpu', *args],
                               monkeypatch, capsys)
    assert code != 0 and message in out


def test_bench_smoke_runs_on_cpu(tmp_path):
    out = str(tmp_path / 'bench.jsonl')
    r = run_script('bench.py', f'--out={out}', '--profile=True')
    assert r.returncode == 0, r.stderr
    # each stage's step, by op
    assert r.stdout.count('profile: smoke stage') == 3 and 'aten::mm' in r.stdout
    with open(out) as f:
        rows = [json.loads(line) for line in f]
    whats = {r['what'] for r in rows}
    assert {'train stage1', 'train stage2', 'train stage2 rollout',
            'train stage2/stage1', 'attention train fwd+bwd (2L)', 'sample',
            'sample summary'} <= whats
    passes = {(r['kv_cache'], r['tokens_per_step']): r['forward_passes'] for r in rows
              if r['what'] == 'sample' and r['method'] == 'baseline' and r['batch'] == 1}
    # 2 blocks of 8: 16 steps, + 1 cache fill with the cache
    assert passes['none', 1] == 16 and passes['eager', 1] == 17


def test_split_val_scores_the_val_file(tiny_reasoning, tiny_ckpt, tmp_path):
    import pickle
    import shutil

    import checkpoint
    data = tmp_path / 'data'
    shutil.copytree(tiny_reasoning, data)
    with open(data / 'test.pkl', 'rb') as f:
        test = pickle.load(f)
    # a val split of 7 problems whose reference answers no model gives
    with open(data / 'val.pkl', 'wb') as f:
        pickle.dump([(q, a.replace('####', '#### 99999 ####')) for q, a in test[:7]], f)
    ckpt = checkpoint.load_checkpoint(tiny_ckpt)
    ckpt['meta']['dataset'] = str(data)
    path = str(tmp_path / 'ckpt.pt')
    checkpoint.save_checkpoint(ckpt, path)
    val, test_rows = (sweep(path, str(tmp_path / f'{s}.jsonl'), f'--split={s}', '--n_problems=0')
                      for s in ('val', 'test'))
    assert {(r['split'], r['n'], r['correct']) for r in val} == {('val', 7, 0)}
    assert {(r['split'], r['n']) for r in test_rows} == {('test', len(test))}


def test_mean_passes_count_every_problem_once_over_uneven_batches(tiny_reasoning, tiny_ckpt,
                                                                  monkeypatch):
    """eval.score's passes per answer, the x-axis of every frontier, against a hand count: a
    stand-in generate reports as many passes as the prompt has tokens, over batches of 3 problems
    grouped by prompt length (uneven groups and batches)."""
    import contextlib
    import pickle

    import torch

    import engine
    import eval as ev
    from sample import Decoding
    model, meta, tok, _, _ = engine.load_models(tiny_ckpt, '', torch.device('cpu'))
    meta = dict(meta, dataset=tiny_reasoning)
    with open(os.path.join(tiny_reasoning, 'test.pkl'), 'rb') as f:
        problems = pickle.load(f)[:17]
    lengths = [len(tok.encode(q)) for q, _ in problems]
    assert len(set(lengths)) > 1

    def counted(model, ids, n, *args):
        return torch.zeros(len(ids), ids.shape[1] + n, dtype=torch.long), torch.full(
            (len(ids),), ids.shape[1])
    monkeypatch.setattr(ev, 'generate', counted)
    right, passes = ev.score(model, tok, meta, 'test', 17, 3, contextlib.nullcontext(), 'x',
                             Decoding(), None, None)
    assert len(right) == 17 and passes == pytest.approx(sum(lengths) / 17)


def wrong(solution):
    """The solution with its last digit changed: an answer that parses and is wrong."""
    k = max(i for i, c in enumerate(solution) if c.isdigit())
    digit = '1' if solution[k] == '2' else '2'  # a digit every task's vocabulary has
    return solution[:k] + digit + solution[k + 1:]


@pytest.mark.parametrize('task', ['reasoning', 'sudoku', 'sudoku4'])
def test_every_task_checker_refuses_a_wrong_answer_that_parses(task, tiny_reasoning, tmp_path):
    from data.datasets import answer_of, is_right, load_dataset, load_problems
    data = tiny_reasoning
    if task != 'reasoning':
        data = str(tmp_path / task)
        r = run_script(f'data/{task}/prepare.py', '--n_train=20', '--n_val=5', '--n_test=5',
                       f'--out_dir={data}')
        assert r.returncode == 0, r.stderr
    meta = load_dataset(data)
    prefix = meta['answer_prefix']
    for _, solution in load_problems(meta, 'val'):
        assert is_right(answer_of(solution, prefix), solution, prefix)
        bad = answer_of(wrong(solution), prefix)
        assert bad is not None and not is_right(bad, solution, prefix)
        assert not is_right(None, solution, prefix)


def test_eval_counts_only_the_right_answers(tiny_ckpt, monkeypatch):
    import torch

    import eval as evaluate
    from data.datasets import load_problems
    from engine import load_models
    from sample import Decoding
    model, meta, tok, _, _ = load_models(tiny_ckpt, '', torch.device('cpu'))
    problems = load_problems(meta, 'val', 12)
    answer = {tuple(tok.encode(q)): tok.encode(s if i % 2 == 0 else wrong(s))
              for i, (q, s) in enumerate(problems)}  # every other problem answered wrong

    def generate(model, ids, n_new, *rest):  # a decoder that writes the answers above
        rows = [p + answer[tuple(p)] + [meta['eos_id']] * n_new for p in ids.tolist()]
        return torch.tensor([r[:ids.shape[1] + n_new] for r in rows]), torch.ones(len(ids))
    monkeypatch.setattr(evaluate, 'generate', generate)
    right, _ = evaluate.score(model, tok, meta, 'val', 12, 5, contextlib.nullcontext(), 'x',
                              Decoding(), None, None)
    assert right == [True, False] * 6
