"""Analysis of a git checkout: its files, languages, declarations, README, tree, kind and major components.

The checkout is untrusted input and is only ever read: nothing in it is executed, imported or built (Python is
parsed with `ast`, other languages with anchored, length-bounded regular expressions). Only files that git tracks
are looked at. Each one is opened relative to the checkout one path component at a time with O_NOFOLLOW, so neither
a tracked symlink nor a symlinked directory in the working tree can lead outside it. Files are read one at a time
and their text is dropped once outlined: memory grows with the number of files and declarations, not their bytes.
"""

from __future__ import annotations

import ast
import errno
import gc
import json
import logging
import os
import re
import stat
import time
import warnings
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Self

from rqjobs.exceptions import PermanentJobError
from rqjobs.repository import runner

logger = logging.getLogger(__name__)

MAX_FILE_SIZE = 1_000_000  # bytes; larger files are skipped as 'too_large' without being read
MAX_OUTLINE_FILE_SIZE = 256 * 1024  # bytes; larger files are counted (lines, bytes) but not outlined
MAX_TREE_LINES = 400
MAX_COMPONENTS = 12
ROOT_COMPONENT = 'Top-level files'  # the name of the component made of the files at the root
MAX_DECLARATIONS = 200  # per file, children included
# Files outlined per component, in path order: the documentation shows at most 60 files and 300 declarations of a
# component and the mind map at most 2,000 nodes, so outlining every file of a 20k-file repository is wasted work.
# Files outside the ranked components are not shown at all and are never outlined.
MAX_OUTLINED_PER_COMPONENT = 60
MAX_README_SIZE = 64 * 1024  # characters of the README kept
MAX_MANIFEST_SIZE = 64 * 1024  # bytes of a root manifest (pyproject.toml, package.json, ...) kept for classifying
MAX_SIGNATURE = 300  # characters
MAX_DOC = 300  # characters
MAX_DEPTH = 128  # path components; deeper files are 'unreadable' (each level holds a directory descriptor)
BINARY_SAMPLE = 8192  # bytes looked at to tell binary from text
PROGRESS_EVERY = 500  # files between two progress reports
GIT_TIMEOUT = 300  # seconds `git ls-files` may take

SKIP_REASONS = ('binary', 'too_large', 'symlink', 'submodule', 'unreadable')
CLASSES = ('Applications', 'Frameworks', 'Libraries', 'DevelopmentTools', 'CLITools', 'DevOpsConfiguration',
           'Documentation')

_SYMLINK_MODE = '120000'
_GITLINK_MODE = '160000'


# ---------------------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------------------

@dataclass(slots=True)
class Declaration:
    """One outline entry: a class, function, method, struct, ... with its children (a class's methods)."""

    kind: str
    name: str
    signature: str
    line: int
    doc: str = ''
    children: list[Declaration] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {'kind': self.kind, 'name': self.name, 'signature': self.signature, 'line': self.line,
                'doc': self.doc, 'children': [child.to_dict() for child in self.children]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Declaration:
        return cls(data['kind'], data['name'], data['signature'], data['line'], data.get('doc', ''),
                   [cls.from_dict(child) for child in data.get('children', ())])


@dataclass(slots=True)
class SourceFile:
    """One analysed text file; `path` is repository-relative, decoded from git's bytes with errors='replace'."""

    path: str
    language: str | None
    size: int
    lines: int
    declarations: list[Declaration] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {'path': self.path, 'language': self.language, 'size': self.size, 'lines': self.lines,
                'declarations': [declaration.to_dict() for declaration in self.declarations]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SourceFile:
        return cls(data['path'], data.get('language'), data['size'], data['lines'],
                   [Declaration.from_dict(item) for item in data.get('declarations', ())])


@dataclass
class Analysis:
    """What `analyse()` found in a checkout; `to_dict()` is JSON-safe and `from_dict()` reads it back."""

    files: list[SourceFile]
    skipped: dict[str, int]
    languages: list[dict]
    readme_path: str | None
    readme: str
    tree: str
    classification: str
    components: list[dict]
    total_files: int
    total_bytes: int
    elapsed: float = 0.0
    _index: dict[str, SourceFile] | None = field(default=None, init=False, repr=False, compare=False)

    def file(self, path: str) -> SourceFile | None:
        """Return the analysed file at a repository-relative path, or None."""
        if self._index is None:
            self._index = {source.path: source for source in self.files}
        return self._index.get(path)

    def to_dict(self) -> dict:
        return {
            'files': [source.to_dict() for source in self.files],
            'skipped': dict(self.skipped),
            'languages': [dict(row) for row in self.languages],
            'readme_path': self.readme_path,
            'readme': self.readme,
            'tree': self.tree,
            'classification': self.classification,
            'components': [dict(component, files=list(component['files']), languages=list(component['languages']))
                           for component in self.components],
            'total_files': self.total_files,
            'total_bytes': self.total_bytes,
            'elapsed': self.elapsed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Analysis:
        return cls(
            files=[SourceFile.from_dict(item) for item in data.get('files', ())],
            skipped=dict(data.get('skipped', {})),
            languages=[dict(row) for row in data.get('languages', ())],
            readme_path=data.get('readme_path'),
            readme=data.get('readme', ''),
            tree=data.get('tree', ''),
            classification=data.get('classification', 'Applications'),
            components=[dict(component) for component in data.get('components', ())],
            total_files=data.get('total_files', 0),
            total_bytes=data.get('total_bytes', 0),
            elapsed=data.get('elapsed', 0.0),
        )


# ---------------------------------------------------------------------------------------------------------------------
# Reading the checkout
# ---------------------------------------------------------------------------------------------------------------------

def tracked_files(checkout: Path) -> list[tuple[bytes, str]]:
    """Return git's tracked entries of a checkout as (raw path bytes, mode), in git's (byte) order."""
    checkout = Path(checkout).absolute()
    if not os.path.lexists(checkout / '.git'):
        raise PermanentJobError(f'{checkout} is not a git checkout (it has no .git); clone the repository first.')
    # The same hardened runner as the clone's: the checkout is as untrusted as the repository it came from.
    output = runner.read(checkout, '-c', 'core.quotepath=off', '-c', 'core.untrackedCache=false', 'ls-files', '-z',
                      '--stage', binary=True, timeout=GIT_TIMEOUT)
    entries, seen = [], set()
    for record in output.split(b'\0'):
        head, tab, path = record.partition(b'\t')
        if not tab:
            continue
        if path in seen:  # a merge conflict lists one path once per stage
            continue
        seen.add(path)
        entries.append((path, head.split(b' ', 1)[0].decode('ascii', 'replace')))
    return entries


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted in the working tree must not hang the job (it is then refused as not a regular file).
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_BAD_COMPONENTS = frozenset((b'', b'.', b'..'))


def _maybe_bad(raw_path: bytes) -> bool:
    """Cheap test that may hold a bad component: an empty one, or one starting with "." (".", "..", ".git")."""
    return (not raw_path or raw_path[0] in b'/.' or raw_path.endswith(b'/') or b'//' in raw_path
            or b'/.' in raw_path)


class CheckoutReader:
    """Reads tracked files of a checkout, never following a symlink nor leaving it; use it as a context manager.

    Directories are opened component by component relative to the checkout with O_NOFOLLOW and kept open while
    consecutive paths share them (git lists paths sorted, so each directory is opened once per visit).
    """

    def __init__(self, checkout: Path) -> None:
        self._root = os.open(checkout, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._names: list[bytes] = []
        self._fds: list[int] = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._drop(0)
        if self._root >= 0:
            os.close(self._root)
            self._root = -1

    def _drop(self, keep: int) -> None:
        while len(self._fds) > keep:
            os.close(self._fds.pop())
            self._names.pop()

    def read(self, raw_path: bytes, limit: int = MAX_FILE_SIZE) -> tuple[bytes | None, str | None]:
        """Return (content, None), or (None, reason) with reason 'symlink', 'too_large' or 'unreadable'."""
        parts = raw_path.split(b'/')
        if len(parts) > MAX_DEPTH or (_maybe_bad(raw_path) and any(
                part in _BAD_COMPONENTS or part.lower() == b'.git' for part in parts)):
            return None, 'unreadable'
        directories, names = parts[:-1], self._names
        keep = 0
        while keep < len(names) and keep < len(directories) and names[keep] == directories[keep]:
            keep += 1
        self._drop(keep)
        parent = self._fds[-1] if self._fds else self._root
        for name in directories[keep:]:
            try:
                opened = os.open(name, _DIR_FLAGS, dir_fd=parent)
            except OSError as exc:
                return None, 'symlink' if _is_symlink(name, parent) else _open_failure(raw_path, exc)
            parent = opened
            self._fds.append(parent)
            names.append(name)
        try:
            fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=parent)
        except OSError as exc:
            return None, _open_failure(raw_path, exc)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return None, 'unreadable'
            if info.st_size > limit:
                return None, 'too_large'
            data = os.read(fd, info.st_size + 1)
            if len(data) < info.st_size:  # a short read (rare on regular files): read on up to the limit
                chunks, total = [data], len(data)
                while total <= limit:
                    chunk = os.read(fd, 1 << 16)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    total += len(chunk)
                data = b''.join(chunks)
            if len(data) > limit:
                return None, 'too_large'
            return data, None
        except OSError as exc:
            return None, _open_failure(raw_path, exc)
        finally:
            os.close(fd)


def _is_symlink(name: bytes, directory: int) -> bool:
    # O_DIRECTORY | O_NOFOLLOW on a symlink fails with ENOTDIR on Linux, as for a file: look without following.
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=directory, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _open_failure(raw_path: bytes, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink where git's index has a file or directory
        return 'symlink'
    logger.debug('%s: not readable (%s)', raw_path.decode('utf-8', 'replace'), exc.strerror)
    return 'unreadable'


# Bytes that occur in text: printable ASCII, common whitespace and control (\b \t \n \f \r ESC), and all high bytes.
_TEXT_BYTES = bytes(range(0x20, 0x7f)) + b'\b\t\n\f\r\x1b' + bytes(range(0x80, 0x100))


def decode_text(data: bytes) -> str | None:
    """Return the text of a file's bytes, or None when they look binary."""
    if data.find(b'\0', 0, BINARY_SAMPLE) != -1:
        return None
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError:
        sample = data[:BINARY_SAMPLE]
        if len(sample.translate(None, _TEXT_BYTES)) * 10 > len(sample) * 3:
            return None
        return data.decode('utf-8', 'replace')


def count_lines(data: bytes) -> int:
    """Return the number of lines of a file, a last line without its newline included."""
    return data.count(b'\n') + (1 if data and not data.endswith(b'\n') else 0)


# ---------------------------------------------------------------------------------------------------------------------
# Languages
# ---------------------------------------------------------------------------------------------------------------------

EXTENSIONS = {
    'py': 'Python', 'pyi': 'Python', 'pyw': 'Python', 'pyx': 'Cython',
    'js': 'JavaScript', 'mjs': 'JavaScript', 'cjs': 'JavaScript', 'jsx': 'JavaScript',
    'ts': 'TypeScript', 'tsx': 'TypeScript', 'mts': 'TypeScript', 'cts': 'TypeScript',
    'go': 'Go', 'java': 'Java', 'rs': 'Rust', 'c': 'C', 'h': 'C',
    'cc': 'C++', 'cpp': 'C++', 'cxx': 'C++', 'c++': 'C++', 'hh': 'C++', 'hpp': 'C++', 'hxx': 'C++', 'h++': 'C++',
    'ipp': 'C++', 'tpp': 'C++', 'inl': 'C++', 'cs': 'C#', 'rb': 'Ruby', 'rake': 'Ruby', 'gemspec': 'Ruby',
    'php': 'PHP', 'sh': 'Shell', 'bash': 'Shell', 'zsh': 'Shell', 'ksh': 'Shell', 'fish': 'Shell',
    'md': 'Markdown', 'markdown': 'Markdown', 'mdx': 'Markdown', 'rst': 'reStructuredText', 'adoc': 'AsciiDoc',
    'asciidoc': 'AsciiDoc', 'txt': 'Text', 'org': 'Org', 'tex': 'TeX',
    'yml': 'YAML', 'yaml': 'YAML', 'json': 'JSON', 'jsonc': 'JSON', 'json5': 'JSON', 'toml': 'TOML', 'xml': 'XML',
    'ini': 'INI', 'cfg': 'INI', 'conf': 'INI', 'properties': 'INI',
    'html': 'HTML', 'htm': 'HTML', 'css': 'CSS', 'scss': 'SCSS', 'sass': 'SCSS', 'less': 'Less',
    'vue': 'Vue', 'svelte': 'Svelte', 'kt': 'Kotlin', 'kts': 'Kotlin', 'swift': 'Swift', 'scala': 'Scala',
    'm': 'Objective-C', 'mm': 'Objective-C++', 'lua': 'Lua', 'pl': 'Perl', 'pm': 'Perl', 'r': 'R', 'dart': 'Dart',
    'ex': 'Elixir', 'exs': 'Elixir', 'erl': 'Erlang', 'hs': 'Haskell', 'ml': 'OCaml', 'mli': 'OCaml',
    'clj': 'Clojure', 'cljs': 'Clojure', 'fs': 'F#', 'groovy': 'Groovy', 'gradle': 'Groovy', 'jl': 'Julia',
    'zig': 'Zig', 'nim': 'Nim', 'sql': 'SQL', 'proto': 'Protocol Buffers', 'graphql': 'GraphQL', 'gql': 'GraphQL',
    'tf': 'HCL', 'tfvars': 'HCL', 'hcl': 'HCL', 'nomad': 'HCL', 'ps1': 'PowerShell', 'psm1': 'PowerShell',
    'bat': 'Batchfile', 'cmd': 'Batchfile', 'cmake': 'CMake', 'mk': 'Makefile', 'dockerfile': 'Dockerfile',
    'ipynb': 'Jupyter Notebook', 'sol': 'Solidity', 'vim': 'Vim Script', 'el': 'Emacs Lisp',
}
FILENAMES = {
    'dockerfile': 'Dockerfile', 'containerfile': 'Dockerfile', 'makefile': 'Makefile', 'gnumakefile': 'Makefile',
    'cmakelists.txt': 'CMake', 'jenkinsfile': 'Groovy', 'vagrantfile': 'Ruby', 'gemfile': 'Ruby',
    'rakefile': 'Ruby', 'podfile': 'Ruby', 'brewfile': 'Ruby', 'build': 'Starlark', 'build.bazel': 'Starlark',
    'workspace': 'Starlark', '.bashrc': 'Shell', '.zshrc': 'Shell', '.profile': 'Shell', '.bash_profile': 'Shell',
}
CPP_EXTENSIONS = frozenset(('cc', 'cpp', 'cxx', 'c++', 'hh', 'hpp', 'hxx', 'h++', 'ipp', 'tpp'))
_SHEBANGS = (('python', 'Python'), ('node', 'JavaScript'), ('bash', 'Shell'), ('/sh', 'Shell'), (' sh', 'Shell'),
             ('zsh', 'Shell'), ('ruby', 'Ruby'), ('perl', 'Perl'), ('php', 'PHP'), ('deno', 'TypeScript'))


def _extension(name: str) -> str:
    dot = name.rfind('.')
    return name[dot + 1:].lower() if dot > 0 else ''


def detect_language(path: str, *, has_cpp: bool = False) -> str | None:
    """Return the language of a file from its name; `.h` headers are C++ when the repository has C++ sources."""
    name = path.rsplit('/', 1)[-1]
    lower = name.lower()
    language = FILENAMES.get(lower)
    if language:
        return language
    if lower.startswith(('dockerfile.', 'containerfile.')):
        return 'Dockerfile'
    language = EXTENSIONS.get(_extension(lower))
    if language == 'C' and has_cpp and lower.endswith('.h'):
        return 'C++'
    return language


def _shebang_language(text: str) -> str | None:
    if not text.startswith('#!'):
        return None
    first = text[:200].split('\n', 1)[0]
    for needle, language in _SHEBANGS:
        if needle in first:
            return language
    return None


# ---------------------------------------------------------------------------------------------------------------------
# Outlines
# ---------------------------------------------------------------------------------------------------------------------

def outline(path: str, text: str, language: str | None) -> list[Declaration]:
    """Return the main declarations of a file's text; never runs or imports it, and [] when it cannot be parsed."""
    language = language or detect_language(path)
    if '\r' in text:  # CRLF line ends: the patterns and the skeleton expect '\n' (line numbers do not change)
        text = text.replace('\r\n', '\n')
    if language == 'Python':
        return _outline_python(text)
    grammar = _GRAMMARS.get(language or '')
    if grammar is None:
        return []
    header = _extension(path) in ('h', 'hh', 'hpp', 'hxx', 'h++')
    return _BraceScanner(text, grammar, header).run()


# A doc summary is the first paragraph of a doc comment: a blank line ends it, and so does a tag line (@param ...),
# since tags are not prose.
_PARAGRAPH_END = re.compile(r'\n[ \t]*(?:\r?\n|@)')


def _doc_summary(text: str) -> str:
    text = text.strip()
    if text.startswith('@'):
        return ''
    end = _PARAGRAPH_END.search(text, 0, 4 * MAX_DOC)
    return _shorten(' '.join(text[:end.start() if end else 4 * MAX_DOC].split()), MAX_DOC)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + '…'


# Python: the standard library's parser, which builds a tree and never runs the code. Parsing a whole file costs
# about a millisecond per 5 KB, mostly in function bodies that the outline never looks at, so the tree is built from a
# skeleton of the file: its module- and class-level `def`/`class` headers and docstrings at their original line
# numbers, every other body cut to `pass`. Whatever the quick scan cannot vouch for (a header it cannot delimit, a
# triple quote open before a header, a def right after code that may have left its class, a skeleton that does not
# parse) falls back to parsing the whole file. So an error inside a function body does not lose the file's outline
# (Python 2 files keep theirs); a file whose declarations themselves do not parse yields [].

_PY_CANDIDATE = re.compile(r'\n([ \t]*)(?:async[ \t]+)?(def|class)[ \t]')
_PY_TOKENS = re.compile(r'[()\[\]{}:#\n]|"""|\'\'\'|["\']')
_PY_STRING = re.compile(r'[rRuU]?("""|\'\'\'|"|\')')
_PY_HEADER_LIMIT = 10_000  # characters a def or class header may span


def _outline_python(text: str) -> list[Declaration]:
    text = text.removeprefix('\ufeff')
    if 'def' not in text and 'class' not in text:
        return []
    skeleton = _python_skeleton(text)
    module = _parse_python(skeleton) if skeleton is not None else None
    if module is None:
        module = _parse_python(text)
    if module is None:
        return []
    return _python_body(module.body, [MAX_DECLARATIONS], in_class=False)


def _parse_python(text: str) -> ast.Module | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # invalid escapes and the like warn at parse time; they are not ours
            return ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


@lru_cache(maxsize=64)
def _dedent_pattern(width: int) -> re.Pattern:
    """Match a line of code indented by at most `width` characters."""
    return re.compile(r'\n[ \t]{0,' + str(width) + r'}[^ \t\r\n#]')


def _python_skeleton(text: str) -> str | None:
    """Return the skeleton of a Python file (see above), '' when it declares nothing, None to parse it whole."""
    source = '\n' + text
    lines = text.split('\n')
    out = [''] * len(lines)
    counter = _LineCounter(source)
    stack: list[tuple[str, str]] = []  # open classes: (indentation, member indentation)
    checked = 0  # the dedent checks have covered the source up to here
    skip_until = 0  # inside a docstring already copied
    quotes_at, double, single = 0, 0, 0
    left: set[str] = set()  # member indentations of classes closed by a dedent rather than by a header
    found = False
    for start, indent, keyword in _python_candidates(source):
        if start < skip_until:
            continue
        double += source.count('"""', quotes_at, start)
        single += source.count("'''", quotes_at, start)
        quotes_at = start
        if double % 2 or single % 2:  # the header may be inside a string
            return None
        while stack:
            class_indent, member_indent = stack[-1]
            if len(indent) < len(member_indent):
                stack.pop()
            elif _dedent_pattern(len(class_indent)).search(source, checked, start):
                left.add(member_indent)  # code (or a string's text) at the class's indentation or less
                stack.pop()
            else:
                break
        checked = start
        if indent != (stack[-1][1] if stack else ''):
            if indent in left:  # a def after code that left a class, or inside a string in one: ambiguous
                return None
            continue  # nested in a function or a block: not part of the outline
        left = {width for width in left if len(width) <= len(indent)}
        colon = _python_header_end(source, start + 1)
        if colon < 0:
            return None
        end_of_line = source.find('\n', colon)
        end_of_line = len(source) if end_of_line == -1 else end_of_line
        first, last = counter.line(start + 1), counter.line(colon)
        out[first:last + 1] = lines[first:last + 1]
        found = True
        checked = end_of_line
        rest = source[colon + 1:end_of_line].strip()
        if rest and not rest.startswith('#'):
            continue  # a one-line body: `def f(): return 1`
        body = end_of_line  # the '\n' before the first line of the body
        while True:
            following = source.find('\n', body + 1)
            following = len(source) if following == -1 else following
            stripped = source[body + 1:following].strip()
            if stripped and not stripped.startswith('#'):
                break
            if following == len(source):
                return None
            body = following
        line = source[body + 1:following]
        body_indent = line[:len(line) - len(line.lstrip(' \t'))]
        if len(body_indent) <= len(indent) or not body_indent.startswith(indent):
            return None
        index = counter.line(body + 1)
        string = _PY_STRING.match(stripped)
        if string:  # the docstring: copied whole
            quote = string.group(1)
            close = following
            if len(quote) == 3:
                close = source.find(quote, body + 1 + len(body_indent) + string.end())
                if close == -1:
                    return None
                close = source.find('\n', close + 3)
                close = len(source) if close == -1 else close
            last = counter.line(close - 1) if close > body + 1 else index
            out[index:last + 1] = lines[index:last + 1]
            checked = skip_until = close
        elif not (keyword == 'class' and _PY_CANDIDATE.match(source, body)):  # no member header right here
            out[index] = body_indent + 'pass'
        if keyword == 'class':
            stack.append((indent, body_indent))
    return '\n'.join(out) if found else ''


def _python_candidates(source: str) -> list[tuple[int, str, str]]:
    """Return (position of the '\\n' before the line, indentation, keyword) of lines that start a def or class."""
    found = []
    for keyword in ('def', 'class'):  # str.find is several times faster than a regex scan of every line
        needle = keyword + ' '
        position = source.find(needle)
        while position != -1:
            line_start = source.rfind('\n', 0, position)
            prefix = source[line_start + 1:position] if position - line_start < 200 else 'x'  # not an indentation
            if not prefix or (prefix[-1] in ' \t' and prefix.strip() in ('', 'async')):
                found.append((line_start, prefix[:len(prefix) - len(prefix.lstrip(' \t'))], keyword))
            position = source.find(needle, position + 1)
    found.sort()
    return found


def _python_header_end(source: str, start: int) -> int:
    """Return the position of the colon that ends the def or class header at `start`, or -1."""
    end_of_line = source.find('\n', start)
    line = source[start:end_of_line if end_of_line != -1 else len(source)].rstrip()
    if (line.endswith(':') and '"' not in line and "'" not in line and '#' not in line
            and line.count('(') == line.count(')') and line.count('[') == line.count(']')
            and line.count('{') == line.count('}')):
        return start + len(line) - 1  # the usual one-line header, without strings or comments
    depth, position, limit = 0, start, min(len(source), start + _PY_HEADER_LIMIT)
    while True:
        token = _PY_TOKENS.search(source, position, limit)
        if token is None:
            return -1
        char, position = token.group(), token.end()
        if char in ('(', '[', '{'):
            depth += 1
        elif char in (')', ']', '}'):
            depth -= 1
        elif char == ':':
            if depth == 0:
                return token.start()
        elif char == '#':
            position = source.find('\n', position)
            if position == -1:
                return -1
        elif char == '\n':
            if depth <= 0:
                return -1
        else:
            position = _string_end(source, position, char, limit)
            if position < 0:
                return -1


def _string_end(source: str, position: int, quote: str, limit: int) -> int:
    while True:
        close = source.find(quote, position, limit)
        if close == -1 or (len(quote) == 1 and source.find('\n', position, close) != -1):
            return -1
        backslashes = 0
        while source[close - 1 - backslashes] == '\\':
            backslashes += 1
        if backslashes % 2 == 0:
            return close + len(quote)
        position = close + 1


class _LineCounter:
    """Line index (0-based) of positions in '\n' + text, counted incrementally."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.position = 0
        self.count = 0

    def line(self, position: int) -> int:
        if position >= self.position:
            self.count += self.source.count('\n', self.position, position)
        else:
            self.count -= self.source.count('\n', position, self.position)
        self.position = position
        return self.count - 1


def _python_body(body: list[ast.stmt], budget: list[int], *, in_class: bool) -> list[Declaration]:
    declarations = []
    for node in body:
        if budget[0] <= 0:
            break
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            budget[0] -= 1
            declarations.append(Declaration('method' if in_class else 'function', node.name,
                                            _python_signature(node), node.lineno, _python_doc(node)))
        elif isinstance(node, ast.ClassDef):
            budget[0] -= 1
            declaration = Declaration('class', node.name, _python_signature(node), node.lineno, _python_doc(node))
            declaration.children = _python_body(node.body, budget, in_class=True)
            declarations.append(declaration)
    return declarations


def _python_doc(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> str:
    first = node.body[0] if node.body else None
    if type(first) is ast.Expr and type(first.value) is ast.Constant and type(first.value.value) is str:
        return _doc_summary(first.value.value)
    return ''


def _unparse(node: ast.AST) -> str:
    try:
        return ast.unparse(node)
    except (RecursionError, ValueError, AttributeError, TypeError):
        return '…'


_SIMPLE = (ast.Name, ast.Attribute, ast.Constant, ast.Subscript, ast.List)


def _expr(node: ast.AST) -> str:
    """Return `ast.unparse(node)`, by a fast path for the names, subscripts and constants of most annotations."""
    kind = type(node)
    if kind is ast.Name:
        return node.id
    if kind is ast.Constant:
        value = node.value
        if value is None or value is True or value is False or value is Ellipsis:
            return '...' if value is Ellipsis else repr(value)
        if type(value) is int and -10**15 < value < 10**15:
            return repr(value)
        if type(value) is str and node.kind is None and len(value) < 200 and value.isprintable() and "'" not in value and '\\' not in value:
            return repr(value)
    elif kind is ast.Attribute and type(node.value) in (ast.Name, ast.Attribute):
        return f'{_expr(node.value)}.{node.attr}'
    elif kind is ast.Subscript and type(node.value) in (ast.Name, ast.Attribute):
        inner = node.slice
        if type(inner) is ast.Tuple and len(inner.elts) > 1 and all(isinstance(e, _SIMPLE) for e in inner.elts):
            return f'{_expr(node.value)}[{", ".join(_expr(element) for element in inner.elts)}]'
        if isinstance(inner, _SIMPLE):
            return f'{_expr(node.value)}[{_expr(inner)}]'
    elif kind is ast.List and all(isinstance(element, _SIMPLE) for element in node.elts):
        return f'[{", ".join(_expr(element) for element in node.elts)}]'
    elif kind is ast.BinOp and type(node.op) is ast.BitOr and all(
            isinstance(side, _SIMPLE) or (type(side) is ast.BinOp and type(side.op) is ast.BitOr)
            for side in (node.left, node.right)) and type(node.right) is not ast.BinOp:
        return f'{_expr(node.left)} | {_expr(node.right)}'
    return _unparse(node)


def _python_signature(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> str:
    if isinstance(node, ast.ClassDef):
        bases = [_expr(base) for base in node.bases] + [f'{kw.arg}={_expr(kw.value)}' if kw.arg else
                                                        f'**{_expr(kw.value)}' for kw in node.keywords]
        return _shorten(f'class {node.name}({", ".join(bases)})' if bases else f'class {node.name}', MAX_SIGNATURE)
    prefix = 'async def' if isinstance(node, ast.AsyncFunctionDef) else 'def'
    returns = f' -> {_expr(node.returns)}' if node.returns is not None else ''
    return _shorten(f'{prefix} {node.name}({_python_arguments(node.args)}){returns}', MAX_SIGNATURE)


def _python_arguments(args: ast.arguments) -> str:
    def one(arg: ast.arg, default: ast.expr | None = None) -> str:
        text = arg.arg
        if arg.annotation is not None:
            text += f': {_expr(arg.annotation)}'
        if default is not None:
            text += f' = {_expr(default)}' if arg.annotation is not None else f'={_expr(default)}'
        return text

    parts = []
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    for index, (arg, default) in enumerate(zip(positional, defaults)):
        parts.append(one(arg, default))
        if index == len(args.posonlyargs) - 1:
            parts.append('/')
    if args.vararg is not None:
        parts.append('*' + one(args.vararg))
    elif args.kwonlyargs:
        parts.append('*')
    for arg, default in zip(args.kwonlyargs, args.kw_defaults):
        parts.append(one(arg, default))
    if args.kwarg is not None:
        parts.append('**' + one(args.kwarg))
    return ', '.join(parts)


# Brace languages: anchored regular expressions find candidate declaration lines at one exact indentation (the top
# level, then the member indentation inside each class-like body). Every pattern starts with the literal newline and
# indentation, so the regex engine skips ahead with a fast literal search, and every repetition is length-bounded or
# followed by a character it cannot consume, so no input makes matching worse than linear per line.

@dataclass(frozen=True)
class _Grammar:
    top: str  # pattern of a declaration line at the top level (after '\n')
    member: str  # pattern of a declaration line inside a container body, at its member indentation
    classify: Callable[[re.Match, str, Declaration | None, bool, bool], tuple[str, str, bool] | None]


_ID = r'[A-Za-z_]\w*'
_JS_ID = r'[A-Za-z_$][\w$]*'
_SIG_TOKENS = re.compile(r'[(){}\[\];\n]')
_C_KEYWORDS = frozenset((
    'if', 'for', 'while', 'switch', 'return', 'sizeof', 'else', 'do', 'case', 'defined', 'alignof', 'decltype',
    'static_assert', 'typedef', 'catch', 'throw', 'new', 'delete', 'goto', '__attribute__', '__declspec', 'using',
    'alignas', 'noexcept', 'requires', 'co_return', 'co_await', 'assert', 'typeof', '_Static_assert',
))
_C_NAME = re.compile(r'~?[A-Za-z_][\w:~]*')
_JS_KEYWORDS = frozenset(('if', 'for', 'while', 'switch', 'catch', 'return', 'function', 'new', 'await', 'super',
                          'typeof', 'with', 'do', 'else', 'throw', 'delete', 'void', 'yield', 'import', 'export'))
_JAVA_KEYWORDS = frozenset(('if', 'for', 'while', 'switch', 'catch', 'return', 'new', 'throw', 'else', 'case',
                            'synchronized', 'super', 'this', 'try', 'do', 'assert', 'yield'))


def _go(match: re.Match, text: str, parent: Declaration | None, has_body: bool, header: bool):
    if parent is not None:
        return 'method', match['func'], False
    if match['func']:
        return ('method' if match['recv'] is not None else 'function'), match['func'], False
    kind = match['tkind'] or 'type'
    return kind, match['type'], kind == 'interface' and has_body


def _rust(match: re.Match, text: str, parent: Declaration | None, has_body: bool, header: bool):
    if match['fn']:
        return ('method' if parent is not None and parent.kind in ('impl', 'trait') else 'function'), match['fn'], False
    if match['kw']:
        keyword = match['kw']
        if keyword == 'mod':
            return ('module', match['name'], True) if has_body else None
        return {'union': 'struct'}.get(keyword, keyword), match['name'], keyword == 'trait' and has_body
    return 'impl', '', has_body  # the name comes from the signature: see _impl_name


def _impl_name(signature: str) -> str:
    rest = signature.split('impl', 1)[-1].strip()
    if rest.startswith('<'):  # skip the generic parameters, which may nest
        depth = 0
        for index, char in enumerate(rest):
            depth += (char == '<') - (char == '>')
            if depth == 0:
                rest = rest[index + 1:].strip()
                break
    rest = rest.split(' where ', 1)[0].strip()
    return rest.split(' for ', 1)[1].strip() if ' for ' in rest else rest


_JAVA_TYPES = {'class': 'class', 'interface': 'interface', '@interface': 'interface', 'enum': 'enum',
               'record': 'record', 'struct': 'struct'}


def _java(match: re.Match, text: str, parent: Declaration | None, has_body: bool, header: bool):
    if match['kw']:
        return _JAVA_TYPES[match['kw']], match['name'], has_body
    name, type_ = match['method'], (match['type'] or '').split()
    if name in _JAVA_KEYWORDS or (type_ and type_[-1] in _JAVA_KEYWORDS):
        return None
    if not type_ and (parent is None or name != parent.name):  # only constructors have no return type
        return None
    return 'method', name, False


def _javascript(match: re.Match, text: str, parent: Declaration | None, has_body: bool, header: bool):
    if parent is not None:
        name = match['method']
        return None if name in _JS_KEYWORDS else ('method', name, False)
    if match['func']:
        return 'function', match['func'], False
    if match['cls']:
        return 'class', match['cls'], has_body
    if match['iface']:
        return 'interface', match['iface'], has_body
    if match['type']:
        following = text[match.end():match.end() + 1]
        return ('type', match['type'], False) if following in ('=', '<') else None
    if match['enum']:
        return 'enum', match['enum'], False
    if match['ns']:
        return 'namespace', match['ns'], has_body
    if match['arrow'] == 'function' or match['arrow'].endswith('=>') or _is_arrow(text, match.end() - 1):
        return 'function', match['const'], False
    return None


def _is_arrow(text: str, open_paren: int) -> bool:
    """Tell whether the parenthesis at `open_paren` starts an arrow function's parameters."""
    depth = 0
    for token in _SIG_TOKENS.finditer(text, open_paren, open_paren + 600):
        char = token.group()
        if char in '([{':
            depth += 1
        elif char in ')]}':
            depth -= 1
            if depth == 0:
                rest = text[token.end():token.end() + 200].lstrip()
                if rest.startswith(':'):  # a return type annotation comes first
                    rest = rest.split('=>', 1)[0] if '=>' in rest else ''
                    return bool(rest) and '{' not in rest and ';' not in rest
                return rest.startswith('=>')
    return False


def _c(match: re.Match, text: str, parent: Declaration | None, has_body: bool, header: bool):
    in_type = parent is not None and parent.kind in ('class', 'struct', 'union')
    if match['kw']:
        keyword = match['kw'].split()[0]
        if not has_body:
            return None
        if keyword == 'enum':
            return 'enum', match['name'], False
        return keyword, match['name'], keyword != 'union'
    head = match['fhead']
    tokens = head.replace('*', ' ').replace('&', ' ').split()
    if not tokens:
        return None
    if 'operator' in head:
        name = head[head.index('operator'):].strip()
        type_ = head[:head.index('operator')].split()
    else:
        name, type_ = tokens[-1], tokens[:-1]
        if '=' in head or name in _C_KEYWORDS or not _C_NAME.fullmatch(name):
            return None
    if type_ and type_[0] in ('typedef', 'return', 'else', 'case', 'goto', 'using', 'friend', 'delete'):
        return None
    short = name.rsplit('::', 1)[-1].lstrip('~')
    special = name.startswith('~') or (parent is not None and short == parent.name) or 'operator' in name
    if not has_body:
        # A declaration without a body: a prototype (shown for headers and class members) or a macro call.
        if not (header or in_type) or not (type_ or special):
            return None
    elif in_type and not (type_ or special):
        return None
    return ('method' if in_type or '::' in name else 'function'), name, False


_JAVA_ANNOTATIONS = r'(?:@[\w.]+(?:\([^()\n]{0,100}\))?[ \t]+)*'
_JAVA_MODIFIERS = (r'(?:(?:public|protected|private|abstract|static|final|sealed|non-sealed|strictfp|synchronized|'
                   r'native|default|transient|volatile|internal|partial|readonly|async|override|virtual|extern|'
                   r'unsafe|new)[ \t]+)*')
_JAVA_TYPE = r'(?P<kw>class|interface|enum|record|@interface|struct)[ \t]+(?P<name>[A-Za-z_$][\w$]*)'
_C_TYPE = (r'(?:template[ \t]*<[^\n]{0,200}?>[ \t]*)?(?:typedef[ \t]+)?(?:(?P<kw>struct|class|union|'
           r'enum(?:[ \t]+(?:class|struct))?|namespace)[ \t]+(?:\[\[[^\]\n]{0,100}\]\][ \t]*)?'
           r'(?P<name>[A-Za-z_]\w*(?:::[A-Za-z_]\w*)*)[ \t]*(?:final\b|:(?!:)|\{|$)|'
           r'(?P<fhead>[A-Za-z_~][^\n;(){}]{0,300})\()')
_RUST_ITEM = (r'(?:pub(?:[ \t]*\([^()\n]{0,80}\))?[ \t]+)?(?:(?:const|async|unsafe|default|'
              r'extern(?:[ \t]+"[^"\n]{0,20}")?)[ \t]+)*(?:fn[ \t]+(?P<fn>' + _ID + r')|'
              r'(?P<kw>struct|enum|union|trait|type|mod)[ \t]+(?P<name>' + _ID + r')|(?P<impl>impl)\b)')

_GO = _Grammar(
    top=(r'(?:func[ \t]*(?:\((?P<recv>[^()\n]{0,200})\)[ \t]*)?(?P<func>' + _ID + r')|type[ \t]+(?P<type>' + _ID +
         r')(?:\[[^\]\n]{0,200}\])?[ \t]+(?:=[ \t]*)?(?P<tkind>struct|interface)?)'),
    member=r'(?P<func>' + _ID + r')[ \t]*\(',
    classify=_go,
)
_RUST = _Grammar(top=_RUST_ITEM, member=_RUST_ITEM, classify=_rust)
_JAVA = _Grammar(
    top=_JAVA_ANNOTATIONS + _JAVA_MODIFIERS + _JAVA_TYPE,
    member=(_JAVA_ANNOTATIONS + _JAVA_MODIFIERS + r'(?:' + _JAVA_TYPE + r'|(?:<[^\n]{0,100}?>[ \t]*)?'
            r'(?:(?P<type>[\w$.?<>\[\], ]{1,120}?)[ \t]+)?(?P<method>[A-Za-z_$][\w$]*)[ \t]*\()'),
    classify=_java,
)
_CSHARP = _Grammar(
    top=(_JAVA_ANNOTATIONS + r'(?:\[[^\]\n]{0,200}\][ \t]*)*' + _JAVA_MODIFIERS +
         r'(?:' + _JAVA_TYPE + r'|namespace[ \t]+(?P<ns>[\w.]+))'),
    member=(r'(?:\[[^\]\n]{0,200}\][ \t]*)*' + _JAVA_MODIFIERS + r'(?:' + _JAVA_TYPE + r'|namespace[ \t]+(?P<ns>[\w.]+)'
            r'|(?:(?P<type>[\w$.?<>\[\], ]{1,120}?)[ \t]+)?(?P<method>[A-Za-z_][\w]*)[ \t]*(?:<[^\n]{0,100}?>)?\()'),
    classify=lambda match, text, parent, has_body, header: (
        ('namespace', match['ns'], has_body) if match['ns'] else _java(match, text, parent, has_body, header)),
)
_JAVASCRIPT = _Grammar(
    top=(r'(?:export[ \t]+)?(?:default[ \t]+)?(?:declare[ \t]+)?(?:(?:async[ \t]+)?function\b[ \t]*\*?[ \t]*(?P<func>' +
         _JS_ID + r')|(?:abstract[ \t]+)?class[ \t]+(?P<cls>' + _JS_ID + r')|interface[ \t]+(?P<iface>' + _JS_ID +
         r')|type[ \t]+(?P<type>' + _JS_ID + r')[ \t]*|(?:const[ \t]+)?enum[ \t]+(?P<enum>' + _JS_ID +
         r')|(?:namespace|module)[ \t]+(?P<ns>[\w$.]+)[ \t]*(?=\{)|(?:const|let|var)[ \t]+(?P<const>' + _JS_ID +
         r')[ \t]*(?::[^=\n]{0,200})?=[ \t]*(?:async\b[ \t]*)?(?P<arrow>function\b|\(|' + _JS_ID + r'[ \t]*=>))'),
    member=(r'(?:(?:public|private|protected|static|readonly|abstract|override|async|declare|get|set|accessor)'
            r'[ \t]+)*\*?[ \t]*(?P<method>#?' + _JS_ID + r')[ \t]*\??[ \t]*(?:<[^\n]{0,200}?>)?[ \t]*\('),
    classify=_javascript,
)
_C = _Grammar(top=_C_TYPE, member=_C_TYPE, classify=_c)
_GRAMMARS = {'Go': _GO, 'Rust': _RUST, 'Java': _JAVA, 'C#': _CSHARP, 'JavaScript': _JAVASCRIPT,
             'TypeScript': _JAVASCRIPT, 'C': _C, 'C++': _C, 'Objective-C': _C}


# Lines inside a body that say nothing of the members' indentation: C++ access labels, preprocessor lines.
_NOT_MEMBER = re.compile(r'[ \t]*(?:(?:public|private|protected|internal)(?:[ \t]+\w+)?[ \t]*:(?!:)|#)')


@lru_cache(maxsize=256)
def _compiled(template: str, indent: str) -> re.Pattern:
    # '\n' + the exact indentation, not followed by more of it: one indentation level only.
    return re.compile(r'\n' + re.escape(indent) + r'(?![ \t])(?:' + template + ')', re.MULTILINE)


class _BraceScanner:
    """Outline of one file in a brace language; positions are in '\\n' + text, so every line starts after a '\\n'."""

    def __init__(self, text: str, grammar: _Grammar, header: bool) -> None:
        self.text = '\n' + text
        self.grammar = grammar
        self.header = header
        self.budget = MAX_DECLARATIONS
        self.candidates = MAX_DECLARATIONS * 10  # bound the work on files full of near-misses
        self._line_pos = 0
        self._line = 0

    def run(self) -> list[Declaration]:
        return self._scan(self.grammar.top, '', 0, len(self.text), None)

    def _line_of(self, pos: int) -> int:
        if pos >= self._line_pos:
            self._line += self.text.count('\n', self._line_pos, pos)
        else:
            self._line -= self.text.count('\n', pos, self._line_pos)
        self._line_pos = pos
        return self._line

    def _scan(self, template: str, indent: str, start: int, end: int, parent: Declaration | None) -> list[Declaration]:
        text, found = self.text, []
        for match in _compiled(template, indent).finditer(text, start, end):
            if self.budget <= 0 or self.candidates <= 0:
                break
            self.candidates -= 1
            line_start = match.start() + 1
            signature, body = self._signature(line_start)
            result = self.grammar.classify(match, text, parent, body >= 0, self.header)
            if result is None:
                continue
            kind, name, container = result
            if kind == 'impl':
                name = _impl_name(signature)
            self.budget -= 1
            declaration = Declaration(kind, name, signature, self._line_of(line_start), self._doc(match.start()))
            found.append(declaration)
            if container and body >= 0:
                self._members(declaration, indent, body, end)
        return found

    def _members(self, declaration: Declaration, indent: str, body: int, end: int) -> None:
        text = self.text
        newline = text.find('\n', body, end)
        if newline == -1 or '}' in text[body + 1:newline]:  # a one-line body: `class A {}`
            return
        close = text.find('\n' + indent + '}', newline, end)
        close = end if close == -1 else close
        member_indent = None
        position = newline
        while position < close:  # the first non-blank line of the body gives the member indentation
            following = text.find('\n', position + 1, close)
            following = close if following == -1 else following
            line = text[position + 1:following]
            if line.strip() and not _NOT_MEMBER.match(line):
                member_indent = line[:len(line) - len(line.lstrip(' \t'))]
                break
            position = following
        if member_indent is None or len(member_indent) <= len(indent) or not member_indent.startswith(indent):
            return  # an empty body, or an unindented one (a C++ namespace): its contents are scanned as siblings
        declaration.children = self._scan(self.grammar.member, member_indent, newline, close, declaration)

    def _signature(self, start: int) -> tuple[str, int]:
        """Return a declaration's signature and the position of its body's '{' (-1 without a body)."""
        text = self.text
        end_of_line = text.find('\n', start, start + 400)
        if end_of_line != -1:  # the usual case: the signature ends on its line, with balanced parentheses
            line = text[start:end_of_line]
            brace, semicolon = line.find('{'), line.find(';')
            cut = brace if semicolon == -1 or -1 < brace < semicolon else semicolon
            head = line if cut == -1 else line[:cut]
            if head.count('(') == head.count(')') and head.count('[') == head.count(']'):
                if cut == -1 and text[end_of_line:end_of_line + 200].lstrip().startswith('{'):
                    return _shorten(' '.join(head.split()), MAX_SIGNATURE), text.index('{', end_of_line)
                return _shorten(' '.join(head.split()), MAX_SIGNATURE), start + cut if cut == brace != -1 else -1
        stop, body, depth = min(len(text), start + 600), -1, 0
        cut = stop
        for token in _SIG_TOKENS.finditer(text, start, stop):
            char = token.group()
            if char in '([':
                depth += 1
            elif char in ')]':
                depth = max(depth - 1, 0)
            elif char == '{':
                if depth == 0:
                    cut = body = token.start()
                    break
                depth += 1
            elif char == '}':
                depth = max(depth - 1, 0)
            elif char == ';' and depth == 0:
                cut = token.start()
                break
            elif char == '\n' and depth == 0:
                cut = token.start()
                following = text[cut:cut + 200].lstrip()
                if following.startswith('{'):  # the brace on its own line (Allman style)
                    body = text.index('{', cut)
                break
        signature = ' '.join(text[start:cut].split())
        return _shorten(signature, MAX_SIGNATURE), body

    def _doc(self, newline: int) -> str:
        """Return the first paragraph of the comment right above the declaration line that starts after `newline`."""
        text, end, collected = self.text, newline, []
        if newline == 0 or text[newline - 1] == '\n':  # no line above, or a blank one
            return ''
        for _ in range(60):
            if end <= 0:
                break
            start = text.rfind('\n', 0, end)
            line = text[start + 1:end].strip()
            if not line:
                break
            if line.startswith('//'):
                collected.append(line.lstrip('/').lstrip('!').strip())
            elif line.endswith('*/') and not collected:
                opening = text.rfind('/*', max(0, end - 20000), end)
                if opening == -1:
                    break
                body = text[opening + 2:text.rfind('*/', opening, end)].lstrip('*!')
                return _doc_summary('\n'.join(part.strip().lstrip('*').strip() for part in body.splitlines()))
            elif line.startswith(('@', '#[', '[')) and not collected:
                pass  # an annotation or attribute between the comment and the declaration
            else:
                break
            end = start
        return _doc_summary('\n'.join(reversed(collected))) if collected else ''


# ---------------------------------------------------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------------------------------------------------
#
# Each class gets a score from repository evidence; the highest wins, ties go to the earlier class in TIE_ORDER.
# Shares are of the lines in code, documentation and devops files (data and configuration files do not count).
#
# | class               | evidence                                                                      | points      |
# |---------------------|-------------------------------------------------------------------------------|-------------|
# | Documentation       | share of documentation lines (Markdown, reStructuredText, AsciiDoc, text)     | 10 x share  |
# |                     | a documentation generator's configuration (mkdocs.yml, book.toml, docs/conf.py)| +2         |
# | DevOpsConfiguration | share of devops lines (Dockerfile, compose, Terraform, Helm, Kubernetes,       | 10 x share  |
# |                     | Ansible, CI workflows)                                                        |             |
# |                     | infrastructure-as-code (*.tf, Chart.yaml, kustomization.yaml, ansible)        | +2          |
# | Frameworks          | the README's opening (title and first lines) calls it a framework             | +5 *        |
# |                     | plugins/, middleware/, extensions/ or adapters/ directories                   | +2 *        |
# |                     | a library manifest (see Libraries)                                            | +1 *        |
# | DevelopmentTools    | the README's opening names a linter, formatter, build tool, code generator... | +5 *        |
# |                     | .pre-commit-hooks.yaml, an editor extension, eslint/babel/webpack plugin      | +3 *        |
# | CLITools            | console entry points: [project.scripts], console_scripts, package.json "bin", | +4 *        |
# |                     | Cargo [[bin]], Go cmd/ directory, bin/ scripts                                |             |
# |                     | files importing argparse, click, typer, clap, cobra, commander, picocli...    | +2 *        |
# |                     | the README mentions a command line / usage                                    | +1 *        |
# | Libraries           | package manifest without entry points (pyproject/setup, Cargo [lib] or        | +4 *        |
# |                     | src/lib.rs, package.json "main"/"exports", go.mod without main, *.gemspec)    |             |
# |                     | the README says library, SDK, or shows pip/npm/cargo/go installation          | +1 *        |
# | Applications        | baseline                                                                      | +3 *        |
# |                     | application markers (manage.py, app.py, main.go, index.html, App.tsx, ...)    | +2 *        |
#
# * multiplied by the code factor, min(1, code share / 0.5): evidence about code weighs less in a repository that is
#   mostly prose or infrastructure.

TIE_ORDER = ('DevOpsConfiguration', 'Documentation', 'Frameworks', 'DevelopmentTools', 'CLITools', 'Libraries',
             'Applications')
DOC_LANGUAGES = frozenset(('Markdown', 'reStructuredText', 'AsciiDoc', 'Text', 'Org', 'TeX'))
DATA_LANGUAGES = frozenset(('YAML', 'JSON', 'TOML', 'XML', 'INI', 'SQL', 'Jupyter Notebook', 'Protocol Buffers',
                            'GraphQL', 'Makefile', 'CMake', 'Starlark'))
DEVOPS_LANGUAGES = frozenset(('Dockerfile', 'HCL'))
_DEVOPS_NAMES = frozenset((
    'docker-compose.yml', 'docker-compose.yaml', 'compose.yml', 'compose.yaml', 'jenkinsfile', '.gitlab-ci.yml',
    '.travis.yml', 'azure-pipelines.yml', 'vagrantfile', 'chart.yaml', 'kustomization.yaml', 'ansible.cfg',
    'skaffold.yaml', 'helmfile.yaml', 'bitbucket-pipelines.yml', 'cloudbuild.yaml', '.dockerignore',
))
_DEVOPS_DIRS = frozenset((
    'workflows', '.circleci', 'charts', 'helm', 'k8s', 'kubernetes', 'manifests', 'deploy', 'deployment',
    'deployments', 'ansible', 'playbooks', 'roles', 'terraform', 'infra', 'infrastructure', 'group_vars', 'host_vars',
    'inventory', 'inventories', 'kustomize', 'overlays',
))
_DEVOPS_DIR_LANGUAGES = frozenset(('YAML', 'JSON', 'Shell', 'HCL', 'INI', 'Dockerfile', 'Text', None))
_IAC_NAMES = frozenset(('chart.yaml', 'kustomization.yaml', 'ansible.cfg', 'helmfile.yaml'))
_DOCS_GENERATORS = frozenset(('mkdocs.yml', 'mkdocs.yaml', 'book.toml', 'docs/conf.py', 'doc/conf.py', 'conf.py',
                              'docusaurus.config.js', 'docusaurus.config.ts', 'antora.yml', '_config.yml',
                              '.readthedocs.yaml', '.readthedocs.yml'))
_PLUGIN_DIRS = frozenset(('plugins', 'middleware', 'middlewares', 'extensions', 'adapters', 'contrib'))
_APP_FILES = frozenset(('manage.py', 'app.py', 'main.py', 'wsgi.py', 'asgi.py', 'main.go', 'index.html', 'app.js',
                        'server.js', 'procfile', 'docker-compose.yml', 'androidmanifest.xml', 'app.tsx', 'app.jsx',
                        'app.vue', 'app.svelte', 'main.swift', 'main.kt', 'program.cs'))
_TOOL_WORDS = re.compile(r'\b(?:linter|lint(?:ing)? tool|formatter|code format|static analy[sz]|type[ -]checker|'
                         r'code generat|build (?:tool|system)|bundler|compiler|transpiler|test runner|'
                         r'language server|debugger|profiler|developer tool|dev tool|devtool|pre-commit|'
                         r'code coverage|ide plugin|editor plugin|vs ?code extension)')
_CLI_WORDS = re.compile(r'command[- ]line|\bcli\b|usage:|\$ \w')
_LIBRARY_WORDS = re.compile(r'\blibrary\b|\bsdk\b|pip install|npm install|yarn add|cargo add|go get|gem install|'
                            r'composer require')
# Argument-parsing libraries, checked only in files of the matching language: a needle found, then confirmed.
_CLI_NEEDLES = {
    'Python': ('argparse', 'click', 'typer', 'docopt', 'fire'),
    'Go': ('spf13/cobra', 'urfave/cli', 'alecthomas/kong', 'kingpin', '"flag"'),
    'Rust': ('clap', 'structopt', 'argh'),
    'JavaScript': ('commander', 'yargs', 'meow', 'oclif', "'cac'", '"cac"'),  # bare cac is in every "cache"
    'TypeScript': ('commander', 'yargs', 'meow', 'oclif', "'cac'", '"cac"'),
    'Java': ('picocli', 'jcommander'),
    'Kotlin': ('clikt', 'kotlinx.cli'),
}
_CLI_IMPORT = {
    'Python': re.compile(r'^[ \t]*(?:import|from)[ \t]+(?:argparse|click|typer|docopt|fire)\b', re.MULTILINE),
    'Go': re.compile(r'"(?:github\.com/(?:spf13/cobra|urfave/cli[\w/]*|alecthomas/(?:kong|kingpin)[\w/.]*)|'
                     r'gopkg\.in/alecthomas/kingpin[\w/.]*|flag)"'),
    'Rust': re.compile(r'^[ \t]*(?:use|extern crate)[ \t]+(?:clap|structopt|argh)\b|#\[derive\([^)\n]{0,100}\bParser\b',
                       re.MULTILINE),
    'JavaScript': re.compile(r'''(?:require\(|from[ \t]+)['"](?:commander|yargs|yargs/[\w/]+|meow|cac|@oclif/[\w-]+|'''
                             r'''oclif)['"]'''),
    'Java': re.compile(r'^[ \t]*import[ \t]+(?:picocli|com\.beust\.jcommander)\.', re.MULTILINE),
    'Kotlin': re.compile(r'^[ \t]*import[ \t]+(?:com\.github\.ajalt\.clikt|kotlinx\.cli)\.', re.MULTILINE),
}
_CLI_IMPORT['TypeScript'] = _CLI_IMPORT['JavaScript']
MANIFEST_NAMES = frozenset(('pyproject.toml', 'setup.py', 'setup.cfg', 'package.json', 'cargo.toml', 'go.mod',
                            'pom.xml', 'build.gradle', 'build.gradle.kts', 'composer.json', 'gemfile',
                            '.pre-commit-hooks.yaml', 'dockerfile'))


def uses_cli_library(text: str, language: str | None) -> bool:
    """Tell whether a source file imports a command-line argument parser of its language."""
    # A substring test per needle (a fast search in C) is several times quicker than one regex alternation, which
    # tries every position; the regex then confirms the rare hit.
    needles = _CLI_NEEDLES.get(language or '')
    if not needles:
        return False
    for needle in needles:
        if needle in text:
            return _CLI_IMPORT[language].search(text) is not None
    return False


def _is_devops(path: str, language: str | None) -> bool:
    lower = path.lower()
    name = lower.rsplit('/', 1)[-1]
    if language in DEVOPS_LANGUAGES or name in _DEVOPS_NAMES:
        return True
    directories = lower.split('/')[:-1]
    return language in _DEVOPS_DIR_LANGUAGES and any(directory in _DEVOPS_DIRS for directory in directories)


def _manifest_json(manifests: Mapping[str, str], name: str) -> dict:
    try:
        data = json.loads(manifests.get(name, '') or '{}')
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def classification_scores(files: Sequence[SourceFile], readme: str, *, manifests: Mapping[str, str] | None = None,
                          cli_files: int = 0) -> dict[str, float]:
    """Return the score of each class (see the table above); `manifests` maps root manifest names to their text."""
    manifests = {name.lower(): text for name, text in (manifests or {}).items()}
    lines = Counter()
    paths = set()
    directories = set()
    iac = False
    for source in files:
        lower = source.path.lower()
        paths.add(lower)
        directories.update(lower.split('/')[:-1])
        if _is_devops(source.path, source.language):
            lines['devops'] += source.lines
            iac = iac or source.language == 'HCL' or lower.rsplit('/', 1)[-1] in _IAC_NAMES or (
                'roles' in lower.split('/')[:-1] or 'playbooks' in lower.split('/')[:-1])
        elif source.language in DOC_LANGUAGES:
            lines['docs'] += source.lines
        elif source.language is not None and source.language not in DATA_LANGUAGES:
            lines['code'] += source.lines
    counted = sum(lines.values()) or 1
    docs_share, devops_share, code_share = (lines[key] / counted for key in ('docs', 'devops', 'code'))
    factor = min(1.0, code_share / 0.5)
    readme_lower = (readme or '').lower()
    opening = readme_lower[:600]

    pyproject, setup = manifests.get('pyproject.toml', ''), manifests.get('setup.py', '') + manifests.get('setup.cfg', '')
    package = _manifest_json(manifests, 'package.json')
    cargo = manifests.get('cargo.toml', '')
    python_scripts = '[project.scripts]' in pyproject or '[tool.poetry.scripts]' in pyproject or (
        'console_scripts' in setup or 'scripts=' in setup.replace(' ', ''))
    has_go_cmd = any(path.startswith('cmd/') and path.endswith('.go') for path in paths)
    has_bin_dir = any(path.startswith('bin/') for path in paths)
    entry_points = (python_scripts or bool(package.get('bin')) or '[[bin]]' in cargo or has_go_cmd or has_bin_dir)
    library_manifest = (
        ((pyproject or setup) and not python_scripts)
        or (cargo and ('[lib]' in cargo or 'src/lib.rs' in paths) and '[[bin]]' not in cargo)
        or (package and not package.get('bin') and any(key in package for key in ('main', 'exports', 'module'))
            and not package.get('private'))
        or ('go.mod' in manifests and 'main.go' not in paths and not has_go_cmd)
        or any(path.endswith('.gemspec') and '/' not in path for path in paths)
    )
    app_markers = sum(1 for path in paths if path.rsplit('/', 1)[-1] in _APP_FILES and path.count('/') <= 1)
    app_markers += bool(package.get('private')) or 'start' in (package.get('scripts') or {})
    tool_manifest = ('.pre-commit-hooks.yaml' in paths or 'vscode' in (package.get('engines') or {}) or str(
        package.get('name', '')).startswith(('eslint-plugin', 'eslint-config', 'babel-plugin', 'webpack-plugin',
                                             'prettier-plugin', '@typescript-eslint')))

    scores = {
        'Documentation': 10 * docs_share + 2 * any(path in _DOCS_GENERATORS for path in paths),
        'DevOpsConfiguration': 10 * devops_share + 2 * iac,
        'Frameworks': factor * (5 * ('framework' in opening) + 2 * bool(directories & _PLUGIN_DIRS)
                                + 1 * bool(library_manifest)),
        'DevelopmentTools': factor * (5 * bool(_TOOL_WORDS.search(opening)) + 3 * tool_manifest),
        'CLITools': factor * (4 * entry_points + 2 * (cli_files > 0) + 1 * bool(_CLI_WORDS.search(readme_lower))),
        'Libraries': factor * (4 * bool(library_manifest) + 1 * bool(_LIBRARY_WORDS.search(readme_lower))),
        'Applications': factor * (3 + 2 * min(app_markers, 1)),
    }
    return {name: round(score, 3) for name, score in scores.items()}


def classify(files: Sequence[SourceFile], readme: str, *, manifests: Mapping[str, str] | None = None,
             cli_files: int = 0) -> str:
    """Return the class of a repository: Applications, Frameworks, Libraries, DevelopmentTools, CLITools, ..."""
    scores = classification_scores(files, readme, manifests=manifests, cli_files=cli_files)
    best = max(TIE_ORDER, key=lambda name: (scores[name], -TIE_ORDER.index(name)))
    return best if scores[best] > 0 else 'Applications'  # no evidence at all


# ---------------------------------------------------------------------------------------------------------------------
# Tree, components, languages
# ---------------------------------------------------------------------------------------------------------------------

_CONTROL = {code: '?' for code in [*range(0x20), 0x7f]}


def path_tree(paths: Sequence[str], max_lines: int | None = None) -> str:
    """Return a compact `├──` tree of repository paths: directories first, breadth first when it must be cut."""
    max_lines = MAX_TREE_LINES if max_lines is None else max_lines
    root: dict[str, dict | None] = {}
    for path in paths:
        node = root
        parts = path.split('/')
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            node = child
        node.setdefault(parts[-1], None)

    def ordered(node: dict) -> list[tuple[str, dict | None]]:
        return sorted(node.items(), key=lambda item: (item[1] is None, item[0].casefold(), item[0]))

    # Breadth first: every top-level entry is shown before any second-level one, and so on, until the budget is spent.
    total = sum(len(node) for node in _directories(root))
    budget = total if total <= max_lines else max(max_lines - 1, 0)
    shown: dict[int, list[tuple[str, dict | None]]] = {}
    queue = deque([root])
    while queue and budget > 0:
        node = queue.popleft()
        children = ordered(node)[:budget]
        budget -= len(children)
        shown[id(node)] = children
        queue.extend(child for _, child in children if child)

    lines: list[str] = []
    stack = [(shown.get(id(root), []), 0, '')]
    while stack:  # depth first, without recursion: paths can be nested deeper than Python's recursion limit
        children, index, prefix = stack.pop()
        if index >= len(children):
            continue
        name, child = children[index]
        last = index == len(children) - 1
        lines.append(f'{prefix}{"└── " if last else "├── "}{name.translate(_CONTROL)}{"" if child is None else "/"}')
        stack.append((children, index + 1, prefix))
        if child:
            stack.append((shown.get(id(child), []), 0, prefix + ('    ' if last else '│   ')))
    omitted = total - len(lines)
    if omitted > 0:
        parents = sum(1 for node in _directories(root) if len(shown.get(id(node), ())) < len(node))
        lines.append(f'… {omitted} more entries in {parents} director{"y" if parents == 1 else "ies"}')
    return '\n'.join(lines)


def _directories(root: dict) -> list[dict]:
    found, stack = [], [root]
    while stack:
        node = stack.pop()
        found.append(node)
        stack.extend(child for child in node.values() if child)
    return found


# Top-level directories whose subdirectories are components of their own (a src/ layout, a monorepo).
CONTAINER_DIRECTORIES = frozenset(('src', 'lib', 'libs', 'packages', 'apps', 'crates', 'services', 'modules',
                                   'plugins', 'cmd', 'pkg', 'internal', 'components'))


def find_components(files: Sequence[SourceFile]) -> list[dict]:
    """Return the major components: top-level directories (split one level more for src/-like ones), by size."""
    groups: dict[str, list[SourceFile]] = defaultdict(list)
    for source in files:
        parts = source.path.split('/')
        if len(parts) == 1:
            key = '.'
        elif parts[0] in CONTAINER_DIRECTORIES and len(parts) >= 3:
            key = f'{parts[0]}/{parts[1]}'
        else:
            key = parts[0]
        groups[key].append(source)
    components = []
    for key, members in groups.items():
        by_language: Counter[str] = Counter()
        for source in members:
            if source.language:
                by_language[source.language] += source.size
        components.append({
            'name': ROOT_COMPONENT if key == '.' else key.rsplit('/', 1)[-1],
            'path': key,
            'files': sorted(source.path for source in members),
            'languages': [language for language, _ in sorted(by_language.items(), key=lambda item: (-item[1], item[0]))],
            'lines': sum(source.lines for source in members),
            'bytes': sum(source.size for source in members),
        })
    components.sort(key=lambda component: (-component['bytes'], component['path']))
    return components[:MAX_COMPONENTS]


def language_table(files: Sequence[SourceFile]) -> list[dict]:
    """Return files, lines, bytes and percent (of bytes) per known language, most bytes first."""
    rows: dict[str, dict] = {}
    for source in files:
        if source.language is None:
            continue
        row = rows.setdefault(source.language, {'language': source.language, 'files': 0, 'lines': 0, 'bytes': 0})
        row['files'] += 1
        row['lines'] += source.lines
        row['bytes'] += source.size
    total = sum(row['bytes'] for row in rows.values())
    for row in rows.values():
        row['percent'] = round(100 * row['bytes'] / total, 1) if total else 0.0
    return sorted(rows.values(), key=lambda row: (-row['bytes'], row['language']))


# ---------------------------------------------------------------------------------------------------------------------
# The analysis
# ---------------------------------------------------------------------------------------------------------------------

_README_EXTENSIONS = ('.md', '.rst', '.txt', '', '.markdown', '.adoc', '.org')


def _readme_rank(path: str) -> tuple[int, int, str] | None:
    """Rank a README candidate: shallower first, then by extension preference; None if it is not a README."""
    name = path.rsplit('/', 1)[-1].lower()
    if not name.startswith('readme'):
        return None
    extension = name[len('readme'):]
    if extension not in _README_EXTENSIONS:
        return None
    return path.count('/'), _README_EXTENSIONS.index(extension), path


def analyse(checkout: Path, *, progress: Callable[[int, int], None] | None = None) -> Analysis:
    """Analyse the tracked files of a git checkout; `progress(done, total)` is called every few hundred files."""
    started = time.perf_counter()
    checkout = Path(checkout)
    # The analysis makes many long-lived objects and no reference cycles: the cyclic garbage collector would only
    # walk them again and again (about a fifth of the time). Reference counting still frees everything.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _analyse(checkout, started, progress)
    finally:
        if collecting:
            gc.enable()


def _analyse(checkout: Path, started: float, progress: Callable[[int, int], None] | None) -> Analysis:
    entries = tracked_files(checkout)
    total = len(entries)
    names = [raw.decode('utf-8', 'replace') for raw, _ in entries]
    has_cpp = any(_extension(name) in CPP_EXTENSIONS for name in names)
    skipped: Counter[str] = Counter()
    files: list[SourceFile] = []
    raw_paths: dict[str, bytes] = {}
    readme_path, readme, readme_rank = None, '', None
    manifests: dict[str, str] = {}
    cli_files = 0
    with CheckoutReader(checkout) as reader:
        for done, ((raw, mode), path) in enumerate(zip(entries, names), 1):
            if progress is not None and done % PROGRESS_EVERY == 0 and done < total:
                progress(done, total)
            if mode == _SYMLINK_MODE:
                skipped['symlink'] += 1
                continue
            if mode == _GITLINK_MODE:
                skipped['submodule'] += 1
                continue
            data, reason = reader.read(raw)
            if data is None:
                skipped[reason] += 1
                continue
            text = decode_text(data)
            if text is None:
                skipped['binary'] += 1
                continue
            if '\0' in text:  # text stores (PostgreSQL among them) refuse NUL characters
                text = text.replace('\0', '')
            language = detect_language(path, has_cpp=has_cpp) or (
                _shebang_language(text) if '.' not in path.rsplit('/', 1)[-1] else None)
            files.append(SourceFile(path, language, len(data), count_lines(data), []))
            raw_paths[path] = raw
            if language in _CLI_NEEDLES and uses_cli_library(text, language):
                cli_files += 1
            rank = _readme_rank(path)
            if rank is not None and (readme_rank is None or rank < readme_rank):
                readme_path, readme, readme_rank = path, text[:MAX_README_SIZE], rank
            if '/' not in path and (path.lower() in MANIFEST_NAMES or path.endswith('.gemspec')) and (
                    len(data) <= MAX_MANIFEST_SIZE):
                manifests[path] = text
    files.sort(key=lambda source: source.path)
    components = find_components(files)
    _outline_components(checkout, files, components, raw_paths)
    if progress is not None:
        progress(total, total)
    analysis = Analysis(
        files=files,
        skipped={reason: skipped[reason] for reason in SKIP_REASONS if skipped[reason]},
        languages=language_table(files),
        readme_path=readme_path,
        readme=readme,
        tree=path_tree(names),
        classification=classify(files, readme, manifests=manifests, cli_files=cli_files),
        components=components,
        total_files=total,
        total_bytes=sum(source.size for source in files),
    )
    analysis.elapsed = time.perf_counter() - started
    logger.info('%s: analysed %d of %d files (%s) in %.2f s, %s', checkout, len(files), total,
                ', '.join(f'{count} {reason}' for reason, count in analysis.skipped.items()) or 'none skipped',
                analysis.elapsed, analysis.classification)
    return analysis


def _outline_components(checkout: Path, files: list[SourceFile], components: list[dict],
                        raw_paths: dict[str, bytes]) -> None:
    """Fill in the declarations of the first files (by path) of each component, reading them a second time."""
    by_path = {source.path: source for source in files}
    chosen = []
    for component in components:
        candidates = [by_path[path] for path in sorted(component['files']) if path in by_path]
        chosen += [source for source in candidates
                   if source.language and source.size <= MAX_OUTLINE_FILE_SIZE][:MAX_OUTLINED_PER_COMPONENT]
    with CheckoutReader(checkout) as reader:
        for source in chosen:
            data, _ = reader.read(raw_paths[source.path])
            text = decode_text(data) if data is not None else None
            if text is None:
                continue  # changed under us since the first pass: keep the file, without an outline
            try:
                source.declarations = outline(source.path, text.replace('\0', ''), source.language)
            except Exception as exc:  # noqa: BLE001 - one strange file must not fail a whole repository
                logger.warning('%s: %s has no outline, outlining failed: %r', checkout, source.path, exc)
