"""Generated documentation: the catalog of pages of a warehouse and their markdown, from its analysis.

Generation is deterministic: the same analysis gives the same pages, byte for byte, so an update can tell which
pages changed. Each page records the repository files it was written from (`sources`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from rqjobs.repository.declarations import Declaration
from rqjobs.repository.results import Analysis, SourceFile

MAX_COMPONENT_FILES = 60
MAX_COMPONENT_DECLARATIONS = 300
MAX_README_LINES = 200
OVERVIEW_COMMITS = 5
GETTING_STARTED = re.compile(
    r'install|setup|set up|getting started|quick ?start|usage|build|run|requirements', re.IGNORECASE
)
MANIFESTS = (
    'pyproject.toml',
    'setup.py',
    'setup.cfg',
    'package.json',
    'Cargo.toml',
    'go.mod',
    'pom.xml',
    'build.gradle',
    'CMakeLists.txt',
    'Makefile',
    'Gemfile',
    'composer.json',
)


@dataclass
class Page:
    """One catalog entry and its page."""

    key: str
    title: str
    description: str
    parent: str | None
    order: int
    sources: list[str] = field(default_factory=list)
    component: str | None = None


@dataclass
class PageContext:
    """What every page may draw on."""

    title: str
    analysis: Analysis
    commits: list[dict]


def catalog(analysis: Analysis) -> list[Page]:
    """Return the catalog of a repository's documentation, parents before children."""
    manifests = [path for path in MANIFESTS if analysis.file(path)]
    readme = [analysis.readme_path] if analysis.readme_path else []
    pages = [
        Page('overview', 'Overview', 'What the project is, its languages and layout.', None, 0, readme + manifests)
    ]
    if analysis.readme:
        pages.append(
            Page('getting-started', 'Getting started', 'Installing and running, from the README.', None, 1, readme)
        )
    pages.append(Page('structure', 'Project structure', 'The directory tree and the main components.', None, 2))
    if analysis.components:
        pages.append(Page('components', 'Components', 'One page per major part of the code.', None, 3))
        used = set()
        for order, component in enumerate(analysis.components):
            slug = unique_slug(component['name'], used)
            pages.append(
                Page(
                    f'components/{slug}',
                    component['name'],
                    f'{len(component["files"])} files, {component["lines"]} lines.',
                    'components',
                    order,
                    sorted(component['files']),
                    component=component['path'],
                )
            )
    return pages


def render(page: Page, context: PageContext) -> str:
    """Return the markdown of one page."""
    if page.key == 'overview':
        return overview(context)
    if page.key == 'getting-started':
        return getting_started(context)
    if page.key == 'structure':
        return structure(context)
    if page.key == 'components':
        return components_index(context)
    component = next(c for c in context.analysis.components if c['path'] == page.component)
    return component_page(component, context)


def overview(context: PageContext) -> str:
    """Return the overview page: what the project is, its languages, layout and recent activity."""
    analysis = context.analysis
    lines = [f'# {heading(context.title)}', '']
    summary = first_paragraph(analysis.readme)
    if summary:
        lines += [summary, '']
    counts = (
        f'**Files analysed:** {len(analysis.files)} ({analysis.total_bytes:,} bytes); '
        f'{sum(analysis.skipped.values())} skipped'
    )
    lines += [f'**Kind:** {analysis.classification}  ', counts, '']
    if analysis.languages:
        lines += ['## Languages', '', '| language | files | lines | share |', '|---|---:|---:|---:|']
        lines += [
            f'| {cell(row["language"])} | {row["files"]} | {row["lines"]} | {row["percent"]:.1f}% |'
            for row in analysis.languages
        ]
        lines.append('')
    if analysis.components:
        lines += ['## Main components', '']
        lines += [
            f'- **{cell(c["name"])}** (`{code(c["path"])}`): {len(c["files"])} files, {c["lines"]} lines'
            for c in analysis.components
        ]
        lines.append('')
    if context.commits:
        lines += ['## Recent changes', '']
        lines += [
            f'- `{commit["sha"][:8]}` {cell(commit["title"])} ({cell(commit["author"])}, '
            f'{commit["committed_at"]:%Y-%m-%d})'
            for commit in context.commits[:OVERVIEW_COMMITS]
        ]
        lines.append('')
    return '\n'.join(lines)


def getting_started(context: PageContext) -> str:
    """Return the getting-started page: the README's installation and usage sections."""
    readme = context.analysis.readme
    sections = [body for heading, body in markdown_sections(readme) if GETTING_STARTED.search(heading)]
    text = '\n\n'.join(sections) if sections else '\n'.join(readme.splitlines()[:MAX_README_LINES])
    return f'# Getting started\n\nFrom `{code(context.analysis.readme_path or "README")}`.\n\n{text.strip()}\n'


def structure(context: PageContext) -> str:
    """Return the structure page: the directory tree and the component table."""
    analysis = context.analysis
    lines = ['# Project structure', '', '```text', analysis.tree.rstrip(), '```', '']
    if analysis.components:
        lines += ['| component | path | files | lines | languages |', '|---|---|---:|---:|---|']
        lines += [
            f'| {cell(c["name"])} | `{table_code(c["path"])}` | {len(c["files"])} | {c["lines"]} | '
            f'{cell(", ".join(c["languages"]))} |'
            for c in analysis.components
        ]
        lines.append('')
    return '\n'.join(lines)


def components_index(context: PageContext) -> str:
    """Return the index page of the components."""
    lines = ['# Components', '']
    lines += [
        f'- **{cell(c["name"])}**: `{code(c["path"])}`, {len(c["files"])} files in '
        f'{cell(", ".join(c["languages"]) or "no known language")}'
        for c in context.analysis.components
    ]
    return '\n'.join(lines) + '\n'


def component_page(component: dict, context: PageContext) -> str:
    """Return the page of one component: its files and their main declarations."""
    by_path = {source.path: source for source in context.analysis.files}
    files = [by_path[path] for path in sorted(component['files']) if path in by_path]
    facts = (
        f'Path: `{code(component["path"])}` · {len(files)} files · {component["lines"]} lines · '
        f'{cell(", ".join(component["languages"]) or "no known language")}'
    )
    lines = [
        f'# {heading(component["name"])}',
        '',
        facts,
        '',
        '## Files',
        '',
        '| file | language | lines |',
        '|---|---|---:|',
    ]
    lines += [
        f'| `{table_code(source.path)}` | {source.language or "-"} | {source.lines} |'
        for source in files[:MAX_COMPONENT_FILES]
    ]
    if len(files) > MAX_COMPONENT_FILES:
        lines.append(f'| … {len(files) - MAX_COMPONENT_FILES} more files | | |')
    lines.append('')
    budget = MAX_COMPONENT_DECLARATIONS
    outlined = [source for source in files if source.declarations]
    if outlined:
        lines += ['## Declarations', '']
    for source in outlined:
        if budget <= 0:
            lines.append('… more declarations not shown.')
            break
        lines += [f'### `{code(source.path)}`', '']
        budget -= outline_lines(source, source.declarations, lines, budget, depth=0)
        lines.append('')
    return '\n'.join(lines)


def outline_lines(
    source: SourceFile, declarations: list[Declaration], lines: list[str], budget: int, depth: int
) -> int:
    """Append an outline to `lines`, at most `budget` entries; return how many were used."""
    used = 0
    for declaration in declarations:
        if used >= budget:
            break
        doc = f' — {cell(first_paragraph(declaration.doc))}' if declaration.doc else ''
        lines.append(
            f'{"  " * depth}- {declaration.kind} `{code(declaration.signature or declaration.name)}` '
            f'(line {declaration.line}){doc}'
        )
        used += 1
        used += outline_lines(source, declaration.children, lines, budget - used, depth + 1)
    return used


def markdown_sections(text: str) -> list[tuple[str, str]]:
    """Split markdown into (heading, section text including the heading) pairs."""
    sections: list[tuple[str, list[str]]] = []
    in_code = False
    for line in text.splitlines():
        if line.lstrip().startswith(('```', '~~~')):
            in_code = not in_code
        if not in_code and re.match(r'#{1,6}\s', line):
            sections.append((line.lstrip('#').strip(), [line]))
        elif sections:
            sections[-1][1].append(line)
    return [(heading, '\n'.join(body).strip()) for heading, body in sections]


def first_paragraph(text: str, limit: int = 600) -> str:
    """Return the first prose paragraph of a text (no headings, badges or code), shortened to `limit`."""
    for block in re.split(r'\n\s*\n', text or ''):
        block = block.strip()
        if not block or block.startswith(('#', '```', '<', '![', '[![', '=', '-' * 3, '|')):
            continue
        if re.fullmatch(r'[^\n]*\n *(=+|-+) *', block):  # a heading underlined with = or -
            continue
        block = ' '.join(block.split())
        return block if len(block) <= limit else block[: limit - 1].rstrip() + '…'
    return ''


def unique_slug(name: str, used: set[str]) -> str:
    """Return a URL slug for `name`, unique within `used` (which it extends)."""
    base = re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-') or 'root'
    slug, number = base, 2
    while slug in used:
        slug, number = f'{base}-{number}', number + 1
    used.add(slug)
    return slug


def cell(text: str) -> str:
    """Make text safe inside a markdown table cell or list item."""
    return str(text).replace('\\', '\\\\').replace('|', '\\|').replace('`', '\\`').replace('\n', ' ')


def code(text: str) -> str:
    """Make text safe inside inline code."""
    return str(text).replace('`', "'").replace('\n', ' ')


def table_code(text: str) -> str:
    """Make text safe inside inline code in a table cell, where even a code span's `|` would end the cell."""
    return code(text).replace('|', '\\|')


def heading(text: str) -> str:
    """Make text safe as the text of a one-line heading."""
    return ' '.join(str(text).split()).replace('\\', '\\\\').replace('`', '\\`')
