"""render_key: Bacalhau's placeholders and suffix rules (SPEC §4)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from prefect_bacalhau_publish.naming import render_key
from prefect_bacalhau_publish.specs import ExecutionContext

CTX = ExecutionContext(
    job_id="abc123",
    execution_id="e-1",
    node_id="n-7",
    published_at=datetime(2023, 9, 26, 14, 5, 30, tzinfo=UTC),
)


@pytest.mark.parametrize(
    ("pattern", "archive", "expected"),
    [
        ("results/{jobID}", True, "results/abc123.tar.gz"),
        ("results/{jobID}/{date}/{time}", True, "results/abc123/20230926/140530.tar.gz"),
        ("{nodeID}/{executionID}", True, "n-7/e-1.tar.gz"),
        ("out.tar.gz", True, "out.tar.gz"),
        ("out.tgz", True, "out.tgz.tar.gz"),
        ("results/{jobID}", False, "results/abc123/"),
        ("results/{jobID}/", False, "results/abc123/"),
        ("a.tar.gz", False, "a.tar.gz/"),
        ("{jobid}/{JobID}/{unknown}/{}", True, "{jobid}/{JobID}/{unknown}/{}.tar.gz"),
        ("{jobID}{jobID}", False, "abc123abc123/"),
        # suffix first, then substitution: a placeholder value cannot add or suppress the suffix
        ("x/{jobID}", True, "x/abc123.tar.gz"),
    ],
)
def test_render_key(pattern: str, archive: bool, expected: str) -> None:
    assert render_key(pattern, context=CTX, archive=archive) == expected


def test_suffix_rule_applies_before_substitution() -> None:
    ctx = CTX.model_copy(update={"job_id": "job.tar.gz"})
    assert render_key("{jobID}", context=ctx, archive=True) == "job.tar.gz.tar.gz"
    ctx = CTX.model_copy(update={"job_id": "dir/"})
    assert render_key("{jobID}", context=ctx, archive=False) == "dir//"


def test_date_and_time_are_one_utc_instant() -> None:
    local = datetime(2023, 9, 27, 0, 0, 5, tzinfo=timezone(timedelta(hours=2)))  # 2023-09-26 22:00:05 UTC
    ctx = ExecutionContext(job_id="j", execution_id="e", node_id="n", published_at=local)
    assert render_key("{date}T{time}", context=ctx, archive=False) == "20230926T220005/"
    naive = ExecutionContext(
        job_id="j", execution_id="e", node_id="n", published_at=datetime(2024, 1, 2, 3, 4, 5)
    )
    assert render_key("{date}-{time}", context=naive, archive=True) == "20240102-030405.tar.gz"


def test_context_defaults() -> None:
    first, second = ExecutionContext.new(job_id="j-x"), ExecutionContext.new(job_id="j-x")
    assert first.execution_id.startswith("e-") and first.execution_id != second.execution_id
    assert first.node_id.startswith("n-") and first.published_at.tzinfo is UTC
