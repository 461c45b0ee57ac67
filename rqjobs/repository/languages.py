"""The language of a file, from its extension, its name or its shebang line."""

from __future__ import annotations

EXTENSIONS = {
    'py': 'Python',
    'pyi': 'Python',
    'pyw': 'Python',
    'pyx': 'Cython',
    'js': 'JavaScript',
    'mjs': 'JavaScript',
    'cjs': 'JavaScript',
    'jsx': 'JavaScript',
    'ts': 'TypeScript',
    'tsx': 'TypeScript',
    'mts': 'TypeScript',
    'cts': 'TypeScript',
    'go': 'Go',
    'java': 'Java',
    'rs': 'Rust',
    'c': 'C',
    'h': 'C',
    'cc': 'C++',
    'cpp': 'C++',
    'cxx': 'C++',
    'c++': 'C++',
    'hh': 'C++',
    'hpp': 'C++',
    'hxx': 'C++',
    'h++': 'C++',
    'ipp': 'C++',
    'tpp': 'C++',
    'inl': 'C++',
    'cs': 'C#',
    'rb': 'Ruby',
    'rake': 'Ruby',
    'gemspec': 'Ruby',
    'php': 'PHP',
    'sh': 'Shell',
    'bash': 'Shell',
    'zsh': 'Shell',
    'ksh': 'Shell',
    'fish': 'Shell',
    'md': 'Markdown',
    'markdown': 'Markdown',
    'mdx': 'Markdown',
    'rst': 'reStructuredText',
    'adoc': 'AsciiDoc',
    'asciidoc': 'AsciiDoc',
    'txt': 'Text',
    'org': 'Org',
    'tex': 'TeX',
    'yml': 'YAML',
    'yaml': 'YAML',
    'json': 'JSON',
    'jsonc': 'JSON',
    'json5': 'JSON',
    'toml': 'TOML',
    'xml': 'XML',
    'ini': 'INI',
    'cfg': 'INI',
    'conf': 'INI',
    'properties': 'INI',
    'html': 'HTML',
    'htm': 'HTML',
    'css': 'CSS',
    'scss': 'SCSS',
    'sass': 'SCSS',
    'less': 'Less',
    'vue': 'Vue',
    'svelte': 'Svelte',
    'kt': 'Kotlin',
    'kts': 'Kotlin',
    'swift': 'Swift',
    'scala': 'Scala',
    'm': 'Objective-C',
    'mm': 'Objective-C++',
    'lua': 'Lua',
    'pl': 'Perl',
    'pm': 'Perl',
    'r': 'R',
    'dart': 'Dart',
    'ex': 'Elixir',
    'exs': 'Elixir',
    'erl': 'Erlang',
    'hs': 'Haskell',
    'ml': 'OCaml',
    'mli': 'OCaml',
    'clj': 'Clojure',
    'cljs': 'Clojure',
    'fs': 'F#',
    'groovy': 'Groovy',
    'gradle': 'Groovy',
    'jl': 'Julia',
    'zig': 'Zig',
    'nim': 'Nim',
    'sql': 'SQL',
    'proto': 'Protocol Buffers',
    'graphql': 'GraphQL',
    'gql': 'GraphQL',
    'tf': 'HCL',
    'tfvars': 'HCL',
    'hcl': 'HCL',
    'nomad': 'HCL',
    'ps1': 'PowerShell',
    'psm1': 'PowerShell',
    'bat': 'Batchfile',
    'cmd': 'Batchfile',
    'cmake': 'CMake',
    'mk': 'Makefile',
    'dockerfile': 'Dockerfile',
    'ipynb': 'Jupyter Notebook',
    'sol': 'Solidity',
    'vim': 'Vim Script',
    'el': 'Emacs Lisp',
}
FILENAMES = {
    'dockerfile': 'Dockerfile',
    'containerfile': 'Dockerfile',
    'makefile': 'Makefile',
    'gnumakefile': 'Makefile',
    'cmakelists.txt': 'CMake',
    'jenkinsfile': 'Groovy',
    'vagrantfile': 'Ruby',
    'gemfile': 'Ruby',
    'rakefile': 'Ruby',
    'podfile': 'Ruby',
    'brewfile': 'Ruby',
    'build': 'Starlark',
    'build.bazel': 'Starlark',
    'workspace': 'Starlark',
    '.bashrc': 'Shell',
    '.zshrc': 'Shell',
    '.profile': 'Shell',
    '.bash_profile': 'Shell',
}
CPP_EXTENSIONS = frozenset(('cc', 'cpp', 'cxx', 'c++', 'hh', 'hpp', 'hxx', 'h++', 'ipp', 'tpp'))
_SHEBANGS = (
    ('python', 'Python'),
    ('node', 'JavaScript'),
    ('bash', 'Shell'),
    ('/sh', 'Shell'),
    (' sh', 'Shell'),
    ('zsh', 'Shell'),
    ('ruby', 'Ruby'),
    ('perl', 'Perl'),
    ('php', 'PHP'),
    ('deno', 'TypeScript'),
)


def file_extension(name: str) -> str:
    dot = name.rfind('.')
    return name[dot + 1 :].lower() if dot > 0 else ''


def detect_language(path: str, *, has_cpp: bool = False) -> str | None:
    """Return the language of a file from its name; `.h` headers are C++ when the repository has C++ sources."""
    name = path.rsplit('/', 1)[-1]
    lower = name.lower()
    language = FILENAMES.get(lower)
    if language:
        return language
    if lower.startswith(('dockerfile.', 'containerfile.')):
        return 'Dockerfile'
    language = EXTENSIONS.get(file_extension(lower))
    if language == 'C' and has_cpp and lower.endswith('.h'):
        return 'C++'
    return language


def shebang_language(text: str) -> str | None:
    if not text.startswith('#!'):
        return None
    first = text[:200].split('\n', 1)[0]
    for needle, language in _SHEBANGS:
        if needle in first:
            return language
    return None
