"""The kind of a repository (an application, a library, a CLI tool...), scored from its files, README and manifests."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

from rqjobs.repository.results import SourceFile

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

CLASSES = (
    'Applications',
    'Frameworks',
    'Libraries',
    'DevelopmentTools',
    'CLITools',
    'DevOpsConfiguration',
    'Documentation',
)
TIE_ORDER = (
    'DevOpsConfiguration',
    'Documentation',
    'Frameworks',
    'DevelopmentTools',
    'CLITools',
    'Libraries',
    'Applications',
)
DOC_LANGUAGES = frozenset(('Markdown', 'reStructuredText', 'AsciiDoc', 'Text', 'Org', 'TeX'))
DATA_LANGUAGES = frozenset(
    (
        'YAML',
        'JSON',
        'TOML',
        'XML',
        'INI',
        'SQL',
        'Jupyter Notebook',
        'Protocol Buffers',
        'GraphQL',
        'Makefile',
        'CMake',
        'Starlark',
    )
)
DEVOPS_LANGUAGES = frozenset(('Dockerfile', 'HCL'))
_DEVOPS_NAMES = frozenset(
    (
        'docker-compose.yml',
        'docker-compose.yaml',
        'compose.yml',
        'compose.yaml',
        'jenkinsfile',
        '.gitlab-ci.yml',
        '.travis.yml',
        'azure-pipelines.yml',
        'vagrantfile',
        'chart.yaml',
        'kustomization.yaml',
        'ansible.cfg',
        'skaffold.yaml',
        'helmfile.yaml',
        'bitbucket-pipelines.yml',
        'cloudbuild.yaml',
        '.dockerignore',
    )
)
_DEVOPS_DIRS = frozenset(
    (
        'workflows',
        '.circleci',
        'charts',
        'helm',
        'k8s',
        'kubernetes',
        'manifests',
        'deploy',
        'deployment',
        'deployments',
        'ansible',
        'playbooks',
        'roles',
        'terraform',
        'infra',
        'infrastructure',
        'group_vars',
        'host_vars',
        'inventory',
        'inventories',
        'kustomize',
        'overlays',
    )
)
_DEVOPS_DIR_LANGUAGES = frozenset(('YAML', 'JSON', 'Shell', 'HCL', 'INI', 'Dockerfile', 'Text', None))
_IAC_NAMES = frozenset(('chart.yaml', 'kustomization.yaml', 'ansible.cfg', 'helmfile.yaml'))
_DOCS_GENERATORS = frozenset(
    (
        'mkdocs.yml',
        'mkdocs.yaml',
        'book.toml',
        'docs/conf.py',
        'doc/conf.py',
        'conf.py',
        'docusaurus.config.js',
        'docusaurus.config.ts',
        'antora.yml',
        '_config.yml',
        '.readthedocs.yaml',
        '.readthedocs.yml',
    )
)
_PLUGIN_DIRS = frozenset(('plugins', 'middleware', 'middlewares', 'extensions', 'adapters', 'contrib'))
_APP_FILES = frozenset(
    (
        'manage.py',
        'app.py',
        'main.py',
        'wsgi.py',
        'asgi.py',
        'main.go',
        'index.html',
        'app.js',
        'server.js',
        'procfile',
        'docker-compose.yml',
        'androidmanifest.xml',
        'app.tsx',
        'app.jsx',
        'app.vue',
        'app.svelte',
        'main.swift',
        'main.kt',
        'program.cs',
    )
)
_TOOL_WORDS = re.compile(
    r'\b(?:linter|lint(?:ing)? tool|formatter|code format|static analy[sz]|type[ -]checker|'
    r'code generat|build (?:tool|system)|bundler|compiler|transpiler|test runner|'
    r'language server|debugger|profiler|developer tool|dev tool|devtool|pre-commit|'
    r'code coverage|ide plugin|editor plugin|vs ?code extension)'
)
_CLI_WORDS = re.compile(r'command[- ]line|\bcli\b|usage:|\$ \w')
_LIBRARY_WORDS = re.compile(
    r'\blibrary\b|\bsdk\b|pip install|npm install|yarn add|cargo add|go get|gem install|'
    r'composer require'
)
# Argument-parsing libraries, checked only in files of the matching language: a needle found, then confirmed.
CLI_NEEDLES = {
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
    'Go': re.compile(
        r'"(?:github\.com/(?:spf13/cobra|urfave/cli[\w/]*|alecthomas/(?:kong|kingpin)[\w/.]*)|'
        r'gopkg\.in/alecthomas/kingpin[\w/.]*|flag)"'
    ),
    'Rust': re.compile(
        r'^[ \t]*(?:use|extern crate)[ \t]+(?:clap|structopt|argh)\b|#\[derive\([^)\n]{0,100}\bParser\b', re.MULTILINE
    ),
    'JavaScript': re.compile(
        r"""(?:require\(|from[ \t]+)['"](?:commander|yargs|yargs/[\w/]+|meow|cac|@oclif/[\w-]+|"""
        r"""oclif)['"]"""
    ),
    'Java': re.compile(r'^[ \t]*import[ \t]+(?:picocli|com\.beust\.jcommander)\.', re.MULTILINE),
    'Kotlin': re.compile(r'^[ \t]*import[ \t]+(?:com\.github\.ajalt\.clikt|kotlinx\.cli)\.', re.MULTILINE),
}
_CLI_IMPORT['TypeScript'] = _CLI_IMPORT['JavaScript']
# Where a match starts: at one of these words (JavaScript, Go), or at the start of a line that begins with one
# (Python). Finding those few words and trying the pattern there reads a file two or three times instead of once per
# needle (five or six).
_CLI_ANCHORS = {
    'Python': (('import', 'from'), True),
    'JavaScript': (('require(', 'from'), False),
    'TypeScript': (('require(', 'from'), False),
    'Go': (('"github.com/', '"gopkg.in/', '"flag"'), False),
}
# The same for the bytes of plain ASCII files: on ASCII, a bytes pattern matches where the text pattern does.
_CLI_BYTE_NEEDLES = {language: tuple(map(str.encode, needles)) for language, needles in CLI_NEEDLES.items()}
_CLI_BYTE_ANCHORS = {
    language: (tuple(map(str.encode, words)), line) for language, (words, line) in _CLI_ANCHORS.items()
}
_CLI_IMPORT_BYTES = {
    language: re.compile(pattern.pattern.encode(), pattern.flags & re.MULTILINE)
    for language, pattern in _CLI_IMPORT.items()
}
MANIFEST_NAMES = frozenset(
    (
        'pyproject.toml',
        'setup.py',
        'setup.cfg',
        'package.json',
        'cargo.toml',
        'go.mod',
        'pom.xml',
        'build.gradle',
        'build.gradle.kts',
        'composer.json',
        'gemfile',
        '.pre-commit-hooks.yaml',
        'dockerfile',
    )
)


def uses_cli_library(text: str | bytes, language: str | None) -> bool:
    """Tell whether a source file imports a command-line argument parser of its language; bytes must be ASCII."""
    if language not in CLI_NEEDLES:
        return False
    binary = isinstance(text, bytes)
    pattern = (_CLI_IMPORT_BYTES if binary else _CLI_IMPORT)[language]
    needles = (_CLI_BYTE_NEEDLES if binary else CLI_NEEDLES)[language]
    anchors = (_CLI_BYTE_ANCHORS if binary else _CLI_ANCHORS).get(language)
    if anchors is None:
        # A substring test per needle (a fast search in C) is several times quicker than one regex alternation,
        # which tries every position; the regex then confirms the rare hit.
        return any(needle in text for needle in needles) and pattern.search(text) is not None
    words, at_line_start = anchors
    newline = b'\n' if binary else '\n'
    for word in words:
        position = text.find(word)
        while position != -1:
            start = text.rfind(newline, 0, position) + 1 if at_line_start else position
            if pattern.match(text, start):
                return any(needle in text for needle in needles)  # as strict as the needles: no `'cac"`
            position = text.find(word, position + 1)
    return False


def _is_devops(name: str, directory: str | None, language: str | None) -> bool:
    """Tell whether a file is deployment configuration, from its lowercased name, directory (None at the root)."""
    if language in DEVOPS_LANGUAGES or name in _DEVOPS_NAMES:
        return True
    return (
        language in _DEVOPS_DIR_LANGUAGES
        and directory is not None
        and any(part in _DEVOPS_DIRS for part in directory.split('/'))
    )


def _manifest_json(manifests: Mapping[str, str], name: str) -> dict:
    try:
        data = json.loads(manifests.get(name, '') or '{}')
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def classification_scores(
    files: Sequence[SourceFile], readme: str, *, manifests: Mapping[str, str] | None = None, cli_files: int = 0
) -> dict[str, float]:
    """Return the score of each class (see the table above); `manifests` maps root manifest names to their text."""
    manifests = {name.lower(): text for name, text in (manifests or {}).items()}
    docs_lines = devops_lines = code_lines = 0
    paths = set()
    parents = set()  # of the files in a directory: each directory's path is split once, not once per file
    iac = False
    for source in files:
        lower = source.path.lower()
        paths.add(lower)
        parent, slash, name = lower.rpartition('/')
        if slash:
            parents.add(parent)
        language = source.language
        if _is_devops(name, parent if slash else None, language):
            devops_lines += source.lines
            if not iac:
                directories = parent.split('/') if slash else ()
                iac = language == 'HCL' or name in _IAC_NAMES or 'roles' in directories or 'playbooks' in directories
        elif language in DOC_LANGUAGES:
            docs_lines += source.lines
        elif language is not None and language not in DATA_LANGUAGES:
            code_lines += source.lines
    directories = {directory for parent in parents for directory in parent.split('/')}
    counted = docs_lines + devops_lines + code_lines or 1
    docs_share, devops_share, code_share = (count / counted for count in (docs_lines, devops_lines, code_lines))
    factor = min(1.0, code_share / 0.5)
    readme_lower = (readme or '').lower()
    opening = readme_lower[:600]

    pyproject, setup = (
        manifests.get('pyproject.toml', ''),
        manifests.get('setup.py', '') + manifests.get('setup.cfg', ''),
    )
    package = _manifest_json(manifests, 'package.json')
    cargo = manifests.get('cargo.toml', '')
    python_scripts = (
        '[project.scripts]' in pyproject
        or '[tool.poetry.scripts]' in pyproject
        or ('console_scripts' in setup or 'scripts=' in setup.replace(' ', ''))
    )
    has_go_cmd = any(path.startswith('cmd/') and path.endswith('.go') for path in paths)
    has_bin_dir = any(path.startswith('bin/') for path in paths)
    entry_points = python_scripts or bool(package.get('bin')) or '[[bin]]' in cargo or has_go_cmd or has_bin_dir
    library_manifest = (
        ((pyproject or setup) and not python_scripts)
        or (cargo and ('[lib]' in cargo or 'src/lib.rs' in paths) and '[[bin]]' not in cargo)
        or (
            package
            and not package.get('bin')
            and any(key in package for key in ('main', 'exports', 'module'))
            and not package.get('private')
        )
        or ('go.mod' in manifests and 'main.go' not in paths and not has_go_cmd)
        or any(path.endswith('.gemspec') and '/' not in path for path in paths)
    )
    app_markers = sum(1 for path in paths if path.rsplit('/', 1)[-1] in _APP_FILES and path.count('/') <= 1)
    app_markers += bool(package.get('private')) or 'start' in (package.get('scripts') or {})
    tool_manifest = (
        '.pre-commit-hooks.yaml' in paths
        or 'vscode' in (package.get('engines') or {})
        or str(package.get('name', '')).startswith(
            (
                'eslint-plugin',
                'eslint-config',
                'babel-plugin',
                'webpack-plugin',
                'prettier-plugin',
                '@typescript-eslint',
            )
        )
    )

    scores = {
        'Documentation': 10 * docs_share + 2 * any(path in _DOCS_GENERATORS for path in paths),
        'DevOpsConfiguration': 10 * devops_share + 2 * iac,
        'Frameworks': factor
        * (5 * ('framework' in opening) + 2 * bool(directories & _PLUGIN_DIRS) + 1 * bool(library_manifest)),
        'DevelopmentTools': factor * (5 * bool(_TOOL_WORDS.search(opening)) + 3 * tool_manifest),
        'CLITools': factor * (4 * entry_points + 2 * (cli_files > 0) + 1 * bool(_CLI_WORDS.search(readme_lower))),
        'Libraries': factor * (4 * bool(library_manifest) + 1 * bool(_LIBRARY_WORDS.search(readme_lower))),
        'Applications': factor * (3 + 2 * min(app_markers, 1)),
    }
    return {name: round(score, 3) for name, score in scores.items()}


def classify(
    files: Sequence[SourceFile], readme: str, *, manifests: Mapping[str, str] | None = None, cli_files: int = 0
) -> str:
    """Return the class of a repository: Applications, Frameworks, Libraries, DevelopmentTools, CLITools, ..."""
    scores = classification_scores(files, readme, manifests=manifests, cli_files=cli_files)
    best = max(TIE_ORDER, key=lambda name: (scores[name], -TIE_ORDER.index(name)))
    return best if scores[best] > 0 else 'Applications'  # no evidence at all
