"""The tables: task runs and the states each of them went through."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    Uuid,
    text,
)

from app.db.types import JSONKeepingNumbers, UTCDateTime

# Deterministic constraint names, so that migrations can refer to them on both databases.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s__%(column_0_N_name)s",
    "uq": "uq_%(table_name)s__%(column_0_N_name)s",
    "ck": "ck_%(table_name)s__%(constraint_name)s",
    "fk": "fk_%(table_name)s__%(column_0_name)s__%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

# The most an Integer column holds on both databases: PostgreSQL's INTEGER is 32 bits, while
# SQLite's would take any 64-bit value.
INTEGER_MAX = 2**31 - 1

# The fields a run's history counts and sums besides its expected start time (see
# app/db/task_run_queries.py, `task_run_history`).
HISTORY_COLUMNS = (
    "state_type",
    "state_name",
    "total_run_time",
    "state_timestamp",
    "start_time",
)

# SQLite only: a name search (`like_`) in the default order, newest id first, reads the
# names from this index until the page is full instead of looking each run up in the table.
# PostgreSQL answers it from a trigram index; there every change of state would add an
# entry to this one too.
_NAME_SEARCH_ON_SQLITE = Index(None, "id", "name").ddl_if(dialect="sqlite")

# A task run, with its current state's fields copied onto it for cheap reads and filters.
task_run = Table(
    "task_run",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("created", UTCDateTime, nullable=False),
    Column("updated", UTCDateTime, nullable=False),
    # Names sort by code point on both databases: SQLite compares bytes of UTF-8, and
    # PostgreSQL does the same under the "C" collation (which also makes lower() fold ASCII
    # letters only, as SQLite's does).
    Column("name", Text().with_variant(Text(collation="C"), "postgresql"), nullable=False),
    Column("flow_run_id", Uuid, nullable=True),
    Column("task_key", Text, nullable=False),
    Column("dynamic_key", Text, nullable=False),
    Column("cache_key", Text, nullable=True),
    Column("cache_expiration", UTCDateTime, nullable=True),
    Column("task_version", Text, nullable=True),
    Column("empirical_policy", JSON, nullable=False),
    Column("tags", JSON, nullable=False),
    Column("labels", JSON, nullable=False),
    Column("task_inputs", JSON, nullable=False),
    # The current state. The foreign key is checked at commit, so that a run and its first
    # state can be inserted in either order within one transaction.
    Column(
        "state_id",
        Uuid,
        ForeignKey(
            "task_run_state.id",
            ondelete="SET NULL",
            use_alter=True,
            deferrable=True,
            initially="DEFERRED",
        ),
        nullable=True,
    ),
    Column("state_type", String(16), nullable=True),
    Column("state_name", Text, nullable=True),
    Column("state_timestamp", UTCDateTime, nullable=True),
    Column("run_count", Integer, nullable=False),
    Column("flow_run_run_count", Integer, nullable=False),
    Column("expected_start_time", UTCDateTime, nullable=True),
    Column("next_scheduled_start_time", UTCDateTime, nullable=True),
    Column("start_time", UTCDateTime, nullable=True),
    Column("end_time", UTCDateTime, nullable=True),
    Column("total_run_time", Float, nullable=False),
    # The idempotency key of create. NULLs are distinct in a unique index, so runs without a
    # flow run get a partial index of their own: the database enforces both.
    Index(
        "uq_task_run__flow_run_id_task_key_dynamic_key",
        "flow_run_id",
        "task_key",
        "dynamic_key",
        unique=True,
    ),
    Index(
        "uq_task_run__task_key_dynamic_key__without_flow_run",
        "task_key",
        "dynamic_key",
        unique=True,
        sqlite_where=text("flow_run_id IS NULL"),
        postgresql_where=text("flow_run_id IS NULL"),
    ),
    # Without it SQLite scans every run whenever a state row is inserted, to settle the
    # deferred foreign key above: creates slowed down with the size of the table.
    Index(None, "state_id"),
    # The queries (app/db/task_run_queries.py): one index per criterion and per sort, each
    # ending with id, which breaks every tie. flow_run_id is served by the idempotency key.
    Index(None, "name", "id"),
    Index(None, "state_type", "expected_start_time", "id"),
    Index(None, "state_name", "id"),
    # History reads the fields it sums from this index alone on PostgreSQL (an index-only
    # scan): without them, a week of a large table was read from the table itself.
    Index(None, "expected_start_time", "id", postgresql_include=HISTORY_COLUMNS),
    Index(None, "next_scheduled_start_time", "id"),
    _NAME_SEARCH_ON_SQLITE,
    Index(None, "start_time", "id"),
    Index(None, "end_time", "id"),
)

# Indexes PostgreSQL alone has, created by the migrations and left out of the comparison
# with these tables (SQLite has no such indexes, and Alembic cannot compare them).
# PostgreSQL puts NULLs first when it reads an ascending index backwards, so the descending
# sorts, which put runs without a value last, need indexes in their own order; SQLite reads
# the ascending ones backwards, NULL being its smallest value. Names are searched by
# substring (`like_`) through trigrams of the folded name the search compares.
POSTGRESQL_ONLY_INDEXES = {
    "ix_task_run__state_type_expected_start_time_desc_id_desc": (
        "(state_type, expected_start_time DESC NULLS LAST, id DESC)"
    ),
    "ix_task_run__expected_start_time_desc_id_desc": (
        "(expected_start_time DESC NULLS LAST, id DESC)"
    ),
    "ix_task_run__end_time_desc_id_desc": "(end_time DESC NULLS LAST, id DESC)",
    "ix_task_run__lower_name_trgm": "USING gin (lower(name) gin_trgm_ops)",
}

# The tags of each run, one row per distinct tag, so that "has all of these tags" is answered
# from an index instead of by reading every run's list. Written with the run, gone with it.
task_run_tag = Table(
    "task_run_tag",
    metadata,
    Column(
        "task_run_id",
        Uuid,
        ForeignKey("task_run.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("tag", Text, primary_key=True),
    Index(None, "tag", "task_run_id"),
)

# One state a task run entered; the run's history is its states by timestamp.
task_run_state = Table(
    "task_run_state",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("created", UTCDateTime, nullable=False),
    Column("task_run_id", Uuid, ForeignKey("task_run.id", ondelete="CASCADE"), nullable=False),
    Column("type", String(16), nullable=False),
    Column("name", Text, nullable=False),
    Column("timestamp", UTCDateTime, nullable=False),
    Column("message", Text, nullable=True),
    # Any JSON value, a bare number too: JSONKeepingNumbers keeps its digits on SQLite.
    Column("data", JSONKeepingNumbers(), nullable=True),
    Column("state_details", JSON, nullable=False),
    Index(None, "task_run_id", "timestamp"),
)

# A cache key is found through an index of the key. On PostgreSQL the index holds a hash of
# it: a B-tree entry cannot exceed about 2700 bytes, less than a key of 2000 characters may
# take in UTF-8, and such a key would fail every COMPLETED state that carries it. SQLite has
# no such bound, and keeps the keys in order with their entries' times.
_CACHE_KEY_ON_SQLITE = Index(None, "cache_key", "created").ddl_if(dialect="sqlite")
_CACHE_KEY_HASH_ON_POSTGRESQL = Index(
    "ix_task_run_state_cache__cache_key_hash", "cache_key", postgresql_using="hash"
).ddl_if(dialect="postgresql")

# COMPLETED states cached under their `state_details.cache_key`; a RUNNING proposal with the
# same key is answered with the newest entry that has not expired. An entry goes with its
# state, and so with the state's run.
task_run_state_cache = Table(
    "task_run_state_cache",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("created", UTCDateTime, nullable=False),
    Column("cache_key", Text, nullable=False),
    Column("cache_expiration", UTCDateTime, nullable=True),
    Column(
        "task_run_state_id",
        Uuid,
        ForeignKey("task_run_state.id", ondelete="CASCADE"),
        nullable=False,
    ),
    _CACHE_KEY_ON_SQLITE,
    _CACHE_KEY_HASH_ON_POSTGRESQL,
    Index(None, "task_run_state_id"),
)

# Indexes the tables declare for one database alone.
SQLITE_ONLY_INDEXES = frozenset(
    str(index.name) for index in (_NAME_SEARCH_ON_SQLITE, _CACHE_KEY_ON_SQLITE)
)
DECLARED_POSTGRESQL_ONLY_INDEXES = frozenset({str(_CACHE_KEY_HASH_ON_POSTGRESQL.name)})

# Runs waiting to be delivered to a task worker subscribed to their task key: the queue of
# background tasks. A worker's claim on a run lasts until it acknowledges the delivery, its
# connection ends, or the claim expires (its service process died).
task_run_delivery = Table(
    "task_run_delivery",
    metadata,
    Column(
        "task_run_id",
        Uuid,
        ForeignKey("task_run.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("task_key", Text, nullable=False),
    # Runs scheduled again after a failure, or whose delivery failed, go first.
    Column("retry", Boolean, nullable=False),
    Column("enqueued", UTCDateTime, nullable=False),
    Column("claim_id", Uuid, nullable=True),
    Column("claimed_until", UTCDateTime, nullable=True),
)
# A key's runs in the order they are delivered, the first of them read without a sort.
Index(
    None,
    task_run_delivery.c.task_key,
    task_run_delivery.c.retry.desc(),
    task_run_delivery.c.enqueued,
    task_run_delivery.c.task_run_id,
)

# Events sent to /api/events/in, each stored once (its id is the client's).
event = Table(
    "event",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("occurred", UTCDateTime, nullable=False),
    Column("event", Text, nullable=False),
    Column("resource_id", Text, nullable=False),
    Column("resource", JSON, nullable=False),
    Column("related", JSON, nullable=False),
    Column("payload", JSON, nullable=False),
    Column("follows", Uuid, nullable=True),
    Column("received", UTCDateTime, nullable=False),
    Index(None, "occurred"),
    Index(None, "received"),
    Index(None, "resource_id", "occurred"),
)
