"""Event-driven chaining across deployments: job B runs whenever job A's deployment publishes.

`produce` (deployment `bacalhau-produce/handoff`) runs job A and publishes it to S3 under `handoff/`. Every
publish emits the Prefect event `bacalhau.result.published`, whose payload holds the published result spec;
the trigger of deployment `bacalhau-consume/on-published` (flows/prefect.yaml) matches it and starts `consume`
with that spec as its `result` parameter, on whichever worker picks it up. `consume` hands A's result to job B
as an input source and publishes B under `consumed/` (outside the trigger's `handoff/`, so B's own event
starts nothing). A cron cannot do this: B runs once per result of A, as soon as it exists.

Run `consume` by hand on any published result: `python flows/consume.py RESULT.json` (needs an S3Storage
block saved as `bacalhau-s3`, e.g. by `python blocks/setup.py`).
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from prefect_bacalhau_publish import IPFSNode, JobResult, PublishedResult, PublisherSpec, S3Storage, run_job

JOB_B = (
    "cd inputs/a && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum > ../../outputs/a.sha256"
    " && cd ../.. && cp inputs/a/stdout outputs/a-stdout.txt"
    ' && echo "job B read $(wc -l < outputs/a.sha256) file(s) of job A, whose stdout was: $(cat outputs/a-stdout.txt)"'
)
"""Job B: the SHA-256 of every file of A's result (at inputs/a) and A's stdout, into its own outputs."""


def job_a_command(message: str) -> str:
    """Job A: writes `message` and the numbers 1..1000 to its outputs, and says what it wrote."""
    quoted = shlex.quote(message)
    return (
        f"printf '%s\\n' {quoted} > outputs/message.txt && seq 1 1000 > outputs/numbers.txt"
        f" && echo 'job A wrote:' {quoted}"
    )


@flow(name="bacalhau-produce", log_prints=True)
def produce(
    bucket: str = "bacalhau-results",
    key: str = "handoff/{jobID}/{executionID}",
    s3_block: str = "bacalhau-s3",
    message: str = "hello from job A",
) -> dict[str, Any]:
    """Run job A and publish it to S3; the publish event starts `consume` through its deployment's trigger."""
    s3 = S3Storage.load(s3_block)
    publisher = PublisherSpec.model_validate({"Type": "s3", "Params": {"Bucket": bucket, "Key": key}})
    a: JobResult = run_job(
        job_a_command(message), name="job-a", publisher=publisher, s3=s3, fail_on_nonzero=True
    )
    assert a.published is not None
    get_run_logger().info("job A published: %s", a.published.to_bacalhau())
    return a.published.to_bacalhau()


@flow(name="bacalhau-consume", log_prints=True)
def consume(
    result: dict[str, Any],
    bucket: str | None = None,
    key: str = "consumed/{jobID}/{executionID}",
    s3_block: str = "bacalhau-s3",
    ipfs_block: str | None = None,
) -> dict[str, Any]:
    """Run job B on a published result (Bacalhau's JSON, e.g. from a `bacalhau.result.published` event's
    payload) and publish B to S3 (`bucket`: the result's own bucket for an S3 result, else required).
    Returns both specs."""
    logger = get_run_logger()
    published = PublishedResult.model_validate(result)
    logger.info("consuming %s result: %s", published.type, published.to_bacalhau())
    s3 = S3Storage.load(s3_block)
    ipfs = IPFSNode.load(ipfs_block) if ipfs_block else None
    target_bucket = bucket or getattr(published.params, "bucket", None)
    if not target_bucket:
        raise ValueError(f"consume needs a bucket to publish job B to (the {published.type} result has none)")
    publisher = PublisherSpec.model_validate({"Type": "s3", "Params": {"Bucket": target_bucket, "Key": key}})
    b: JobResult = run_job(
        JOB_B,
        name="job-b",
        inputs=[published.to_input_source("/inputs/a")],
        publisher=publisher,
        s3=s3,
        ipfs=ipfs,
        fail_on_nonzero=True,
    )
    assert b.published is not None
    logger.info("job B published: %s", b.published.to_bacalhau())
    return {"consumed": published.to_bacalhau(), "published": b.published.to_bacalhau()}


if __name__ == "__main__":
    print(consume(json.loads(Path(sys.argv[1]).read_text())))
