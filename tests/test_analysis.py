"""Repository analysis on real git repositories built in tmp_path: files, skips, languages, outlines, kinds."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from rqjobs.exceptions import GitError
from rqjobs.repository import analysis, checkout, classification, declarations, layout, outline_python
from rqjobs.repository.analysis import analyse, outline
from rqjobs.repository.classification import classify
from rqjobs.repository.layout import find_components, path_tree
from rqjobs.repository.results import Analysis, SourceFile

GIT_ENV = {**os.environ, 'GIT_CONFIG_NOSYSTEM': '1', 'GIT_CONFIG_GLOBAL': '/dev/null', 'GIT_TERMINAL_PROMPT': '0'}
GIT = [
    'git',
    '-c',
    'user.name=t',
    '-c',
    'user.email=t@e',
    '-c',
    'init.defaultBranch=main',
    '-c',
    'core.fsmonitor=false',
    '-c',
    'commit.gpgsign=false',
]

PYTHON = '''"""Configuration loading."""

from __future__ import annotations

import os


class Config(Base, metaclass=Meta):
    """A loaded configuration.

    Second paragraph, not shown.
    """

    def __init__(self, path: str, *, strict: bool = False) -> None:
        self.path = path

    async def reload(self, timeout: float = 1.5, *sources, **options) -> dict[str, int]:
        """Reload from disk."""
        return {}

    @property
    def name(self):
        return os.path.basename(self.path)


def load(path: str, *, strict: bool = False) -> Config:
    """Load a configuration file."""
    return Config(path, strict=strict)


async def main(argv: list[str] | None = None, /) -> int:
    return 0
'''

JAVASCRIPT = """import { readFile } from 'fs/promises';

/**
 * Parse a document.
 */
export async function parse(text, options = {}) {
  return text.split('\\n');
}

export class Renderer {
  constructor(theme) {
    this.theme = theme;
  }

  render(node) {
    if (node) {
      return this.theme(node);
    }
  }
}

export const format = (value) => String(value);
"""

TYPESCRIPT = """export interface Shape {
  area(): number;
  name: string;
}

export type Id = string | number;

export class Circle implements Shape {
  name = 'circle';
  constructor(private radius: number) {}

  area(): number {
    return Math.PI * this.radius ** 2;
  }

  static unit(): Circle {
    return new Circle(1);
  }
}

export const double = async (x: number): Promise<number> => x * 2;
"""

GO = """package server

import "context"

// Server answers requests.
type Server struct {
	addr string
}

type Store interface {
	Get(key string) (string, error)
}

// Start starts listening.
func (s *Server) Start(ctx context.Context) error {
	return nil
}

func New(addr string) *Server {
	return &Server{addr: addr}
}
"""

JAVA = """package com.example;

/**
 * Manages users.
 */
public class UserService extends Base {
    private final Repo repo;

    public UserService(Repo repo) {
        this.repo = repo;
    }

    @Override
    public User find(String id) throws NotFound {
        if (id == null) {
            throw new NotFound(id);
        }
        return repo.get(id);
    }

    enum Role {
        ADMIN("a"),
        USER("u");

        Role(String code) {}
    }
}
"""

RUST = """use std::fmt;

/// A point in the plane.
#[derive(Debug)]
pub struct Point {
    x: i32,
}

pub trait Shape {
    fn area(&self) -> f64;
}

impl Point {
    /// Make a point.
    pub fn new(x: i32) -> Self {
        Point { x }
    }

    fn norm(&self) -> i32 {
        self.x.abs()
    }
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", self.x)
    }
}

pub fn origin() -> Point {
    Point::new(0)
}
"""

C_SOURCE = """#include "util.h"

/* A linked list node. */
struct node {
    int value;
    struct node *next;
};

static int counter = 0;

/**
 * Add two numbers.
 */
int add(int a, int b)
{
    return a + b;
}

struct node *push(struct node *head, int value) {
    return head;
}
"""

C_HEADER = """#ifndef UTIL_H
#define UTIL_H
int add(int a, int b);
#endif
"""

CPP = """#include <vector>

namespace engine {

class Engine {
public:
    explicit Engine(int cylinders);
    void start();
    int power() const { return power_; }
private:
    int power_;
};

void Engine::start() {
}

}  // namespace engine
"""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        [*GIT, *args], cwd=repo, env=GIT_ENV, check=True, capture_output=True, text=True
    ).stdout.strip()


def make_repo(path: Path, files: dict[str, str | bytes]) -> Path:
    """Create a git repository at `path` with `files` committed."""
    path.mkdir(parents=True)
    git(path, 'init', '-q')
    write(path, files)
    git(path, 'add', '-A')
    git(path, 'commit', '-q', '-m', 'initial')
    return path


def write(repo: Path, files: dict[str | bytes, str | bytes]) -> None:
    for name, content in files.items():
        target = os.path.join(os.fsencode(repo), os.fsencode(name))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, 'wb') as handle:
            handle.write(content.encode() if isinstance(content, str) else content)


@pytest.fixture
def full_repo(tmp_path):
    """A repository with every kind of file analysis meets, built in several commits."""
    outside = tmp_path / 'outside'
    outside.mkdir()
    (outside / 'secret.txt').write_text('TOP SECRET outside the checkout\n')
    marker = tmp_path / 'executed.marker'
    repo = make_repo(
        tmp_path / 'repo',
        {
            'README.md': '# Demo\n\nA demo repository for the analysis tests.\n',
            'src/app/config.py': PYTHON,
            'src/app/utils/helpers.py': 'def helper(x):\n    return x\n',
            'web/index.js': JAVASCRIPT,
            'web/shapes.ts': TYPESCRIPT,
        },
    )
    write(
        repo,
        {
            'server/server.go': GO,
            'core/UserService.java': JAVA,
            'core/point.rs': RUST,
            'native/util.c': C_SOURCE,
            'native/util.h': C_HEADER,
            'native/engine.cpp': CPP,
            '.gitignore': 'secret.env\n',
            'secret.env': 'TOKEN=ignored-but-on-disk\n',
            'assets/logo.png': b'\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR' + bytes(range(256)),
            'data/big.txt': 'x' * 1_100_000,
            b'caf\xe9.py': 'def cafe():\n    """Latin-1 name."""\n',
            'données/été.py': 'class Été:\n    def chaud(self):\n        pass\n',
            'broken.py': 'def broken(:\n    pass\n',
            'evil.py': f'open({str(marker)!r}, "w").write("ran")\n\ndef f():\n    pass\n',
            'setup.py': f'open({str(marker)!r}, "w").write("ran")\n',
            'adversarial.js': 'export const a = ' + '(' * 200_000 + '\n',
            'escape/secret.txt': 'placeholder\n',
            'pipe': 'placeholder\n',
            '.gitmodules': '[submodule "vendor/lib"]\n\tpath = vendor/lib\n\turl = https://example.com/lib.git\n',
        },
    )
    os.symlink('/etc/passwd', repo / 'link_passwd')
    os.symlink('/etc', repo / 'link_dir')
    git(repo, 'add', '-A')
    git(repo, 'commit', '-q', '-m', 'everything else')
    head = git(repo, 'rev-parse', 'HEAD')
    git(repo, 'update-index', '--add', '--cacheinfo', f'160000,{head},vendor/lib')
    git(repo, 'commit', '-q', '-m', 'submodule')
    # After the commits, the working tree turns hostile: a tracked directory becomes a symlink to outside the
    # checkout, and a tracked file becomes a FIFO that would block a plain open().
    (repo / 'escape' / 'secret.txt').unlink()
    (repo / 'escape').rmdir()
    os.symlink(outside, repo / 'escape')
    (repo / 'pipe').unlink()
    os.mkfifo(repo / 'pipe')
    return repo


ANALYSED = {
    'README.md',
    'src/app/config.py',
    'src/app/utils/helpers.py',
    'web/index.js',
    'web/shapes.ts',
    'server/server.go',
    'core/UserService.java',
    'core/point.rs',
    'native/util.c',
    'native/util.h',
    'native/engine.cpp',
    '.gitignore',
    'caf\ufffd.py',
    'données/été.py',
    'broken.py',
    'evil.py',
    'setup.py',
    'adversarial.js',
    '.gitmodules',
}


def names(declarations) -> list[tuple[str, str]]:
    return [(declaration.kind, declaration.name) for declaration in declarations]


def test_tracked_files_are_raw_git_entries(full_repo):
    entries = dict(checkout.tracked_files(full_repo))
    assert entries[b'caf\xe9.py'] == '100644'
    assert entries[b'link_passwd'] == entries[b'link_dir'] == '120000'
    assert entries[b'vendor/lib'] == '160000'
    assert b'secret.env' not in entries


def test_reading_a_checkout_runs_git_in_the_hardened_environment(tmp_path, monkeypatch):
    # A git first on PATH that records the environment it starts with, then runs the real git.
    recorded = tmp_path / 'recorded'
    recorded.mkdir()
    wrapper = tmp_path / 'bin' / 'git'
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nenv > "$(mktemp {recorded}/env.XXXXXX)"\nexec {shutil.which("git")} "$@"\n')
    wrapper.chmod(0o755)
    repo = make_repo(tmp_path / 'repo', {'README.md': '# Demo\n', 'app.py': 'def run():\n    pass\n'})
    home = tmp_path / 'home'
    (home / '.config' / 'git').mkdir(parents=True)
    (home / '.config' / 'git' / 'config').write_text('[core]\n\tfsmonitor = touch hostile\n')
    monkeypatch.setenv('PATH', f'{wrapper.parent}{os.pathsep}{os.environ["PATH"]}')
    monkeypatch.setenv('HOME', str(home))
    monkeypatch.setenv('XDG_CONFIG_HOME', str(home / '.config'))
    monkeypatch.setenv('GIT_CONFIG_PARAMETERS', "'core.hooksPath'='/tmp'")
    monkeypatch.setenv('RQJOBS_HOSTILE', 'inherited')

    assert {source.path for source in analyse(repo).files} == {'README.md', 'app.py'}

    runs = [
        dict(line.split('=', 1) for line in path.read_text().splitlines() if '=' in line) for path in recorded.iterdir()
    ]
    assert runs
    for env in runs:
        assert 'RQJOBS_HOSTILE' not in env and 'XDG_CONFIG_HOME' not in env and 'GIT_CONFIG_PARAMETERS' not in env
        assert env['HOME'] != str(home) and env['GIT_CONFIG_GLOBAL'] == env['GIT_CONFIG_SYSTEM'] == os.devnull
        assert env['GIT_ALLOW_PROTOCOL'] == ''  # no transport at all
        config = {env[f'GIT_CONFIG_KEY_{i}']: env[f'GIT_CONFIG_VALUE_{i}'] for i in range(int(env['GIT_CONFIG_COUNT']))}
        assert config['core.hooksPath'] == os.devnull and config['core.fsmonitor'] == 'false'
        assert config['protocol.allow'] == 'never'


def test_a_git_that_runs_past_its_time_is_stopped_with_one_line(tmp_path, monkeypatch):
    wrapper = tmp_path / 'bin' / 'git'
    wrapper.parent.mkdir()
    wrapper.write_text('#!/bin/sh\nexec sleep 30\n')  # a git that never answers
    wrapper.chmod(0o755)
    repo = make_repo(tmp_path / 'repo', {'README.md': '# Demo\n'})
    monkeypatch.setenv('PATH', f'{wrapper.parent}{os.pathsep}{os.environ["PATH"]}')
    monkeypatch.setattr(checkout, 'GIT_TIMEOUT', 0.5)
    started = time.monotonic()
    with pytest.raises(GitError, match=r'^git ls-files ran past 0.5 s in '):
        checkout.tracked_files(repo)
    assert time.monotonic() - started < 20


def test_analysed_and_skipped_files(full_repo, tmp_path):
    result = analyse(full_repo)
    assert {source.path for source in result.files} == ANALYSED
    assert [source.path for source in result.files] == sorted(ANALYSED)
    assert result.skipped == {'binary': 1, 'too_large': 1, 'symlink': 3, 'submodule': 1, 'unreadable': 1}
    assert result.total_files == len(ANALYSED) + 7
    assert result.total_bytes == sum(source.size for source in result.files)
    dumped = json.dumps(result.to_dict(), ensure_ascii=False)
    assert 'TOP SECRET' not in dumped and 'root:' not in dumped and 'ignored-but-on-disk' not in dumped
    assert not (tmp_path / 'executed.marker').exists()  # nothing was imported or run
    assert not list(full_repo.rglob('__pycache__'))


def test_files_languages_and_lines(full_repo):
    result = analyse(full_repo)
    config = result.file('src/app/config.py')
    assert (config.language, config.size, config.lines) == ('Python', len(PYTHON.encode()), PYTHON.count('\n'))
    assert result.file('native/util.h').language == 'C++'  # the repository has C++ sources
    assert result.file('native/util.c').language == 'C'
    assert result.file('.gitmodules').language is None
    assert result.file('caf\ufffd.py').declarations[0].doc == 'Latin-1 name.'
    assert names(result.file('données/été.py').declarations) == [('class', 'Été')]
    assert result.file('broken.py').declarations == []
    assert result.file('adversarial.js').declarations == []
    assert result.file('nope.py') is None


def test_readme_tree_and_components(full_repo):
    result = analyse(full_repo)
    assert result.readme_path == 'README.md'
    assert result.readme.startswith('# Demo')
    tree = result.tree.splitlines()
    assert tree[0] == '├── assets/'  # directories first
    assert '│   └── logo.png' in tree and '└── setup.py' in tree and '├── caf\ufffd.py' in tree
    components = {component['path']: component for component in result.components}
    assert set(components) == {'.', 'src/app', 'web', 'server', 'core', 'native', 'données'}
    assert components['src/app']['name'] == 'app'
    assert components['src/app']['files'] == ['src/app/config.py', 'src/app/utils/helpers.py']
    assert components['native']['languages'] == ['C++', 'C']  # most bytes first
    assert components['.']['name'] == 'Top-level files'
    assert [component['bytes'] for component in result.components] == sorted(
        (component['bytes'] for component in result.components), reverse=True
    )


def test_python_outline():
    declarations = outline('config.py', PYTHON, 'Python')
    assert names(declarations) == [('class', 'Config'), ('function', 'load'), ('function', 'main')]
    config, load, main = declarations
    assert config.signature == 'class Config(Base, metaclass=Meta)'
    assert (config.line, config.doc) == (8, 'A loaded configuration.')
    assert [(m.kind, m.name, m.signature) for m in config.children] == [
        ('method', '__init__', 'def __init__(self, path: str, *, strict: bool = False) -> None'),
        ('method', 'reload', 'async def reload(self, timeout: float = 1.5, *sources, **options) -> dict[str, int]'),
        ('method', 'name', 'def name(self)'),
    ]
    assert config.children[1].doc == 'Reload from disk.'
    assert load.signature == 'def load(path: str, *, strict: bool = False) -> Config'
    assert (load.doc, load.line) == ('Load a configuration file.', 26)
    assert main.signature == 'async def main(argv: list[str] | None = None, /) -> int'


def test_python_outline_is_the_full_parse_when_in_doubt():
    # A def inside a multi-line string, or after code that left its class, is decided by parsing the whole file.
    text = 'class A:\n    def f(self):\n        return """\ndef fake():\n"""\n\n    def g(self):\n        pass\n'
    assert [names(d.children) for d in outline('a.py', text, 'Python')] == [[('method', 'f'), ('method', 'g')]]
    text = 'class A:\n    def f(self):\n        pass\nif True:\n    def g():\n        pass\n'
    assert [(d.name, names(d.children)) for d in outline('a.py', text, 'Python')] == [('A', [('method', 'f')])]
    assert outline('a.py', 'x = (', 'Python') == []
    assert outline('a.py', 'def f(:\n    pass\n', 'Python') == []


PYTHON_HEADERS = (
    'class A(B, metaclass=M):\n    """Doc."""\n\n    def f(self, a: int = 1, *args, **kw) -> dict[str, int]:\n'
    '        return {}\n\n    async def g(self, a: int = 1, *args, **kw) -> dict[str, int]:\n        """G."""\n',
    'def f(\n    a,  # the first\n    b: "x:y" = {1: (2, 3)},\n    c=lambda x: x,\n) -> list[int]:  # note\n'
    '    pass\n\n'
    'def g(a, b, /, *, c): return 1\n\n@decorated\ndef h(self, a: int = 1, *args, **kw) -> dict[str, int]:\n    pass\n',
    'def f(a) \\\n        -> int:\n    pass\n\n\ndef g(a, a):\n    pass\n\n\ndef  spaced  (x=[1, 2]) :\n    pass\n',
    'def f(a=1, b):\n    pass\n\n\ndef g(self):\n    pass\n',  # parameters that do not parse: no outline
    'class C:\n    def f(self, a: int = 1, *args, **kw) -> dict[str, int]:\n        x = """\ndef fake(:\n"""\n',
)


def test_python_outline_is_the_whole_file_parse_with_parameter_lists_shared():
    # The outline from a skeleton, parameter lists parsed once per analysis and shared between files, must be the
    # outline of the whole file's tree: the same names, lines, docs and signatures.
    headers = {}
    for text in PYTHON_HEADERS + PYTHON_HEADERS:  # the second round finds every parameter list already parsed
        module = outline_python._parse_python(text)
        whole = [] if module is None else outline_python._python_body(module.body, [99], {}, in_class=False)
        assert outline_python.python_outline(text, headers) == whole
    assert outline_python.python_outline(PYTHON_HEADERS[0], headers)[0].children[1].signature == (
        'async def g(self, a: int = 1, *args, **kw) -> dict[str, int]'
    )
    assert [d.line for d in outline_python.python_outline(PYTHON_HEADERS[1], headers)] == [1, 8, 11]
    assert outline_python.python_outline(PYTHON_HEADERS[3], headers) == []
    assert sum(rendering is not None for rendering in headers.values()) >= 5  # the shared path was taken


def test_brace_language_outlines():
    js = outline('index.js', JAVASCRIPT, 'JavaScript')
    assert names(js) == [('function', 'parse'), ('class', 'Renderer'), ('function', 'format')]
    assert js[0].doc == 'Parse a document.' and js[0].signature == 'export async function parse(text, options = {})'
    assert names(js[1].children) == [('method', 'constructor'), ('method', 'render')]

    ts = outline('shapes.ts', TYPESCRIPT, 'TypeScript')
    assert names(ts) == [('interface', 'Shape'), ('type', 'Id'), ('class', 'Circle'), ('function', 'double')]
    assert names(ts[0].children) == [('method', 'area')]
    assert names(ts[2].children) == [('method', 'constructor'), ('method', 'area'), ('method', 'unit')]
    assert ts[2].children[2].signature == 'static unit(): Circle'

    go = outline('server.go', GO, 'Go')
    assert names(go) == [('struct', 'Server'), ('interface', 'Store'), ('method', 'Start'), ('function', 'New')]
    assert go[0].doc == 'Server answers requests.'
    assert go[2].signature == 'func (s *Server) Start(ctx context.Context) error'
    assert go[2].doc == 'Start starts listening.' and go[2].line == 15
    assert names(go[1].children) == [('method', 'Get')]

    java = outline('UserService.java', JAVA, 'Java')
    assert names(java) == [('class', 'UserService')]
    assert java[0].doc == 'Manages users.'
    assert names(java[0].children) == [('method', 'UserService'), ('method', 'find'), ('enum', 'Role')]
    assert java[0].children[1].signature == 'public User find(String id) throws NotFound'
    assert names(java[0].children[2].children) == [('method', 'Role')]

    rust = outline('point.rs', RUST, 'Rust')
    assert names(rust) == [
        ('struct', 'Point'),
        ('trait', 'Shape'),
        ('impl', 'Point'),
        ('impl', 'Point'),
        ('function', 'origin'),
    ]
    assert rust[0].doc == 'A point in the plane.'
    assert names(rust[1].children) == [('method', 'area')]
    assert [(m.name, m.signature, m.doc) for m in rust[2].children] == [
        ('new', 'pub fn new(x: i32) -> Self', 'Make a point.'),
        ('norm', 'fn norm(&self) -> i32', ''),
    ]
    assert rust[3].signature == 'impl fmt::Display for Point' and names(rust[3].children) == [('method', 'fmt')]

    c = outline('util.c', C_SOURCE, 'C')
    assert names(c) == [('struct', 'node'), ('function', 'add'), ('function', 'push')]
    assert (c[0].doc, c[1].doc, c[1].signature) == ('A linked list node.', 'Add two numbers.', 'int add(int a, int b)')
    assert names(outline('util.h', C_HEADER, 'C')) == [('function', 'add')]  # prototypes count in headers

    cpp = outline('engine.cpp', CPP, 'C++')
    assert names(cpp) == [('namespace', 'engine'), ('class', 'Engine'), ('method', 'Engine::start')]
    assert names(cpp[1].children) == [('method', 'Engine'), ('method', 'start'), ('method', 'power')]


@pytest.mark.parametrize(
    'text',
    [
        '(' * 500_000,
        'a' + '(' * 500_000,
        'export const a = (' + '(' * 500_000,
        'class A {\n' + '  x(\n' * 100_000,
        'public ' * 70_000,
        'func (' + 'x' * 500_000,
        'type ' + 'x<' * 250_000,
        '/*' * 250_000,
        'a ' * 250_000,
        'def ' * 125_000,
        'class A:\n' + '    def f(:\n' * 40_000,
    ],
    ids=[
        'parens',
        'call',
        'arrow',
        'members',
        'modifiers',
        'receiver',
        'generics',
        'comments',
        'words',
        'defs',
        'headers',
    ],
)
def test_adversarial_lines_finish_fast(text):
    started = time.perf_counter()
    for language in ('Python', 'JavaScript', 'TypeScript', 'Go', 'Java', 'Rust', 'C', 'C++', 'C#'):
        assert len(outline('x', text, language)) <= declarations.MAX_DECLARATIONS
    assert time.perf_counter() - started < 3


def test_declarations_are_capped():
    text = ''.join(f'def f{index}():\n    pass\n' for index in range(500))
    assert len(outline('many.py', text, 'Python')) == declarations.MAX_DECLARATIONS
    text = ''.join(f'func F{index}() {{\n}}\n' for index in range(500))
    assert len(outline('many.go', text, 'Go')) == declarations.MAX_DECLARATIONS


def test_languages_table(tmp_path):
    repo = make_repo(
        tmp_path / 'small',
        {
            'a.py': 'def f():\n    return 1\n',  # 22 bytes, 2 lines
            'b.py': 'x = 1',  # 5 bytes, 1 line (no final newline)
            'main.go': 'package main\n\nfunc main() {}\n',  # 29 bytes, 3 lines
            'README.md': '# T\n\nText.\n',  # 11 bytes, 3 lines
            'LICENSE': 'MIT\n',  # no language
            'empty.txt': '',
        },
    )
    result = analyse(repo)
    assert result.languages == [
        {'language': 'Go', 'files': 1, 'lines': 3, 'bytes': 29, 'percent': 43.3},
        {'language': 'Python', 'files': 2, 'lines': 3, 'bytes': 27, 'percent': 40.3},
        {'language': 'Markdown', 'files': 1, 'lines': 3, 'bytes': 11, 'percent': 16.4},
        {'language': 'Text', 'files': 1, 'lines': 0, 'bytes': 0, 'percent': 0.0},
    ]
    assert result.file('LICENSE').lines == 1 and result.total_bytes == 71
    assert result.skipped == {}
    assert result.components == [
        {
            'name': 'Top-level files',
            'path': '.',
            'files': ['LICENSE', 'README.md', 'a.py', 'b.py', 'empty.txt', 'main.go'],
            'languages': ['Go', 'Python', 'Markdown', 'Text'],
            'lines': 10,
            'bytes': 71,
        }
    ]


def test_tree_is_capped_with_a_summary(full_repo, monkeypatch):
    monkeypatch.setattr(layout, 'MAX_TREE_LINES', 10)
    tree = analyse(full_repo).tree.splitlines()
    assert len(tree) == 10
    assert re.fullmatch(r'… \d+ more entries in \d+ director(y|ies)', tree[-1])
    assert tree[:3] == ['├── assets/', '├── core/', '├── data/']  # breadth first: the top level comes first
    assert path_tree(['a/1', 'a/2', 'b/1', 'c'], max_lines=3) == '├── a/\n└── b/\n… 4 more entries in 3 directories'
    assert path_tree(['a/1', 'b'], max_lines=3) == '├── a/\n│   └── 1\n└── b'


def test_progress_reports_increasing_counts(full_repo, monkeypatch):
    monkeypatch.setattr(analysis, 'PROGRESS_EVERY', 4)
    calls = []
    result = analyse(full_repo, progress=lambda done, total: calls.append((done, total)))
    total = result.total_files
    assert calls[-1] == (total, total)
    assert len(calls) == total // 4 + (total % 4 != 0)
    assert [done for done, _ in calls] == sorted({done for done, _ in calls})
    assert {seen for _, seen in calls} == {total}


def test_round_trip_through_json(full_repo):
    result = analyse(full_repo)
    data = json.loads(json.dumps(result.to_dict()))
    again = Analysis.from_dict(data)
    assert again == result
    assert again.to_dict() == data
    assert again.file('web/shapes.ts').declarations[2].children[0].name == 'constructor'


CLASSIFIED = {
    'CLITools': {
        'pyproject.toml': '[project]\nname = "tool"\n\n[project.scripts]\ntool = "tool.cli:main"\n',
        'tool/__init__.py': '',
        'tool/cli.py': 'import argparse\n\n\ndef main():\n    parser = argparse.ArgumentParser()\n    return 0\n',
        'README.md': '# tool\n\nA command-line tool to rename files.\n\n    $ tool rename a b\n',
    },
    'Libraries': {
        'pyproject.toml': '[project]\nname = "datelib"\nversion = "1.0"\n',
        'datelib/__init__.py': 'from .core import parse\n',
        'datelib/core.py': 'class Parser:\n    def parse(self, text):\n        return text\n\n\ndef parse(text):\n'
        '    return Parser().parse(text)\n' * 5,
        'README.md': '# datelib\n\nA small library to parse dates.\n\n    pip install datelib\n',
    },
    'Documentation': {
        'README.md': '# Handbook\n\nThe team handbook.\n',
        'mkdocs.yml': 'site_name: Handbook\n',
        'docs/index.md': '# Welcome\n\n' + 'Some text about the team.\n' * 30,
        'docs/onboarding.md': '# Onboarding\n\n' + 'Steps to get started.\n' * 40,
        'scripts/serve.sh': '#!/bin/sh\nmkdocs serve\n',
    },
    'DevOpsConfiguration': {
        'README.md': '# Infrastructure\n\nDeployment of our services.\n',
        'Dockerfile': 'FROM python:3.12\nCOPY . /app\nRUN pip install -r requirements.txt\nCMD ["app"]\n',
        'docker-compose.yml': 'services:\n  app:\n    build: .\n    ports:\n      - "80:80"\n',
        'terraform/main.tf': 'resource "aws_s3_bucket" "b" {\n  bucket = "b"\n}\n' * 5,
        'k8s/deployment.yaml': 'apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app\n' * 5,
        '.github/workflows/ci.yml': 'on: push\njobs:\n  test:\n    runs-on: ubuntu-latest\n',
    },
    'Frameworks': {
        'README.md': '# Zap\n\nZap is a web framework for building APIs with plugins and middleware.\n',
        'setup.py': 'from setuptools import setup\nsetup(name="zap", packages=["zap"])\n',
        'zap/app.py': 'class App:\n    def route(self, path):\n        pass\n' * 5,
        'zap/middleware/auth.py': 'class Auth:\n    def __call__(self, request):\n        pass\n' * 5,
    },
    'DevelopmentTools': {
        'README.md': '# yamlfix\n\nA linter and formatter for YAML files.\n',
        '.pre-commit-hooks.yaml': '- id: yamlfix\n  entry: yamlfix\n',
        'pyproject.toml': '[project]\nname = "yamlfix"\n',
        'yamlfix/rules.py': 'class Rule:\n    def check(self, document):\n        pass\n' * 5,
    },
    'Applications': {
        'README.md': '# Shop\n\nOur online shop.\n',
        'app.py': 'from flask import Flask\n\napp = Flask(__name__)\n\n\n@app.route("/")\ndef index():\n'
        '    return "hi"\n' * 5,
        'templates/index.html': '<html><body>{{ content }}</body></html>\n',
        'static/site.css': 'body { margin: 0; }\n',
    },
}


@pytest.mark.parametrize('expected', sorted(CLASSIFIED))
def test_classification(tmp_path, expected):
    repo = make_repo(tmp_path / expected, CLASSIFIED[expected])
    result = analyse(repo)
    scores = classification.classification_scores(result.files, result.readme)
    assert result.classification == expected, scores
    assert result.classification in classification.CLASSES


def test_classify_from_files_and_readme_alone():
    docs = [SourceFile(f'docs/page{index}.md', 'Markdown', 2000, 80, []) for index in range(5)]
    assert classify(docs, '# Guide\n') == 'Documentation'
    code = [SourceFile('main.go', 'Go', 9000, 400, []), SourceFile('cmd/tool/main.go', 'Go', 900, 40, [])]
    assert classify(code, '# tool\n\nA command-line tool.\n') == 'CLITools'
    assert classify([], '') == 'Applications'  # no evidence at all


@pytest.mark.parametrize(
    ('language', 'text', 'expected'),
    [
        ('Python', 'import argparse\n', True),
        ('Python', 'from click import command\n', True),
        ('Python', '# argparse is not used here\nimport os\n', False),
        ('Python', 'firewall = None\n', False),
        ('JavaScript', "const cac = require('cac')\n", True),
        ('TypeScript', 'import { cac } from "cac"\n', True),
        ('JavaScript', 'const cache = new Map()  // a cac-like name\n', False),
        ('Go', 'import (\n\t"flag"\n\t"os"\n)\n', True),
        ('Go', '// flags are parsed elsewhere\n', False),
        ('Rust', 'use clap::Parser;\n', True),
        ('Java', 'import picocli.CommandLine;\n', True),
        ('Kotlin', 'import com.github.ajalt.clikt.core.CliktCommand\n', True),
        ('Markdown', 'import argparse\n', False),
        (None, 'import argparse\n', False),
        ('Python', 'import os\n\nif True:\n  \t from   typer import Typer\n', True),
        ('Python', 'x = 1  # import argparse\nfrom os import fire\nimport docopts\n', False),
        ('Python', 'import os, argparse\n', False),  # the pattern wants the parser first, as it always did
        ('JavaScript', "const a = Array.from(x), b = require( 'meow')\n", False),
        ('JavaScript', 'import yargs from  "yargs/yargs"\n', True),
        ('JavaScript', 'const c = require(\'cac")\n', False),  # no needle: "cac" and 'cac' only
        ('TypeScript', "import { Command } from 'commander';\n", True),
        ('Go', 'import (\n\t"github.com/spf13/cobra"\n)\n', True),
        ('Go', 'import "gopkg.in/alecthomas/kingpin.v2"\n', True),
        ('Go', 'import "github.com/spf13/viper" // not cobra, nor "flag" yet\n', True),
        ('Go', 'import "github.com/spf13/viper"\n', False),
    ],
)
def test_uses_cli_library(language, text, expected):
    assert classification.uses_cli_library(text, language) is expected
    assert classification.uses_cli_library(text.encode('ascii'), language) is expected  # a plain ASCII file's bytes
    # Whatever the search looks for first, the answer is: a needle in the text and the pattern anywhere in it.
    needles = classification.CLI_NEEDLES.get(language or '', ())
    assert expected is (
        any(needle in text for needle in needles) and bool(classification._CLI_IMPORT[language].search(text))
    )


def test_components_are_ranked_and_capped():
    files = [SourceFile(f'part{index:02d}/code.py', 'Python', 100 * (index + 1), 10, []) for index in range(15)]
    files += [
        SourceFile('src/alpha/a.py', 'Python', 10_000, 5, []),
        SourceFile('src/beta/b.py', 'Python', 50, 5, []),
        SourceFile('src/main.py', 'Python', 20, 1, []),
        SourceFile('setup.py', 'Python', 30, 2, []),
    ]
    components = find_components(files)
    assert len(components) == layout.MAX_COMPONENTS
    assert components[0] == {
        'name': 'alpha',
        'path': 'src/alpha',
        'files': ['src/alpha/a.py'],
        'languages': ['Python'],
        'lines': 5,
        'bytes': 10_000,
    }
    assert [component['path'] for component in components[1:4]] == ['part14', 'part13', 'part12']


def test_text_and_binary_detection():
    assert checkout.decode_text(b'caf\xe9 au lait\n') == 'caf\ufffd au lait\n'  # Latin-1 text stays text
    assert checkout.decode_text(b'plain\x00binary') is None
    assert checkout.decode_text((bytes(range(1, 32)) + b'\xff') * 100) is None  # control bytes, not UTF-8
    assert checkout.decode_text(bytes(range(1, 32)) * 100) is not None  # valid UTF-8 is text, even control bytes
    assert checkout.count_lines(b'') == 0 and checkout.count_lines(b'a') == 1 and checkout.count_lines(b'a\nb\n') == 2


def test_reader_refuses_paths_leaving_the_checkout(full_repo):
    with checkout.CheckoutReader(full_repo) as reader:
        assert reader.read(b'../outside/secret.txt') == (None, 'unreadable')
        assert reader.read(b'escape/secret.txt') == (None, 'symlink')
        assert reader.read(b'link_passwd') == (None, 'symlink')
        assert reader.read(b'.git/config') == (None, 'unreadable')
        assert reader.read(b'pipe') == (None, 'unreadable')
        assert reader.read(b'README.md')[0].startswith(b'# Demo')
        assert reader.read(b'data/big.txt') == (None, 'too_large')


def test_not_a_checkout(tmp_path):
    from rqjobs.exceptions import PermanentJobError

    with pytest.raises(PermanentJobError, match='not a git checkout'):
        analyse(tmp_path)


def test_only_the_first_files_of_shown_components_are_outlined(tmp_path, monkeypatch):
    monkeypatch.setattr(analysis, 'MAX_OUTLINED_PER_COMPONENT', 2)
    monkeypatch.setattr(layout, 'MAX_COMPONENTS', 1)
    files = {f'big/m{index}.py': f'def f{index}():\n    pass\n' * 3 for index in range(4)}
    files['small/s.py'] = 'def s():\n    pass\n'
    result = analyse(make_repo(tmp_path / 'repo', files))
    outlined = {source.path for source in result.files if source.declarations}
    assert outlined == {'big/m0.py', 'big/m1.py'}
    # Files past the cap still count toward lines, bytes and languages.
    assert result.file('big/m3.py').lines == 6 and result.file('small/s.py').language == 'Python'
