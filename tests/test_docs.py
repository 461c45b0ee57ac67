"""README stays the first ten minutes, and every link in README and docs/ leads somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]
README_MAX_BYTES = 12 * 1024

FENCE = re.compile(r'^```.*?^```[^\n]*$', flags=re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r'`[^`\n]*`')
LINK = re.compile(r'\[[^\]\n]*\]\(([^)\s]+)\)')


def prose(text: str) -> str:
    """The text without code blocks and code spans, where brackets are not links."""
    return CODE_SPAN.sub('', FENCE.sub('', text))


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as `-`, repeats numbered."""
    seen: dict[str, int] = {}
    for heading in re.findall(r'^#{1,6} (.+?)\s*#*$', FENCE.sub('', text), flags=re.MULTILINE):
        slug = re.sub(r'[^\w\- ]', '', heading.lower()).replace(' ', '-')
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        if count:
            seen[f'{slug}-{count}'] = 1
    return set(seen)


def relative_links(page: Path) -> list[str]:
    return [target for target in LINK.findall(prose(page.read_text())) if not re.match(r'[a-z][a-z+.-]*:', target)]


def test_readme_stays_short():
    size = len((ROOT / 'README.md').read_bytes())
    assert size <= README_MAX_BYTES, f'README.md is {size} bytes, over {README_MAX_BYTES}: move reference into docs/'


@pytest.mark.parametrize('page', PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition('#')
        linked = (page.parent / path).resolve() if path else page
        if not linked.is_file():
            broken.append(f'{target}: no such file')
        elif anchor and anchor not in anchors(linked.read_text()):
            broken.append(f'{target}: no heading with anchor #{anchor} in {linked.name}')
    assert not broken


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / target.partition('#')[0]).resolve() for target in relative_links(ROOT / 'README.md')}
    assert [page.name for page in PAGES[1:] if page.resolve() not in linked] == []


def test_the_link_check_sees_a_broken_link_and_anchor(tmp_path):
    (tmp_path / 'a.md').write_text('# A page\n\n## Stopping workers\n\n```sh\n# not a heading\n```\n')
    page = tmp_path / 'b.md'
    page.write_text('[ok](a.md#stopping-workers) [gone](c.md) `[code](c.md)` [bad](a.md#not-a-heading) [w](https://x)')
    assert relative_links(page) == ['a.md#stopping-workers', 'c.md', 'a.md#not-a-heading']
    assert anchors((tmp_path / 'a.md').read_text()) == {'a-page', 'stopping-workers'}
