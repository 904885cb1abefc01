"""
nanoGPT-style configuration: a script's config globals, overridden in order by config files and
--key=value flags.

    python train_stage1.py config/quick_cpu.py --batch_size=32 --compile=False

A config file is Python that assigns some of those globals. Unknown keys and values of the wrong
type are errors that say what was expected; nothing is silently ignored.
"""
import ast
import difflib
import os
import signal
import sys


# keys whose values are paths: a leading ~ is the home directory, as in a shell
PATH_KEYS = ('out_dir', 'dataset', 'init_from', 'reference_ckpt', 'ckpt', 'records', 'report',
             'plot', 'val')


def _fail(msg):
    raise SystemExit(f'config error: {msg}')


def _checked(key, value, defaults, source):
    if key not in defaults:
        near = difflib.get_close_matches(key, defaults, n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else ''
        _fail(f"unknown key '{key}' in {source}{hint}\n  known keys: {', '.join(sorted(defaults))}")
    want = type(defaults[key])
    if want is float and type(value) is int:
        value = float(value)
    if type(value) is not want:
        _fail(f"{key}={value!r} in {source} is a {type(value).__name__}; expected a "
              f"{want.__name__} (default: {defaults[key]!r})")
    if key in PATH_KEYS and value.startswith('~'):  # --out_dir=~/x: no shell expands it
        value = os.path.expanduser(value)
    return value


def _run_file(path):
    """The globals a config file assigns; an error in it is one line."""
    namespace = {}
    try:
        with open(path) as f:
            exec(compile(f.read(), path, 'exec'), namespace)
    except SyntaxError as e:
        _fail(f'{path}, line {e.lineno}: {e.msg}')
    except Exception as e:  # a config file that raises
        _fail(f'{path} failed: {type(e).__name__}: {e}')
    return namespace


def configure(config, keys, argv):
    """Apply config files and --key=value flags from argv to the dict `config` (a script's
    globals), for `keys` only; returns the keys they set. Ctrl-C raises KeyboardInterrupt again
    from here: each script quits at once on it while torch loads (an exception raised inside
    torch's import can abort)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    defaults, told = {k: config[k] for k in keys}, set()
    if '--help' in argv or '-h' in argv:  # what the script does, then every key with its default
        print((config.get('__doc__') or '').strip()
              + '\n\nconfig keys (--key=value), with their defaults:')
        for k in keys:
            print(f'  --{k}={defaults[k]!r}')
        raise SystemExit(0)
    for arg in argv:
        if not arg.startswith('--'):
            if not os.path.isfile(arg):
                _fail(f"config file '{arg}' not found (flags are written --key=value)")
            for key, value in _run_file(arg).items():
                if not key.startswith('_') and not callable(value) and \
                        type(value).__name__ != 'module':
                    config[key] = _checked(key, value, defaults, arg)
                    told.add(key)
        else:
            key, eq, text = arg[2:].partition('=')
            if not eq:
                _fail(f"flag '{arg}' has no value; write --{key}=VALUE")
            try:
                value = ast.literal_eval(text)
            except (SyntaxError, ValueError):
                value = text  # a bare word is a string
            if type(defaults.get(key)) is str:
                value = text  # a string key takes the text as written, even '1' or 'True'
            if type(defaults.get(key)) is float and text.lower() in ('nan', 'inf', '-inf'):
                value = float(text)  # a number: the script's range checks say what is wrong
            config[key] = _checked(key, value, defaults, 'command line')
            told.add(key)
    changed = ' '.join(f'{k}={config[k]!r}' for k in keys if config[k] != defaults[k])
    if os.environ.get('RANK', '0') == '0':  # under torchrun, rank 0 speaks for all
        print(f"config: {changed or 'defaults'}")
    return told


def configure_and_run(main, config):
    """A script's entry: configure its plain-typed globals from argv, then run main(told), told the
    keys a config file or flag set; Ctrl-C stops it with one line (what it wrote before is
    whole)."""
    keys = [k for k, v in config.items()
            if not k.startswith('_') and type(v) in (int, float, bool, str)]
    told = configure(config, keys, sys.argv[1:])
    try:
        main(told)
    except KeyboardInterrupt:
        raise SystemExit('stopped (Ctrl-C)')
