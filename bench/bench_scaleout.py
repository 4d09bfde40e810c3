"""W11 of issue #17 §4, the scale-out figure: a fan-out flow of 32 jobs, each reading its neighbour's result
from S3 and publishing 8 MiB of its own, on prefect-dask's `DaskTaskRunner` (a local dask.distributed cluster
of 2 single-threaded worker processes) vs the same flow on Prefect's default `ThreadPoolTaskRunner`.

    .venv/bin/python bench/bench_scaleout.py --runs 2      # 4-8 minutes on 2 cores

The flow is a ring: all 32 `run_job` tasks are submitted at once; job i takes the result of its neighbour
(i + 1 mod 32) of the flow's previous run as an S3 input source (a gzip archive, extracted and checked
against the SHA-256 its writer stored), then writes 8 MiB of random bytes and publishes them to S3 (the
default gzip archive). The first (untimed) warm-up run publishes the first results; every later run reads
the previous run's, so each timed run moves 32 x 8 MiB both ways. `flows/fanout.py` (split -> parts ->
collect, small results) is not this workload, so the flow is defined here.

Three runners, an untimed warm-up run on the threads and the standing cluster (a new cluster is cold on
every run anyway), then `--runs` rounds of all three in turn (drift hits all alike), whole flow runs timed,
wall clock:
- `DaskTaskRunner(cluster_kwargs=...)`, as a flow declares it: a new LocalCluster for every flow run, so its
  time includes starting the cluster and each worker process importing Prefect and this package;
- `DaskTaskRunner(address=...)` on a standing LocalCluster of the same shape (started once, untimed): the
  steady state, as with a long-running cluster shared by many runs (or spread over machines);
- `ThreadPoolTaskRunner()`, Prefect's default: threads of the flow's process (each job is a child process).
Prints the bench rows (median seconds, ratio Dask/threads, no target: the figure is the ratio) and jobs per
minute for each. MinIO and a throwaway Prefect server run on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from common import WORK, print_table, ratio_row  # noqa: E402

MiB = 1 << 20


def job_command(index: int, mib: int, has_input: bool) -> str:
    """Check the neighbour's data (when there is one), write `mib` MiB of random bytes and their SHA-256."""
    check = "(cd inputs/neighbour/outputs && sha256sum --check --quiet data.sha256) && " if has_input else ""
    return (
        f"{check}head -c {mib * MiB} /dev/urandom > outputs/data.bin"
        f" && (cd outputs && sha256sum data.bin > data.sha256) && echo 'job {index}: ok'"
    )


CLUSTER: dict[str, Any] = {
    "n_workers": 2,
    "processes": True,
    "threads_per_worker": 1,
    "host": "127.0.0.1",
    "dashboard_address": None,
}
"""A LocalCluster of 2 single-threaded worker processes on 127.0.0.1; no dashboard (the scheduler still
serves its HTTP routes, /health and /metrics, on 127.0.0.1:8787 or a free port)."""
LABELS = {
    "dask": "DaskTaskRunner, new 2-process LocalCluster per run",
    "standing": "DaskTaskRunner, standing 2-process cluster",
    "threads": "ThreadPoolTaskRunner (default)",
}


def dask_runner() -> Any:
    """What a flow gets from `DaskTaskRunner(cluster_kwargs=...)`: a new LocalCluster for each flow run."""
    from prefect_dask.task_runners import DaskTaskRunner

    return DaskTaskRunner(cluster_kwargs=CLUSTER)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=32)
    parser.add_argument("--mib", type=int, default=8, help="MiB each job publishes")
    parser.add_argument("--runs", type=int, default=2, help="timed runs of each runner")
    parser.add_argument("--dir", type=Path, default=WORK)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)

    import distributed
    from prefect import flow
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect.testing.utilities import prefect_test_harness
    from prefect_dask.task_runners import DaskTaskRunner

    from prefect_bacalhau_publish import PublishedResult, PublisherSpec, S3Storage, run_job
    from prefect_bacalhau_publish.specs import S3Params
    from prefect_bacalhau_publish.testing import running_minio

    @flow(name="bench-scaleout-ring")
    def ring(
        bucket: str, s3_block: str, previous: list[dict[str, Any]] | None = None, jobs: int = 32, mib: int = 8
    ) -> list[dict[str, Any]]:
        """`jobs` jobs at once; job i reads `previous[(i + 1) % len(previous)]` and publishes `mib` MiB."""
        s3 = cast(S3Storage, S3Storage.load(s3_block))
        publisher = PublisherSpec.model_validate(
            {"Type": "s3", "Params": {"Bucket": bucket, "Key": "ring/{jobID}/{executionID}"}}
        )
        futures = []
        for index in range(jobs):
            inputs = []
            if previous:
                neighbour = PublishedResult.model_validate(previous[(index + 1) % len(previous)])
                inputs.append(neighbour.to_input_source("/inputs/neighbour"))
            futures.append(
                run_job.submit(
                    job_command(index, mib, bool(previous)),
                    name=f"job-{index}",
                    publisher=publisher,
                    inputs=inputs,
                    s3=s3,
                    fail_on_nonzero=True,
                )
            )
        out = []
        for future in futures:
            published = future.result().published
            assert published is not None
            out.append(published.to_bacalhau())
        return out

    with running_minio(args.dir) as minio, prefect_test_harness(server_startup_timeout=120):
        client: Any = minio.client()
        bucket = f"scaleout-{uuid.uuid4().hex[:8]}"
        client.create_bucket(Bucket=bucket)
        s3_block = f"bench-scaleout-{uuid.uuid4().hex[:8]}"
        minio.storage().save(s3_block)
        state: dict[str, Any] = {"previous": None, "older": []}

        def run(runner: Any) -> None:
            specs = ring.with_options(task_runner=runner)(
                bucket=bucket, s3_block=s3_block, previous=state["previous"], jobs=args.jobs, mib=args.mib
            )
            keys = {key_of(spec) for spec in specs}
            if len(keys) != args.jobs:
                raise SystemExit(f"expected {args.jobs} distinct results, got {len(keys)}")
            if state["previous"] is not None:
                state["older"].append(state["previous"])
            state["previous"] = specs

        def cleanup() -> None:
            """Untimed: delete the results no later run reads (all but the latest run's)."""
            for specs in state["older"]:
                for spec in specs:
                    client.delete_object(Bucket=bucket, Key=key_of(spec))
            state["older"] = []

        def key_of(spec: dict[str, Any]) -> str:
            params = PublishedResult.model_validate(spec).params
            assert isinstance(params, S3Params)
            return params.key

        with distributed.LocalCluster(**CLUSTER) as standing:  # type: ignore[no-untyped-call]
            runners: dict[str, Callable[[], Any]] = {
                "dask": dask_runner,
                "standing": lambda: DaskTaskRunner(address=standing.scheduler_address),
                "threads": ThreadPoolTaskRunner,
            }
            seconds = timings(args.runs, runners, run, cleanup)
        start = time.perf_counter()
        with dask_runner() as runner:
            runner.client.wait_for_workers(2)
        cluster_s = time.perf_counter() - start

    work = f"{args.jobs} jobs, each reading its neighbour's result and publishing {args.mib} MiB to S3"
    rows = [
        ratio_row(
            f"W11 scale-out: {work}; DaskTaskRunner (a new 2-process LocalCluster per run) vs default "
            "ThreadPoolTaskRunner",
            seconds["dask"],
            seconds["threads"],
            target=None,
        ),
        ratio_row(
            f"W11 scale-out: {work}; DaskTaskRunner on a standing 2-process cluster vs default "
            "ThreadPoolTaskRunner",
            seconds["standing"],
            seconds["threads"],
            target=None,
        ),
    ]
    print_table("Scale-out on a local Dask cluster (issue #17 §4)", rows)
    per_min = {name: args.jobs / statistics.median(times) * 60 for name, times in seconds.items()}
    print(f"\n| jobs per minute, {args.jobs} jobs x {args.mib} MiB (median run) | jobs/min | vs threads |")
    print("|---|---|---|")
    for name, label in LABELS.items():
        print(f"| {label} | {per_min[name]:.1f} | {per_min[name] / per_min['threads']:.2f} |")
    for name, label in LABELS.items():
        print(f"\n{label}, runs (s): {', '.join(f'{x:.1f}' for x in seconds[name])}", end="")
    print(f"\n\nDask LocalCluster start + stop alone (part of every new-cluster run): {cluster_s:.1f} s")
    print(f"{os.cpu_count()} cores; load average {', '.join(f'{x:.1f}' for x in os.getloadavg())} at the end")


def timings(
    runs: int,
    runners: dict[str, Callable[[], Any]],
    run: Callable[[Any], None],
    cleanup: Callable[[], None],
) -> dict[str, list[float]]:
    """One untimed warm-up run on each runner but `dask` (every run of which starts cold: a new cluster), the
    threads' first, then `runs` rounds of all of them in turn (drift hits all alike); wall seconds of each
    whole flow run, `cleanup` untimed after every run."""
    for name in sorted(set(runners) - {"dask"}, key=lambda name: name != "threads"):
        run(runners[name]())
        cleanup()
    out: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(runs):
        for name, make in runners.items():
            runner = make()
            start = time.perf_counter()
            run(runner)
            out[name].append(time.perf_counter() - start)
            cleanup()
    return out


if __name__ == "__main__":
    main()
