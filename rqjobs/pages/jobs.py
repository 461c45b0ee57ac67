"""Page jobs (queue `pages`): a model writes each page of a warehouse, then one job sets the warehouse's outcome.

`plan()` runs inside the warehouse's processing job, on the host that holds the clone: it builds each page's request
(the page's sources, within the model's context) and stores it with the page, Pending unless the stored content was
written from the same request. `enqueue_pages()` then queues one `write_page` job per open page and one
`finish_pages` job that rq holds back until every page job has ended, failed ones included. Page jobs need no clone,
so any worker on any host takes them; rq's `RateLimit` keeps at most `LLM_CONCURRENCY` of them queued or running per
model server, and the waiting ones are ordered so that every user's warehouses take turns.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis
from peewee import fn
from rq import RateLimit
from rq.exceptions import NoSuchJobError
from rq.job import Dependency, Retry, get_current_job

from models import (
    Document,
    DocumentCatalog,
    DocumentFileItem,
    DocumentFileItemSource,
    DocumentOverview,
    PageStatus,
    Warehouse,
    WarehouseStatus,
)
from rqjobs import clock, connections, database, limits, queues
from rqjobs.exceptions import JobActionRefused, PermanentJobError, WarehouseNotFound
from rqjobs.settings import Settings, get_settings

logger = logging.getLogger(__name__)

JOBS = ('write_page', 'finish_pages')
CALLBACKS = ('page_job_failed',)

# A page gets three more tries after a server error, a timeout or an unusable answer, LLM_RETRY_BACKOFF seconds
# before the first and three times longer before each next one. A 429 does not use up a try (model.chat waits).
PAGE_RETRIES = 3
# Seconds a page job may run beyond its request's timeout and its 429 waits: loading and storing the page.
PAGE_JOB_MARGIN = 60
MAX_LISTED = 10
ENQUEUE_LOCK_SECONDS = 30
# Step of the fair order among waiting page jobs (see `_take_turns`), in the units of rq's scores (seconds).
TURN = 0.001
TURN_TTL = 7 * 24 * 3600
CHANGELOG_KEY = 'changelog'

# Orders a user's newly waiting page jobs after the jobs that user already has waiting, but never before the
# oldest job still waiting: users who submitted less get their turns before the one who submitted most.
# KEYS: rq's rate_limited set, the user's last turn; ARGV: now, step, ttl, job ids...
_TAKE_TURNS = """
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local start = tonumber(ARGV[1])
if #first > 0 then start = math.min(start, tonumber(first[2])) end
local turn = math.max(start, tonumber(redis.call('GET', KEYS[2]) or '0'))
for i = 4, #ARGV do
    if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
        turn = turn + tonumber(ARGV[2])
        redis.call('ZADD', KEYS[1], 'XX', turn, ARGV[i])
    end
end
redis.call('SET', KEYS[2], tostring(turn), 'EX', tonumber(ARGV[3]))
return #ARGV - 3
"""


def page_job_id(warehouse_id: str, key: str) -> str:
    """Return the id of the job writing one page of a warehouse."""
    return f'page-{warehouse_id}-{hashlib.sha256(key.encode()).hexdigest()[:16]}'


def finish_job_id(warehouse_id: str) -> str:
    """Return the id of the job that sets a warehouse's outcome once its page jobs have ended."""
    return f'warehouse-pages-{warehouse_id}'


def rate_limit_key(settings: Settings) -> str:
    """Return the rq rate-limit key shared by every page job sent to the configured model server."""
    from rqjobs.pages import model

    return f'rqjobs-llm-{model.endpoint_key(settings)}'


# ---- Planning (inside the warehouse job, next to the clone) ----


def plan(
    warehouse: Warehouse,
    pages: list,
    context,
    checkout: Path,
    commits: list[dict],
    settings: Settings,
    connection: redis.Redis,
) -> dict[str, dict]:
    """Return the request of every page (and of the changelog page when there are commits), by page key."""
    from rqjobs.pages import model, prompts

    correction = model.correction(connection, settings)
    shape = {
        'language': settings.llm_language,
        'context_tokens': settings.llm_context_tokens,
        'max_output_tokens': settings.llm_max_output_tokens,
        'correction': correction,
    }
    requests = {}
    for page in pages:
        prompt = prompts.page_prompt(page, context, checkout, title=context.title, **shape)
        requests[page.key] = _request(prompt)
    if commits:
        prompt = prompts.changelog_prompt(commits, title=context.title, **shape)
        requests[CHANGELOG_KEY] = _request(prompt)
    return requests


def changelog_page(order: int):
    """Return the catalog entry of the changelog page a model writes from the recent commits."""
    from rqjobs.repository.documentation import Page

    return Page(CHANGELOG_KEY, 'Changelog', 'What changed recently, from the commit history.', None, order)


def _request(prompt) -> dict:
    return {
        'messages': prompt.messages,
        'sources': prompt.sources,
        'outlined': prompt.outlined,
        'omitted': prompt.omitted,
        'estimated_tokens': prompt.estimated_tokens,
        'digest': prompt.digest,
    }


def propose_catalog(analysis, deterministic: list, title: str, settings: Settings, connection: redis.Redis):
    """Return the model's catalog when it is valid, else the deterministic one; and why it fell back, or None."""
    from rqjobs.exceptions import ModelError
    from rqjobs.pages import catalog, model, prompts

    existing = {source.path for source in analysis.files}
    prompt = prompts.catalog_prompt(
        analysis,
        title=title,
        language=settings.llm_language,
        context_tokens=settings.llm_context_tokens,
        max_output_tokens=settings.llm_max_output_tokens,
        correction=model.correction(connection, settings),
    )
    # Bounded like one page's tries: a server that keeps the proposal waiting costs the warehouse job that much.
    deadline = time.monotonic() + settings.llm_timeout + settings.llm_retry_after_max
    try:
        answer = _ask(prompt, settings, deadline, connection)
    except ModelError as exc:
        # The deterministic catalog is always there to fall back on: a failed proposal must not lose the warehouse.
        logger.warning('catalog proposal failed (%s); using the deterministic catalog', exc)
        return deterministic, f'the proposal failed: {exc}'
    if answer.prompt_tokens:
        model.record_usage(connection, settings, prompt.estimated_tokens, answer.prompt_tokens)
    return catalog.choose_catalog(answer.content, deterministic, existing)


# ---- Enqueueing ----


def enqueue_pages(
    warehouse_id: str, connection: redis.Redis, settings: Settings | None = None, *, force: bool = False
) -> dict:
    """Queue a job for every open page of a warehouse that has none, and the job that finishes the warehouse.

    Returns {'queued': [keys], 'running': [keys], 'finish_job': id}. Safe to call again at any time: a page whose
    job is alive is not queued twice. With `force`, the finishing job is queued even when no page is open.
    """
    settings = settings or get_settings()
    lock = connection.lock(
        f'rqjobs:lock:pages:{warehouse_id}', timeout=ENQUEUE_LOCK_SECONDS, blocking_timeout=ENQUEUE_LOCK_SECONDS
    )
    with lock:
        with database.connection(settings):
            warehouse = Warehouse.get_or_none(Warehouse.id == warehouse_id, Warehouse.is_deleted == False)
            if warehouse is None:
                raise WarehouseNotFound(f'Warehouse {warehouse_id} does not exist.')
            open_keys = [
                row[0]
                for row in DocumentCatalog.select(DocumentCatalog.url)
                .where(
                    DocumentCatalog.warehouse == warehouse_id,
                    DocumentCatalog.is_deleted == False,
                    DocumentCatalog.status.in_(PageStatus.OPEN),
                )
                .order_by(DocumentCatalog.sort_order, DocumentCatalog.url)
                .tuples()
            ]
        finish_id = finish_job_id(warehouse_id)
        finish_live = queues.live_job_ids(connection, [finish_id])
        if finish_live and _status(connection, finish_id) == 'started':
            raise JobActionRefused(f'Warehouse {warehouse_id} is being finished right now; try again in a few seconds.')
        job_ids = {key: page_job_id(warehouse_id, key) for key in open_keys}
        live = queues.live_job_ids(connection, list(job_ids.values()))
        running = [key for key in open_keys if job_ids[key] in live]
        to_queue = [key for key in open_keys if job_ids[key] not in live]
        if not open_keys and not force and not finish_live:
            return {'queued': [], 'running': [], 'finish_job': None}
        limit = RateLimit(rate_limit_key(settings), settings.llm_concurrency)
        backoff = settings.llm_retry_backoff
        timeout = int(settings.llm_timeout + settings.llm_retry_after_max + PAGE_JOB_MARGIN)
        for ended in queues.JsonJob.fetch_many([job_ids[key] for key in to_queue], connection=connection):
            if ended is not None:
                ended.delete()  # an ended job under the id makes way, giving back any rate-limit slot it held
        for key in to_queue:
            queues.enqueue(
                'write_page',
                [warehouse_id, key],
                job_id=job_ids[key],
                connection=connection,
                settings=settings,
                retry=Retry(max=PAGE_RETRIES, interval=[backoff * 3**n for n in range(PAGE_RETRIES)]),
                timeout=timeout,
                description=f'write_page({warehouse_id}, {key})',
                meta={'warehouse_id': warehouse_id},
                on_failure=f'{__name__}.page_job_failed',
                rate_limit=limit,
            )
        _take_turns(connection, limit.key, str(warehouse.creator_id or '-'), [job_ids[k] for k in to_queue])
        # The finishing job is made again over every page job now alive: rq fixes a job's dependencies when it is
        # enqueued, and pages queued since (a regeneration) must hold it back too.
        connection.delete(queues.JsonJob.key_for(finish_id), queues.JsonJob.key_for(finish_id) + ':dependencies')
        queues.get_queue(queues.PAGES, connection, settings).deferred_job_registry.remove(finish_id)
        dependencies = [job_ids[key] for key in open_keys]
        queues.enqueue(
            'finish_pages',
            [warehouse_id],
            job_id=finish_id,
            connection=connection,
            settings=settings,
            description=f'finish_pages({warehouse_id})',
            meta={'progress': _progress(warehouse_id, settings)},
            depends_on=Dependency(jobs=dependencies, allow_failure=True) if dependencies else None,
        )
    logger.info('warehouse %s: %d page jobs queued, %d still running', warehouse_id, len(to_queue), len(running))
    return {'queued': to_queue, 'running': running, 'finish_job': finish_id}


def unstick(connection: redis.Redis, settings: Settings | None = None) -> list[str]:
    """Finish, or queue again, the pages of warehouses whose finishing job waits on page jobs that are all gone."""
    # rq holds a job back until its dependencies have ended, and counts a cancelled one as never ending: a page job
    # cancelled (`rqjobs job cancel`) or deleted while waiting would hold its warehouse for ever. A cancelled page
    # is Failed, as its canceller meant; a lost one is queued again. Returns the warehouses seen to.
    settings = settings or get_settings()
    prefix = finish_job_id('')
    deferred = queues.get_queue(queues.PAGES, connection, settings).deferred_job_registry.get_job_ids()
    waiting = [job_id[len(prefix) :] for job_id in deferred if job_id.startswith(prefix)]
    if not waiting:
        return []
    with database.connection(settings):
        keys: dict[str, list[str]] = {}
        for warehouse_id, key in (
            DocumentCatalog.select(DocumentCatalog.warehouse, DocumentCatalog.url)
            .where(DocumentCatalog.warehouse.in_(waiting), DocumentCatalog.is_deleted == False)
            .tuples()
        ):
            keys.setdefault(warehouse_id, []).append(key)
    stuck = []
    for warehouse_id in waiting:
        page_ids = {page_job_id(warehouse_id, key): key for key in keys.get(warehouse_id, ())}
        if not queues.live_job_ids(connection, list(page_ids)):
            cancelled = [page_ids[job_id] for job_id in page_ids if _status(connection, job_id) == 'canceled']
            if cancelled:
                with database.connection(settings):
                    DocumentCatalog.update(
                        status=PageStatus.FAILED, error='its job was cancelled', updated_at=clock.utcnow()
                    ).where(
                        DocumentCatalog.warehouse == warehouse_id,
                        DocumentCatalog.url.in_(cancelled),
                        DocumentCatalog.status.in_(PageStatus.OPEN),
                    ).execute()
            logger.warning(
                'warehouse %s: its finishing job waits on page jobs that are gone; queued again', warehouse_id
            )
            try:
                enqueue_pages(warehouse_id, connection, settings, force=True)
            except WarehouseNotFound:
                connection.delete(queues.JsonJob.key_for(finish_job_id(warehouse_id)))
                queues.get_queue(queues.PAGES, connection, settings).deferred_job_registry.remove(
                    finish_job_id(warehouse_id)
                )
                continue
            stuck.append(warehouse_id)
    return stuck


def _status(connection: redis.Redis, job_id: str) -> str | None:
    status = connection.hget(queues.JsonJob.key_for(job_id), 'status')
    return status.decode() if status else None


def _take_turns(connection: redis.Redis, limit_key: str, user: str, job_ids: list[str]) -> None:
    # rq promotes waiting rate-limited jobs oldest first, so one user's 500 pages would hold back everyone who
    # submitted after them. Re-scoring the waiting jobs in rq's own set keeps rq's promotion and makes turns fair.
    if not job_ids:
        return
    waiting = f'rq:rl:{limit_key}:rate_limited'
    turns = f'rqjobs:llm:turn:{limit_key}:{hashlib.sha256(user.encode()).hexdigest()[:16]}'
    connection.eval(_TAKE_TURNS, 2, waiting, turns, time.time(), TURN, TURN_TTL, *job_ids)


# ---- Writing one page ----


def write_page(warehouse_id: str, key: str) -> dict:
    """Write one page of a warehouse with the configured model and store it, unless it is up to date."""
    # Safe twice: a page whose stored content was written from its current request is not sent again.
    from rqjobs.pages import answers, model
    from rqjobs.pages.prompts import Prompt

    settings = get_settings()
    started = time.monotonic()
    if not settings.llm_enabled:
        raise PermanentJobError(
            'No model is configured in this worker (LLM_BASE_URL and LLM_MODEL are unset): set them for the '
            'workers on queue pages and restart them.'
        )
    with database.connection(settings):
        row = _page(warehouse_id, key)
        if row is None:
            logger.info('warehouse %s: page %s not found or removed; nothing to do', warehouse_id, key)
            return {'warehouse_id': warehouse_id, 'page': key, 'status': 'missing'}
        if row.status not in PageStatus.OPEN:
            return {'warehouse_id': warehouse_id, 'page': key, 'status': 'skipped', 'message': f'page is {row.status}'}
        if row.written_digest is not None and row.written_digest == row.request_digest:
            _set_page(row.id, status=PageStatus.COMPLETED, error=None)
            return {'warehouse_id': warehouse_id, 'page': key, 'status': 'skipped', 'message': 'already written'}
        refusal = _over_budget(row.warehouse, settings)
        if refusal:
            _set_page(row.id, status=PageStatus.SKIPPED, error=refusal)
            _report(warehouse_id, settings)
            return {'warehouse_id': warehouse_id, 'page': key, 'status': 'skipped', 'message': refusal}
        request, digest = row.request, row.request_digest
        _set_page(row.id, status=PageStatus.WRITING, tries=DocumentCatalog.tries + 1)
    connection = connections.get_redis(settings)
    job = get_current_job()
    limit = job.timeout if job is not None and job.timeout else settings.job_timeout
    # 429 waits end before the job's soft time limit, so that a page kept waiting fails as a try that a retry can
    # redo rather than as a job that ran out of time.
    deadline = started + limits.soft_limit_for(limit) - PAGE_JOB_MARGIN / 4
    prompt = Prompt(
        messages=request['messages'],
        sources=request.get('sources', []),
        outlined=request.get('outlined', []),
        omitted=request.get('omitted', []),
        estimated_tokens=request.get('estimated_tokens', 0),
        digest=digest,
    )
    try:
        answer = _ask(prompt, settings, deadline, connection)
        with database.connection(settings):
            _spend(row.id, answer)
        if answer.prompt_tokens and prompt.estimated_tokens:
            model.record_usage(connection, settings, prompt.estimated_tokens, answer.prompt_tokens)
        markdown = answers.check_answer(answer.content, answer.finish_reason, prompt)
    except Exception as exc:
        _page_failed(row.id, warehouse_id, key, exc, settings)
        raise
    with database.connection(settings) as db_:
        warehouse = Warehouse.get_by_id(warehouse_id)
        existing = set(prompt.sources) | set(prompt.outlined) | _checkout_paths(warehouse_id)
        grounded = answers.ground_citations(
            markdown,
            _exists(existing),
            lambda path: answers.source_link(warehouse.address, warehouse.version or '', path),
        )
        stored = _store_page(db_, row, grounded, answer, prompt, digest)
    _report(warehouse_id, settings)
    logger.info(
        'warehouse %s: page %s written (%s tokens in, %s out, %.1f s)',
        warehouse_id,
        key,
        answer.prompt_tokens,
        answer.completion_tokens,
        time.monotonic() - started,
    )
    return {
        'warehouse_id': warehouse_id,
        'page': key,
        'status': 'written' if stored else 'outdated',
        'tokens_in': answer.prompt_tokens,
        'tokens_out': answer.completion_tokens,
        'cited': len(grounded.cited),
        'unknown_paths': grounded.unknown,
    }


def _ask(prompt, settings: Settings, deadline: float, connection: redis.Redis):
    """Send a prompt to the model server; return its `Answer`."""
    from rqjobs.pages import model

    return model.chat(
        prompt.messages,
        settings=settings,
        max_tokens=settings.llm_max_output_tokens,
        deadline=deadline,
        connection=connection,
    )


def _page(warehouse_id: str, key: str) -> DocumentCatalog | None:
    return (
        DocumentCatalog.select(DocumentCatalog, Warehouse)
        .join(Warehouse)
        .where(
            DocumentCatalog.warehouse == warehouse_id,
            DocumentCatalog.url == key,
            DocumentCatalog.is_deleted == False,
            Warehouse.is_deleted == False,
        )
        .first()
    )


def _set_page(catalog_id: str, **fields: Any) -> None:
    DocumentCatalog.update(**fields, updated_at=clock.utcnow()).where(DocumentCatalog.id == catalog_id).execute()


def _spend(catalog_id: str, answer) -> None:
    # Every try costs what the server says it cost, whether or not its answer is kept.
    DocumentCatalog.update(
        tokens_in=DocumentCatalog.tokens_in + (answer.prompt_tokens or 0),
        tokens_out=DocumentCatalog.tokens_out + (answer.completion_tokens or 0),
    ).where(DocumentCatalog.id == catalog_id).execute()


def spent_tokens(warehouse_id: str) -> int:
    """Return the tokens (in and out, every try) a warehouse's pages have spent."""
    total = (
        DocumentCatalog.select(fn.SUM(DocumentCatalog.tokens_in + DocumentCatalog.tokens_out))
        .where(DocumentCatalog.warehouse == warehouse_id)
        .scalar()
    )
    return int(total or 0)


def _over_budget(warehouse: Warehouse, settings: Settings) -> str | None:
    budget = warehouse.token_budget if warehouse.token_budget is not None else settings.llm_token_budget
    if not budget:
        return None
    spent = spent_tokens(warehouse.id)
    if spent < budget:
        return None
    return f'token budget spent ({spent:,} of {budget:,} tokens); not sent to the model'


def _checkout_paths(warehouse_id: str) -> set[str]:
    paths = Document.select(Document.paths).where(Document.warehouse == warehouse_id).scalar()
    return set(paths or ())


def _exists(paths: set[str]):
    directories = {path.rsplit('/', i)[0] for path in paths for i in range(1, path.count('/') + 1)}

    def exists(path: str) -> bool:
        path = path.strip('/')
        return path in paths or path in directories

    return exists


def _store_page(db_, row: DocumentCatalog, grounded, answer, prompt, digest: str) -> bool:
    """Store the page in one transaction; return False when its request changed meanwhile (kept, but still open)."""
    now = clock.utcnow()
    content = grounded.markdown
    with db_.atomic():
        current = DocumentCatalog.get_or_none(DocumentCatalog.id == row.id, DocumentCatalog.is_deleted == False)
        if current is None:
            return False
        up_to_date = current.request_digest == digest
        DocumentFileItem.delete().where(DocumentFileItem.catalog == row.id).execute()
        item = DocumentFileItem.create(
            catalog=row.id,
            title=row.name,
            description=row.description,
            content=content,
            size=len(content.encode()),
            request_token=answer.prompt_tokens or 0,
            response_token=answer.completion_tokens or 0,
            metadata={
                'model': answer.model,
                'sources': len(prompt.sources),
                'outlined': len(prompt.outlined),
                'omitted': len(prompt.omitted),
                'cited': grounded.cited,
                'unknown_paths': grounded.unknown,
            },
        )
        paths = list(dict.fromkeys([*grounded.cited, *prompt.sources]))
        if paths:
            DocumentFileItemSource.insert_many(
                [
                    {
                        'id': database.record_id(item.id, path),
                        'file_item': item.id,
                        'address': path,
                        'name': path.rsplit('/', 1)[-1],
                        'created_at': now,
                    }
                    for path in paths
                ]
            ).execute()
        fields: dict[str, Any] = {'is_completed': True, 'written_digest': digest, 'updated_at': now}
        if up_to_date:
            fields.update(status=PageStatus.COMPLETED, error=None)
        DocumentCatalog.update(**fields).where(DocumentCatalog.id == row.id).execute()
        if row.url == 'overview' and row.document_id:
            DocumentOverview.delete().where(DocumentOverview.document == row.document_id).execute()
            DocumentOverview.create(document=row.document_id, title=row.name, content=content)
    return up_to_date


def _page_failed(catalog_id: str, warehouse_id: str, key: str, exc: BaseException, settings: Settings) -> None:
    """Record a failed try: the page is Failed when no try is left, else it waits for its retry."""
    reason = str(exc) or type(exc).__name__
    final = isinstance(exc, PermanentJobError) or queues.retries_left() <= 0
    with database.connection(settings):
        if final:
            _set_page(catalog_id, status=PageStatus.FAILED, error=reason)
        else:
            _set_page(
                catalog_id, status=PageStatus.PENDING, error=f'{reason} (will retry, {queues.retries_left()} left)'
            )
    if final:
        logger.error('warehouse %s: page %s failed: %s', warehouse_id, key, reason)
        _report(warehouse_id, settings)
    else:
        logger.warning('warehouse %s: page %s: %s; will retry', warehouse_id, key, reason)


def page_job_failed(job, connection, exc_type, exc_value, traceback) -> None:
    """Mark a page Failed when its job failed without doing so itself: its worker died, or it ran out of time."""
    if len(job.args) != 2 or (job.retries_left or 0) > 0:
        return  # a retry is coming, and it will set the outcome
    warehouse_id, key = job.args
    reason = f'{exc_type.__name__}: the worker writing the page stopped before it ended' if exc_type else 'failed'
    with database.connection():
        DocumentCatalog.update(status=PageStatus.FAILED, error=reason, updated_at=clock.utcnow()).where(
            DocumentCatalog.warehouse == warehouse_id,
            DocumentCatalog.url == key,
            DocumentCatalog.status.in_(PageStatus.OPEN),
        ).execute()


# ---- Finishing a warehouse ----


def finish_pages(warehouse_id: str) -> dict:
    """Set a warehouse's outcome from its pages once their jobs have ended: Completed, with any failed pages named."""
    # Safe twice: it only reads the pages and writes the same outcome again.
    settings = get_settings()
    with database.connection(settings) as db_:
        warehouse = Warehouse.get_or_none(Warehouse.id == warehouse_id, Warehouse.is_deleted == False)
        if warehouse is None:
            return {'warehouse_id': warehouse_id, 'status': 'missing', 'message': 'warehouse not found or deleted'}
        rows = list(
            DocumentCatalog.select(
                DocumentCatalog.url, DocumentCatalog.status, DocumentCatalog.error, DocumentCatalog.written_digest
            ).where(DocumentCatalog.warehouse == warehouse_id, DocumentCatalog.is_deleted == False)
        )
        # A page still open here lost its job (Redis restarted, the job was deleted): it is not written.
        unwritten = [row for row in rows if row.status in PageStatus.OPEN]
        if unwritten:
            DocumentCatalog.update(
                status=PageStatus.FAILED,
                error='its job was lost before it wrote the page',
                updated_at=clock.utcnow(),
            ).where(
                DocumentCatalog.warehouse == warehouse_id,
                DocumentCatalog.url.in_([row.url for row in unwritten]),
                DocumentCatalog.status.in_(PageStatus.OPEN),
            ).execute()
            for row in unwritten:
                row.status = PageStatus.FAILED
        counts = Counter(row.status for row in rows)
        failed = sorted(row.url for row in rows if row.status == PageStatus.FAILED)
        skipped = sorted(row.url for row in rows if row.status == PageStatus.SKIPPED)
        readable = sum(1 for row in rows if row.status == PageStatus.COMPLETED or row.written_digest)
        status, error = _outcome(warehouse, len(rows), readable, failed, skipped, settings)
        now = clock.utcnow()
        with db_.atomic():
            Warehouse.update(status=status, error=error, updated_at=now).where(Warehouse.id == warehouse_id).execute()
            Document.update(status=status, last_update=now, updated_at=now).where(
                Document.warehouse == warehouse_id
            ).execute()
    _report(warehouse_id, settings)
    _dispatch_quietly(settings)
    logger.log(
        logging.ERROR if status == WarehouseStatus.FAILED else logging.INFO,
        'warehouse %s: %s (%d pages written, %d failed, %d skipped)',
        warehouse_id,
        status,
        counts[PageStatus.COMPLETED],
        len(failed),
        len(skipped),
    )
    return {
        'warehouse_id': warehouse_id,
        'status': status,
        'pages': len(rows),
        'written': counts[PageStatus.COMPLETED],
        'failed': failed,
        'skipped': skipped,
        'message': error or f'{warehouse.organization_name}/{warehouse.name} completed',
    }


def _dispatch_quietly(settings: Settings) -> None:
    # The warehouse no longer counts against its owner's TASK_MAX_SIZE_PER_USER: the next Pending one starts now
    # rather than at the next periodic run, which still does it if this fails.
    from rqjobs import warehouse as warehouses  # imported here: the warehouse module imports this one

    try:
        warehouses.dispatch_pending(connections.get_redis(settings), settings)
    except Exception:
        logger.warning('dispatching pending warehouses failed; the periodic run will retry', exc_info=True)


def _outcome(
    warehouse: Warehouse, total: int, readable: int, failed: list[str], skipped: list[str], settings: Settings
) -> tuple[str, str | None]:
    if total and not readable:
        first = (
            DocumentCatalog.select(DocumentCatalog.error)
            .where(DocumentCatalog.warehouse == warehouse.id, DocumentCatalog.error.is_null(False))
            .scalar()
        )
        return WarehouseStatus.FAILED, f'no page could be written ({len(failed)} failed): {first or "see its pages"}'
    notes = []
    if failed:
        notes.append(
            f'{len(failed)} of {total} pages failed ({_listed(failed)}); '
            f'`rqjobs warehouse regenerate {warehouse.id} --failed` tries them again'
        )
    if skipped:
        notes.append(f'{len(skipped)} pages not written, the token budget is spent ({_listed(skipped)})')
    return WarehouseStatus.COMPLETED, '; '.join(notes) or None


def _listed(keys: list[str]) -> str:
    shown = ', '.join(keys[:MAX_LISTED])
    return shown + (f' and {len(keys) - MAX_LISTED} more' if len(keys) > MAX_LISTED else '')


# ---- Progress and status ----


def _progress(warehouse_id: str, settings: Settings) -> dict:
    with database.connection(settings):
        counts = Counter(
            row[0]
            for row in DocumentCatalog.select(DocumentCatalog.status)
            .where(DocumentCatalog.warehouse == warehouse_id, DocumentCatalog.is_deleted == False)
            .tuples()
        )
    total = sum(counts.values())
    done = total - counts[PageStatus.PENDING] - counts[PageStatus.WRITING]
    return {
        'step': 'pages',
        'percent': 100 * done // total if total else 100,
        'done': done,
        'total': total,
        'failed': counts[PageStatus.FAILED],
        'skipped': counts[PageStatus.SKIPPED],
        'at': clock.utcnow().isoformat(timespec='seconds') + 'Z',
    }


def _report(warehouse_id: str, settings: Settings) -> None:
    """Write `pages done/total` into the meta of the warehouse's finishing job (shown by the CLI and rq-dashboard)."""
    # Counted from the database each time, so concurrent page jobs each write a true figure; the last write wins.
    try:
        connection = connections.get_redis(settings)
        job = queues.JsonJob.fetch(finish_job_id(warehouse_id), connection=connection)
    except NoSuchJobError:
        return
    except Exception:
        logger.warning('warehouse %s: progress not recorded', warehouse_id, exc_info=True)
        return
    job.meta['progress'] = _progress(warehouse_id, settings)
    job.save_meta()


def page_states(warehouse_id: str) -> list[dict]:
    """Return every page of a warehouse with its state, tries, tokens and last failure, in catalog order."""
    with database.connection():
        rows = (
            DocumentCatalog.select()
            .where(DocumentCatalog.warehouse == warehouse_id, DocumentCatalog.is_deleted == False)
            .order_by(DocumentCatalog.sort_order, DocumentCatalog.url)
        )
        return [
            {
                'page': row.url,
                'title': row.name,
                'status': row.status,
                'tries': row.tries,
                'tokens_in': row.tokens_in,
                'tokens_out': row.tokens_out,
                'error': row.error,
            }
            for row in rows
        ]


def regenerate(warehouse_id: str, connection: redis.Redis, *, page: str | None = None, failed: bool = False) -> dict:
    """Write pages of a warehouse again with the model: one page, the failed ones, or all; return what was queued."""
    settings = get_settings()
    if not settings.llm_enabled:
        raise JobActionRefused(
            'Pages are written by a model only when LLM_BASE_URL and LLM_MODEL are set; '
            f'`rqjobs warehouse reprocess {warehouse_id}` writes the deterministic pages again.'
        )
    with database.connection(settings) as db_:
        warehouse = Warehouse.get_or_none(Warehouse.id == warehouse_id, Warehouse.is_deleted == False)
        if warehouse is None:
            raise WarehouseNotFound(f'Warehouse {warehouse_id} does not exist.')
        if warehouse.status not in (WarehouseStatus.COMPLETED, WarehouseStatus.FAILED):
            raise JobActionRefused(
                f'Warehouse {warehouse_id} is {warehouse.status}; pages are regenerated once it is Completed or Failed.'
            )
        query = DocumentCatalog.select().where(
            DocumentCatalog.warehouse == warehouse_id, DocumentCatalog.is_deleted == False
        )
        if page is not None:
            query = query.where(DocumentCatalog.url == page)
        if failed:
            query = query.where(DocumentCatalog.status.in_((PageStatus.FAILED, PageStatus.SKIPPED)))
        rows = list(query)
        if page is not None and not rows:
            known = [
                r[0]
                for r in DocumentCatalog.select(DocumentCatalog.url)
                .where(DocumentCatalog.warehouse == warehouse_id, DocumentCatalog.is_deleted == False)
                .tuples()
            ]
            raise JobActionRefused(
                f'Warehouse {warehouse_id} has no page {page!r}; its pages: {_listed(sorted(known))}.'
            )
        without = [row.url for row in rows if not row.request]
        if without:
            raise JobActionRefused(
                f'Page {without[0]} has no model request (it was written before a model was configured): '
                f'`rqjobs warehouse reprocess {warehouse_id}` plans every page for the model.'
            )
        if not rows:
            return {'queued': [], 'running': [], 'finish_job': None}
        with db_.atomic():
            DocumentCatalog.update(
                status=PageStatus.PENDING, written_digest=None, tries=0, error=None, updated_at=clock.utcnow()
            ).where(DocumentCatalog.id.in_([row.id for row in rows])).execute()
            if warehouse.status == WarehouseStatus.FAILED:
                Warehouse.update(status=WarehouseStatus.PROCESSING, error=None, updated_at=clock.utcnow()).where(
                    Warehouse.id == warehouse_id
                ).execute()
    return enqueue_pages(warehouse_id, connection, settings)
