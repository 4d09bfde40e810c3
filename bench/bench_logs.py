"""W8: a job that prints 200 000 short lines, its output streamed into the run's logs (`log_output` on, the
default cap of 10 000 lines) vs the same job with its output sent to a file (nothing to stream), issue #23.

    .venv/bin/python bench/bench_logs.py --lines 200000 --runs 5

Both run as `run_job` tasks inside one flow on a throwaway Prefect server (whole task, wall time), alternating.
Also prints how many log records the streamed job sent to the API.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from common import paired, print_table, ratio_row  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId
    from prefect.testing.utilities import prefect_test_harness

    from prefect_bacalhau_publish import run_job

    streamed = f"seq 1 {args.lines} | sed 's/^/line /'"
    to_file = f"{streamed} > outputs/lines.txt"
    last: list[Any] = []

    @flow(name="bench-logs")
    def bench() -> tuple[list[float], list[float]]:
        def ours() -> None:
            last.append(run_job(streamed, publisher=None, name="streamed"))

        def base() -> None:
            run_job(to_file, publisher=None, name="to-file")

        return paired(args.runs, ours, base)

    async def records(task_run_id: str) -> int:
        async with get_client() as client:
            count = 0
            while page := await client.read_logs(
                log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=[task_run_id])),
                limit=200,
                offset=count,
            ):
                count += len(page)
            return count

    with prefect_test_harness(server_startup_timeout=120):
        ours_s, base_s = bench()
        sent = asyncio.run(records(last[-1].task_run_id))
    row = ratio_row(
        f"W8 job printing {args.lines:,} lines: log_output on vs to a file", ours_s, base_s, target=1.3
    )
    print_table("Job output in the run's logs (issue #23)", [row])
    print(
        f"\nlog records of one streamed job (its 10,000 shown lines, the cap notice, the task's own): {sent:,}"
    )


if __name__ == "__main__":
    main()
