"""A catalog of pages proposed by a model: parsed and checked strictly, or the deterministic catalog instead."""

from __future__ import annotations

import json
import logging
import re

from rqjobs.exceptions import InvalidCatalog
from rqjobs.repository.documentation import Page

logger = logging.getLogger(__name__)

MAX_TITLE = 200
MAX_SLUG = 100
MAX_DESCRIPTION = 1000
MAX_DEPTH = 2
_SLUG = re.compile(r'[a-z0-9-]+')
_JSON_FENCE = re.compile(r'^```(?:json)?[ \t]*\n(.*?)\n```[ \t]*$', re.DOTALL | re.IGNORECASE | re.MULTILINE)
OVERVIEW = Page('overview', 'Overview', 'What the project is, its languages and layout.', None, 0)


def parse_catalog(text: str, existing: set[str], *, max_pages: int = 40, overview: Page | None = None) -> list[Page]:
    """Return the pages of a proposed catalog, parents before children and the overview first; raise InvalidCatalog.

    The answer is `{"pages": [{"title", "slug", "description", "sources", "children"}]}`, bare or in one ```json
    fence; fields other than these are ignored. Sources not in `existing` are dropped. Without a top-level page of
    slug `overview`, `overview` (or a plain overview page) comes first.
    """
    data = _load(text)
    if not isinstance(data, dict) or not isinstance(data.get('pages'), list):
        raise InvalidCatalog('the answer is not an object with a "pages" list')
    if not data['pages']:
        raise InvalidCatalog('the "pages" list is empty')
    pages: list[Page] = []
    _pages(data['pages'], None, 1, existing, pages, max_pages)
    if not any(page.key == 'overview' for page in pages):
        first = overview or OVERVIEW
        pages.insert(0, Page(first.key, first.title, first.description, None, -1, list(first.sources)))
    top = [page for page in pages if page.parent is None]
    top.sort(key=lambda page: page.key != 'overview')  # stable: the others keep their order
    for order, page in enumerate(top):
        page.order = order
    children: dict[str, list[Page]] = {}
    for page in pages:
        if page.parent is not None:
            children.setdefault(page.parent, []).append(page)
    ordered: list[Page] = []

    def walk(level: list[Page]) -> None:
        for page in level:
            ordered.append(page)
            walk(children.get(page.key, []))

    walk(top)
    return ordered


def _load(text: str) -> object:
    text = (text or '').strip()
    fenced = _JSON_FENCE.findall(text)
    # A model sometimes says a word around its JSON: one fenced block is taken as the answer, never a guess among two.
    if len(fenced) == 1 and not text.startswith(('{', '[')):
        text = fenced[0]
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise InvalidCatalog(f'the answer is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}') from None
    except ValueError as exc:
        raise InvalidCatalog(str(exc)) from None


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f'the JSON repeats the key {key!r} in one object')
        seen[key] = value
    return seen


def _pages(items: list, parent: str | None, depth: int, existing: set[str], pages: list[Page], max_pages: int) -> None:
    """Append the pages of one level (and their children) to `pages`, checking each."""
    if depth > MAX_DEPTH:
        raise InvalidCatalog(f'page {parent!r} has children, but pages nest at most {MAX_DEPTH} levels')
    slugs: set[str] = set()
    for order, item in enumerate(items):
        where = f'page {len(pages) + 1}' + (f' (under {parent!r})' if parent else '')
        if not isinstance(item, dict):
            raise InvalidCatalog(f'{where} is not an object')
        title = item.get('title')
        if not isinstance(title, str) or not title.strip():
            raise InvalidCatalog(f'{where} has no title (a non-empty string)')
        title = ' '.join(title.split())
        if len(title) > MAX_TITLE:
            raise InvalidCatalog(f'{where} has a title of {len(title)} characters (at most {MAX_TITLE})')
        slug = item.get('slug')
        if not isinstance(slug, str) or not _SLUG.fullmatch(slug) or len(slug) > MAX_SLUG:
            raise InvalidCatalog(f'{where} has the slug {slug!r}: a slug is a-z, 0-9 and - only')
        if slug in slugs:
            raise InvalidCatalog(f'{where} repeats the slug {slug!r} of a sibling')
        slugs.add(slug)
        key = f'{parent}/{slug}' if parent else slug
        description = item.get('description', '')
        if not isinstance(description, str):
            raise InvalidCatalog(f'page {key!r} has a description that is not a string')
        sources, children = item.get('sources', []), item.get('children', [])
        if not isinstance(sources, list) or not all(isinstance(path, str) for path in sources):
            raise InvalidCatalog(f'page {key!r} has sources that are not a list of paths')
        if not isinstance(children, list):
            raise InvalidCatalog(f'page {key!r} has children that are not a list')
        known = [
            path for path in dict.fromkeys(path.strip().removeprefix('./') for path in sources) if path in existing
        ]
        if len(known) < len(sources):
            logger.info('catalog page %s: %s unknown sources dropped', key, len(set(sources)) - len(known))
        if not known and not children:
            raise InvalidCatalog(f'page {key!r} has no source file of the repository and no children')
        if len(pages) >= max_pages:
            raise InvalidCatalog(f'the catalog has more than {max_pages} pages')
        pages.append(Page(key, title, ' '.join(description.split())[:MAX_DESCRIPTION], parent, order, known))
        if children:
            _pages(children, key, depth + 1, existing, pages, max_pages)


def choose_catalog(
    proposal_text: str | None, deterministic: list[Page], existing: set[str], *, max_pages: int = 40
) -> tuple[list[Page], str | None]:
    """Return the proposed catalog and None, or the deterministic one and why the proposal could not be used."""
    overview = next((page for page in deterministic if page.key == 'overview'), None)
    if proposal_text is None or not proposal_text.strip():
        reason = 'the model proposed no catalog'
    else:
        try:
            return parse_catalog(proposal_text, existing, max_pages=max_pages, overview=overview), None
        except InvalidCatalog as exc:
            reason = str(exc)
    logger.warning('catalog: using the deterministic catalog: %s', reason)
    return deterministic, reason
