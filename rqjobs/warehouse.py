"""Warehouse jobs (queue `warehouse`): a registered git repository becomes browsable documentation.

A warehouse is submitted as Pending; `process_warehouse` clones it, analyses it, writes its documentation and mind
map, and leaves it Completed (or Failed / Unauthorized with the reason). At most `TASK_MAX_SIZE_PER_USER`
warehouses of one user are queued or running at once; the others wait as Pending until one of theirs ends or the
periodic `schedule_warehouse_processing` finds room. Every warehouse has at most one live job, whose id is derived
from the warehouse id.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import defaultdict
from datetime import timedelta
from typing import Any

import redis
from peewee import chunked
from rq.exceptions import NoSuchJobError

from models import (
    Document,
    DocumentCatalog,
    DocumentCommitRecord,
    DocumentFileItem,
    DocumentFileItemSource,
    DocumentOverview,
    MiniMap,
    PageStatus,
    User,
    Warehouse,
    WarehouseStatus,
    WarehouseType,
)
from rqjobs import clock, connections, credentials, database, hosts, minimap, queues
from rqjobs import worker as worker_module
from rqjobs.exceptions import (
    InvalidRepositoryAddress,
    InvalidSubmission,
    PermanentJobError,
    RepositoryUnauthorized,
    WarehouseNotFound,
)
from rqjobs.pages import jobs as page_jobs
from rqjobs.repository import addresses, clone, documentation, history, storage
from rqjobs.repository import analysis as analysis_module
from rqjobs.settings import Settings, get_settings

logger = logging.getLogger(__name__)

CALLBACKS = ('warehouse_job_failed',)
JOBS = (
    'process_warehouse',
    'process_warehouse_update',
    'schedule_warehouse_processing',
    'schedule_warehouse_updates',
    'cleanup_failed_warehouses',
)

CHANGELOG_COMMITS = 20
FAILED_RETENTION = timedelta(hours=24)
UPDATES_PER_RUN = 100
DISPATCH_LOCK_SECONDS = 30
SUBMIT_LOCK_SECONDS = 10
# Pages that describe the layout: written again whenever files are added, removed or renamed.
STRUCTURE_PAGES = ('overview', 'structure', 'components')
IN_FLIGHT = (WarehouseStatus.PENDING, WarehouseStatus.PROCESSING)
REPLACEABLE = (WarehouseStatus.FAILED, WarehouseStatus.UNAUTHORIZED, WarehouseStatus.CANCELED)


def process_job_id(warehouse_id: str) -> str:
    """Return the id of the processing job of a warehouse."""
    return f'warehouse-{warehouse_id}'


def update_job_id(warehouse_id: str) -> str:
    """Return the id of the update job of a warehouse."""
    return f'warehouse-update-{warehouse_id}'


# ---- Submitting ----


def submit_warehouse(
    address: str,
    branch: str | None = None,
    user_id: str | None = None,
    git_user_name: str | None = None,
    git_password: str | None = None,
    *,
    connection: redis.Redis | None = None,
    settings: Settings | None = None,
) -> Warehouse:
    """Register a repository as a Pending warehouse and queue it when its owner has room; return the row.

    Refused with `InvalidSubmission` (bad address or branch, unknown user, duplicate, submissions disabled).
    """
    settings = settings or get_settings()
    if not settings.enable_warehouse_commit:
        raise InvalidSubmission('Submitting warehouses is disabled (ENABLE_WAREHOUSE_COMMIT=false).')
    parsed = addresses.parse_address(address, settings)
    branch = (branch or '').strip()
    if branch:
        clone.check_branch(branch)
    username = git_user_name or parsed.username
    password = git_password or parsed.password
    secret = credentials.encrypt_secret(password, settings) if password else None
    connection = connection or connections.get_redis(settings)
    if parsed.is_local:
        _check_workers_accept_local(connection)
    lock_name = (
        'rqjobs:lock:submit:' + hashlib.sha256(f'{parsed.organization}/{parsed.name}@{branch}'.encode()).hexdigest()
    )
    lock = connection.lock(lock_name, timeout=SUBMIT_LOCK_SECONDS, blocking_timeout=SUBMIT_LOCK_SECONDS)
    with queues.redis_full('warehouse'), lock, database.connection(settings) as db_:
        if user_id is not None and User.get_or_none(User.id == user_id, User.is_deleted == False) is None:
            raise InvalidSubmission(f'User {user_id} does not exist.')
        fields = {
            'organization_name': parsed.organization,
            'name': parsed.name,
            'address': parsed.url,
            'branch': branch,
            'git_user_name': username,
        }
        _check_lengths(fields)
        with db_.atomic():
            _check_duplicate(parsed.organization, parsed.name, branch)
            warehouse = Warehouse.create(
                **fields, type=WarehouseType.GIT, status=WarehouseStatus.PENDING, git_password=secret, creator=user_id
            )
    logger.info(
        'warehouse %s: submitted %s/%s (branch %s)', warehouse.id, parsed.organization, parsed.name, branch or 'default'
    )
    try:
        dispatch_pending(connection, settings)
    except redis.exceptions.OutOfMemoryError:
        # The row is stored and Pending: the periodic dispatch queues it once Redis has room again.
        logger.warning('warehouse %s: Redis is full; left Pending for the periodic dispatch', warehouse.id)
    return warehouse


def _check_workers_accept_local(connection: redis.Redis) -> None:
    # ALLOW_LOCAL_REPOSITORIES is checked again by the worker that clones: refuse now rather than queue a failure.
    acceptance = worker_module.local_path_acceptance(connection, queues.WAREHOUSE)
    if False in acceptance.values() and True not in acceptance.values():
        refusing = ', '.join(sorted(name for name, accepts in acceptance.items() if accepts is False)[:3])
        raise InvalidSubmission(
            f'Local paths are turned off in the workers on queue {queues.WAREHOUSE} ({refusing}), which would fail '
            f'this warehouse: ALLOW_LOCAL_REPOSITORIES=true must be set for the workers too. Restart them with it, '
            f'for example ALLOW_LOCAL_REPOSITORIES=true rqjobs worker.'
        )


def local_path_warning(warehouse: Warehouse, connection: redis.Redis) -> str | None:
    """Return a warning for a local path submitted while no worker on the warehouse queue says it accepts one."""
    if not _is_local(warehouse.address) or any(
        worker_module.local_path_acceptance(connection, queues.WAREHOUSE).values()
    ):
        return None
    return (
        f'No running worker on queue {queues.WAREHOUSE} says it accepts local paths: start one with '
        f'ALLOW_LOCAL_REPOSITORIES=true (for example ALLOW_LOCAL_REPOSITORIES=true rqjobs worker), or it will '
        f'fail this warehouse.'
    )


def _is_local(address: str) -> bool:
    # A local repository is stored as its absolute path (addresses.parse_address), whether given as a path or file://.
    return address.startswith('/')


def _check_lengths(fields: dict[str, str | None]) -> None:
    # PostgreSQL and MySQL refuse a value longer than its column and SQLite stores it whole: checked here, the same
    # on every database.
    for name, value in fields.items():
        limit = Warehouse._meta.fields[name].max_length
        if value is not None and len(value) > limit:
            label = name.replace('_', ' ')
            raise InvalidSubmission(f'The {label} is {len(value)} characters long; at most {limit} are allowed.')


def _check_duplicate(organization: str, name: str, branch: str) -> None:
    existing = Warehouse.select().where(
        Warehouse.organization_name == organization,
        Warehouse.name == name,
        Warehouse.branch == branch,
        Warehouse.is_deleted == False,
    )
    for row in existing:
        if row.status == WarehouseStatus.COMPLETED:
            raise InvalidSubmission(
                f'Warehouse {organization}/{name} ({branch or "default branch"}) already exists '
                f'as {row.id}; use `rqjobs warehouse reprocess {row.id}` to refresh it.'
            )
        if row.status in IN_FLIGHT:
            raise InvalidSubmission(
                f'Warehouse {organization}/{name} ({branch or "default branch"}) is already '
                f'queued as {row.id} ({row.status}).'
            )
        if row.status in REPLACEABLE:
            # A failed attempt gives way to the new submission; its clone goes with it.
            _soft_delete(row)


def _soft_delete(warehouse: Warehouse) -> None:
    now = clock.utcnow()
    Warehouse.update(is_deleted=True, deleted_at=now, updated_at=now).where(Warehouse.id == warehouse.id).execute()
    storage.remove_clone(storage.clone_path(warehouse.id))


# ---- Dispatching with per-user fairness ----


def dispatch_pending(connection: redis.Redis, settings: Settings | None = None) -> list[str]:
    """Enqueue Pending warehouses while their owners have room, and Processing ones whose job is gone.

    Returns the ids of the warehouses enqueued. Oldest first; one live job per warehouse, however often it runs.
    """
    settings = settings or get_settings()
    # One dispatcher at a time: two could otherwise both see room for the same user.
    with connection.lock(
        'rqjobs:lock:dispatch-warehouses', timeout=DISPATCH_LOCK_SECONDS, blocking_timeout=DISPATCH_LOCK_SECONDS
    ):
        with database.connection(settings):
            rows = list(
                Warehouse.select(Warehouse.id, Warehouse.status, Warehouse.creator)
                .where(Warehouse.status.in_(IN_FLIGHT), Warehouse.is_deleted == False)
                .order_by(Warehouse.created_at, Warehouse.id)
                .tuples()
            )
            with_open_pages = _with_open_pages([row[0] for row in rows if row[1] == WarehouseStatus.PROCESSING])
        ids = [row[0] for row in rows]
        live = queues.live_job_ids(connection, [job_id for i in ids for job_id in _job_ids(i)])
        in_flight: dict[Any, int] = defaultdict(int)
        for warehouse_id, status, creator in rows:
            if status == WarehouseStatus.PROCESSING or process_job_id(warehouse_id) in live:
                in_flight[creator] += 1
        enqueued = []
        for warehouse_id, status, creator in rows:
            if not _usable_id(warehouse_id):
                continue
            if any(job_id in live for job_id in _job_ids(warehouse_id)):
                continue
            if warehouse_id in with_open_pages:
                # Cloned and planned already: its pages go on from those written, with no new clone.
                logger.warning(
                    'warehouse %s: pages open without a live job (Redis restarted?); queued again', warehouse_id
                )
                page_jobs.enqueue_pages(warehouse_id, connection, settings)
                continue
            if status == WarehouseStatus.PENDING:
                if in_flight[creator] >= settings.task_max_size_per_user:
                    continue
                in_flight[creator] += 1
            else:
                logger.warning(
                    'warehouse %s: Processing without a live job (a worker died?); enqueued again', warehouse_id
                )
            _enqueue_fresh(connection, 'process_warehouse', warehouse_id, process_job_id(warehouse_id), settings)
            enqueued.append(warehouse_id)
    return enqueued


def _job_ids(warehouse_id: str) -> tuple[str, ...]:
    # Any of these alive means the warehouse is being worked on: cloned, updated, or its pages written.
    return process_job_id(warehouse_id), update_job_id(warehouse_id), page_jobs.finish_job_id(warehouse_id)


def _with_open_pages(warehouse_ids: list[str]) -> set[str]:
    """Return which of the warehouses have pages a model has still to write."""
    if not warehouse_ids:
        return set()
    return {row[0] for row in _with_open_pages_query().where(DocumentCatalog.warehouse.in_(warehouse_ids)).tuples()}


def resume_pages(connection: redis.Redis, settings: Settings | None = None) -> list[str]:
    """Queue again the open pages of Completed warehouses (an update or a regeneration) whose jobs are gone."""
    settings = settings or get_settings()
    with database.connection(settings):
        ids = [
            row[0]
            for row in Warehouse.select(Warehouse.id)
            .where(Warehouse.status == WarehouseStatus.COMPLETED, Warehouse.is_deleted == False)
            .where(Warehouse.id.in_(_with_open_pages_query()))
            .tuples()
        ]
    live = queues.live_job_ids(connection, [job_id for i in ids for job_id in _job_ids(i)])
    resumed = []
    for warehouse_id in ids:
        if _usable_id(warehouse_id) and not any(job_id in live for job_id in _job_ids(warehouse_id)):
            logger.warning('warehouse %s: pages open without a live job; queued again', warehouse_id)
            page_jobs.enqueue_pages(warehouse_id, connection, settings)
            resumed.append(warehouse_id)
    return resumed


def _with_open_pages_query():
    return (
        DocumentCatalog.select(DocumentCatalog.warehouse)
        .where(DocumentCatalog.status.in_(PageStatus.OPEN), DocumentCatalog.is_deleted == False)
        .distinct()
    )


def _usable_id(warehouse_id: str) -> bool:
    """Return whether a row's id can name its jobs and its clone; log the row and return False otherwise."""
    # A row written by hand or by another tool: one bad id must not hold back every other warehouse of a pass.
    try:
        storage.clone_path(warehouse_id)
        usable = queues.is_job_id(process_job_id(warehouse_id)) and queues.is_job_id(update_job_id(warehouse_id))
    except ValueError:
        usable = False
    if not usable:
        logger.error(
            'warehouse %r: id cannot name a job or a clone (letters, digits and - only); skipped', warehouse_id
        )
    return usable


def _enqueue_fresh(connection: redis.Redis, job: str, warehouse_id: str, job_id: str, settings: Settings) -> None:
    # A finished or failed job under the same id still exists until its TTL; it makes way for the new one.
    connection.delete(queues.JsonJob.key_for(job_id))
    queues.enqueue(
        job,
        [warehouse_id],
        job_id=job_id,
        connection=connection,
        settings=settings,
        description=f'{job}({warehouse_id})',
        on_failure=f'{__name__}.warehouse_job_failed',
    )


# ---- Processing ----


def process_warehouse(warehouse_id: str) -> dict:
    """Clone, analyse and document one warehouse, and build its mind map."""
    # Safe twice: the clone is fetched rather than made again, and the results replace the previous ones in one
    # transaction, so a second run leaves one set of documents.
    settings = get_settings()
    started = time.monotonic()
    with database.connection(settings):
        warehouse = _live_warehouse(warehouse_id)
        if warehouse is None:
            return _missing(warehouse_id)
        if warehouse.status not in IN_FLIGHT:
            logger.info('warehouse %s: is %s; nothing to do', warehouse_id, warehouse.status)
            return {
                'warehouse_id': warehouse_id,
                'status': 'skipped',
                'message': f'warehouse is {warehouse.status}, not Pending',
            }
        _set_status(warehouse_id, WarehouseStatus.PROCESSING, error=None)
    try:
        summary = _run_pipeline(warehouse, settings, started, full=True)
    except Exception as exc:
        _record_failure(warehouse_id, exc)
        raise
    finally:
        _dispatch_quietly(settings)
    return summary


def process_warehouse_update(warehouse_id: str) -> dict:
    """Bring a Completed warehouse's documentation up to its branch's newest commit."""
    # Safe twice: a second run finds no new commit and only moves the timestamp.
    settings = get_settings()
    started = time.monotonic()
    with database.connection(settings):
        warehouse = _live_warehouse(warehouse_id)
        if warehouse is None:
            return _missing(warehouse_id)
        if warehouse.status != WarehouseStatus.COMPLETED or warehouse.type != WarehouseType.GIT:
            return {
                'warehouse_id': warehouse_id,
                'status': 'skipped',
                'message': f'only Completed git warehouses are updated (this one is {warehouse.type}, '
                f'{warehouse.status})',
            }
    try:
        return _run_pipeline(warehouse, settings, started, full=False)
    except PermanentJobError as exc:
        # The documentation already there stays readable; the failure is recorded for the operator.
        _set_status(warehouse_id, _status_for(exc), error=f'update failed: {exc}')
        raise


def _live_warehouse(warehouse_id: str) -> Warehouse | None:
    return Warehouse.get_or_none(Warehouse.id == warehouse_id, Warehouse.is_deleted == False)


def _missing(warehouse_id: str) -> dict:
    # A warehouse removed while its job waited: a normal outcome, not an error.
    logger.info('warehouse %s: not found or deleted; nothing to do', warehouse_id)
    return {'warehouse_id': warehouse_id, 'status': 'missing', 'message': 'warehouse not found or deleted'}


def _run_pipeline(warehouse: Warehouse, settings: Settings, started: float, *, full: bool) -> dict:
    timings: dict[str, float] = {}
    mark = time.monotonic()

    def step(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        timings[name] = round(now - mark, 3)
        mark = now

    queues.report_progress('clone', 5)
    if _is_local(warehouse.address) and not settings.allow_local_repositories:
        # Said here rather than by git's address check, the reason names the process that lacks the setting: the
        # submission had it, or it would have been refused then.
        raise InvalidRepositoryAddress(
            f'Warehouse address {warehouse.address} is a local path, and this worker runs without '
            f'ALLOW_LOCAL_REPOSITORIES=true: set it for the worker processes too, restart them, then '
            f'`rqjobs warehouse reprocess {warehouse.id}`.'
        )
    dest = storage.clone_path(warehouse.id, settings)
    password = credentials.decrypt_secret(warehouse.git_password, settings) if warehouse.git_password else None
    new_version = clone.sync(
        warehouse.address,
        dest,
        warehouse.branch or None,
        username=warehouse.git_user_name,
        password=password,
        settings=settings,
        progress=lambda stage, percent: queues.report_progress('clone', 5 + percent * 20 // 100, stage=stage),
    )
    step('clone')
    old_version = warehouse.version
    changed = None
    if not full:
        if new_version == old_version:
            _touch(warehouse.id)
            queues.report_progress('done', 100)
            return _summary(warehouse, 'unchanged', new_version, timings, started, message='no new commits')
        changed = history.changed_paths(dest, old_version, new_version) if old_version else None
        if changed is None:
            logger.info(
                'warehouse %s: %s is no longer an ancestor of %s (force-push?); regenerating everything',
                warehouse.id,
                old_version,
                new_version,
            )
    queues.report_progress('analyse', 30)
    analysis = analysis_module.analyse(
        dest, progress=lambda done, total: queues.report_progress('analyse', 30 + 40 * done // max(total, 1))
    )
    step('analyse')
    queues.report_progress('document', 70)
    since = old_version if changed is not None else None
    commits = history.recent_commits(dest, CHANGELOG_COMMITS, since=since)
    context = documentation.PageContext(f'{warehouse.organization_name}/{warehouse.name}', analysis, commits)
    pages = documentation.catalog(analysis)
    structure_changed = changed is None or any(status[0] in 'ADRC' for status in changed.values())
    tree = minimap.build_tree(context.title, analysis) if structure_changed else None
    requests = None
    counts: dict[str, Any] = {}
    if settings.llm_enabled:
        pages, requests, counts = _plan_pages(warehouse, analysis, context, pages, dest, settings)
    step('document')
    queues.report_progress('store', 90)
    counts.update(
        _store(
            warehouse,
            analysis,
            context,
            pages,
            changed,
            structure_changed,
            tree,
            commits,
            new_version,
            settings,
            requests=requests,
        )
    )
    step('store')
    if requests is not None:
        queued = page_jobs.enqueue_pages(warehouse.id, connections.get_redis(settings), settings, force=True)
        counts.update(pages_queued=len(queued['queued']), finish_job=queued['finish_job'])
    queues.report_progress('done', 100)
    status = 'Completed' if full or changed is None else 'updated'
    if requests is not None:
        status = 'pages queued'
    return _summary(
        warehouse,
        status,
        new_version,
        timings,
        started,
        files=len(analysis.files),
        skipped=sum(analysis.skipped.values()),
        previous_version=old_version,
        changed_files=None if changed is None else len(changed),
        **counts,
    )


def _plan_pages(
    warehouse: Warehouse,
    analysis,
    context: documentation.PageContext,
    pages: list[documentation.Page],
    checkout,
    settings: Settings,
) -> tuple[list[documentation.Page], dict[str, dict], dict]:
    """Return the catalog a model writes (proposed by it when LLM_CATALOG=model) and each page's request."""
    connection = connections.get_redis(settings)
    counts: dict[str, Any] = {}
    if settings.llm_catalog == 'model':
        pages, fallback = page_jobs.propose_catalog(analysis, pages, context.title, settings, connection)
        counts['catalog'] = 'deterministic, the proposal was refused: ' + fallback if fallback else 'model'
    # The changelog page summarises the recent commits whatever this run is: it changes when new commits come.
    recent = history.recent_commits(checkout, CHANGELOG_COMMITS)
    if recent and not any(page.key == page_jobs.CHANGELOG_KEY for page in pages):
        pages = [*pages, page_jobs.changelog_page(order=len([p for p in pages if p.parent is None]))]
    requests = page_jobs.plan(warehouse, pages, context, checkout, recent, settings, connection)
    return pages, requests, counts


def _store(
    warehouse: Warehouse,
    analysis,
    context: documentation.PageContext,
    pages: list[documentation.Page],
    changed: dict[str, str] | None,
    structure_changed: bool,
    tree: dict | None,
    commits: list[dict],
    version: str,
    settings: Settings,
    requests: dict[str, dict] | None = None,
) -> dict:
    """Write the documentation in one transaction: readers see the old set or the new one, never a mix.

    With `changed` (an update), only pages whose sources (old or new) changed are written again, plus the pages
    that describe the structure when files were added, removed or renamed. With `requests` (a model writes the
    pages), the pages are stored with their requests instead, open unless written from the same request already;
    the page jobs write them, and the warehouse stays as it is until they have ended.
    """
    now = clock.utcnow()
    written = 0
    with database.connection(settings) as db_, db_.atomic():
        old_sources = _sources_by_page(warehouse.id) if changed is not None else {}
        document = Document.get_or_none(Document.warehouse == warehouse.id)
        if document is None:
            document = Document.create(
                warehouse=warehouse.id,
                git_path=str(storage.clone_path(warehouse.id, settings)),
                status=WarehouseStatus.COMPLETED,
            )
        existing = {
            row.url: row
            for row in DocumentCatalog.select().where(
                DocumentCatalog.warehouse == warehouse.id, DocumentCatalog.is_deleted == False
            )
        }
        ids: dict[str, str] = {}
        for page in pages:
            row = existing.get(page.key)
            parent_id = ids.get(page.parent) if page.parent else None
            if requests is not None:
                ids[page.key], opened = _plan_page(warehouse.id, document.id, page, parent_id, requests[page.key], row)
                written += opened
                continue
            sources = set(page.sources).union(old_sources.get(page.key, ()))
            touched = (
                changed is None
                or not sources.isdisjoint(changed)
                or (structure_changed and page.key in STRUCTURE_PAGES)
            )
            if row is not None and not touched:
                ids[page.key] = row.id
                continue
            content = documentation.render(page, context)
            ids[page.key] = _write_page(warehouse.id, document.id, page, parent_id, content, row)
            written += 1
            if page.key == 'overview':
                DocumentOverview.delete().where(DocumentOverview.document == document.id).execute()
                DocumentOverview.create(document=document.id, title=context.title, content=content)
        stale = [row.id for url, row in existing.items() if url not in ids]
        if stale:
            DocumentCatalog.delete().where(DocumentCatalog.id.in_(stale)).execute()
        if tree is not None:
            MiniMap.delete().where(MiniMap.warehouse == warehouse.id).execute()
            MiniMap.create(warehouse=warehouse.id, value=tree)
        if commits:
            DocumentCommitRecord.insert_many(
                [
                    {
                        'id': database.record_id(warehouse.id, c['sha']),
                        'warehouse': warehouse.id,
                        'commit_id': c['sha'],
                        'title': c['title'],
                        'description': c['description'],
                        'author': c['author'],
                        'last_update': c['committed_at'],
                        'created_at': now,
                    }
                    for c in commits
                ]
            ).on_conflict_ignore().execute()
        if requests is None:
            Document.update(last_update=now, updated_at=now, status=WarehouseStatus.COMPLETED, paths=None).where(
                Document.id == document.id
            ).execute()
        else:
            Document.update(updated_at=now, paths=[source.path for source in analysis.files]).where(
                Document.id == document.id
            ).execute()
        # With a model, the finishing job of the pages sets the outcome: the status stays as it is.
        outcome = {'status': WarehouseStatus.COMPLETED} if requests is None else {}
        Warehouse.update(
            **outcome,
            error=None,
            version=version,
            readme=analysis.readme,
            optimized_directory_structure=analysis.tree,
            classify=analysis.classification,
            description=documentation.first_paragraph(analysis.readme, 500) or warehouse.description,
            updated_at=now,
        ).where(Warehouse.id == warehouse.id).execute()
    if requests is not None:
        return {'pages': len(pages), 'pages_open': written, 'pages_removed': len(stale), 'commits': len(commits)}
    return {
        'pages': len(pages),
        'pages_written': written,
        'pages_removed': len(stale),
        'commits': len(commits),
        'minimap': tree is not None,
    }


def _plan_page(
    warehouse_id: str,
    document_id: str,
    page: documentation.Page,
    parent_id: str | None,
    request: dict,
    row: DocumentCatalog | None,
) -> tuple[str, bool]:
    """Store a page's catalog entry and the request a model writes it from; return its id and whether it is open."""
    digest = request['digest']
    up_to_date = row is not None and row.written_digest == digest and row.status == PageStatus.COMPLETED
    fields = {**_entry(warehouse_id, document_id, page, parent_id), 'request': request, 'request_digest': digest}
    if not up_to_date:
        # The content already there (an update's) stays readable until the page job replaces it.
        fields.update(status=PageStatus.PENDING, tries=0, error=None)
    if row is None:
        return DocumentCatalog.create(**fields, is_completed=False).id, True
    DocumentCatalog.update(**fields).where(DocumentCatalog.id == row.id).execute()
    return row.id, not up_to_date


def _entry(warehouse_id: str, document_id: str, page: documentation.Page, parent_id: str | None) -> dict:
    """Return the fields of a page's catalog entry that come from the catalog."""
    return {
        'warehouse': warehouse_id,
        'document': document_id,
        'parent': parent_id,
        'name': page.title,
        'url': page.key,
        'description': page.description,
        'sort_order': page.order,
        'dependent_file': page.sources[:200],
        'updated_at': clock.utcnow(),
    }


def _sources_by_page(warehouse_id: str) -> dict[str, set[str]]:
    rows = (
        DocumentFileItemSource.select(DocumentCatalog.url, DocumentFileItemSource.address)
        .join(DocumentFileItem)
        .join(DocumentCatalog)
        .where(DocumentCatalog.warehouse == warehouse_id)
        .tuples()
    )
    sources: dict[str, set[str]] = defaultdict(set)
    for url, address in rows:
        sources[url].add(address)
    return sources


def _write_page(
    warehouse_id: str,
    document_id: str,
    page: documentation.Page,
    parent_id: str | None,
    content: str,
    row: DocumentCatalog | None,
) -> str:
    fields = {
        **_entry(warehouse_id, document_id, page, parent_id),
        'is_completed': True,
        'status': PageStatus.COMPLETED,
        'request': None,
        'request_digest': None,
        'written_digest': None,
        'error': None,
    }
    if row is None:
        catalog_id = DocumentCatalog.create(**fields).id
    else:
        catalog_id = row.id
        DocumentCatalog.update(**fields).where(DocumentCatalog.id == catalog_id).execute()
        DocumentFileItem.delete().where(DocumentFileItem.catalog == catalog_id).execute()
    item = DocumentFileItem.create(
        catalog=catalog_id,
        title=page.title,
        description=page.description,
        content=content,
        size=len(content.encode()),
        metadata={'sources': len(page.sources)},
    )
    for batch in chunked(page.sources, 500):
        DocumentFileItemSource.insert_many(
            [
                {
                    'id': database.record_id(item.id, path),
                    'file_item': item.id,
                    'address': path,
                    'name': path.rsplit('/', 1)[-1],
                    'created_at': clock.utcnow(),
                }
                for path in batch
            ]
        ).execute()
    return catalog_id


def _summary(
    warehouse: Warehouse, status: str, version: str, timings: dict, started: float, message: str = '', **counts: Any
) -> dict:
    timings['total'] = round(time.monotonic() - started, 3)
    logger.info('warehouse %s: %s at %s in %.1f s', warehouse.id, status, version[:12], timings['total'])
    return {
        'warehouse_id': warehouse.id,
        'status': status,
        'version': version,
        'timings': timings,
        'message': message or f'{warehouse.organization_name}/{warehouse.name} {status.lower()}',
        **counts,
    }


def _status_for(exc: BaseException) -> str:
    return WarehouseStatus.UNAUTHORIZED if isinstance(exc, RepositoryUnauthorized) else WarehouseStatus.FAILED


def _record_failure(warehouse_id: str, exc: BaseException) -> None:
    """Mark the warehouse Failed (or Unauthorized) unless the job will be tried again."""
    if not isinstance(exc, PermanentJobError) and queues.retries_left() > 0:
        _set_status(
            warehouse_id, WarehouseStatus.PROCESSING, error=f'{exc} (will retry, {queues.retries_left()} tries left)'
        )
        logger.warning('warehouse %s: %s; will retry', warehouse_id, exc)
        return
    _set_status(warehouse_id, _status_for(exc), error=str(exc) or type(exc).__name__)
    logger.error('warehouse %s: failed: %s', warehouse_id, exc)


def _set_status(warehouse_id: str, status: str, error: str | None) -> None:
    with database.connection():
        Warehouse.update(status=status, error=error, updated_at=clock.utcnow()).where(
            Warehouse.id == warehouse_id
        ).execute()


def _touch(warehouse_id: str) -> None:
    now = clock.utcnow()
    with database.connection():
        Document.update(last_update=now, updated_at=now).where(Document.warehouse == warehouse_id).execute()
        Warehouse.update(updated_at=now, error=None).where(Warehouse.id == warehouse_id).execute()


def _dispatch_quietly(settings: Settings) -> None:
    # The owner's next Pending warehouse starts now rather than at the next periodic run; if this fails, that
    # periodic run still does it.
    try:
        dispatch_pending(connections.get_redis(settings), settings)
    except Exception:
        logger.warning('dispatching pending warehouses failed; the periodic run will retry', exc_info=True)


def warehouse_job_failed(job, connection, exc_type, exc_value, traceback) -> None:
    """Mark a warehouse Failed when its job failed without doing so itself: its worker died, or it was killed."""
    warehouse_id = job.args[0] if job.args else None
    if not warehouse_id or (job.retries_left or 0) > 0:
        return  # a retry is coming, and it will set the outcome
    reason = f'{exc_type.__name__}: the worker running the job stopped before it ended' if exc_type else 'failed'
    with database.connection():
        updated = (
            Warehouse.update(status=WarehouseStatus.FAILED, error=reason, updated_at=clock.utcnow())
            .where(Warehouse.id == warehouse_id, Warehouse.status == WarehouseStatus.PROCESSING)
            .execute()
        )
    if updated:
        logger.error('warehouse %s: failed: %s', warehouse_id, reason)
    # A clone the dead worker had begun would otherwise stay on disk until the warehouse is removed.
    storage.remove_partial(storage.clone_path(warehouse_id))


# ---- Periodic jobs ----


def schedule_warehouse_processing() -> dict:
    """Enqueue Pending warehouses (per-user limit) and Processing ones whose job is gone."""
    # Safe to run any number of times: a warehouse with a live job is never enqueued again.
    connection = connections.get_redis()
    enqueued = dispatch_pending(connection)
    resumed = resume_pages(connection) + page_jobs.unstick(connection)
    return {'enqueued': len(enqueued), 'warehouse_ids': enqueued, 'pages_resumed': resumed}


def schedule_warehouse_updates() -> dict:
    """Enqueue updates of Completed git warehouses whose documentation is older than UPDATE_INTERVAL days."""
    # Safe to run any number of times: an update with a live job is not enqueued again.
    settings = get_settings()
    cutoff = clock.utcnow() - timedelta(days=settings.update_interval_days)
    with database.connection(settings):
        due = [
            row[0]
            for row in Warehouse.select(Warehouse.id)
            .join(Document, on=(Document.warehouse == Warehouse.id))
            .where(
                Warehouse.status == WarehouseStatus.COMPLETED,
                Warehouse.type == WarehouseType.GIT,
                Warehouse.is_deleted == False,
                Document.last_update < cutoff,
            )
            .order_by(Document.last_update)
            .limit(UPDATES_PER_RUN)
            .tuples()
        ]
    connection = connections.get_redis(settings)
    live = queues.live_job_ids(connection, [update_job_id(i) for i in due] + [process_job_id(i) for i in due])
    enqueued = []
    for warehouse_id in due:
        if not _usable_id(warehouse_id):
            continue
        if update_job_id(warehouse_id) in live or process_job_id(warehouse_id) in live:
            continue
        _enqueue_fresh(connection, 'process_warehouse_update', warehouse_id, update_job_id(warehouse_id), settings)
        enqueued.append(warehouse_id)
    return {'due': len(due), 'enqueued': len(enqueued), 'warehouse_ids': enqueued}


def cleanup_failed_warehouses() -> dict:
    """Soft-delete warehouses Failed for more than 24 hours and remove their clones."""
    # Safe twice: a soft-deleted warehouse is no longer selected, and removing a missing clone is a no-op.
    cutoff = clock.utcnow() - FAILED_RETENTION
    with database.connection():
        failed = [
            warehouse
            for warehouse in Warehouse.select().where(
                Warehouse.status == WarehouseStatus.FAILED, Warehouse.is_deleted == False, Warehouse.updated_at < cutoff
            )
            if _usable_id(warehouse.id)
        ]
        for warehouse in failed:
            _soft_delete(warehouse)
    logger.info('cleanup: %d failed warehouses removed', len(failed))
    # Their clones may lie on any host that ever ran one of their jobs, not only this one. Should this fail, the
    # rows are gone already: `rqjobs cleanup --orphan-clones` finds their clones.
    for chunk in chunked([w.id for w in failed], hosts.CHORE_IDS_MAX):
        hosts.enqueue_on_hosts(connections.get_redis(), 'remove_clones', [chunk])
    return {'removed': len(failed), 'warehouse_ids': [w.id for w in failed]}


# ---- Operator actions (the CLI) ----


def get_warehouse(warehouse_id: str) -> Warehouse:
    """Return a warehouse that is not deleted, or raise `WarehouseNotFound` saying it does not exist."""
    with database.connection():
        warehouse = _live_warehouse(warehouse_id)
    if warehouse is None:
        raise WarehouseNotFound(
            f'Warehouse {warehouse_id} does not exist (or was removed); `rqjobs warehouse list` shows the ids.'
        )
    return warehouse


def reprocess(warehouse_id: str, connection: redis.Redis) -> Warehouse:
    """Set a warehouse back to Pending and queue it; refused while a job of it is queued or running."""
    get_warehouse(warehouse_id)
    if queues.live_job_ids(connection, list(_job_ids(warehouse_id))):
        raise InvalidSubmission(f'Warehouse {warehouse_id} is already queued or running.')
    _set_status(warehouse_id, WarehouseStatus.PENDING, error=None)
    dispatch_pending(connection)
    return get_warehouse(warehouse_id)


def remove(warehouse_id: str, connection: redis.Redis) -> None:
    """Soft-delete a warehouse, cancel its queued jobs and remove its clone."""
    warehouse = get_warehouse(warehouse_id)
    for job_id in (process_job_id(warehouse_id), update_job_id(warehouse_id)):
        connection.delete(queues.JsonJob.key_for(job_id))
        for queue in queues.all_queues(connection):
            queue.remove(job_id)
    with database.connection():
        _soft_delete(warehouse)
    # Removed here, on the host that runs the command; the hosts whose workers cloned it remove theirs.
    hosts.enqueue_on_hosts(connection, 'remove_clones', [[warehouse_id]])


def list_warehouses(status: str | None = None, limit: int = 100) -> list[dict]:
    """Return warehouses, newest first, as plain dicts."""
    with database.connection():
        query = Warehouse.select().where(Warehouse.is_deleted == False)
        if status:
            query = query.where(Warehouse.status == status)
        return [_row(w) for w in query.order_by(Warehouse.created_at.desc()).limit(limit)]


def describe(warehouse_id: str, connection: redis.Redis) -> dict:
    """Return a warehouse with its documentation counts and the progress of its live job."""
    warehouse = get_warehouse(warehouse_id)
    with database.connection():
        data = _row(warehouse)
        data['error'] = warehouse.error
        data['pages'] = (
            DocumentCatalog.select()
            .where(DocumentCatalog.warehouse == warehouse_id, DocumentCatalog.is_deleted == False)
            .count()
        )
        data['commits'] = DocumentCommitRecord.select().where(DocumentCommitRecord.warehouse == warehouse_id).count()
        tree = MiniMap.get_or_none(MiniMap.warehouse == warehouse_id)
        data['minimap_nodes'] = minimap.count_nodes(tree.value) if tree else 0
        data['tokens'] = page_jobs.spent_tokens(warehouse_id)
        data['token_budget'] = warehouse.token_budget
    data['page_states'] = page_jobs.page_states(warehouse_id)
    data['jobs'] = []
    for job_id in _job_ids(warehouse_id):
        try:
            job = queues.JsonJob.fetch(job_id, connection=connection)
        except NoSuchJobError:
            continue
        data['jobs'].append({'id': job.id, 'status': job.get_status().value, 'progress': job.meta.get('progress')})
    return data


def _row(warehouse: Warehouse) -> dict:
    return {
        'id': warehouse.id,
        'organization': warehouse.organization_name,
        'name': warehouse.name,
        'branch': warehouse.branch,
        'status': warehouse.status,
        'version': warehouse.version,
        'classify': warehouse.classify,
        'address': warehouse.address,
        'creator': warehouse.creator_id,
        'created_at': warehouse.created_at,
        'updated_at': warehouse.updated_at,
    }


def catalog_tree(warehouse_id: str) -> list[dict]:
    """Return the warehouse's catalog as nested `{title, url, children}` dicts, in order."""
    with database.connection():
        rows = list(
            DocumentCatalog.select()
            .where(DocumentCatalog.warehouse == warehouse_id, DocumentCatalog.is_deleted == False)
            .order_by(DocumentCatalog.sort_order)
        )
    children: dict[str | None, list[DocumentCatalog]] = defaultdict(list)
    for row in rows:
        children[row.parent_id].append(row)

    def build(parent: str | None) -> list[dict]:
        return [{'title': row.name, 'url': row.url, 'children': build(row.id)} for row in children[parent]]

    return build(None)


def page_content(warehouse_id: str, url: str) -> str | None:
    """Return the markdown of one page of a warehouse, or None."""
    with database.connection():
        item = (
            DocumentFileItem.select()
            .join(DocumentCatalog)
            .where(DocumentCatalog.warehouse == warehouse_id, DocumentCatalog.url == url)
            .first()
        )
    return item.content if item else None
