"""Mind maps: a recursive `{"title", "url", "nodes"}` tree of a warehouse, built from its analysis.

The tree goes repository → components → directories → files → main declarations; `url` is a repository-relative
path (`path#L12` for a declaration). It is capped in size so a huge repository still gives a readable map.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from rqjobs.analysis import Analysis, Declaration, SourceFile

logger = logging.getLogger(__name__)

MAX_NODES = 2000
MAX_FILES_PER_DIRECTORY = 40
MAX_DECLARATIONS_PER_FILE = 12


def node(title: str, url: str, nodes: list[dict] | None = None) -> dict:
    """Return one mind-map node."""
    return {'title': title, 'url': url, 'nodes': nodes or []}


def build_tree(title: str, analysis: Analysis, max_nodes: int = MAX_NODES) -> dict:
    """Build the mind map of an analysed repository, at most `max_nodes` nodes."""
    budget = _Budget(max_nodes - 1)
    root = node(title, '')
    by_path = {source.path: source for source in analysis.files}
    for component in analysis.components:
        if not budget.take():
            break
        files = [by_path[path] for path in component['files'] if path in by_path]
        prefix = '' if component['path'] in ('', '.') else component['path'].rstrip('/') + '/'
        root['nodes'].append(node(component['name'], component['path'], _directory_nodes(files, prefix, budget)))
    if budget.exhausted:
        root['nodes'].append(node(f'… {budget.dropped} more entries not shown', ''))
    return root


class _Budget:
    def __init__(self, size: int):
        self.left = size
        self.dropped = 0

    def take(self) -> bool:
        if self.left > 0:
            self.left -= 1
            return True
        self.dropped += 1
        return False

    @property
    def exhausted(self) -> bool:
        return self.dropped > 0


def _directory_nodes(files: list[SourceFile], prefix: str, budget: _Budget) -> list[dict]:
    """Group files under `prefix` by their next directory level."""
    directories: dict[str, list[SourceFile]] = {}
    here: list[SourceFile] = []
    for source in files:
        rest = source.path[len(prefix):]
        if '/' in rest:
            directories.setdefault(rest.split('/', 1)[0], []).append(source)
        else:
            here.append(source)
    nodes = []
    for name in sorted(directories):
        if not budget.take():
            return nodes
        path = f'{prefix}{name}'
        nodes.append(node(name + '/', path, _directory_nodes(directories[name], path + '/', budget)))
    ranked = sorted(here, key=lambda s: (-len(s.declarations), s.path))[:MAX_FILES_PER_DIRECTORY]
    for source in sorted(ranked, key=lambda s: s.path):
        if not budget.take():
            return nodes
        nodes.append(node(source.path.rsplit('/', 1)[-1], source.path,
                          _declaration_nodes(source.path, source.declarations, budget)))
    return nodes


def _declaration_nodes(path: str, declarations: Iterable[Declaration], budget: _Budget) -> list[dict]:
    nodes = []
    for declaration in list(declarations)[:MAX_DECLARATIONS_PER_FILE]:
        if not budget.take():
            break
        children = [node(child.name, f'{path}#L{child.line}') for child in declaration.children[:MAX_DECLARATIONS_PER_FILE]
                    if budget.take()]
        nodes.append(node(f'{declaration.kind} {declaration.name}', f'{path}#L{declaration.line}', children))
    return nodes


def count_nodes(tree: dict) -> int:
    """Count the nodes of a mind map."""
    return 1 + sum(count_nodes(child) for child in tree.get('nodes', []))
