"""Analysis of a git checkout: its files, languages, declarations, README, tree, kind and major components.

The checkout is untrusted input and is only ever read: nothing in it is executed, imported or built (Python is
parsed with `ast`, other languages with anchored, length-bounded regular expressions). Only files that git tracks
are looked at. Each one is opened relative to the checkout one path component at a time with O_NOFOLLOW, so neither
a tracked symlink nor a symlinked directory in the working tree can lead outside it. Files are read one at a time
and their text is dropped once outlined: memory grows with the number of files and declarations, not their bytes.
"""

from __future__ import annotations

import gc
import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from rqjobs.repository.checkout import CheckoutReader, count_lines, decode_text, tracked_files
from rqjobs.repository.classification import CLI_NEEDLES, MANIFEST_NAMES, classify, uses_cli_library
from rqjobs.repository.declarations import Declaration
from rqjobs.repository.languages import CPP_EXTENSIONS, detect_language, file_extension, shebang_language
from rqjobs.repository.layout import find_components, language_table, path_tree
from rqjobs.repository.outline_braces import GRAMMARS, BraceScanner
from rqjobs.repository.outline_python import python_outline
from rqjobs.repository.results import Analysis, SourceFile

logger = logging.getLogger(__name__)

MAX_OUTLINE_FILE_SIZE = 256 * 1024  # bytes; larger files are counted (lines, bytes) but not outlined
# Files outlined per component, in path order: the documentation shows at most 60 files and 300 declarations of a
# component and the mind map at most 2,000 nodes, so outlining every file of a 20k-file repository is wasted work.
# Files outside the ranked components are not shown at all and are never outlined.
MAX_OUTLINED_PER_COMPONENT = 60
MAX_README_SIZE = 64 * 1024  # characters of the README kept
MAX_MANIFEST_SIZE = 64 * 1024  # bytes of a root manifest (pyproject.toml, package.json, ...) kept for classifying
PROGRESS_EVERY = 500  # files between two progress reports
SKIP_REASONS = ('binary', 'too_large', 'symlink', 'submodule', 'unreadable')
_SYMLINK_MODE = '120000'
_GITLINK_MODE = '160000'


def outline(
    path: str, text: str, language: str | None, python_headers: dict[str, tuple[str, str] | None] | None = None
) -> list[Declaration]:
    """Return the main declarations of a file's text; never runs or imports it, and [] when it cannot be parsed.

    `python_headers` is shared by the files of one analysis: Python parameter lists already parsed, by their text.
    """
    language = language or detect_language(path)
    if '\r' in text:  # CRLF line ends: the patterns and the skeleton expect '\n' (line numbers do not change)
        text = text.replace('\r\n', '\n')
    if language == 'Python':
        return python_outline(text, python_headers)
    grammar = GRAMMARS.get(language or '')
    if grammar is None:
        return []
    header = file_extension(path) in ('h', 'hh', 'hpp', 'hxx', 'h++')
    return BraceScanner(text, grammar, header).run()


_README_EXTENSIONS = ('.md', '.rst', '.txt', '', '.markdown', '.adoc', '.org')


def _readme_rank(path: str) -> tuple[int, int, str] | None:
    """Rank a README candidate: shallower first, then by extension preference; None if it is not a README."""
    name = path.rsplit('/', 1)[-1].lower()
    if not name.startswith('readme'):
        return None
    extension = name[len('readme') :]
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
    has_cpp = any(file_extension(name) in CPP_EXTENSIONS for name in names)
    skipped: Counter[str] = Counter()
    files: list[SourceFile] = []
    raw_paths: dict[str, bytes] = {}
    readme_path, readme, readme_rank = None, '', None
    manifests: dict[str, str] = {}
    cli_files = 0
    with CheckoutReader(checkout) as reader:
        for done, ((raw, mode), path) in enumerate(zip(entries, names, strict=True), 1):
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
            if data.isascii() and b'\0' not in data:
                text = None  # plain ASCII, most files: decoded only where its text is wanted (decode_text's result)
            else:
                text = decode_text(data)
                if text is None:
                    skipped['binary'] += 1
                    continue
                if '\0' in text:  # text stores (PostgreSQL among them) refuse NUL characters
                    text = text.replace('\0', '')
            language = detect_language(path, has_cpp=has_cpp)
            if language is None and '.' not in path.rsplit('/', 1)[-1]:
                language = shebang_language(data.decode('ascii') if text is None else text)
            files.append(SourceFile(path, language, len(data), count_lines(data), []))
            raw_paths[path] = raw
            # The classification only asks whether some file imports an argument parser: the first one settles it.
            if not cli_files and language in CLI_NEEDLES and uses_cli_library(data if text is None else text, language):
                cli_files += 1
            rank = _readme_rank(path) if 'readme' in path.lower() else None
            if rank is not None and (readme_rank is None or rank < readme_rank):
                readme_path, readme_rank = path, rank
                readme = (data.decode('ascii') if text is None else text)[:MAX_README_SIZE]
            if (
                '/' not in path
                and (path.lower() in MANIFEST_NAMES or path.endswith('.gemspec'))
                and (len(data) <= MAX_MANIFEST_SIZE)
            ):
                manifests[path] = data.decode('ascii') if text is None else text
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
    logger.info(
        '%s: analysed %d of %d files (%s) in %.2f s, %s',
        checkout,
        len(files),
        total,
        ', '.join(f'{count} {reason}' for reason, count in analysis.skipped.items()) or 'none skipped',
        analysis.elapsed,
        analysis.classification,
    )
    return analysis


def _outline_components(
    checkout: Path, files: list[SourceFile], components: list[dict], raw_paths: dict[str, bytes]
) -> None:
    """Fill in the declarations of the first files (by path) of each component, reading them a second time."""
    by_path = {source.path: source for source in files}
    chosen = []
    for component in components:
        candidates = [by_path[path] for path in sorted(component['files']) if path in by_path]
        chosen += [source for source in candidates if source.language and source.size <= MAX_OUTLINE_FILE_SIZE][
            :MAX_OUTLINED_PER_COMPONENT
        ]
    python_headers: dict[str, tuple[str, str] | None] = {}  # one analysis only: repeated runs do not share it
    with CheckoutReader(checkout) as reader:
        for source in chosen:
            data, _ = reader.read(raw_paths[source.path])
            text = decode_text(data) if data is not None else None
            if text is None:
                continue  # changed under us since the first pass: keep the file, without an outline
            try:
                source.declarations = outline(source.path, text.replace('\0', ''), source.language, python_headers)
            except Exception as exc:
                logger.warning('%s: %s has no outline, outlining failed: %r', checkout, source.path, exc)
