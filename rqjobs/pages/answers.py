"""A model's answer made into a page: checked for the answers a page cannot be, its cited files linked or flagged."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

from rqjobs.exceptions import UnusableAnswer
from rqjobs.pages.prompts import Prompt
from rqjobs.repository.documentation import code

MIN_LINE = 8  # characters: shorter lines (a brace, `---`, a word) say nothing about where a text came from
ECHO_SHARE = 0.85  # of an answer's prose lines found verbatim in the prompt
MIN_ECHO_LINES = 3
CODE_DUMP_SHARE = 0.9  # of an answer's code lines found in the prompt, when it has next to no prose
MIN_CODE_DUMP_LINES = 10
MIN_CONTAINED = 200  # characters: an answer this long found whole inside the prompt is an echo
NOT_FOUND = ' (not found in the repository)'
FILE_EXTENSIONS = frozenset(
    'py pyi ipynb js mjs cjs jsx ts tsx vue svelte go rs java kt kts scala groovy gradle c h cc cpp cxx hpp hh cs fs '
    'vb swift m mm rb php pl pm lua r jl dart ex exs erl hrl hs elm clj cljs ml mli nim zig sol sql graphql proto '
    'thrift sh bash zsh fish ps1 bat cmd md markdown rst txt adoc org tex html htm css scss sass less xml xsl json '
    'jsonc json5 yaml yml toml ini cfg conf env properties lock mod sum csv tsv tf hcl nix dockerfile cmake mk '
    'make in j2 jinja tmpl tpl svg'.split()
)

_FENCE = re.compile(r'^ {0,3}(`{3,}|~{3,})(.*)$')
# A markdown link (not an image) or an inline code span; one pattern, so that a span inside a link is not seen twice.
_INLINE = re.compile(
    r'(?<!!)\[(?P<text>[^\]\n]*)\]\((?P<target>[^()\s]*)(?P<title>\s+"[^"\n]*")?\)'
    r'|(?P<ticks>`+)(?P<body>[^`\n]+?)(?P=ticks)(?!`)'
)
_PATH = re.compile(r'[\w@+~.-]+(?:/[\w@+~.-]+)*/?')
_LINE_SUFFIX = re.compile(r'(?::\d+(?:-\d+)?|#L\d+(?:-L?\d+)?)$')
_SOURCES_HEADING = re.compile(r'^##\s+Sources\s*$', re.MULTILINE | re.IGNORECASE)


def check_answer(content: str | None, finish_reason: str | None, prompt: Prompt) -> str:
    """Return an answer's markdown, without a fence wrapped around it all; raise UnusableAnswer if it is no page.

    An echo is an answer that is found whole in the prompt (when long), or whose prose lines are nearly all
    (85%, at least three) lines of the prompt, or that is a code block copied from the prompt with next to no prose
    (at most one prose line). Only lines of at least eight characters count, so quoting some lines of a file in a
    page that explains them is not an echo.
    """
    if content is None or not content.strip():
        raise UnusableAnswer('the answer is empty')
    if finish_reason == 'length':
        raise UnusableAnswer('the answer was cut off at the length limit')
    markdown = unwrap(content.strip())
    if not markdown:
        raise UnusableAnswer('the answer is an empty code fence')
    said = '\n'.join(message['content'] for message in prompt.messages)
    reason = echo(markdown, said)
    if reason:
        raise UnusableAnswer(f'the answer echoes the prompt: {reason}')
    return markdown + '\n'


def unwrap(text: str) -> str:
    """Return `text` without a ```markdown fence (or a bare one around a page that starts with a heading).

    The fence may lack its closing line (a model that forgot it): a last fence line that closes one of the page's
    own code blocks is left to it.
    """
    lines = text.split('\n')
    opening = _FENCE.match(lines[0])
    if len(lines) < 2 or opening is None:
        return text
    fence, info = opening.group(1), opening.group(2).strip().lower()
    if not (info in ('markdown', 'md') or (not info and lines[1].startswith('#'))):
        return text
    closing = lines[-1].strip()
    closes = closing.startswith(fence[0] * len(fence)) and set(closing) == {fence[0]}
    inner_fences = sum(1 for line in lines[1:-1] if _FENCE.match(line))
    if closes and inner_fences % 2 == 0:
        return '\n'.join(lines[1:-1]).strip()
    if (inner_fences + closes) % 2 == 0:  # the fence lines after the opening are the page's own blocks
        return '\n'.join(lines[1:]).strip()
    return text


def echo(markdown: str, prompt_text: str) -> str | None:
    """Return why `markdown` is an echo of `prompt_text`, or None when it is not."""
    flat_answer, flat_prompt = ' '.join(markdown.split()), ' '.join(prompt_text.split())
    if len(flat_answer) >= MIN_CONTAINED and flat_answer in flat_prompt:
        return 'all of it is found in the prompt'
    said = {line.strip() for line in prompt_text.splitlines()}
    prose, quoted = [], []
    in_code = None
    for line in markdown.splitlines():
        opening = _FENCE.match(line)
        if opening and (in_code is None or opening.group(1).startswith(in_code)):
            in_code = opening.group(1) if in_code is None else None
            continue
        stripped = line.strip()
        if len(stripped) >= MIN_LINE:
            (quoted if in_code else prose).append(stripped in said)
    if len(prose) >= MIN_ECHO_LINES and sum(prose) >= ECHO_SHARE * len(prose):
        return f'{sum(prose)} of its {len(prose)} lines are lines of the prompt'
    if len(prose) <= 1 and len(quoted) >= MIN_CODE_DUMP_LINES and sum(quoted) >= CODE_DUMP_SHARE * len(quoted):
        return f'it is {len(quoted)} lines of code from the prompt with no explanation'
    return None


# ---- Citations ----


@dataclass
class Grounded:
    """A page's markdown with its citations linked, and the paths it cited: found and not found."""

    markdown: str
    cited: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


def ground_citations(
    markdown: str, existing: set[str] | Callable[[str], bool], link: Callable[[str], str | None]
) -> Grounded:
    """Link the repository files a page cites, flag the cited paths that do not exist, and list the sources.

    A citation is an inline code span or a relative markdown link naming a path: a file that exists, or a name that
    ends in a known file extension (`src/app.py`, `README.md`); other spans (`None`, `pip install x`, `a/b`, URLs) are
    text. A path may carry a line (`app.py:12`, `app.py#L12`). Outside fenced code blocks, a span of a file that
    exists becomes [`path`](url) when `link(path)` gives a URL; a path that does not exist stays code, never a
    link, and its first mention is followed by " (not found in the repository)"; a relative link to it keeps only
    its text. A `## Sources` section listing the cited files that exist replaces any the model wrote at the end.
    """
    citations = _Citations(existing if callable(existing) else existing.__contains__, link)
    body, written_sources = _split_sources(markdown.rstrip())
    text = _link_lines(body, citations)
    # The model's own list of sources still says which files it drew on; the list written here replaces it.
    _link_lines(written_sources, citations)
    if citations.cited:
        entries = []
        for path in citations.cited:
            url = citations.url(path)
            entries.append(f'- [`{code(path)}`]({url})' if url else f'- `{code(path)}`')
        text += '\n\n## Sources\n\n' + '\n'.join(entries)
    return Grounded(text + '\n', list(citations.cited), list(citations.unknown))


def _split_sources(markdown: str) -> tuple[str, str]:
    """Split a page into its body and a `## Sources` section at its end (empty when it has none)."""
    headings = list(_SOURCES_HEADING.finditer(markdown))
    if headings and not re.search(r'^#{1,2}\s', markdown[headings[-1].end() :], re.MULTILINE):
        return markdown[: headings[-1].start()].rstrip(), markdown[headings[-1].start() :]
    return markdown, ''


def _link_lines(markdown: str, citations: _Citations) -> str:
    """Return `markdown` with its citations rewritten, leaving fenced code blocks as they are."""
    out, in_code = [], None
    for line in markdown.split('\n'):
        opening = _FENCE.match(line)
        if opening and (in_code is None or opening.group(1).startswith(in_code) and not opening.group(2).strip()):
            in_code = opening.group(1) if in_code is None else None
            out.append(line)
        elif in_code is not None:
            out.append(line)
        else:
            out.append(_INLINE.sub(citations.replace, line))
    return '\n'.join(out).rstrip()


class _Citations:
    """The citations found so far in a page, and how each span or link of it is rewritten."""

    def __init__(self, exists: Callable[[str], bool], link: Callable[[str], str | None]):
        self.exists, self.link = exists, link
        self.cited: dict[str, None] = {}
        self.unknown: dict[str, None] = {}
        self.urls: dict[str, str | None] = {}

    def url(self, path: str) -> str | None:
        if path not in self.urls:
            self.urls[path] = self.link(path)
        return self.urls[path]

    def resolve(self, candidate: str) -> tuple[str | None, bool]:
        """Return (the path cited, whether it exists); (None, False) for text that names no path."""
        candidate = candidate.strip().removeprefix('./')
        bare = _LINE_SUFFIX.sub('', candidate)
        for path in dict.fromkeys((candidate, bare)):
            # A file that exists is cited whatever its name holds (a space, say); other text must look like a path.
            if path and not path.startswith(('/', '../')) and '://' not in path and self.exists(path):
                return path, True
        if not _looks_like_path(bare):
            return None, False
        stem, dot, extension = bare.rsplit('/', 1)[-1].rpartition('.')
        if dot and stem and extension.lower() in FILE_EXTENSIONS:
            return bare, False
        return None, False

    def replace(self, match: re.Match) -> str:
        if match.group('ticks') is not None:
            return self.span(match.group(), match.group('body'))
        return self.relative_link(match.group(), match.group('text'), match.group('target'))

    def span(self, whole: str, body: str) -> str:
        path, found = self.resolve(body)
        if path is None:
            return whole
        if found:
            self.cited.setdefault(path)
            url = self.url(path)
            return f'[{whole}]({url})' if url else whole
        if path in self.unknown:
            return whole
        self.unknown.setdefault(path)
        return whole + NOT_FOUND

    def relative_link(self, whole: str, text: str, target: str) -> str:
        if not target or urlsplit(target).scheme or target.startswith(('#', '//')):
            # A link elsewhere stays as written; a file named in its text still counts as cited.
            for span in re.findall(r'`([^`\n]+)`', text):
                path, found = self.resolve(span)
                if found:
                    self.cited.setdefault(path)
            return whole
        path, found = self.resolve(unquote(target if _LINE_SUFFIX.search(target) else target.split('#', 1)[0]))
        if path is None:
            return whole
        if found:
            self.cited.setdefault(path)
            url = self.url(path)
            return f'[{text}]({url})' if url else text
        first = path not in self.unknown
        self.unknown.setdefault(path)
        return text + (NOT_FOUND if first else '')


def _looks_like_path(text: str) -> bool:
    return bool(_PATH.fullmatch(text)) and not text.startswith(('..', '-', '/')) and '//' not in text


# ---- Links ----

_GITHUB_LIKE = ('github.com', 'gitee.com')
_GITLAB_LIKE = ('gitlab.com', 'framagit.org', 'salsa.debian.org', 'gitlab.gnome.org', 'invent.kde.org')
_GITEA_LIKE = ('codeberg.org', 'gitea.com')
_BITBUCKET_LIKE = ('bitbucket.org',)


def source_link(address: str, version: str, path: str) -> str | None:
    """Return a browsable URL of a file at a commit of a repository at an https address, or None when unknown.

    GitHub (and github-named hosts, Gitee) give `/blob/<version>/<path>`, GitLab (and gitlab-named hosts)
    `/-/blob/...`, Gitea, Forgejo and Codeberg `/src/commit/...`, Bitbucket `/src/...`. Local paths, other schemes
    and hosts of an unknown kind give None; the address's user and password never reach the URL.
    """
    try:
        parts = urlsplit(address.strip())
        port = parts.port
    except ValueError:
        return None
    host = (parts.hostname or '').lower()
    segments = [segment for segment in parts.path.split('/') if segment]
    file_segments = path.split('/')
    if parts.scheme != 'https' or not host or len(segments) < 2 or not version or parts.query or parts.fragment:
        return None
    if any(segment in ('', '.', '..') for segment in file_segments):
        return None
    if segments[-1].endswith('.git'):
        segments[-1] = segments[-1][:-4]
    if not all(segments):
        return None
    base = f'https://{host}{f":{port}" if port else ""}/' + '/'.join(quote(segment, safe='') for segment in segments)
    at = quote(version, safe='')
    file_path = '/'.join(quote(segment, safe='') for segment in file_segments)
    kind = _host_kind(host)
    if kind in ('github', 'gitea', 'bitbucket') and len(segments) != 2:
        return None
    if kind == 'github':
        return f'{base}/blob/{at}/{file_path}'
    if kind == 'gitlab':
        return f'{base}/-/blob/{at}/{file_path}'
    if kind == 'gitea':
        return f'{base}/src/commit/{at}/{file_path}'
    if kind == 'bitbucket':
        return f'{base}/src/{at}/{file_path}'
    return None


def _host_kind(host: str) -> str | None:
    labels = host.split('.')
    if host in _GITHUB_LIKE or 'github' in labels:
        return 'github'
    if host in _GITLAB_LIKE or 'gitlab' in labels:
        return 'gitlab'
    if host in _GITEA_LIKE or 'gitea' in labels or 'forgejo' in labels:
        return 'gitea'
    if host in _BITBUCKET_LIKE or 'bitbucket' in labels:
        return 'bitbucket'
    return None
