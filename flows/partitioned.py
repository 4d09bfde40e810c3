"""A partitioned job and its reduce: date-partitioned CSVs in S3 → 4 executions, each summing its share → one job
adding the 4 sums.

The S3 input carries Bacalhau's `Partition` block (regex on the date in each key), so each execution fetches
only the days Bacalhau would give it (`partition_objects`); `run_partitioned` submits the 4 executions on the
flow's task runner and returns them in index order, and their published results become the reduce job's
inputs. Run it with `make demo` (it follows the chain), or directly against a saved `bacalhau-s3` block:
`python flows/partitioned.py`.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from prefect_bacalhau_publish import PublisherSpec, S3Storage, run_job, run_partitioned

DAYS = [f"2026-11-{day:02d}" for day in range(1, 15)]
MAP = (
    "find inputs/sales -name '*.csv' | sort > outputs/files.txt"
    " && cat $(cat outputs/files.txt) /dev/null | awk -F, '{s += $2} END {print s + 0}' > outputs/sum.txt"
    ' && echo "partition $BACALHAU_PARTITION_INDEX of $BACALHAU_PARTITION_COUNT:'
    ' $(wc -l < outputs/files.txt) files, sum $(cat outputs/sum.txt)"'
)
REDUCE = (
    "cat inputs/part-*/outputs/sum.txt | awk '{s += $1} END {print s}' > outputs/total.txt"
    ' && echo "total $(cat outputs/total.txt)"'
)


def seed(s3: S3Storage, bucket: str, prefix: str) -> int:
    """Write two CSVs per day under `prefix` (`sales/2026-11-01/store-a.csv`, ...); returns their total."""
    client = s3.get_client()
    total = 0
    for index, day in enumerate(DAYS):
        for store, base in (("a", 10), ("b", 100)):
            amounts = [base + index * 3 + n for n in range(5)]
            total += sum(amounts)
            body = "".join(f"{day},{amount}\n" for amount in amounts)
            client.put_object(Bucket=bucket, Key=f"{prefix}{day}/store-{store}.csv", Body=body.encode())
    return total


@flow(name="bacalhau-partitioned", log_prints=True)
def partitioned(
    bucket: str = "bacalhau-results",
    prefix: str = "sales/",
    key: str = "partitioned/{jobID}/{executionID}",
    s3_block: str = "bacalhau-s3",
    count: int = 4,
    seed_data: bool = True,
) -> dict[str, Any]:
    """Sum the CSVs under `prefix` in `count` partitions by date, then add the partial sums in one job."""
    logger = get_run_logger()
    s3 = S3Storage.load(s3_block)
    expected = seed(s3, bucket, prefix) if seed_data else None
    publisher = PublisherSpec.model_validate({"Type": "s3", "Params": {"Bucket": bucket, "Key": key}})
    source = {
        "Type": "s3",
        "Params": {
            "Bucket": bucket,
            "Key": prefix,
            "Partition": {"Type": "regex", "Pattern": r"(\d{4}-\d{2}-\d{2})"},
        },
    }
    parts = run_partitioned(
        MAP,
        count,
        name="sum-sales",
        publisher=publisher,
        inputs=[{"Source": source, "Target": "/inputs/sales"}],
        s3=s3,
        fail_on_nonzero=True,
    )
    inputs = []
    for index, part in enumerate(parts):
        assert part.published is not None
        inputs.append(part.published.to_input_source(f"/inputs/part-{index}"))
    total = run_job.submit(
        REDUCE, name="add-sums", publisher=publisher, inputs=inputs, s3=s3, fail_on_nonzero=True
    ).result()
    assert total.published is not None
    logger.info("reduce published: %s", total.published.to_bacalhau())
    return {
        "partitions": [part.published.to_bacalhau() for part in parts if part.published is not None],
        "total": total.published.to_bacalhau(),
        "expected": expected,
    }


if __name__ == "__main__":
    print(partitioned())
