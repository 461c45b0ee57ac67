"""Mind-map jobs (queue `minimap`): a recursive `{"title", "url", "nodes"}` tree of each warehouse.

The tree goes repository → components → directories → files → main declarations; `url` is a repository-relative
path (`path#L12` for a declaration). It is built from the warehouse's analysis by `build_tree`, the same builder
the warehouse pipeline uses, and capped in size so a huge repository still gives a readable map.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from datetime import timedelta

from peewee import JOIN, fn

from models import MiniMap, Warehouse, WarehouseStatus, new_id
from rqjobs import clock, credentials, database
from rqjobs.exceptions import PermanentJobError
from rqjobs.repository import analysis as analysis_module
from rqjobs.repository import clone, storage
from rqjobs.repository.declarations import Declaration
from rqjobs.repository.results import Analysis, SourceFile

logger = logging.getLogger(__name__)

JOBS = ('generate_minimap', 'regenerate_minimap', 'validate_minimap', 'cleanup_old_minimaps')

MINIMAPS_PER_RUN = 20
# What validation accepts: the builder stays far below these; a stored tree beyond them is refused.
MAX_VALID_NODES = 50_000
MAX_VALID_DEPTH = 64
MAX_TITLE_LENGTH = 1000
MAX_URL_LENGTH = 4096
MAX_NODES = 2000
MAX_FILES_PER_DIRECTORY = 40
MAX_DECLARATIONS_PER_FILE = 12


def node(title: str, url: str, nodes: list[dict] | None = None) -> dict:
    """Return one mind-map node."""
    return {'title': title, 'url': url, 'nodes': nodes or []}


def build_tree(title: str, analysis: Analysis, max_nodes: int = MAX_NODES) -> dict:
    """Build the mind map of an analysed repository, at most `max_nodes` nodes."""
    # The root and the closing "… N more entries" node count too, so both are kept out of the budget.
    budget = _Budget(max_nodes - 2)
    root = node(title, '')
    by_path = {source.path: source for source in analysis.files}
    entries = 0
    for component in analysis.components:
        files = [by_path[path] for path in component['files'] if path in by_path]
        prefix = '' if component['path'] in ('', '.') else component['path'].rstrip('/') + '/'
        entries += 1 + _entry_count(files, prefix)
        if budget.take():
            root['nodes'].append(node(component['name'], component['path'], _directory_nodes(files, prefix, budget)))
    # Counted against the uncapped tree, not refused budget checks: the per-directory and per-file caps cut
    # entries without ever asking the budget.
    left_out = entries - (count_nodes(root) - 1)
    if left_out:
        root['nodes'].append(node(f'… {left_out:,} more {"entry" if left_out == 1 else "entries"} not shown', ''))
    return root


def _entry_count(files: list[SourceFile], prefix: str) -> int:
    """Count the nodes `_directory_nodes` would give these files with no budget and no caps."""
    directories = set()
    for source in files:
        parts = source.path[len(prefix) :].split('/')[:-1]
        directories.update('/'.join(parts[:depth]) for depth in range(1, len(parts) + 1))
    # A declaration node shows its direct children only, as `_declaration_nodes` does.
    declarations = sum(1 + len(declaration.children) for source in files for declaration in source.declarations)
    return len(directories) + len(files) + declarations


class _Budget:
    def __init__(self, size: int):
        self.left = size

    def take(self) -> bool:
        if self.left > 0:
            self.left -= 1
            return True
        return False


def _directory_nodes(files: list[SourceFile], prefix: str, budget: _Budget) -> list[dict]:
    """Group files under `prefix` by their next directory level."""
    directories: dict[str, list[SourceFile]] = {}
    here: list[SourceFile] = []
    for source in files:
        rest = source.path[len(prefix) :]
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
        nodes.append(
            node(
                source.path.rsplit('/', 1)[-1],
                source.path,
                _declaration_nodes(source.path, source.declarations, budget),
            )
        )
    return nodes


def _declaration_nodes(path: str, declarations: Iterable[Declaration], budget: _Budget) -> list[dict]:
    nodes = []
    for declaration in list(declarations)[:MAX_DECLARATIONS_PER_FILE]:
        if not budget.take():
            break
        children = [
            node(child.name, f'{path}#L{child.line}')
            for child in declaration.children[:MAX_DECLARATIONS_PER_FILE]
            if budget.take()
        ]
        nodes.append(node(f'{declaration.kind} {declaration.name}', f'{path}#L{declaration.line}', children))
    return nodes


def count_nodes(tree: dict) -> int:
    """Count the nodes of a mind map."""
    return 1 + sum(count_nodes(child) for child in tree.get('nodes', []))


# ---- Jobs ----


def generate_minimap() -> dict:
    """Build the mind maps of Completed warehouses that have none, oldest first, a bounded number per run."""
    # Safe to run twice or concurrently: a warehouse gets one mind map, a second insert is ignored.
    started = time.monotonic()
    with database.connection():
        missing = list(
            Warehouse.select()
            .join(MiniMap, JOIN.LEFT_OUTER, on=(MiniMap.warehouse == Warehouse.id))
            .where(Warehouse.status == WarehouseStatus.COMPLETED, Warehouse.is_deleted == False, MiniMap.id.is_null())
            .order_by(Warehouse.created_at, Warehouse.id)
            .limit(MINIMAPS_PER_RUN)
        )
    processed, errors = [], []
    for warehouse in missing:
        try:
            tree = _tree_of(warehouse)
            with database.connection():
                MiniMap.insert(
                    id=new_id(),
                    warehouse=warehouse.id,
                    value=tree,
                    created_at=clock.utcnow(),
                    updated_at=clock.utcnow(),
                ).on_conflict_ignore().execute()
            processed.append(warehouse.id)
        except Exception as exc:
            logger.warning('minimap %s: not generated: %s', warehouse.id, exc)
            errors.append({'warehouse_id': warehouse.id, 'error': str(exc)})
    return {
        'processed': len(processed),
        'errors': len(errors),
        'warehouse_ids': processed,
        'failures': errors,
        'elapsed': round(time.monotonic() - started, 3),
    }


def regenerate_minimap(warehouse_id: str) -> dict:
    """Build a warehouse's mind map again and replace the stored one in one transaction."""
    # Replacing is idempotent: a second run stores the same tree again.
    with database.connection():
        warehouse = Warehouse.get_or_none(Warehouse.id == warehouse_id, Warehouse.is_deleted == False)
    if warehouse is None:
        logger.info('minimap %s: warehouse not found or deleted', warehouse_id)
        return {'warehouse_id': warehouse_id, 'status': 'missing', 'message': 'warehouse not found or deleted'}
    if warehouse.status != WarehouseStatus.COMPLETED:
        return {
            'warehouse_id': warehouse_id,
            'status': 'skipped',
            'message': f'warehouse is {warehouse.status}; mind maps are built for Completed warehouses',
        }
    tree = _tree_of(warehouse)
    with database.connection() as db, db.atomic():
        MiniMap.delete().where(MiniMap.warehouse == warehouse_id).execute()
        MiniMap.create(warehouse=warehouse_id, value=tree)
    return {'warehouse_id': warehouse_id, 'status': 'regenerated', 'nodes': count_nodes(tree)}


def cleanup_old_minimaps(days_to_keep: int = 90) -> dict:
    """Delete mind maps created more than `days_to_keep` days ago; the next generation run rebuilds them."""
    # Deleting what is already gone deletes nothing, so a second run is harmless.
    if isinstance(days_to_keep, bool) or not isinstance(days_to_keep, int) or days_to_keep < 1:
        raise PermanentJobError(
            f'days_to_keep must be a whole number of days, at least 1 (got {days_to_keep!r}); for example 90.'
        )
    cutoff = clock.utcnow() - timedelta(days=days_to_keep)
    with database.connection():
        deleted = MiniMap.delete().where(MiniMap.created_at < cutoff).execute()
    logger.info('minimaps: %d older than %s deleted', deleted, cutoff.date())
    return {'deleted': deleted, 'cutoff': cutoff.isoformat(timespec='seconds')}


def validate_minimap(warehouse_id: str) -> dict:
    """Check a stored mind map's shape; return its node, edge and depth counts, or the first problem found."""
    # Read-only, so running it twice is harmless.
    with database.connection():
        # The raw text, not the decoded field: a stored value that is not JSON is a finding, not a crash.
        row = (
            MiniMap.select(fn.COALESCE(MiniMap.value, '').coerce(False))
            .where(MiniMap.warehouse == warehouse_id)
            .tuples()
            .first()
        )
    if row is None:
        return {'warehouse_id': warehouse_id, 'valid': False, 'status': 'missing', 'error': 'no mind map stored'}
    try:
        tree = json.loads(row[0]) if isinstance(row[0], str) else row[0]
    except ValueError as exc:
        return {'warehouse_id': warehouse_id, 'valid': False, 'status': 'invalid', 'error': f'not JSON: {exc}'}
    result = check_tree(tree)
    return {'warehouse_id': warehouse_id, 'status': 'valid' if result['valid'] else 'invalid', **result}


def check_tree(tree: object) -> dict:
    """Check a mind-map tree.

    Return `{valid, nodes, edges, depth}`, or `{valid: False, error}` naming the first bad path.
    """
    nodes = edges = depth = 0
    seen: set[int] = set()
    stack: list[tuple[object, str, int]] = [(tree, '', 1)]
    while stack:
        node, path, level = stack.pop()
        where = path or 'the root'
        if not isinstance(node, dict):
            return _invalid(f'{where} is not an object')
        if id(node) in seen:
            return _invalid(f'{where} is reached twice (a cycle or a shared node)')
        seen.add(id(node))
        for key, limit in (('title', MAX_TITLE_LENGTH), ('url', MAX_URL_LENGTH)):
            value = node.get(key)
            if not isinstance(value, str):
                return _invalid(f'{_join(path, key)} is not a string')
            if len(value) > limit:
                return _invalid(f'{_join(path, key)} is longer than {limit} characters')
        children = node.get('nodes')
        if not isinstance(children, list):
            return _invalid(f'{_join(path, "nodes")} is not a list')
        extra = set(node) - {'title', 'url', 'nodes'}
        if extra:
            return _invalid(f'{where} has unknown keys: {", ".join(sorted(map(str, extra)))}')
        nodes += 1
        depth = max(depth, level)
        if nodes > MAX_VALID_NODES:
            return _invalid(f'the tree has more than {MAX_VALID_NODES} nodes')
        if level > MAX_VALID_DEPTH:
            return _invalid(f'{where} is deeper than {MAX_VALID_DEPTH} levels')
        edges += len(children)
        # Reversed, so the first child is checked first and "first bad path" means what a reader expects.
        for index in range(len(children) - 1, -1, -1):
            stack.append((children[index], f'{_join(path, "nodes")}[{index}]', level + 1))
    return {'valid': True, 'nodes': nodes, 'edges': edges, 'depth': depth}


def _join(path: str, key: str) -> str:
    return f'{path}.{key}' if path else key


def _invalid(error: str) -> dict:
    return {'valid': False, 'error': error}


def _tree_of(warehouse: Warehouse) -> dict:
    """Analyse the warehouse's clone (fetching it first if this host has none) and build its mind map."""
    dest = storage.clone_path(warehouse.id)
    if not (dest / '.git').is_dir():
        password = credentials.decrypt_secret(warehouse.git_password) if warehouse.git_password else None
        clone.sync(
            warehouse.address, dest, warehouse.branch or None, username=warehouse.git_user_name, password=password
        )
    analysis = analysis_module.analyse(dest)
    return build_tree(f'{warehouse.organization_name}/{warehouse.name}', analysis)


def stored_tree(warehouse_id: str) -> dict | None:
    """Return the stored mind map of a warehouse, or None."""
    with database.connection():
        row = MiniMap.get_or_none(MiniMap.warehouse == warehouse_id)
    return row.value if row else None
