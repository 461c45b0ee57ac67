"""What a clone of many small files costs, and what the caps and the background removal save.

Builds a local repository of N files of a few bytes in a temporary directory, then measures in one run: a full clone
(time, length of its files against the disk blocks they take, number of files), a clone stopped by a size cap of a
fifth of those blocks, and the removal of a full clone in place (`shutil.rmtree`) against `remove_clone` (a rename,
the deleting done in a background process).
Usage: python bench/clone_caps.py [--files N]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rqjobs.exceptions import RepositoryTooLarge
from rqjobs.repository import clone, storage
from rqjobs.settings import Settings


def build(path: Path, count: int) -> None:
    env = {
        'PATH': os.environ['PATH'],
        'HOME': os.devnull,
        'GIT_CONFIG_GLOBAL': os.devnull,
        'GIT_AUTHOR_NAME': 'a',
        'GIT_AUTHOR_EMAIL': 'a@b',
        'GIT_COMMITTER_NAME': 'a',
        'GIT_COMMITTER_EMAIL': 'a@b',
    }
    path.mkdir(parents=True)
    for index in range(count):
        directory = path / f'd{index // 100}'
        directory.mkdir(exist_ok=True)
        (directory / f'f{index}.txt').write_text(f'{index}\n')
    for args in (['init', '-q'], ['add', '-A'], ['commit', '-q', '-m', 'many']):
        subprocess.run(['git', *args], cwd=path, env=env, check=True)


def lengths(path: Path) -> int:
    return sum(entry.lstat().st_size for entry in path.rglob('*'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--files', type=int, default=20_000)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix='rqjobs-bench-') as tmp:
        root = Path(tmp)
        source = root / 'upstream' / 'org' / 'many'
        build(source, options.files)
        settings = Settings(
            repo_root=root / 'repos', allow_local_repositories=True, git_max_repo_files=options.files * 2
        )
        (root / 'repos').mkdir()
        began = time.monotonic()
        clone.sync(str(source), root / 'repos' / 'a', settings=settings)
        clone_seconds = time.monotonic() - began
        allocated, files = storage.disk_usage(root / 'repos' / 'a')
        length = lengths(root / 'repos' / 'a')
        print(
            f'{options.files} files: full clone {clone_seconds:.1f} s, {files} files and directories, '
            f'{length / 2**20:.1f} MB of length, {allocated / 2**20:.1f} MB of disk blocks '
            f'({allocated / length:.0f}x)'
        )
        cap_mb = max(1, allocated // 2**20 // 5)
        began = time.monotonic()
        try:
            clone.sync(
                str(source), root / 'repos' / 'b', settings=dataclasses.replace(settings, git_max_repo_size_mb=cap_mb)
            )
        except RepositoryTooLarge:
            print(f'with GIT_MAX_REPO_SIZE={cap_mb}: refused after {time.monotonic() - began:.1f} s')
        shutil.copytree(root / 'repos' / 'a', root / 'repos' / 'c', symlinks=True)
        began = time.monotonic()
        shutil.rmtree(root / 'repos' / 'c')
        print(f'removal in place (rmtree): {time.monotonic() - began:.2f} s')
        began = time.monotonic()
        storage.remove_clone(root / 'repos' / 'a', settings)
        returned = time.monotonic() - began
        for remover in storage._removers:
            remover.wait()
        print(
            f'remove_clone: returned after {returned:.3f} s, background removal done after '
            f'{time.monotonic() - began:.2f} s'
        )


if __name__ == '__main__':
    main()
