"""nanoGPT-style configuration: a script's config globals, overridden in order by config files and --key=value flags.

    python train_stage1.py config/quick_cpu.py --batch_size=32 --compile=False

A config file is Python that assigns some of those globals. Unknown keys and values of the wrong type are errors that
say what was expected; nothing is silently ignored.
"""
import ast
import difflib
import os


def _fail(msg):
    raise SystemExit(f'config error: {msg}')


def _checked(key, value, defaults, source):
    if key not in defaults:
        near = difflib.get_close_matches(key, defaults, n=3)
        _fail(f"unknown key '{key}' in {source}" + (f"; did you mean {', '.join(near)}?" if near else '')
              + f"\n  known keys: {', '.join(sorted(defaults))}")
    want = type(defaults[key])
    if want is float and type(value) is int:
        value = float(value)
    if type(value) is not want:
        _fail(f"{key}={value!r} in {source} is a {type(value).__name__}; expected a {want.__name__} "
              f"(default: {defaults[key]!r})")
    return value


def configure(config, keys, argv):
    """Apply config files and --key=value flags from argv to the dict `config` (a script's globals), for `keys` only."""
    defaults = {k: config[k] for k in keys}
    if '--help' in argv or '-h' in argv:  # what the script does, then every key with its default
        print((config.get('__doc__') or '').strip() + '\n\nconfig keys (--key=value), with their defaults:')
        for k in keys:
            print(f'  --{k}={defaults[k]!r}')
        raise SystemExit(0)
    for arg in argv:
        if not arg.startswith('--'):
            if not os.path.isfile(arg):
                _fail(f"config file '{arg}' not found (flags are written --key=value)")
            namespace = {}
            exec(compile(open(arg).read(), arg, 'exec'), namespace)
            for key, value in namespace.items():
                if not key.startswith('_') and not callable(value) and type(value).__name__ != 'module':
                    config[key] = _checked(key, value, defaults, arg)
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
            config[key] = _checked(key, value, defaults, 'command line')
    changed = ' '.join(f'{k}={config[k]!r}' for k in keys if config[k] != defaults[k])
    if os.environ.get('RANK', '0') == '0':  # under torchrun, rank 0 speaks for all
        print(f"config: {changed or 'defaults'}")
