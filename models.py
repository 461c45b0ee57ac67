"""The database schema: every table of the platform.

The tables follow the original platform field for field, in snake_case. Domain entities
keep its 36-character text UUID keys; log and statistics rows use integer keys. Nothing here connects or touches
the disk at import time: `rqjobs.database` binds the `db` proxy at runtime.

Rows keyed by a text UUID or a fixed integer are inserted with `Model.create()` or `save(force_insert=True)`:
peewee treats a plain `save()` of a row whose key is already set as an UPDATE.
"""

from __future__ import annotations

import json
import uuid

from peewee import (
    BigAutoField,
    BooleanField,
    CharField,
    CompositeKey,
    DatabaseProxy,
    DateField,
    DateTimeField,
    ForeignKeyField,
    IntegerField,
    Model,
    PostgresqlDatabase,
    TextField,
)

from rqjobs import clock

db = DatabaseProxy()


def utcnow():
    """Return the current naive UTC time from `rqjobs.clock`, looked up on each call so tests can freeze it."""
    return clock.utcnow()


def new_id():
    """Return a random UUID as the 36-character text the original platform used for keys."""
    return str(uuid.uuid4())


def _choices(values):
    return [(value, value) for value in values]


# ---- Fields ----


class UUIDKeyField(CharField):
    """Text primary key filled with a random UUID."""

    def __init__(self, **kwargs):
        kwargs.setdefault('max_length', 36)
        kwargs.setdefault('primary_key', True)
        kwargs.setdefault('default', new_id)
        super().__init__(**kwargs)


class LongTextField(TextField):
    """Text without a practical size limit on every database."""

    # MySQL's TEXT stops at 64 KB, so the column is LONGTEXT there; rqjobs.database maps LONGTEXT to TEXT on
    # SQLite and PostgreSQL, whose TEXT is already unbounded.
    field_type = 'LONGTEXT'


class JSONField(LongTextField):
    """JSON document stored as text, unicode kept as written."""

    def db_value(self, value):
        if value is not None:
            return json.dumps(value, ensure_ascii=False)

    def python_value(self, value):
        if value is not None:
            return json.loads(value)


# ---- Base models ----


class BaseModel(Model):
    """Base of every table: bound to the `db` proxy, tables named in snake_case."""

    class Meta:
        database = db
        legacy_table_names = False


class TimestampedModel(BaseModel):
    """Row that changes after insert: `save()` keeps `updated_at` current."""

    created_at = DateTimeField(default=utcnow)
    updated_at = DateTimeField(default=utcnow)

    def save(self, force_insert=False, only=None):
        self.updated_at = utcnow()
        if only is not None:
            # A partial save is still a change to the row.
            only = [*only, type(self).updated_at]
        return super().save(force_insert=force_insert, only=only)


# ---- Users and roles ----


class User(TimestampedModel):
    """A person who signs in and owns warehouses."""

    id = UUIDKeyField()
    name = CharField(max_length=100, unique=True)
    email = CharField(max_length=191, unique=True)
    # A salted hash made by the caller; the plain password is never stored.
    password = CharField(max_length=255)
    avatar = TextField(default='')
    # Indexed: daily statistics count new users by creation time.
    created_at = DateTimeField(default=utcnow, index=True)
    last_login_at = DateTimeField(null=True)
    last_login_ip = CharField(max_length=45, null=True)
    is_deleted = BooleanField(default=False, index=True)
    deleted_at = DateTimeField(null=True)

    class Meta:
        # "user" is reserved in PostgreSQL, where an unquoted `SELECT * FROM user` names the current user.
        table_name = 'users'


class Role(TimestampedModel):
    """A named set of permissions."""

    id = UUIDKeyField()
    name = CharField(max_length=100, unique=True)
    description = TextField(default='')
    is_active = BooleanField(default=True)
    is_system_role = BooleanField(default=False)


class UserInRole(BaseModel):
    """Membership of a user in a role."""

    user = ForeignKeyField(User, backref='memberships', on_delete='CASCADE')
    role = ForeignKeyField(Role, backref='memberships', on_delete='CASCADE')

    class Meta:
        primary_key = CompositeKey('user', 'role')


# ---- Warehouses ----


class WarehouseStatus:
    """Where a warehouse is in its processing."""

    PENDING = 'Pending'
    PROCESSING = 'Processing'
    COMPLETED = 'Completed'
    CANCELED = 'Canceled'
    UNAUTHORIZED = 'Unauthorized'
    FAILED = 'Failed'
    ALL = (PENDING, PROCESSING, COMPLETED, CANCELED, UNAUTHORIZED, FAILED)


class WarehouseType:
    """Where a warehouse's source comes from."""

    GIT = 'git'
    FILE = 'file'
    ALL = (GIT, FILE)


class WarehouseClassify:
    """The kind of project a warehouse holds."""

    APPLICATIONS = 'Applications'
    FRAMEWORKS = 'Frameworks'
    LIBRARIES = 'Libraries'
    DEVELOPMENT_TOOLS = 'DevelopmentTools'
    CLI_TOOLS = 'CLITools'
    DEVOPS_CONFIGURATION = 'DevOpsConfiguration'
    DOCUMENTATION = 'Documentation'
    ALL = (
        APPLICATIONS,
        FRAMEWORKS,
        LIBRARIES,
        DEVELOPMENT_TOOLS,
        CLI_TOOLS,
        DEVOPS_CONFIGURATION,
        DOCUMENTATION,
    )


class Warehouse(TimestampedModel):
    """A git repository (or uploaded archive) to document."""

    id = UUIDKeyField()
    organization_name = CharField(max_length=191)
    name = CharField(max_length=191)
    description = TextField(default='')
    address = CharField(max_length=1024)
    git_user_name = CharField(max_length=191, null=True)
    # An encrypted access token, never the plain secret.
    git_password = TextField(null=True)
    email = CharField(max_length=191, null=True)
    type = CharField(max_length=16, choices=_choices(WarehouseType.ALL), default=WarehouseType.GIT)
    branch = CharField(max_length=191, default='')
    # Lookups by status alone use the (status, created_at) index.
    status = CharField(max_length=32, choices=_choices(WarehouseStatus.ALL), default=WarehouseStatus.PENDING)
    error = TextField(null=True)
    prompt = TextField(null=True)
    # The last commit processed; 64 characters leaves room for SHA-256 repositories.
    version = CharField(max_length=64, null=True)
    readme = LongTextField(default='')
    optimized_directory_structure = LongTextField(default='')
    classify = CharField(max_length=32, choices=_choices(WarehouseClassify.ALL), null=True)
    creator = ForeignKeyField(User, backref='warehouses', null=True, on_delete='SET NULL')
    is_recommended = BooleanField(default=False)
    stars = IntegerField(default=0)
    forks = IntegerField(default=0)
    # Tokens its pages may spend (in and out, every try); None: LLM_TOKEN_BUDGET.
    token_budget = IntegerField(null=True)
    is_deleted = BooleanField(default=False, index=True)
    deleted_at = DateTimeField(null=True)
    created_at = DateTimeField(default=utcnow, index=True)

    class Meta:
        indexes = (
            # Not unique: a failed submission is soft-deleted and submitted again under the same name.
            (('organization_name', 'name', 'branch'), False),
            (('status', 'created_at'), False),
        )


# ---- Documents ----


class Document(TimestampedModel):
    """The generated documentation of one warehouse."""

    id = UUIDKeyField()
    warehouse = ForeignKeyField(Warehouse, backref='documents', on_delete='CASCADE')
    description = TextField(default='')
    # Where the repository is cloned on the worker's disk.
    git_path = TextField(default='')
    # Every analysed path of the checkout the pages were planned from: a path a model cites is checked against it.
    paths = JSONField(null=True)
    status = CharField(max_length=32, choices=_choices(WarehouseStatus.ALL), default=WarehouseStatus.PENDING)
    like_count = IntegerField(default=0)
    comment_count = IntegerField(default=0)
    last_update = DateTimeField(default=utcnow)
    is_deleted = BooleanField(default=False, index=True)
    deleted_at = DateTimeField(null=True)


class PageStatus:
    """Where a page is in its writing: deterministic pages are Completed when stored, a model's go through the rest."""

    PENDING = 'Pending'
    WRITING = 'Writing'
    COMPLETED = 'Completed'
    FAILED = 'Failed'
    SKIPPED = 'Skipped'
    ALL = (PENDING, WRITING, COMPLETED, FAILED, SKIPPED)
    # Still to be written: a page job is due for these.
    OPEN = (PENDING, WRITING)


class DocumentCatalog(TimestampedModel):
    """One entry of a document's table of contents; entries nest through `parent`."""

    id = UUIDKeyField()
    # The (warehouse, parent) index serves lookups by warehouse alone.
    warehouse = ForeignKeyField(Warehouse, backref='catalogs', on_delete='CASCADE', index=False)
    document = ForeignKeyField(Document, backref='catalogs', null=True, on_delete='CASCADE')
    parent = ForeignKeyField('self', backref='children', null=True, on_delete='CASCADE')
    # Generated titles and slugs have no length the schema could promise, so they are TEXT.
    name = TextField()
    url = TextField(default='')
    description = TextField(default='')
    prompt = TextField(default='')
    # Not `order`: that is a reserved word in all three databases.
    sort_order = IntegerField(default=0)
    is_completed = BooleanField(default=False)
    # The repository paths the page was written from, as a JSON list.
    dependent_file = JSONField(null=True)
    is_deleted = BooleanField(default=False, index=True)
    deleted_at = DateTimeField(null=True)
    # A page written by a model: its state, the request it is written from (messages and the sources they hold,
    # never a secret), that request's digest and the digest the stored content was written from (the page is up to
    # date when they are equal), tries, the last failure, and the tokens every try spent.
    status = CharField(max_length=16, choices=_choices(PageStatus.ALL), default=PageStatus.COMPLETED)
    request = JSONField(null=True)
    request_digest = CharField(max_length=64, null=True)
    written_digest = CharField(max_length=64, null=True)
    tries = IntegerField(default=0)
    error = TextField(null=True)
    tokens_in = IntegerField(default=0)
    tokens_out = IntegerField(default=0)

    class Meta:
        indexes = ((('warehouse', 'parent'), False),)


class DocumentFileItem(TimestampedModel):
    """The generated page of one catalog entry."""

    id = UUIDKeyField()
    catalog = ForeignKeyField(DocumentCatalog, backref='file_items', on_delete='CASCADE')
    title = TextField(default='')
    description = TextField(default='')
    content = LongTextField(default='')
    comment_count = IntegerField(default=0)
    size = IntegerField(default=0)
    request_token = IntegerField(default=0)
    response_token = IntegerField(default=0)
    metadata = JSONField(default=dict)
    # Indexed: daily statistics count new pages by creation time.
    created_at = DateTimeField(default=utcnow, index=True)


class DocumentFileItemSource(BaseModel):
    """A repository file that a page was written from."""

    id = UUIDKeyField()
    file_item = ForeignKeyField(DocumentFileItem, backref='sources', on_delete='CASCADE')
    address = TextField()
    name = TextField(default='')
    created_at = DateTimeField(default=utcnow)


class DocumentOverview(TimestampedModel):
    """The overview page of a document; at most one per document."""

    id = UUIDKeyField()
    document = ForeignKeyField(Document, backref='overviews', unique=True, on_delete='CASCADE')
    title = TextField(default='')
    content = LongTextField(default='')


class DocumentCommitRecord(BaseModel):
    """A commit of the warehouse, summarised for its change log."""

    id = UUIDKeyField()
    # The unique (warehouse, commit_id) index serves lookups by warehouse alone.
    warehouse = ForeignKeyField(Warehouse, backref='commit_records', on_delete='CASCADE', index=False)
    commit_id = CharField(max_length=64)
    title = TextField(default='')
    description = TextField(default='')
    author = TextField(default='')
    last_update = DateTimeField()
    created_at = DateTimeField(default=utcnow)

    class Meta:
        # A replayed job inserts the same commits again; the database refuses the duplicates.
        indexes = ((('warehouse', 'commit_id'), True),)


# ---- Mind maps ----


class MiniMap(TimestampedModel):
    """The mind map of a warehouse, a JSON tree; at most one per warehouse."""

    id = UUIDKeyField()
    warehouse = ForeignKeyField(Warehouse, backref='minimaps', unique=True, on_delete='CASCADE')
    value = JSONField(default=dict)
    created_at = DateTimeField(default=utcnow, index=True)


# ---- Access log and statistics ----


class AccessRecord(BaseModel):
    """One request for a resource, as logged by the web side."""

    id = BigAutoField()
    # Set by the producer, so a replayed event is refused instead of counted twice.
    event_id = CharField(max_length=64, unique=True)
    # Lookups by resource_type alone use the (resource_type, resource_id, access_time) index.
    resource_type = CharField(max_length=32)
    resource_id = CharField(max_length=191, index=True)
    # Not a foreign key: the log outlives deleted users.
    user_id = CharField(max_length=36, null=True)
    ip_address = CharField(max_length=45, default='')
    user_agent = TextField(default='')
    path = TextField(default='')
    method = CharField(max_length=16, default='')
    status_code = IntegerField(default=0)
    response_time = IntegerField(default=0)
    access_time = DateTimeField(default=utcnow, index=True)
    created_at = DateTimeField(default=utcnow, index=True)

    class Meta:
        indexes = ((('resource_type', 'resource_id', 'access_time'), False),)


class DailyStatistics(TimestampedModel):
    """The platform's counters for one day."""

    date = DateField(unique=True)
    new_users = IntegerField(default=0)
    new_repositories = IntegerField(default=0)
    new_documents = IntegerField(default=0)
    page_views = IntegerField(default=0)
    unique_visitors = IntegerField(default=0)
    active_users = IntegerField(default=0)


class SnapshotKind:
    """What a statistics snapshot describes."""

    SYSTEM = 'system'
    WAREHOUSE = 'warehouse'
    ACCESS = 'access'
    ALL = (SYSTEM, WAREHOUSE, ACCESS)


class StatisticsSnapshot(BaseModel):
    """A point-in-time set of figures for the system, one warehouse or the access log."""

    # `kind:subject:date` (subject `all` for the system and the access log), so a second run on the same day
    # overwrites that day's snapshot instead of adding one.
    id = CharField(max_length=191, primary_key=True)
    kind = CharField(max_length=16, choices=_choices(SnapshotKind.ALL), index=True)
    # The warehouse id for per-warehouse snapshots.
    subject_id = CharField(max_length=36, null=True)
    snapshot_date = DateField(index=True)
    data = JSONField(default=dict)
    # When the figures were taken: moves forward when the day's snapshot is overwritten.
    created_at = DateTimeField(default=utcnow, index=True)


# ---- Schema versions ----


class SchemaVersion(BaseModel):
    """A migration applied to this database."""

    version = IntegerField(primary_key=True)
    name = CharField(max_length=191)
    applied_at = DateTimeField(default=utcnow)
    checksum = CharField(max_length=64, null=True)


MODELS = (
    User,
    Role,
    UserInRole,
    Warehouse,
    Document,
    DocumentCatalog,
    DocumentFileItem,
    DocumentFileItemSource,
    DocumentOverview,
    DocumentCommitRecord,
    MiniMap,
    AccessRecord,
    DailyStatistics,
    StatisticsSnapshot,
    SchemaVersion,
)


# ---- Creating the schema ----


def create_tables() -> None:
    """Create every table and index that does not exist yet."""
    db.create_tables(MODELS, safe=True)


def drop_tables() -> None:
    """Drop every table, dependents first."""
    # Only PostgreSQL accepts CASCADE on DROP TABLE and acts on it; SQLite rejects the keyword.
    db.drop_tables(MODELS, safe=True, cascade=isinstance(db.obj, PostgresqlDatabase))
