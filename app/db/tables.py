"""The tables: task runs and the states each of them went through."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import JSON, Float, ForeignKey, Index, MetaData, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from app.db.types import UTCDateTime

# Deterministic constraint names, so that migrations can refer to them on both databases.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s__%(column_0_N_name)s",
    "uq": "uq_%(table_name)s__%(column_0_N_name)s",
    "ck": "ck_%(table_name)s__%(constraint_name)s",
    "fk": "fk_%(table_name)s__%(column_0_name)s__%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with the project's naming convention and column types."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {  # noqa: RUF012 - SQLAlchemy reads it from the class
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[str]: JSON(),
    }


class TaskRunRow(Base):
    """A task run, with its current state's fields copied onto it for cheap reads and filters."""

    __tablename__ = "task_run"

    id: Mapped[UUID] = mapped_column(primary_key=True)
    created: Mapped[datetime]
    updated: Mapped[datetime]
    name: Mapped[str] = mapped_column(Text)
    flow_run_id: Mapped[UUID | None]
    task_key: Mapped[str] = mapped_column(Text)
    dynamic_key: Mapped[str] = mapped_column(Text)
    cache_key: Mapped[str | None] = mapped_column(Text)
    cache_expiration: Mapped[datetime | None]
    task_version: Mapped[str | None] = mapped_column(Text)
    empirical_policy: Mapped[dict[str, Any]]
    tags: Mapped[list[str]]
    labels: Mapped[dict[str, Any]]
    task_inputs: Mapped[dict[str, Any]]
    # The current state. The foreign key is checked at commit, so that a run and its first
    # state can be inserted in either order within one transaction.
    state_id: Mapped[UUID | None] = mapped_column(
        ForeignKey(
            "task_run_state.id",
            ondelete="SET NULL",
            use_alter=True,
            deferrable=True,
            initially="DEFERRED",
        )
    )
    state_type: Mapped[str | None] = mapped_column(String(16))
    state_name: Mapped[str | None] = mapped_column(Text)
    state_timestamp: Mapped[datetime | None]
    run_count: Mapped[int]
    flow_run_run_count: Mapped[int]
    expected_start_time: Mapped[datetime | None]
    next_scheduled_start_time: Mapped[datetime | None]
    start_time: Mapped[datetime | None]
    end_time: Mapped[datetime | None]
    total_run_time: Mapped[float] = mapped_column(Float)

    state: Mapped[TaskRunStateRow | None] = relationship(
        foreign_keys=[state_id], lazy="joined", viewonly=True
    )

    __table_args__ = (
        # The idempotency key of create. NULLs are distinct in a unique index, so runs without
        # a flow run get a partial index of their own: the database enforces both.
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
    )


class TaskRunStateRow(Base):
    """One state a task run entered; the run's history is its states by timestamp."""

    __tablename__ = "task_run_state"

    id: Mapped[UUID] = mapped_column(primary_key=True)
    created: Mapped[datetime]
    task_run_id: Mapped[UUID] = mapped_column(ForeignKey("task_run.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(Text)
    timestamp: Mapped[datetime]
    message: Mapped[str | None] = mapped_column(Text)
    data: Mapped[Any | None] = mapped_column(JSON(none_as_null=True))
    state_details: Mapped[dict[str, Any]]

    __table_args__ = (Index(None, "task_run_id", "timestamp"),)
