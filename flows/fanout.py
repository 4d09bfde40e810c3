"""Scale-out example: one job splits the work, N jobs run in parallel, one job collects their results.

Every job publishes its result folder to S3 (Bacalhau's S3 publisher) and the next stage reads those
results as S3 input sources, exactly as a chain of Bacalhau jobs would. The jobs are submitted to the flow's
task runner, so the same flow runs on threads (Prefect's default) or on a Dask cluster unchanged:

    from prefect_dask import DaskTaskRunner
    from fanout import fanout

    runner = DaskTaskRunner(cluster_kwargs={"n_workers": 2, "processes": True, "threads_per_worker": 1})
    fanout.with_options(task_runner=runner)(bucket="my-bucket")

Deploy it with `flows/prefect.yaml` (deployment `bacalhau-fanout/on-demand`), or run it directly:
`python flows/fanout.py BUCKET [PARTS]` (needs an S3Storage block saved as `bacalhau-s3`, e.g. by
`python blocks/setup.py`).
"""

from __future__ import annotations

import shlex
import sys
from typing import Any, cast

from prefect import flow, get_run_logger

from prefect_bacalhau_publish import JobResult, PublisherSpec, S3Storage, run_job

MAX_PARTS = 64


def split_command(count: int) -> str:
    """The first job: writes the numbers 1..count, one per line, to outputs/numbers.txt."""
    return f"seq 1 {count} > outputs/numbers.txt && echo 'split: {count} numbers'"


def part_command(part: int, parts: int) -> str:
    """Job `part` of `parts`: sums every line whose number modulo `parts` is `part` (its share of the work).

    Its stdout names the process that ran the task (`$PPID` of the job's shell), to see where it ran.
    """
    program = shlex.quote(f"NR % {parts} == {part} {{ s += $1 }} END {{ print s + 0 }}")
    return (
        f"awk {program} inputs/source/outputs/numbers.txt > outputs/sum.txt"
        f' && echo "part {part} of {parts}: $(cat outputs/sum.txt) (task process $PPID)"'
    )


COLLECT_COMMAND = (
    "cat inputs/part-*/outputs/sum.txt | awk '{ s += $1 } END { print s + 0 }' > outputs/total.txt"
    ' && echo "collected: $(cat outputs/total.txt)"'
)


def _published(job: JobResult) -> dict[str, Any]:
    if job.published is None:  # pragma: no cover - every job here has a publisher
        raise RuntimeError(f"job {job.context.job_id} published nothing")
    return job.published.to_bacalhau()


@flow(name="bacalhau-fanout", log_prints=True)
def fanout(
    bucket: str = "bacalhau-results",
    key: str = "fanout/{jobID}/{executionID}",
    s3_block: str = "bacalhau-s3",
    parts: int = 4,
    count: int = 1000,
    encoding: str = "gzip",
) -> dict[str, Any]:
    """Split → `parts` parallel jobs → collect, each publishing to S3; returns every published result spec.

    Returns `{"source": spec, "parts": [spec, ...], "collected": spec}` in Bacalhau's JSON shape; the
    collected result's `outputs/total.txt` holds the sum of 1..count.
    """
    if not 1 <= parts <= MAX_PARTS:
        raise ValueError(f"parts must be between 1 and {MAX_PARTS}, not {parts}")
    logger = get_run_logger()
    s3 = cast(S3Storage, S3Storage.load(s3_block))  # `load` is typed sync-or-async; this is the sync call
    publisher = PublisherSpec.model_validate(
        {"Type": "s3", "Params": {"Bucket": bucket, "Key": key, "Encoding": encoding}}
    )

    source = run_job.submit(
        split_command(count), name="split", publisher=publisher, s3=s3, fail_on_nonzero=True
    ).result()
    assert source.published is not None
    logger.info("split published: %s", source.published.to_bacalhau())

    source_input = source.published.to_input_source("/inputs/source")
    futures = [
        run_job.submit(
            part_command(part, parts),
            name=f"part-{part}",
            publisher=publisher,
            inputs=[source_input],
            s3=s3,
            fail_on_nonzero=True,
        )
        for part in range(parts)
    ]
    results = [future.result() for future in futures]
    logger.info("%d parallel jobs published", len(results))

    inputs = []
    for part, result in enumerate(results):
        assert result.published is not None
        inputs.append(result.published.to_input_source(f"/inputs/part-{part}"))
    collected = run_job.submit(
        COLLECT_COMMAND, name="collect", publisher=publisher, inputs=inputs, s3=s3, fail_on_nonzero=True
    ).result()
    logger.info("collected result published: %s", _published(collected))
    return {
        "source": _published(source),
        "parts": [_published(result) for result in results],
        "collected": _published(collected),
    }


if __name__ == "__main__":
    arguments: dict[str, Any] = {}
    if len(sys.argv) > 1:
        arguments["bucket"] = sys.argv[1]
    if len(sys.argv) > 2:
        arguments["parts"] = int(sys.argv[2])
    print(fanout(**arguments))
