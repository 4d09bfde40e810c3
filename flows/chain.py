"""The main example flow: job A publishes to S3, job B reads A's result as its S3 input and publishes too.

Deploy it with `flows/prefect.yaml`, or run it directly: `python flows/chain.py` (needs an S3Storage block
saved as `bacalhau-s3`, e.g. by `python blocks/setup.py`).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from prefect_bacalhau_publish import PublisherSpec, S3Storage, run_job

JOB_A = "seq 1 1000 > outputs/numbers.txt && echo 'job A wrote 1000 numbers'"
JOB_B = (
    "awk '{s += $1} END {print s}' inputs/a/outputs/numbers.txt > outputs/sum.txt"
    ' && cp inputs/a/stdout outputs/job-a-stdout.txt && echo "job B summed: $(cat outputs/sum.txt)"'
)


@flow(name="bacalhau-chain", log_prints=True)
def chain(
    bucket: str = "bacalhau-results",
    key: str = "chain/{jobID}/{executionID}",
    s3_block: str = "bacalhau-s3",
    encoding: str = "gzip",
) -> dict[str, Any]:
    """Run job A, publish it to S3, hand its result to job B as an S3 input source, publish B; return both specs."""
    logger = get_run_logger()
    s3 = S3Storage.load(s3_block)
    publisher = PublisherSpec.model_validate(
        {"Type": "s3", "Params": {"Bucket": bucket, "Key": key, "Encoding": encoding}}
    )
    a = run_job.submit(JOB_A, name="job-a", publisher=publisher, s3=s3, fail_on_nonzero=True).result()
    assert a.published is not None
    logger.info("job A published: %s", a.published.to_bacalhau())
    b = run_job.submit(
        JOB_B,
        name="job-b",
        publisher=publisher,
        inputs=[a.published.to_input_source("/inputs/a")],
        s3=s3,
        fail_on_nonzero=True,
    ).result()
    assert b.published is not None
    logger.info("job B published: %s", b.published.to_bacalhau())
    return {"a": a.published.to_bacalhau(), "b": b.published.to_bacalhau()}


if __name__ == "__main__":
    print(chain())
