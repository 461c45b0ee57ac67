"""The layout of a repository: its path tree, its major components and its languages by lines."""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from collections.abc import Sequence

from rqjobs.repository.results import SourceFile

MAX_TREE_LINES = 400
MAX_COMPONENTS = 12
ROOT_COMPONENT = 'Top-level files'  # the name of the component made of the files at the root
_CONTROL = {code: '?' for code in [*range(0x20), 0x7F]}


def path_tree(paths: Sequence[str], max_lines: int | None = None) -> str:
    """Return a compact `├──` tree of repository paths: directories first, breadth first when it must be cut."""
    max_lines = MAX_TREE_LINES if max_lines is None else max_lines
    root: dict[str, dict | None] = {}
    for path in paths:
        node = root
        parts = path.split('/')
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            node = child
        node.setdefault(parts[-1], None)

    def ordered(node: dict) -> list[tuple[str, dict | None]]:
        return sorted(node.items(), key=lambda item: (item[1] is None, item[0].casefold(), item[0]))

    # Breadth first: every top-level entry is shown before any second-level one, and so on, until the budget is spent.
    total = sum(len(node) for node in _directories(root))
    budget = total if total <= max_lines else max(max_lines - 1, 0)
    shown: dict[int, list[tuple[str, dict | None]]] = {}
    queue = deque([root])
    while queue and budget > 0:
        node = queue.popleft()
        children = ordered(node)[:budget]
        budget -= len(children)
        shown[id(node)] = children
        queue.extend(child for _, child in children if child)

    lines: list[str] = []
    stack = [(shown.get(id(root), []), 0, '')]
    while stack:  # depth first, without recursion: paths can be nested deeper than Python's recursion limit
        children, index, prefix = stack.pop()
        if index >= len(children):
            continue
        name, child = children[index]
        last = index == len(children) - 1
        lines.append(f'{prefix}{"└── " if last else "├── "}{name.translate(_CONTROL)}{"" if child is None else "/"}')
        stack.append((children, index + 1, prefix))
        if child:
            stack.append((shown.get(id(child), []), 0, prefix + ('    ' if last else '│   ')))
    omitted = total - len(lines)
    if omitted > 0:
        parents = sum(1 for node in _directories(root) if len(shown.get(id(node), ())) < len(node))
        lines.append(f'… {omitted} more entries in {parents} director{"y" if parents == 1 else "ies"}')
    return '\n'.join(lines)


def _directories(root: dict) -> list[dict]:
    found, stack = [], [root]
    while stack:
        node = stack.pop()
        found.append(node)
        stack.extend(child for child in node.values() if child)
    return found


# Top-level directories whose subdirectories are components of their own (a src/ layout, a monorepo).
CONTAINER_DIRECTORIES = frozenset(
    (
        'src',
        'lib',
        'libs',
        'packages',
        'apps',
        'crates',
        'services',
        'modules',
        'plugins',
        'cmd',
        'pkg',
        'internal',
        'components',
    )
)


def find_components(files: Sequence[SourceFile]) -> list[dict]:
    """Return the major components: top-level directories (split one level more for src/-like ones), by size."""
    groups: dict[str, list[SourceFile]] = defaultdict(list)
    for source in files:
        parts = source.path.split('/')
        if len(parts) == 1:
            key = '.'
        elif parts[0] in CONTAINER_DIRECTORIES and len(parts) >= 3:
            key = f'{parts[0]}/{parts[1]}'
        else:
            key = parts[0]
        groups[key].append(source)
    components = []
    for key, members in groups.items():
        by_language: Counter[str] = Counter()
        for source in members:
            if source.language:
                by_language[source.language] += source.size
        components.append(
            {
                'name': ROOT_COMPONENT if key == '.' else key.rsplit('/', 1)[-1],
                'path': key,
                'files': sorted(source.path for source in members),
                'languages': [
                    language for language, _ in sorted(by_language.items(), key=lambda item: (-item[1], item[0]))
                ],
                'lines': sum(source.lines for source in members),
                'bytes': sum(source.size for source in members),
            }
        )
    components.sort(key=lambda component: (-component['bytes'], component['path']))
    return components[:MAX_COMPONENTS]


def language_table(files: Sequence[SourceFile]) -> list[dict]:
    """Return files, lines, bytes and percent (of bytes) per known language, most bytes first."""
    rows: dict[str, dict] = {}
    for source in files:
        if source.language is None:
            continue
        row = rows.setdefault(source.language, {'language': source.language, 'files': 0, 'lines': 0, 'bytes': 0})
        row['files'] += 1
        row['lines'] += source.lines
        row['bytes'] += source.size
    total = sum(row['bytes'] for row in rows.values())
    for row in rows.values():
        row['percent'] = round(100 * row['bytes'] / total, 1) if total else 0.0
    return sorted(rows.values(), key=lambda row: (-row['bytes'], row['language']))
