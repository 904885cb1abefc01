"""The README's two commands: its first two ```bash blocks, one line each (the README starts with
them). `python tests/readme_commands.py N` prints the N-th: .ci/run runs the second as it is."""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_commands():
    with open(os.path.join(ROOT, 'README.md')) as f:
        return [block.strip() for block in re.findall(r'```bash\n(.*?)```', f.read(), re.S)[:2]]


if __name__ == '__main__':
    print(readme_commands()[int(sys.argv[1]) - 1])
