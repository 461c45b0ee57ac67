"""Throughput, linearity and memory of `rqjobs.repository.analysis.analyse()` on synthetic git repositories.

Generates repositories of three sizes (Python, JavaScript, Go, Rust, Java, C and Markdown files of a few KB with
classes and functions) in a temporary directory, then measures in the same run, on a warm page cache: the raw read
of every tracked file (the same `git ls-files` list and the same opening method, no parsing) and `analyse()`. Prints
medians of several rounds, the analyse/raw throughput ratio, the cost per file across sizes (linearity) and the peak
RSS of a fresh process that only analyses, with a digest of what that analysis found (files, outlines, components,
tree, classification...): the repositories are the same from run to run, so a change meant to keep the analysis's
output must keep the digests.
Usage: python bench/analysis.py [--files N] [--rounds R] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rqjobs.repository import analysis, checkout

AIM_RATIO = 0.25  # analyse throughput / raw read throughput
AIM_RSS_MB = 300
AIM_LINEARITY = 1.3  # cost per file of the largest repository / of the smallest
_WORDS = (
    'load',
    'save',
    'parse',
    'render',
    'fetch',
    'store',
    'merge',
    'split',
    'index',
    'queue',
    'cache',
    'build',
    'check',
    'apply',
    'route',
    'match',
    'count',
    'flush',
    'order',
    'scale',
)
_GIT_ENV = {**os.environ, 'GIT_CONFIG_NOSYSTEM': '1', 'GIT_CONFIG_GLOBAL': '/dev/null', 'GIT_TERMINAL_PROMPT': '0'}


def _name(rng: random.Random) -> str:
    return f'{rng.choice(_WORDS)}_{rng.choice(_WORDS)}{rng.randrange(1000)}'


def _camel(rng: random.Random) -> str:
    return ''.join(part.title() for part in _name(rng).split('_'))


def python_file(rng: random.Random) -> str:
    parts = ['"""Synthetic module."""\n\nfrom __future__ import annotations\n\nimport os\n']
    for _ in range(rng.randint(2, 4)):
        cls = _camel(rng)
        parts.append(
            f'\n\nclass {cls}(Base):\n    """A {cls} keeps things.\n\n    More words here.\n    """\n\n'
            f'    def __init__(self, path: str, *, strict: bool = False) -> None:\n'
            f'        self.path = path\n        self.strict = strict\n'
        )
        for _ in range(rng.randint(3, 6)):
            parts.append(
                f'\n    def {_name(rng)}(self, key: str, value: int = 0) -> dict[str, int]:\n'
                f'        """Do one thing with key."""\n        result = {{}}\n'
                f'        for index in range(value):\n            result[f"{{key}}{{index}}"] = index * 2\n'
                f'        if self.strict and not result:\n            raise ValueError(key)\n'
                f'        return result\n'
            )
    for _ in range(rng.randint(2, 4)):
        parts.append(
            f'\n\nasync def {_name(rng)}(items: list[str], limit: int = 10) -> list[str]:\n'
            f'    """Return the first items."""\n    return [item.strip() for item in items[:limit]]\n'
        )
    return ''.join(parts)


def javascript_file(rng: random.Random) -> str:
    parts = ["import { helper } from './helper.js';\n"]
    for _ in range(rng.randint(2, 3)):
        cls = _camel(rng)
        parts.append(
            f'\n/**\n * A {cls}.\n */\nexport class {cls} extends Base {{\n'
            f'  constructor(options) {{\n    super();\n    this.options = options;\n  }}\n'
        )
        for _ in range(rng.randint(3, 6)):
            parts.append(
                f'\n  async {_name(rng)}(key, value = 0) {{\n    const result = await helper(key);\n'
                f'    if (!result) {{\n      throw new Error(`missing ${{key}}`);\n    }}\n'
                f'    return result.map((item) => item * value);\n  }}\n'
            )
        parts.append('}\n')
    for _ in range(rng.randint(2, 4)):
        parts.append(
            f'\nexport function {_name(rng)}(items, limit = 10) {{\n'
            f'  return items.slice(0, limit).filter(Boolean);\n}}\n'
            f'\nexport const {_name(rng)} = (a, b) => a + b;\n'
        )
    return ''.join(parts)


def go_file(rng: random.Random) -> str:
    parts = ['package synthetic\n\nimport (\n\t"context"\n\t"errors"\n)\n']
    for _ in range(rng.randint(2, 3)):
        typ = _camel(rng)
        parts.append(f'\n// {typ} holds state.\ntype {typ} struct {{\n\tname  string\n\tcount int\n}}\n')
        for _ in range(rng.randint(3, 6)):
            parts.append(
                f'\n// {_camel(rng)} does one thing.\nfunc (s *{typ}) {_camel(rng)}(ctx context.Context, '
                f'key string) (int, error) {{\n\tif key == "" {{\n\t\treturn 0, errors.New("empty key")\n'
                f'\t}}\n\ts.count++\n\treturn s.count, nil\n}}\n'
            )
    parts.append(f'\nfunc {_camel(rng)}(items []string) []string {{\n\treturn items\n}}\n')
    return ''.join(parts)


def rust_file(rng: random.Random) -> str:
    parts = ['use std::collections::HashMap;\n']
    for _ in range(rng.randint(2, 3)):
        typ = _camel(rng)
        parts.append(
            f'\n/// A {typ}.\n#[derive(Debug, Clone)]\npub struct {typ} {{\n    name: String,\n'
            f'    items: HashMap<String, u32>,\n}}\n\nimpl {typ} {{\n'
        )
        for _ in range(rng.randint(3, 6)):
            parts.append(
                f'    /// Does one thing.\n    pub fn {_name(rng)}(&mut self, key: &str) -> Option<u32> {{\n'
                f'        let value = self.items.get(key).copied()?;\n'
                f'        self.items.insert(key.to_string(), value + 1);\n        Some(value)\n    }}\n\n'
            )
        parts.append('}\n')
    parts.append(f'\npub fn {_name(rng)}(items: &[u32]) -> u32 {{\n    items.iter().sum()\n}}\n')
    return ''.join(parts)


def java_file(rng: random.Random) -> str:
    cls = _camel(rng)
    header = (
        f'package com.example.synthetic;\n\nimport java.util.List;\nimport java.util.Map;\n\n'
        f'/**\n * A {cls}.\n */\npublic class {cls} {{\n    private final Map<String, Integer> items;\n\n'
        f'    public {cls}(Map<String, Integer> items) {{\n        this.items = items;\n    }}\n'
    )
    parts = [header]
    for _ in range(rng.randint(5, 10)):
        parts.append(
            f'\n    /** Does one thing. */\n    public int {_name(rng)}(String key, List<String> values) {{\n'
            f'        if (key == null) {{\n            throw new IllegalArgumentException("key");\n'
            f'        }}\n        return items.getOrDefault(key, values.size());\n    }}\n'
        )
    parts.append('}\n')
    return ''.join(parts)


def c_file(rng: random.Random) -> str:
    parts = ['#include <stdio.h>\n#include <stdlib.h>\n\n']
    typ = _name(rng)
    parts.append(f'/* A {typ}. */\nstruct {typ} {{\n    int count;\n    char *name;\n}};\n')
    for _ in range(rng.randint(5, 10)):
        parts.append(
            f'\n/* Does one thing. */\nint {_name(rng)}(struct {typ} *item, int value)\n{{\n'
            f'    if (item == NULL) {{\n        return -1;\n    }}\n    item->count += value;\n'
            f'    printf("%d\\n", item->count);\n    return item->count;\n}}\n'
        )
    return ''.join(parts)


def markdown_file(rng: random.Random) -> str:
    parts = [f'# {_camel(rng)}\n\n']
    for _ in range(rng.randint(4, 8)):
        parts.append(
            f'## {_camel(rng)}\n\nThis section explains how to {rng.choice(_WORDS)} the '
            f'{rng.choice(_WORDS)} of a component. ' * 3 + '\n\n```sh\nmake build\n```\n\n'
        )
    return ''.join(parts)


GENERATORS = (
    (python_file, 'py', 3),
    (javascript_file, 'js', 2),
    (go_file, 'go', 2),
    (rust_file, 'rs', 1),
    (java_file, 'java', 1),
    (c_file, 'c', 1),
    (markdown_file, 'md', 1),
)


def generate(root: Path, count: int, seed: int = 7) -> None:
    """Write a repository of `count` files under `root` and commit it."""
    rng = random.Random(seed)
    weighted = [(generator, extension) for generator, extension, weight in GENERATORS for _ in range(weight)]
    root.mkdir(parents=True)
    per_directory = 40
    for index in range(count):
        generator, extension = weighted[index % len(weighted)]
        directory = root / f'pkg{index // (per_directory * 25):02d}' / f'mod{index // per_directory % 25:02d}'
        if index % per_directory == 0:
            directory.mkdir(parents=True, exist_ok=True)
        (directory / f'file{index:06d}.{extension}').write_text(generator(rng))
    (root / 'README.md').write_text('# Synthetic\n\nA synthetic repository for the analysis benchmark.\n')
    git = [
        'git',
        '-c',
        'core.fsmonitor=false',
        '-c',
        'init.defaultBranch=main',
        '-c',
        'user.name=bench',
        '-c',
        'user.email=bench@example.com',
    ]
    for command in (['init', '-q'], ['add', '-A'], ['commit', '-q', '-m', 'synthetic']):
        subprocess.run(git + command, cwd=root, env=_GIT_ENV, check=True)


def raw_read(root: Path) -> tuple[int, int]:
    """Read every tracked file's bytes as `analyse()` opens them, without parsing; return (files, bytes)."""
    files = size = 0
    with checkout.CheckoutReader(root) as reader:
        for raw, mode in checkout.tracked_files(root):
            if mode in ('120000', '160000'):
                continue
            data, _ = reader.read(raw)
            if data is not None:
                files += 1
                size += len(data)
    return files, size


def analyse_without_outlines(root: Path) -> None:
    """Analyse with outlines turned off: what reading, decoding, counting and summarising cost on their own."""
    limit = analysis.MAX_OUTLINE_FILE_SIZE
    analysis.MAX_OUTLINE_FILE_SIZE = -1
    try:
        analysis.analyse(root)
    finally:
        analysis.MAX_OUTLINE_FILE_SIZE = limit


def timed(function, *args) -> float:
    started = time.perf_counter()
    function(*args)
    return time.perf_counter() - started


def peak_rss(root: Path) -> dict:
    """Analyse in a fresh process; return its RSS after imports and at peak, in MB, and its time."""
    output = subprocess.run(
        [sys.executable, __file__, '--child', str(root)], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def high_water_mb() -> float:
    """Return this process's peak RSS in MB."""
    # VmHWM belongs to this process image; ru_maxrss would also count the parent's memory at fork/exec time.
    try:
        with open('/proc/self/status') as status:
            for line in status:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(root: Path) -> None:
    before = high_water_mb()
    started = time.perf_counter()
    result = analysis.analyse(root)
    seconds = time.perf_counter() - started
    found = result.to_dict()
    found.pop('elapsed', None)
    digest = hashlib.sha256(json.dumps(found, sort_keys=True).encode()).hexdigest()[:16]
    print(
        json.dumps(
            {
                'baseline_mb': before,
                'peak_mb': high_water_mb(),
                'seconds': seconds,
                'files': len(result.files),
                'digest': digest,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        '--files',
        type=int,
        default=20000,
        help='files of the largest repository (default 20000); the two others have a tenth and two fifths of it',
    )
    parser.add_argument('--rounds', type=int, default=3, help='rounds per measurement; the median is reported')
    parser.add_argument('--keep', action='store_true', help='keep the generated repositories and print where')
    parser.add_argument('--child', help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        child(Path(options.child))
        return

    sizes = sorted({max(options.files // 10, 1), max(options.files * 2 // 5, 1), options.files})
    directory = Path(tempfile.mkdtemp(prefix='bench-analysis-'))
    rows = []
    try:
        for size in sizes:
            root = directory / f'repo-{size}'
            started = time.perf_counter()
            generate(root, size)
            generated = time.perf_counter() - started
            files, total = raw_read(root)  # warms the page cache for both measurements
            raw_times, analyse_times, bare_times = [], [], []
            for _ in range(options.rounds):
                raw_times.append(timed(raw_read, root))
                analyse_times.append(timed(analysis.analyse, root))
                bare_times.append(timed(analyse_without_outlines, root))
            memory = peak_rss(root)
            rows.append(
                {
                    'size': size,
                    'files': files,
                    'mb': total / 1e6,
                    'generated': generated,
                    'raw': statistics.median(raw_times),
                    'analyse': statistics.median(analyse_times),
                    'bare': statistics.median(bare_times),
                    **memory,
                }
            )
    finally:
        if options.keep:
            print(f'repositories kept in {directory}')
        else:
            shutil.rmtree(directory, ignore_errors=True)

    print(f'rounds: {options.rounds} (medians); raw = git ls-files + read every tracked file with the same reader')
    print("no-outline = analyse() with outlines off; ratios are throughput over the raw read's")
    print(
        f'{"files":>6} {"MB":>6} {"gen s":>6} | {"raw s":>6} {"files/s":>8} {"MB/s":>6} | {"analyse s":>9} '
        f'{"files/s":>8} {"MB/s":>6} {"ratio":>5} {"us/file":>7} | {"no-outline s":>12} {"ratio":>5} | '
        f'{"RSS MB":>6} {"(idle)":>6} | output digest'
    )
    for row in rows:
        print(
            f'{row["files"]:>6} {row["mb"]:>6.1f} {row["generated"]:>6.1f} | {row["raw"]:>6.2f} '
            f'{row["files"] / row["raw"]:>8.0f} {row["mb"] / row["raw"]:>6.1f} | {row["analyse"]:>9.2f} '
            f'{row["files"] / row["analyse"]:>8.0f} {row["mb"] / row["analyse"]:>6.1f} '
            f'{row["raw"] / row["analyse"]:>5.2f} {row["analyse"] / row["files"] * 1e6:>7.0f} | '
            f'{row["bare"]:>12.2f} {row["raw"] / row["bare"]:>5.2f} | {row["peak_mb"]:>6.0f} '
            f'{row["baseline_mb"]:>6.0f} | {row["digest"]}'
        )
    ratio = min(row['raw'] / row['analyse'] for row in rows)
    per_file = [row['analyse'] / row['files'] for row in rows]
    linearity = per_file[-1] / per_file[0]
    rss = max(row['peak_mb'] for row in rows)
    print(
        f'throughput analyse/raw (worst size): {ratio:.2f}x  (aim >= {AIM_RATIO}x: '
        f'{"met" if ratio >= AIM_RATIO else "MISSED"})'
    )
    print(
        f'cost per file, largest/smallest repository: {linearity:.2f}  (aim <= {AIM_LINEARITY}, linear: '
        f'{"met" if linearity <= AIM_LINEARITY else "MISSED"})'
    )
    print(f'peak RSS of the analysis: {rss:.0f} MB  (aim < {AIM_RSS_MB} MB: {"met" if rss < AIM_RSS_MB else "MISSED"})')


if __name__ == '__main__':
    main()
