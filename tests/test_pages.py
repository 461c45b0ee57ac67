"""The documentation pages: names, titles and paths with markup stay inside their line, table cell and code span."""

import re
from datetime import datetime

import pytest

from rqjobs.repository import documentation

README = '# Sample\n\nSample greets people.\n\n## Installation\n\npip install sample\n'


def context(
    name: str = 'core',
    *,
    title: str = 'Sample',
    commit: str = 'Fix the parser',
    doc: str = 'Parse it.',
    readme_path: str = 'README.md',
) -> documentation.PageContext:
    """A one-component analysis whose component, file, declaration and commit all carry `name` or the given texts."""
    path = f'src/{name}'
    source = {
        'path': f'{path}/main.py',
        'language': 'Python',
        'size': 10,
        'lines': 3,
        'declarations': [{'kind': 'function', 'name': name, 'signature': f'{name}()', 'line': 1, 'doc': doc}],
    }
    analysis = documentation.Analysis.from_dict(
        {
            'files': [source],
            'readme_path': readme_path,
            'readme': README,
            'tree': 'src/\n  main.py',
            'languages': [{'language': 'Python', 'files': 1, 'lines': 3, 'percent': 100.0}],
            'components': [
                {'name': name, 'path': path, 'files': [source['path']], 'lines': 3, 'languages': ['Python']}
            ],
            'total_files': 1,
            'total_bytes': 10,
        }
    )
    commits = [{'sha': 'a' * 40, 'title': commit, 'author': name, 'committed_at': datetime(2026, 1, 2)}]
    return documentation.PageContext(title, analysis, commits)


def rendered(ctx: documentation.PageContext) -> dict[str, str]:
    """Every page of the catalog, by its place in the catalog (component keys depend on the name)."""
    return {
        page.key.split('/')[0] + str(page.order): documentation.render(page, ctx)
        for page in documentation.catalog(ctx.analysis)
    }


def cells(row: str) -> list[str]:
    """Split a table row as GitHub does: at every pipe not escaped by a backslash, code spans included."""
    return re.split(r'(?<!\\)\|', row.strip())[1:-1]


def assert_well_formed(page: str, plain: str) -> None:
    """Fail if `page` has another line count than `plain`, a table row off its header or an unclosed code span."""
    assert len(page.splitlines()) == len(plain.splitlines()), page
    header: list[str] | None = None
    fenced = False
    for line in page.splitlines():
        if line.startswith('```'):
            fenced = not fenced
            continue
        if fenced:
            continue
        if line.startswith('|'):
            header = header or cells(line)
            assert len(cells(line)) == len(header), line
        else:
            header = None
        assert not opens_a_code_span(line), line


def opens_a_code_span(line: str) -> bool:
    """Whether `line` leaves a code span open: outside one a backslash escapes, inside one it does not."""
    inside, escaped = False, False
    for char in line:
        if escaped:
            escaped = False
        elif char == '\\' and not inside:
            escaped = True
        elif char == '`':
            inside = not inside
    return inside


NAMES = [
    pytest.param('core', id='plain'),
    pytest.param('**bold** _it_ <em>x</em> [link](https://example.invalid)', id='markup'),
    pytest.param('back\\slash\\', id='backslashes'),
    pytest.param('x' * 5000, id='very long'),
    pytest.param('données-été', id='unicode'),
    pytest.param('a|b', id='pipe'),
    pytest.param('a`b', id='backtick'),
    pytest.param('a\nb', id='newline'),
]


@pytest.mark.parametrize('name', NAMES)
def test_a_name_stays_in_its_line_cell_and_code_span(name):
    plain = rendered(context())
    pages = rendered(context(name, commit=name, doc=name))
    assert pages.keys() == plain.keys()
    for key, page in pages.items():
        assert_well_formed(page, plain[key])


@pytest.mark.parametrize('text', ['**x** <em>y</em>', 'a|b', 'a\\b', 'x' * 5000, 'a`b`c'])
def test_a_commit_title_and_a_readme_path_stay_in_their_line_and_code_span(text):
    plain = rendered(context())
    pages = rendered(context(commit=text, readme_path=f'{text}.md'))
    for key, page in pages.items():
        assert_well_formed(page, plain[key])


@pytest.mark.parametrize(
    'text, expected',
    [
        ('plain', 'plain'),
        ('a|b', 'a\\|b'),
        ('a\\b', 'a\\\\b'),
        ('a\\|b', 'a\\\\\\|b'),
        ('one\ntwo', 'one two'),
        ('**bold** <em>', '**bold** <em>'),
        ('a`b', 'a\\`b'),
        (42, '42'),
    ],
)
def test_cell(text, expected):
    assert documentation.cell(text) == expected


@pytest.mark.parametrize(
    'text, expected',
    [
        ('src/main.py', 'src/main.py'),
        ('a`b', "a'b"),
        ('``', "''"),
        ('one\ntwo', 'one two'),
        ('a\\b', 'a\\b'),
    ],
)
def test_code(text, expected):
    assert documentation.code(text) == expected


@pytest.mark.parametrize(
    'text, expected',
    [
        ('', ''),
        ('# Title\n\nThe first\nparagraph.\n\nThe second.', 'The first paragraph.'),
        ('[![badge](b.svg)](ci)\n\n<p align="center">x</p>\n\n```\ncode\n```\n\n| a | b |\n\nProse.', 'Prose.'),
        ('---\n\n===\n\nProse.', 'Prose.'),
        ('Title\n=====\n\nProse.', 'Prose.'),
        ('Title\n-----\n\nProse.', 'Prose.'),
        ('word ' * 200, ('word ' * 120)[:599].rstrip() + '…'),
        ('x' * 600, 'x' * 600),
        ('x' * 601, 'x' * 599 + '…'),
    ],
)
def test_first_paragraph(text, expected):
    assert documentation.first_paragraph(text) == expected


@pytest.mark.parametrize(
    'names, expected',
    [
        (['Core'], ['core']),
        (['a|b', 'a b', 'A-B'], ['a-b', 'a-b-2', 'a-b-3']),
        (['!!!', '`|`'], ['root', 'root-2']),
        (['données'], ['donn-es']),
    ],
)
def test_unique_slug(names, expected):
    used: set[str] = set()
    assert [documentation.unique_slug(name, used) for name in names] == expected


def test_headings_inside_code_fences_are_not_sections():
    text = '# One\n\n```sh\n# not a heading\n```\n\n~~~\n## nor this\n~~~\n\n## Two\n\nBody.'
    sections = documentation.markdown_sections(text)
    assert [heading for heading, _ in sections] == ['One', 'Two']
    assert '# not a heading' in sections[0][1] and sections[1][1] == '## Two\n\nBody.'
