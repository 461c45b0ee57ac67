"""The texts of pages written by a model: token estimates, prompts within budget, answers checked, catalogs parsed."""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timedelta

import pytest

from helpers import git
from rqjobs.exceptions import ContextTooSmall, InvalidCatalog, UnusableAnswer
from rqjobs.pages.answers import check_answer, ground_citations, source_link
from rqjobs.pages.catalog import choose_catalog, parse_catalog
from rqjobs.pages.prompts import (
    budget_tokens,
    catalog_prompt,
    changelog_prompt,
    cut_to_tokens,
    estimate_tokens,
    messages_tokens,
    page_prompt,
)
from rqjobs.repository import documentation
from rqjobs.repository.analysis import analyse
from rqjobs.repository.documentation import Page, PageContext
from rqjobs.repository.results import Analysis


@pytest.fixture(autouse=True)
def counted_piece_by_piece(caplog):
    """Every prompt fits its budget as built, not by the last resort that cuts its end."""
    with caplog.at_level(logging.WARNING, logger='rqjobs.pages.prompts'):
        yield
    assert 'over its budget' not in caplog.text


# ---- Token estimates ----

# The pre-tokenizer of cl100k_base (GPT-4) for ASCII text: a BPE tokenizer never merges across these chunks, and
# keeps a chunk of common English words or Python keywords as one token.
CL100K_CHUNKS = re.compile(
    r"'(?:[sdmt]|ll|ve|re)|[^\r\nA-Za-z0-9]?[A-Za-z]+|[0-9]{1,3}| ?[^\sA-Za-z0-9]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
ENGLISH = (
    'The worker takes the next job from the queue, runs it, and stores the result. When a job fails, the worker '
    'records the error and, if the job has retries left, puts it back on the queue for a later attempt.'
)
PYTHON = (
    'def fetch(queue, timeout=5):\n'
    '    """Return the next job of the queue."""\n'
    '    for name in queue.names:\n'
    '        job = queue.pop(name, timeout=timeout)\n'
    '        if job is not None:\n'
    '            return job\n'
    '    return None\n'
)
CHINESE = '工作进程从队列中取出下一个任务，运行它，并保存结果。任务失败时，记录错误并在稍后重试。'


def test_estimate_counts_the_fox_sentence_at_least_as_bpe_does():
    # cl100k_base and o200k_base both count 10 tokens: nine words and the full stop.
    assert estimate_tokens('The quick brown fox jumps over the lazy dog.') >= 10


@pytest.mark.parametrize('text', [ENGLISH, PYTHON], ids=['english', 'python'])
def test_estimate_over_counts_english_and_code(text):
    chunks = CL100K_CHUNKS.findall(text)
    assert ''.join(chunks) == text
    # Each chunk of these common words is one token of a BPE tokenizer, so the chunks are the real count.
    assert estimate_tokens(text) >= len(chunks)
    assert estimate_tokens(text) >= len(text.split())
    assert estimate_tokens(text) >= len(text) / 4  # the usual rule of thumb for English


def test_estimate_counts_each_chinese_character():
    # Current tokenizers (o200k, Qwen) give common Chinese about 0.6 to 0.9 tokens per character.
    assert estimate_tokens(CHINESE) >= len(CHINESE)
    assert estimate_tokens('😀') == 2
    assert estimate_tokens('') == 0


def test_estimate_grows_with_rare_words_and_long_numbers():
    assert estimate_tokens('a') == 1
    assert estimate_tokens('supercalifragilistic') == 7
    assert estimate_tokens('1234567') == 3
    assert estimate_tokens(' ' * 16) == 2


@pytest.mark.parametrize(
    'text',
    [
        ENGLISH * 200,
        PYTHON * 300,
        CHINESE * 300,
        '😀' * 5000,
        ' ' * 100_000 + 'x',
        'x' * 100_000,
        '\n'.join(['short'] * 5000),
    ],
    ids=['english', 'python', 'chinese', 'emoji', 'spaces', 'one-line', 'lines'],
)
def test_a_cut_text_fits_its_limit(text):
    for limit in (20, 333, 4000):
        cut = cut_to_tokens(text, limit)
        assert estimate_tokens(cut) <= limit
        assert cut.endswith('… (cut)\n') and text.startswith(cut[: -len('\n… (cut)\n')])
        if not text.startswith(' '):  # (a cut made only of spaces loses them)
            assert estimate_tokens(cut) > limit / 2  # cut near the limit, not far below it
    assert cut_to_tokens('short text', 100) == 'short text'


def test_budget_leaves_room_for_the_answer_and_a_margin():
    assert budget_tokens(16384, 2048) == 16384 - 2048 - 1638
    assert budget_tokens(16384, 2048, correction=2.0) == (16384 - 2048 - 1638) // 2
    with pytest.raises(ValueError):
        budget_tokens(16384, 2048, correction=0)


# ---- Page prompts ----


def make_checkout(tmp_path, files: dict) -> tuple:
    """A committed checkout of `files` and a hand-made analysis of it (every file a Python file, no declarations)."""
    repo = tmp_path / 'checkout'
    repo.mkdir()
    git(repo, 'init', '-q')
    for path, content in files.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_bytes(content if isinstance(content, bytes) else content.encode())
    git(repo, 'add', '-A')
    git(repo, 'commit', '-q', '-m', 'Initial version')
    sources = [
        {'path': path, 'language': 'Python', 'size': len(content), 'lines': content.count('\n')}
        for path, content in files.items()
        if isinstance(content, str)
    ]
    analysis = Analysis.from_dict(
        {
            'files': sources,
            'readme_path': 'README.md' if 'README.md' in files else None,
            'readme': files.get('README.md', ''),
            'tree': '\n'.join(sorted(files)),
            'languages': [{'language': 'Python', 'files': len(sources), 'lines': 10, 'percent': 100.0}],
            'components': [],
            'total_files': len(sources),
            'total_bytes': sum(source['size'] for source in sources),
        }
    )
    return repo, PageContext('org/sample', analysis, [])


def prompt_for(page, context, repo, *, context_tokens=8192, max_output_tokens=1024, correction=1.0):
    return page_prompt(
        page,
        context,
        repo,
        language='English',
        context_tokens=context_tokens,
        max_output_tokens=max_output_tokens,
        correction=correction,
        title='org/sample',
    )


def user_text(prompt) -> str:
    return prompt.messages[-1]['content']


def test_page_prompt_asks_for_a_cited_markdown_page_with_facts_and_sources(tmp_path, sample_repo):
    analysis = analyse(sample_repo)
    context = PageContext('org/sample', analysis, [])
    pages = documentation.catalog(analysis)
    page = next(page for page in pages if page.key == 'overview')
    prompt = prompt_for(page, context, sample_repo)
    system, user = prompt.messages[0], prompt.messages[1]
    assert (system['role'], prompt.messages[1]['role']) == ('system', 'user')
    assert 'English' in system['content'] and '`# `' in system['content'] and 'do not invent' in system['content']
    assert 'Overview' in user['content'] and 'Facts from the analysis' in user['content']
    assert '## Languages' in user['content']  # the deterministic page's facts
    assert prompt.sources == ['README.md', 'pyproject.toml']
    assert '### `README.md`' in user['content'] and 'pip install sample' in user['content']
    assert prompt.estimated_tokens == messages_tokens(prompt.messages)


def test_a_page_without_sources_is_written_from_readme_manifests_and_largest_files(sample_repo):
    analysis = analyse(sample_repo)
    context = PageContext('org/sample', analysis, [])
    structure = next(page for page in documentation.catalog(analysis) if page.key == 'structure')
    prompt = prompt_for(structure, context, sample_repo)
    assert prompt.sources[:2] == ['README.md', 'pyproject.toml']
    assert 'sample/core.py' in prompt.sources
    # The deterministic page, fenced beyond the fences inside it.
    assert '````markdown\n# Project structure\n\n```text\n' in user_text(prompt)


def test_one_enormous_file_is_outlined_within_the_budget(tmp_path):
    huge = ''.join(f'value_{number} = compute({number}, "padding text")\n' for number in range(120_000))
    assert len(huge) > 5_000_000
    repo, context = make_checkout(tmp_path, {'huge.py': huge, 'small.py': 'print("hello")\n'})
    page = Page('components/core', 'Core', 'The core.', 'components', 0, ['huge.py', 'small.py'])
    for correction in (0.5, 1.0, 3.0):
        prompt = prompt_for(page, context, repo, correction=correction)
        assert prompt.estimated_tokens <= budget_tokens(8192, 1024, correction)
        assert prompt.outlined == ['huge.py'] and prompt.sources == ['small.py']
        assert 'value_0 = compute(0' in user_text(prompt)
        assert 'value_119999' not in user_text(prompt)


def test_many_files_go_whole_then_as_outlines_then_omitted_in_order(tmp_path):
    body = ''.join(f'def handler_{line}(request):\n    return respond(request, {line})\n\n' for line in range(30))
    files = {f'app/module_{number:03}.py': body for number in range(200)}
    repo, context = make_checkout(tmp_path, files)
    paths = sorted(files)
    page = Page('components/app', 'App', 'The app.', 'components', 0, paths)
    prompt = prompt_for(page, context, repo)
    assert prompt.estimated_tokens <= budget_tokens(8192, 1024)
    whole, outlined, omitted = len(prompt.sources), len(prompt.outlined), len(prompt.omitted)
    assert whole and outlined and omitted
    assert prompt.sources + prompt.outlined + prompt.omitted == paths
    text = user_text(prompt)
    assert text.index(f'### `{paths[0]}`\n') < text.index(f'### `{prompt.outlined[0]}` (outline only')
    assert '## Files not shown' in text and f'`{prompt.omitted[0]}`' in text
    assert 'more' in text.rsplit('## Files not shown', 1)[1]  # the names that did not fit are counted
    assert f'### `{prompt.omitted[0]}`' not in text


def test_outlines_list_a_files_declarations(sample_repo):
    analysis = analyse(sample_repo)
    context = PageContext('org/sample', analysis, [])
    filler = Page('x', 'Core', 'Core.', None, 0, ['data/big.txt', 'sample/core.py'])
    # Room for little more than the instructions: the big file cannot be whole, the outline of core.py can.
    prompt = prompt_for(filler, context, sample_repo, context_tokens=2048, max_output_tokens=1024)
    assert prompt.estimated_tokens <= budget_tokens(2048, 1024)
    assert 'data/big.txt' in prompt.outlined + prompt.omitted


def test_a_huge_readme_is_cut_to_the_budget(tmp_path):
    readme = '# Sample\n\n## Installation\n\n' + 'Run the installer with care and read the notes. ' * 80_000
    repo, context = make_checkout(tmp_path, {'README.md': readme})
    page = Page('getting-started', 'Getting started', 'Installing.', None, 1, ['README.md'])
    prompt = prompt_for(page, context, repo)
    assert prompt.estimated_tokens <= budget_tokens(8192, 1024)
    assert '… (cut)' in user_text(prompt)
    assert prompt.outlined == ['README.md']


@pytest.mark.parametrize('context_tokens', [1024, 4096, 32768])
def test_the_budget_holds_for_any_window(tmp_path, context_tokens):
    files = {f'pkg/file_{number}.py': f'# {"word " * (number * 40)}\n' for number in range(40)}
    files['README.md'] = '# Sample\n\n' + 'Sample text. ' * 5000
    repo, context = make_checkout(tmp_path, files)
    page = Page('overview', 'Overview', 'What it is.', None, 0, sorted(files))
    prompt = prompt_for(page, context, repo, context_tokens=context_tokens, max_output_tokens=context_tokens // 2)
    assert prompt.estimated_tokens <= budget_tokens(context_tokens, context_tokens // 2)
    assert prompt.omitted and '## Files not shown' in user_text(prompt)
    assert prompt.sources or context_tokens == 1024  # the smallest window holds the instructions and little more


def test_a_window_too_small_for_the_instructions_is_refused(tmp_path):
    repo, context = make_checkout(tmp_path, {'a.py': 'x = 1\n'})
    page = Page('overview', 'Overview', 'What it is.', None, 0, ['a.py'])
    with pytest.raises(ContextTooSmall):
        prompt_for(page, context, repo, context_tokens=1024, max_output_tokens=512, correction=10)


def test_digest_is_stable_and_follows_the_sources(tmp_path):
    repo, context = make_checkout(tmp_path, {'README.md': '# Sample\n\nIt greets.\n', 'a.py': 'x = 1\n'})
    page = Page('overview', 'Overview', 'What it is.', None, 0, ['README.md', 'a.py'])
    first, second = prompt_for(page, context, repo), prompt_for(page, context, repo)
    assert first.digest == second.digest and re.fullmatch(r'[0-9a-f]{64}', first.digest)
    assert first.messages == second.messages
    (repo / 'a.py').write_text('x = 2\n')
    assert prompt_for(page, context, repo).digest != first.digest


def test_paths_escaping_the_checkout_binaries_and_git_files_are_skipped(tmp_path):
    secret = tmp_path / 'secret.txt'
    secret.write_text('TOP-SECRET-VALUE\n')
    repo, context = make_checkout(tmp_path, {'ok.py': 'print("ok")\n', 'logo.png': b'\x89PNG\x00\x00binary'})
    (repo / 'link.txt').symlink_to(secret)
    (repo / 'inner.txt').symlink_to(repo / 'ok.py')
    paths = ['../secret.txt', 'link.txt', str(secret), '.git/config', 'logo.png', 'missing.py', 'ok.py', 'inner.txt']
    page = Page('overview', 'Overview', 'What it is.', None, 0, paths)
    prompt = prompt_for(page, context, repo)
    assert 'TOP-SECRET-VALUE' not in json.dumps(prompt.messages)
    assert '[core]' not in user_text(prompt)
    assert prompt.sources == ['ok.py', 'inner.txt']  # a symlink that stays inside is a file like any other
    assert prompt.skipped == paths[:6]


def test_changelog_prompt_lists_commits_newest_first_within_budget():
    start = datetime(2026, 1, 1)
    commits = [
        {
            'sha': f'{number:040x}',
            'title': f'Change number {number}',
            'description': 'Details of the change.\n' * 30,
            'author': 'Ann',
            'committed_at': start + timedelta(hours=number),
        }
        for number in range(600)
    ]
    prompt = changelog_prompt(
        commits, title='org/sample', language='French', context_tokens=4096, max_output_tokens=1024
    )
    assert prompt.estimated_tokens <= budget_tokens(4096, 1024)
    text = user_text(prompt)
    assert 'French' in prompt.messages[0]['content']
    assert text.index('Change number 599') < text.index('Change number 598')
    assert 'Change number 0\n' not in text and prompt.omitted[-1] == f'{0:040x}'
    assert f'… and {len(prompt.omitted)} older commits not shown.' in text


def test_catalog_prompt_asks_for_json_from_tree_languages_and_paths(sample_repo):
    analysis = analyse(sample_repo)
    prompt = catalog_prompt(
        analysis, title='org/sample', language='English', context_tokens=4096, max_output_tokens=1024, max_pages=12
    )
    assert prompt.estimated_tokens <= budget_tokens(4096, 1024)
    assert '"pages"' in prompt.messages[0]['content'] and 'At most 12 pages' in prompt.messages[0]['content']
    text = user_text(prompt)
    assert '## Tree' in text and 'Python' in text and '`sample/core.py`' in text and 'Greeter' in text
    assert set(prompt.sources) == {source.path for source in analysis.files}


def test_catalog_prompt_bounds_the_paths(tmp_path):
    files = {f'src/module_{number:04}.py': 'x = 1\n' for number in range(3000)}
    repo, context = make_checkout(tmp_path, files)
    prompt = catalog_prompt(
        context.analysis, title='org/sample', language='English', context_tokens=4096, max_output_tokens=1024
    )
    assert prompt.estimated_tokens <= budget_tokens(4096, 1024)
    assert prompt.omitted and prompt.sources + prompt.omitted == sorted(files)


# ---- Answers ----


def sample_prompt(tmp_path):
    code = ''.join(f'def step_{number}(value):\n    return transform(value, {number})\n' for number in range(20))
    repo, context = make_checkout(tmp_path, {'README.md': '# Sample\n\nSample greets people politely.\n', 'a.py': code})
    return prompt_for(Page('overview', 'Overview', 'What it is.', None, 0, ['README.md', 'a.py']), context, repo)


@pytest.mark.parametrize('content', [None, '', '   \n\t '])
def test_an_empty_answer_is_unusable(tmp_path, content):
    with pytest.raises(UnusableAnswer, match='empty'):
        check_answer(content, 'stop', sample_prompt(tmp_path))


def test_an_answer_cut_at_the_length_limit_is_unusable(tmp_path):
    with pytest.raises(UnusableAnswer, match='length'):
        check_answer('# Overview\n\nSample greets', 'length', sample_prompt(tmp_path))


def test_an_echo_of_the_prompt_is_unusable(tmp_path):
    prompt = sample_prompt(tmp_path)
    with pytest.raises(UnusableAnswer, match='echoes'):
        check_answer(user_text(prompt), 'stop', prompt)
    half = '\n'.join(user_text(prompt).splitlines()[:40])
    with pytest.raises(UnusableAnswer, match='echoes'):
        check_answer(half, 'stop', prompt)
    code = '```python\n' + (tmp_path / 'checkout' / 'a.py').read_text() + '```\n'
    with pytest.raises(UnusableAnswer, match='code from the prompt'):
        check_answer(code, 'stop', prompt)


def test_a_page_quoting_a_few_lines_of_code_is_kept(tmp_path):
    prompt = sample_prompt(tmp_path)
    page = (
        '# Overview\n\n'
        'Sample greets people politely; the steps in `a.py` transform a value one stage at a time.\n\n'
        '```python\ndef step_0(value):\n    return transform(value, 0)\n```\n\n'
        'Each step passes its own number to `transform`, so the stages can be told apart in logs.\n'
        'Sample greets people politely.\n'
    )
    assert check_answer(page, 'stop', prompt) == page


def test_a_markdown_fence_around_the_page_is_removed(tmp_path):
    prompt = sample_prompt(tmp_path)
    inner = '# Overview\n\nThe project transforms values in steps.\n\n```python\nx = 1\n```'
    assert check_answer(f'```markdown\n{inner}\n```', 'stop', prompt) == inner + '\n'
    assert check_answer(f'```\n{inner}\n```\n', None, prompt) == inner + '\n'
    # A wrapping fence that was never closed, around a page that ends with a code block of its own.
    assert check_answer(f'```markdown\n{inner}', 'stop', prompt) == inner + '\n'
    assert check_answer('```markdown\n# Overview\n\nIt transforms values.', 'stop', prompt) == (
        '# Overview\n\nIt transforms values.\n'
    )
    # A page that only starts and ends with code blocks keeps them.
    both = '```sh\nmake\n```\n\nBuild it, then run it:\n\n```sh\n./run\n```'
    assert check_answer(both, 'stop', prompt) == both + '\n'


# ---- Citations ----

EXISTING = {'src/app.py', 'README.md', 'docs/a b.md'}


def link(path):
    return f'https://example.test/blob/{path}'


def test_cited_files_become_links_and_a_sources_section_lists_them():
    page = '# App\n\nThe entry point is `src/app.py` (see `README.md`); `src/app.py` starts it.\n'
    grounded = ground_citations(page, EXISTING, link)
    assert grounded.cited == ['src/app.py', 'README.md']
    assert grounded.unknown == []
    assert '[`src/app.py`](https://example.test/blob/src/app.py) (see [`README.md`]' in grounded.markdown
    sources = grounded.markdown.split('## Sources\n\n', 1)[1]
    assert (
        sources
        == '- [`src/app.py`](https://example.test/blob/src/app.py)\n- [`README.md`](https://example.test/blob/README.md)\n'
    )


def test_unknown_paths_are_flagged_once_and_never_linked():
    page = 'It reads `src/missing.py`, then `src/missing.py:12` again, and [the config](conf/settings.yaml).\n'
    grounded = ground_citations(page, lambda path: path in EXISTING, link)
    assert grounded.unknown == ['src/missing.py', 'conf/settings.yaml']
    assert grounded.cited == [] and '## Sources' not in grounded.markdown
    assert grounded.markdown.count('(not found in the repository)') == 2
    assert 'https://' not in grounded.markdown and '](conf' not in grounded.markdown
    assert '`src/missing.py` (not found in the repository)' in grounded.markdown


def test_code_blocks_and_ordinary_code_spans_are_untouched():
    page = (
        '# Use\n\nRun `pip install sample`, returns `None`, serves `application/json`, see `https://x.test/a.py`.\n\n'
        '```python\nimport app  # src/app.py\nopen("`src/app.py`")\n```\n\n'
        'Line references work: `src/app.py:3` and [start](./src/app.py#L3), [site](https://x.test/).\n'
    )
    grounded = ground_citations(page, EXISTING, link)
    assert '```python\nimport app  # src/app.py\nopen("`src/app.py`")\n```' in grounded.markdown
    for text in ('`pip install sample`', '`None`', '`application/json`', '`https://x.test/a.py`'):
        assert f'{text},' in grounded.markdown or f'{text}.' in grounded.markdown
    assert '[`src/app.py:3`](https://example.test/blob/src/app.py)' in grounded.markdown
    assert '[start](https://example.test/blob/src/app.py)' in grounded.markdown
    assert '[site](https://x.test/)' in grounded.markdown
    assert grounded.cited == ['src/app.py'] and grounded.unknown == []


def test_an_existing_file_is_cited_whatever_its_name_holds():
    grounded = ground_citations('See `docs/a b.md` and [the guide](docs/a%20b.md).\n', EXISTING, link)
    assert grounded.cited == ['docs/a b.md']
    assert '[`docs/a b.md`](https://example.test/blob/docs/a b.md)' in grounded.markdown
    assert '[the guide](https://example.test/blob/docs/a b.md)' in grounded.markdown


def test_files_without_a_url_stay_code_and_a_written_sources_section_is_replaced():
    page = (
        '# App\n\nSee `README.md` and `lib/gone.py`.\n\n## Sources\n\n- `lib/gone.py`\n- `README.md`\n- `src/app.py`\n'
    )
    grounded = ground_citations(page, EXISTING, lambda path: None)
    assert grounded.cited == ['README.md', 'src/app.py'] and grounded.unknown == ['lib/gone.py']
    assert '`lib/gone.py` (not found in the repository).' in grounded.markdown  # flagged where it is read
    assert grounded.markdown.endswith('.\n\n## Sources\n\n- `README.md`\n- `src/app.py`\n')
    assert grounded.markdown.count('## Sources') == 1


def test_source_links_of_known_hosts():
    sha = 'a' * 40
    assert source_link('https://github.com/org/repo.git', sha, 'src/a b.py') == (
        f'https://github.com/org/repo/blob/{sha}/src/a%20b.py'
    )
    assert source_link('https://gitlab.com/group/sub/repo', sha, 'README.md') == (
        f'https://gitlab.com/group/sub/repo/-/blob/{sha}/README.md'
    )
    assert source_link('https://codeberg.org/org/repo.git/', sha, 'x/é#1.md') == (
        f'https://codeberg.org/org/repo/src/commit/{sha}/x/%C3%A9%231.md'
    )
    assert (
        source_link('https://bitbucket.org/org/repo', sha, 'a.py') == f'https://bitbucket.org/org/repo/src/{sha}/a.py'
    )
    assert source_link('https://user:token@github.com/org/repo', sha, 'a.py') == (
        f'https://github.com/org/repo/blob/{sha}/a.py'
    )


@pytest.mark.parametrize(
    'address',
    [
        '/srv/git/repo',
        'file:///srv/git/repo',
        'git@github.com:org/repo.git',
        'https://example.test/org/repo',
        'http://github.com/org/repo',
    ],
)
def test_source_links_of_local_and_unknown_addresses_are_none(address):
    assert source_link(address, 'a' * 40, 'a.py') is None


def test_source_links_refuse_paths_that_climb():
    assert source_link('https://github.com/org/repo', 'a' * 40, '../other/a.py') is None


# ---- Catalogs ----

FILES = {'README.md', 'src/app.py', 'src/worker.py', 'docs/guide.md'}


def proposal(*pages) -> str:
    return json.dumps({'pages': list(pages)})


def entry(slug, sources=('src/app.py',), children=(), title=None):
    return {
        'title': title or slug.title(),
        'slug': slug,
        'description': f'About {slug}.',
        'sources': list(sources),
        'children': list(children),
    }


def test_a_valid_catalog_gives_pages_parents_first_with_the_overview_first():
    text = (
        '```json\n'
        + proposal(
            entry('app', children=[entry('worker', ['src/worker.py']), entry('guide', ['docs/guide.md'])]),
            entry('overview', ['README.md']),
        )
        + '\n```'
    )
    pages = parse_catalog(text, FILES)
    assert [page.key for page in pages] == ['overview', 'app', 'app/worker', 'app/guide']
    assert [(page.parent, page.order) for page in pages] == [(None, 0), (None, 1), ('app', 0), ('app', 1)]
    assert pages[2].sources == ['src/worker.py'] and pages[2].title == 'Worker'


def test_one_fenced_catalog_among_words_is_taken():
    text = 'Here is the catalog:\n\n```json\n' + proposal(entry('overview', ['README.md'])) + '\n```\n\nEnjoy.'
    assert [page.key for page in parse_catalog(text, FILES)] == ['overview']
    with pytest.raises(InvalidCatalog, match='not JSON'):
        parse_catalog(text + '\n```json\n{}\n```', FILES)


def test_a_catalog_without_an_overview_gets_the_deterministic_one():
    overview = Page('overview', 'Overview', 'What it is.', None, 0, ['README.md'])
    pages = parse_catalog(proposal(entry('app')), FILES, overview=overview)
    assert [page.key for page in pages] == ['overview', 'app'] and pages[0].sources == ['README.md']


def test_unknown_sources_are_dropped():
    pages = parse_catalog(proposal(entry('overview', ['README.md', 'ghost.py', './src/app.py'])), FILES)
    assert pages[0].sources == ['README.md', 'src/app.py']


@pytest.mark.parametrize(
    ('text', 'reason'),
    [
        ('Here is the catalog: {"pages": []', 'not JSON'),
        ('[1, 2]', '"pages" list'),
        (proposal(), 'empty'),
        (proposal('overview'), 'not an object'),
        (proposal({**entry('overview'), 'title': 7}), 'no title'),
        (proposal(entry('overview', title=' ')), 'no title'),
        (proposal(entry('overview', title='x' * 201)), '201 characters'),
        (proposal(entry('Over View')), 'slug'),
        (proposal({**entry('overview'), 'sources': 'README.md'}), 'sources'),
        (proposal({**entry('overview'), 'children': {}}), 'children'),
        (proposal({**entry('overview'), 'description': None}), 'description'),
        (proposal(entry('overview'), entry('overview')), 'repeats the slug'),
        ('{"pages": [{"title": "A", "slug": "a", "slug": "b", "sources": ["README.md"]}]}', 'repeats the key'),
        (proposal(entry('overview', ['ghost.py'])), 'no source file'),
        (proposal(entry('a', children=[entry('b', children=[entry('c')])])), 'nest at most 2'),
        (proposal(*[entry(f'page-{number}') for number in range(5)]), 'more than 4 pages'),
    ],
)
def test_invalid_catalogs_are_refused_with_a_reason(text, reason):
    with pytest.raises(InvalidCatalog, match=re.escape(reason)):
        parse_catalog(text, FILES, max_pages=4)


def test_sibling_slugs_may_repeat_under_different_parents():
    text = proposal(entry('a', children=[entry('api')]), entry('b', children=[entry('api')]))
    assert [page.key for page in parse_catalog(text, FILES)][1:] == ['a', 'a/api', 'b', 'b/api']


def test_choose_catalog_falls_back_with_the_reason(caplog):
    deterministic = [Page('overview', 'Overview', 'What it is.', None, 0, ['README.md'])]
    with caplog.at_level(logging.WARNING, logger='rqjobs.pages.catalog'):
        pages, reason = choose_catalog('not json', deterministic, FILES)
    assert pages is deterministic and 'not JSON' in reason
    assert 'not JSON' in caplog.text
    assert choose_catalog(None, deterministic, FILES) == (deterministic, 'the model proposed no catalog')
    pages, reason = choose_catalog(proposal(entry('app')), deterministic, FILES)
    assert reason is None and [page.key for page in pages] == ['overview', 'app']
