"""The execution context of a publish: job, execution and node ids and the publish time, which fill the
S3 key placeholders (SPEC §1, §4). Re-exported by `specs`."""

from __future__ import annotations

import socket
import uuid
from datetime import UTC, datetime
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, field_validator

__all__ = ["ExecutionContext"]


class ExecutionContext(BaseModel):
    """Who published and when: fills the key placeholders (SPEC §1, §4)."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    execution_id: str
    node_id: str
    published_at: datetime

    @field_validator("published_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    @classmethod
    def new(
        cls,
        *,
        job_id: str | None = None,
        execution_id: str | None = None,
        node_id: str | None = None,
        published_at: datetime | None = None,
    ) -> Self:
        """A context with SPEC §1 defaults for whatever is not given, outside any Prefect run."""
        return cls(
            job_id=job_id or f"j-{uuid.uuid4()}",
            execution_id=execution_id or f"e-{uuid.uuid4()}",
            node_id=node_id or f"n-{socket.gethostname()}",
            published_at=published_at or datetime.now(UTC),
        )

    @classmethod
    def current(cls, **overrides: Any) -> Self:
        """A context for the running Prefect task: job = `j-<task run id>`, a fresh execution per attempt."""
        job_id = overrides.pop("job_id", None)
        if job_id is None:
            from prefect.context import TaskRunContext

            ctx = TaskRunContext.get()
            if ctx is not None:
                job_id = f"j-{ctx.task_run.id}"
        return cls.new(job_id=job_id, **overrides)
