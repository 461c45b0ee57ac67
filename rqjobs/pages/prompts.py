"""The prompts of pages written by a model: instructions, the deterministic page's facts and source files, in budget.

A prompt is bounded by an estimate of its tokens made without tokenizer tables, so that it fits any model's
context window next to the room left for the answer. The estimate is meant to be high; callers learn how high from
the token counts a server reports, and pass that as `correction`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from rqjobs.exceptions import ContextTooSmall
from rqjobs.repository import documentation
from rqjobs.repository.documentation import Page, PageContext, code
from rqjobs.repository.results import Analysis

logger = logging.getLogger(__name__)

SAFETY_MARGIN = 0.10  # of the context window, for what the estimate and the chat format miss
MESSAGE_OVERHEAD = 4  # tokens a chat format adds around each message
PROMPT_OVERHEAD = 3  # tokens that open the answer
PIECE_SLACK = 2  # tokens two joined pieces may count beyond their own estimates (a run across the joint)
MAX_FACTS_SHARE = 0.25  # of the budget, for the deterministic page's facts
MAX_TREE_SHARE = 0.25  # of the budget, for the tree of a catalog prompt
MAX_NAMES_SHARE = 0.05  # of the budget, for the names of the files left out of a page prompt
MAX_OUTLINE_ENTRIES = 80
HEAD_LINES = 40  # an outline of a file without declarations: its first lines
MAX_HEAD_LINE = 240  # characters of each of those lines
MIN_OUTLINE_TOKENS = 40  # less room than this and a file is omitted rather than cut to a few words
HEAD_BYTES = 64 * 1024  # read for an outline: a file's head is enough
BINARY_SNIFF = 8192
MAX_BYTES_PER_TOKEN = 8  # the estimate never counts fewer tokens than bytes / 8 (a long run of spaces)
PICK_PER_COMPONENT = 3
MAX_PICKED_FILES = 24
MAX_DESCRIPTION = 2000  # characters of a commit message's body, or of a page's description
MAX_OUTLINE_HEADS = 3  # declarations named beside each path of a catalog prompt

# Each piece a BPE tokenizer would keep whole or split: a word with the space before it, a number, a run of
# whitespace, one other ASCII character, one character beyond ASCII.
_PIECES = re.compile(r' ?[A-Za-z]+| ?[0-9]+|\s+|[\x00-\x7f]|[^\x00-\x7f]')


def estimate_tokens(text: str) -> int:
    """Return a high estimate of the tokens of `text` for the BPE tokenizers of current models.

    ASCII words and numbers count one token per three characters (a word of up to three letters is one token, as
    BPE keeps common words whole and splits rare ones into pieces of about that size); a run of whitespace one per
    eight characters; each other ASCII character (punctuation) one; each character beyond ASCII one, and two beyond
    the Basic Multilingual Plane (emoji), as current vocabularies give a common CJK character at most one token
    (older ones give rare characters two or three: the learned correction covers them).
    """
    return sum(_cost(match.group()) for match in _PIECES.finditer(text))


def _cost(piece: str) -> int:
    first = piece[0]
    if first.isascii() and (first.isalnum() or (first == ' ' and len(piece) > 1 and piece[1].isalnum())):
        return math.ceil(len(piece.lstrip(' ')) / 3)
    if first.isspace():
        return 1 + (len(piece) - 1) // 8
    return 1 if first.isascii() or ord(first) <= 0xFFFF else 2


def budget_tokens(context_tokens: int, max_output_tokens: int, correction: float = 1.0) -> int:
    """Return the estimated tokens a prompt may hold: the context window less the answer's room and a margin."""
    if correction <= 0:
        raise ValueError(f'correction must be positive, not {correction!r}')
    room = context_tokens - max_output_tokens - int(context_tokens * SAFETY_MARGIN)
    return max(0, int(room / correction))


@dataclass
class Prompt:
    """The messages of one request and what went into them.

    `estimated_tokens` is the estimate of `estimate_tokens` over the messages, before any correction; `sources` are
    the files included whole, `outlined` those included as outlines, `omitted` those left out for room (commit shas
    for a changelog), `skipped` those that could not be read (binary, missing, outside the checkout).
    """

    messages: list[dict]
    sources: list[str]
    outlined: list[str]
    omitted: list[str]
    estimated_tokens: int
    digest: str
    skipped: list[str] = field(default_factory=list)


def messages_tokens(messages: list[dict]) -> int:
    """Return the estimated tokens of chat messages, with the chat format's own."""
    return PROMPT_OVERHEAD + sum(MESSAGE_OVERHEAD + estimate_tokens(message['content']) for message in messages)


def digest(messages: list[dict]) -> str:
    """Return the sha256 hex digest of the canonical JSON of chat messages."""
    canonical = json.dumps(messages, sort_keys=True, ensure_ascii=False, separators=(',', ':'))
    return hashlib.sha256(canonical.encode('utf-8')).hexdigest()


def cut_to_tokens(text: str, limit: int, marker: str = '\n… (cut)\n') -> str:
    """Return `text`, or its longest prefix (at a line end when one is near) plus `marker` within `limit` tokens."""
    # The estimate counts at least one token per MAX_BYTES_PER_TOKEN characters: nothing longer can fit.
    head = text[: max(limit, 0) * MAX_BYTES_PER_TOKEN + 1]
    if head == text and estimate_tokens(text) <= limit:
        return text
    room = limit - estimate_tokens(marker) - PIECE_SLACK
    if room <= 0:
        return ''
    # A prefix that ends between two pieces is made of the same pieces: its estimate is their running sum.
    total, end = 0, 0
    for match in _PIECES.finditer(head):
        cost = _cost(match.group())
        if total + cost > room:
            # A long run (a minified line, a blob) is cut inside: three characters of a word or eight of
            # whitespace to a token, as the estimate counts them.
            piece, left = match.group(), room - total
            if piece.strip(' ').isascii() and piece.strip(' ').isalnum():
                end = match.start() + (len(piece) - len(piece.lstrip(' '))) + 3 * left
            elif piece.isspace():
                end = match.start() + 8 * left
            break
        total += cost
        end = match.end()
    line_end = head.rfind('\n', 0, end)
    end = line_end + 1 if line_end >= end // 2 else end
    return head[:end].rstrip() + marker


def fence(text: str, info: str = '') -> str:
    """Return `text` as a fenced code block whose fence no backtick run inside it can close."""
    longest = max((len(run) for run in re.findall(r'`+', text)), default=0)
    ticks = '`' * max(3, longest + 1)
    return f'{ticks}{info}\n{text.rstrip()}\n{ticks}'


def _prompt(system: str, user: str, budget: int, **lists) -> Prompt:
    messages = [{'role': 'system', 'content': system}, {'role': 'user', 'content': user}]
    if messages_tokens(messages) > budget:
        # Only the estimate's joints could get here (pieces are counted one by one): the end of the text goes.
        logger.warning('prompt over its budget of %s estimated tokens; its end is cut', budget)
        room = budget - messages_tokens([messages[0], {'content': ''}])
        messages[1]['content'] = cut_to_tokens(user, room)
    return Prompt(
        messages=messages,
        sources=lists.get('sources', []),
        outlined=lists.get('outlined', []),
        omitted=lists.get('omitted', []),
        estimated_tokens=messages_tokens(messages),
        digest=digest(messages),
        skipped=lists.get('skipped', []),
    )


class _Room:
    """The tokens left for the pieces of a user message, once the system message and the fixed text are counted."""

    def __init__(self, budget: int, system: str, fixed: str, tail: str = ''):
        # The tail (a count of what was left out) is kept from the start, so that the pieces never leave it no room.
        self.tail = self.cost(tail) if tail else 0
        self.left = budget - messages_tokens([{'content': system}, {'content': fixed}]) - PIECE_SLACK - self.tail
        if self.left < 0:
            raise ContextTooSmall(
                f'a prompt needs more than {budget} estimated tokens for its instructions alone; raise '
                f'LLM_CONTEXT_TOKENS or lower LLM_MAX_OUTPUT_TOKENS, for example LLM_CONTEXT_TOKENS=16384'
            )

    def release_tail(self) -> None:
        self.left += self.tail
        self.tail = 0

    def cost(self, piece: str) -> int:
        return estimate_tokens(piece) + PIECE_SLACK

    def take(self, piece: str) -> bool:
        """Count `piece` and return True if it fits in what is left, else leave the room as it was."""
        cost = self.cost(piece)
        if cost > self.left:
            return False
        self.left -= cost
        return True


# ---- Pages ----


def page_prompt(
    page: Page,
    context: PageContext,
    checkout: Path,
    *,
    language: str,
    context_tokens: int,
    max_output_tokens: int,
    correction: float = 1.0,
    title: str,
) -> Prompt:
    """Return the prompt that asks a model to write one page, from its facts and source files, within budget."""
    budget = budget_tokens(context_tokens, max_output_tokens, correction)
    title, language = ' '.join(title.split()), ' '.join(language.split())
    system = _page_system(title, language)
    about = ' '.join(page.description.split())[:MAX_DESCRIPTION]
    fixed = (
        f'Write the page "{" ".join(page.title.split())}" of the documentation of {title}.\n'
        f'What the page covers: {about or page.title}\n\n'
        'Below are facts generated from an analysis of the repository, then the source files of the page. '
        'Cite the files by the paths that head their blocks.\n\n'
    )
    room = _Room(
        budget, system, fixed, tail='## Files not shown\n\nThese files of the page did not fit: … and 100000 more.\n'
    )
    paths = list(dict.fromkeys(page.sources)) or relevant_files(context.analysis)
    # Room kept for the names of omitted files, so that the files shown never leave them none: the names of all the
    # page's files, or a share of the room when they are many.
    names = min(room.cost(', '.join(f'`{code(path)}`' for path in paths)), int(room.left * MAX_NAMES_SHARE))
    room.left -= names
    pieces = []
    wrapper = room.cost('## Facts from the analysis\n\n````markdown\n\n````\n\n')
    facts = cut_to_tokens(_facts(page, context).strip(), int(room.left * MAX_FACTS_SHARE) - wrapper)
    if facts:
        facts_piece = f'## Facts from the analysis\n\n{fence(facts, "markdown")}\n\n'
        if room.take(facts_piece):
            pieces.append(facts_piece)
    files, whole, outlined, omitted, skipped = [], [], [], [], []
    if paths:
        pieces.append('## Source files\n\n')
        room.left -= room.cost(pieces[-1])
    for path in paths:
        piece, kind = _file_piece(checkout, path, context.analysis, room)
        if kind == 'skipped':
            skipped.append(path)
        elif kind == 'omitted':
            omitted.append(path)
        else:
            files.append(piece)
            (whole if kind == 'whole' else outlined).append(path)
    if not files and paths:
        pieces.pop()
        room.left += room.cost('## Source files\n\n')
    room.left += names
    room.release_tail()
    pieces += files
    if omitted:
        pieces.append(_omitted_piece(omitted, room))
    user = fixed + ''.join(pieces)
    if skipped:
        logger.info('page %s: %s files skipped (binary, unreadable or outside the checkout)', page.key, len(skipped))
    return _prompt(
        system, user.rstrip() + '\n', budget, sources=whole, outlined=outlined, omitted=omitted, skipped=skipped
    )


def _page_system(title: str, language: str) -> str:
    return (
        f'You are a technical writer documenting the software repository {title}. You write one page of its '
        f'documentation in {language}, in Markdown; code, paths and identifiers stay as they are.\n'
        'Rules:\n'
        '- Start with a level-one heading (`# `) naming the page. No preamble, no closing remarks, and do not wrap '
        'the page in a code fence.\n'
        '- Base every statement on the facts and files given; where they say nothing, say nothing.\n'
        '- Cite every file you draw on by its path in backticks, exactly as it heads its block, for example '
        '`src/app.py`. Cite only the files shown; do not invent files or paths.\n'
        '- Quote code only in short excerpts that explain something, never whole files.'
    )


def _facts(page: Page, context: PageContext) -> str:
    """Return the deterministic page's markdown, or the overview's for a page it has no renderer for."""
    known = page.key in ('overview', 'getting-started', 'structure', 'components') or any(
        component['path'] == page.component for component in context.analysis.components
    )
    return documentation.render(page, context) if known else documentation.overview(context)


def relevant_files(analysis: Analysis, limit: int = MAX_PICKED_FILES) -> list[str]:
    """Return the files a page with no sources of its own is written from: README, manifests, each part's largest."""
    picked = [analysis.readme_path] if analysis.readme_path else []
    picked += [path for path in documentation.MANIFESTS if analysis.file(path)]
    by_path = {source.path: source for source in analysis.files}
    groups = [component['files'] for component in analysis.components] or [list(by_path)]
    per_group = PICK_PER_COMPONENT if analysis.components else limit
    for files in groups:
        sized = sorted((by_path[path] for path in files if path in by_path), key=lambda s: (-s.size, s.path))
        picked += [source.path for source in sized[:per_group]]
    return list(dict.fromkeys(picked))[:limit]


def _file_piece(checkout: Path, path: str, analysis: Analysis, room: _Room) -> tuple[str, str]:
    """Return a file's piece and how it was included: 'whole', 'outline', 'omitted' or 'skipped'."""
    target = inside(checkout, path)
    if target is None:
        logger.warning('refusing %r: not a regular file inside the checkout', path)
        return '', 'skipped'
    if room.left < MIN_OUTLINE_TOKENS:
        return '', 'omitted'  # without reading it: nothing of it could fit
    read = read_text(target, max(room.left * MAX_BYTES_PER_TOKEN + 16, HEAD_BYTES))
    if read is None:
        return '', 'skipped'
    text, complete = read
    suffix = PurePosixPath(path).suffix.lstrip('.')
    info = suffix if suffix.isalnum() else ''
    if complete:
        piece = f'### `{code(path)}`\n\n{fence(text, info)}\n\n'
        if room.take(piece):
            return piece, 'whole'
    heading = f'### `{code(path)}` (outline only: the file is too long to show whole)\n\n'
    source = analysis.file(path)
    if source is not None and source.declarations:
        lines: list[str] = []
        documentation.outline_lines(source, source.declarations, lines, MAX_OUTLINE_ENTRIES, depth=0)
        body = '\n'.join(lines)
    else:
        head = [line[:MAX_HEAD_LINE] for line in text.splitlines()[:HEAD_LINES]]
        body = fence('\n'.join(head), info)
    limit = room.left - room.cost(heading) - PIECE_SLACK
    if limit < MIN_OUTLINE_TOKENS:
        return '', 'omitted'
    piece = f'{heading}{cut_to_tokens(body, limit)}\n\n'
    if not room.take(piece):
        return '', 'omitted'
    return piece, 'outline'


def _omitted_piece(omitted: list[str], room: _Room) -> str:
    """Return the list of omitted files, as many names as fit and a count of the rest."""
    head = '## Files not shown\n\nThese files of the page did not fit: '
    # The names' costs add up (each is whole between its backticks); the tail is counted at its longest.
    left = room.left - room.cost(head) - room.cost(f', … and {len(omitted)} more.\n')
    names = []
    for path in omitted:
        name = f'`{code(path)}`'
        left -= estimate_tokens(name) + 1 + PIECE_SLACK
        if left < 0:
            break
        names.append(name)
    rest = len(omitted) - len(names)
    listed = ', '.join(names)
    if rest:
        listed = f'{listed}, … and {rest} more' if listed else f'{rest} files'
    return f'{head}{listed}.\n'


def inside(checkout: Path, path: str) -> Path | None:
    """Return the real path of a repository-relative file inside `checkout`, or None for one that escapes it."""
    pure = PurePosixPath(path)
    if not path or '\0' in path or pure.is_absolute() or '..' in pure.parts or (pure.parts[:1] == ('.git',)):
        return None
    root = Path(checkout).resolve()
    try:
        real = (root / pure).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    # A symlink may point anywhere: only where it ends counts.
    if not real.is_relative_to(root) or real == root or not real.is_file():
        return None
    return real


def read_text(target: Path, max_bytes: int) -> tuple[str, bool] | None:
    """Return (text, complete) of at most `max_bytes` of a file, or None for a binary or unreadable one."""
    try:
        with open(target, 'rb') as stream:
            data = stream.read(max_bytes + 1)
    except OSError:
        return None
    if b'\0' in data[:BINARY_SNIFF]:
        return None
    complete = len(data) <= max_bytes
    return data[:max_bytes].decode('utf-8', errors='replace'), complete


# ---- Changelog ----


def changelog_prompt(
    commits: list[dict],
    *,
    title: str,
    language: str,
    context_tokens: int,
    max_output_tokens: int,
    correction: float = 1.0,
) -> Prompt:
    """Return the prompt that asks for a changelog page of new commits, newest first, within budget.

    The shas of the commits left out for room are the prompt's `omitted`.
    """
    budget = budget_tokens(context_tokens, max_output_tokens, correction)
    title, language = ' '.join(title.split()), ' '.join(language.split())
    system = (
        f'You are a technical writer keeping the changelog of the software repository {title}. You write in '
        f'{language}, in Markdown.\n'
        'Rules:\n'
        '- Start with a level-one heading (`# `). No preamble, no closing remarks, no code fence around the page.\n'
        "- Summarise the commits given for the project's users, newest first: group related changes under short "
        'headings (features, fixes, other), and name each commit by its short sha in backticks.\n'
        '- Describe only what the commits say; do not invent changes.'
    )
    ordered = sorted(commits, key=lambda commit: str(commit.get('committed_at') or ''), reverse=True)
    fixed = f'The new commits of {title}, newest first:\n\n'
    room = _Room(budget, system, fixed, tail='… and 100000 older commits not shown.\n')
    entries, omitted = [], []
    for commit in ordered:
        entry = _commit_entry(commit)
        if omitted or not room.take(entry):
            omitted.append(str(commit.get('sha', '')))
            continue
        entries.append(entry)
    tail = f'… and {len(omitted)} older commits not shown.\n' if omitted else ''
    return _prompt(system, fixed + ''.join(entries) + tail, budget, omitted=omitted)


def _commit_entry(commit: dict) -> str:
    when = commit.get('committed_at')
    day = when.strftime('%Y-%m-%d') if hasattr(when, 'strftime') else str(when or '')
    line = f'- `{str(commit.get("sha", ""))[:12]}` {day} {" ".join(str(commit.get("author", "")).split())}: '
    line += ' '.join(str(commit.get('title', '')).split())
    description = str(commit.get('description') or '').strip()[:MAX_DESCRIPTION]
    if description:
        line += '\n' + '\n'.join(f'  {row}'.rstrip() for row in description.splitlines())
    return line + '\n'


# ---- Catalog ----


def catalog_prompt(
    analysis: Analysis,
    *,
    title: str,
    language: str,
    context_tokens: int,
    max_output_tokens: int,
    correction: float = 1.0,
    max_pages: int = 40,
) -> Prompt:
    """Return the prompt that asks for a JSON catalog of pages from the tree, languages, components and paths.

    The paths listed are the prompt's `sources`, those left out for room its `omitted`.
    """
    budget = budget_tokens(context_tokens, max_output_tokens, correction)
    title, language = ' '.join(title.split()), ' '.join(language.split())
    system = (
        f'You plan the documentation of the software repository {title}: a catalog of its pages. Answer with JSON '
        'only, no prose and no code fence, of this form:\n'
        '{"pages": [{"title": "...", "slug": "...", "description": "...", "sources": ["path", ...], '
        '"children": [...pages of the same form...]}]}\n'
        'Rules:\n'
        f'- Titles and descriptions in {language}; a title at most 200 characters; slugs of a-z, 0-9 and -, '
        'unique among the pages that share a parent.\n'
        f'- At most {max_pages} pages in all; children nest at most two levels (a child has no children).\n'
        '- The first page is the overview, slug "overview".\n'
        '- Each page lists in "sources" the files it is to be written from, by paths from the list given; a page '
        'without sources must have children.'
    )
    fixed = f'Repository: {title}\nKind: {analysis.classification}\n'
    facts = []
    if analysis.languages:
        facts.append(
            'Languages: '
            + ', '.join(f'{row["language"]} ({row["files"]} files, {row["lines"]} lines)' for row in analysis.languages)
        )
    for component in analysis.components:
        facts.append(
            f'Component {component["name"]} at `{code(component["path"])}`: {len(component["files"])} files, '
            f'{component["lines"]} lines'
        )
    header = '## Files\n\n'
    room = _Room(budget, system, fixed, tail=header + '… and 100000 more files not listed.\n')
    pieces = []
    summary = cut_to_tokens('\n'.join(facts), int(room.left * MAX_TREE_SHARE) - PIECE_SLACK)
    if summary and room.take(summary + '\n\n'):
        pieces.append(summary + '\n\n')
    wrapper = room.cost('## Tree\n\n````text\n\n````\n\n')
    tree = cut_to_tokens(analysis.tree.rstrip(), int(room.left * MAX_TREE_SHARE) - wrapper)
    if tree:
        tree_piece = f'## Tree\n\n{fence(tree, "text")}\n\n'
        if room.take(tree_piece):
            pieces.append(tree_piece)
    listed, omitted, entries = [], [], []
    for source in analysis.files:
        heads = ', '.join(declaration.name for declaration in source.declarations[:MAX_OUTLINE_HEADS])
        entry = f'- `{code(source.path)}` ({source.language or "text"}, {source.lines} lines)'
        entry += f': {heads}\n' if heads else '\n'
        if omitted or not room.take(entry):
            omitted.append(source.path)
            continue
        listed.append(source.path)
        entries.append(entry)
    if listed:
        pieces += [header, *entries]
    if omitted:
        pieces.append(f'… and {len(omitted)} more files not listed.\n')
    return _prompt(system, fixed + ''.join(pieces), budget, sources=listed, omitted=omitted)
