"""W3 of issue 9: our IPFS publish (CID verified locally) against `ipfs add -r` with the same flags.

Builds (or reuses) bench/common.py's mixed folder, starts its own Kubo daemon on loopback and times, for
each run, our `publish_folder` and the Kubo CLI on the same folder; before every measurement the node is
emptied (unpin + `repo gc`) so both start from the same state. Every run must give the same CID. Prints
the per-run times and a Markdown table (medians, median of the pairwise ratios).

    .venv/bin/python bench/bench_ipfs.py --size-mib 1024 --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import build_mixed_folder, print_table, ratio_row  # noqa: E402

from prefect_bacalhau_publish.blocks import IPFSNode  # noqa: E402
from prefect_bacalhau_publish.kubo.unixfs import PROFILES, ImportParams  # noqa: E402
from prefect_bacalhau_publish.publishers.ipfs import publish_folder  # noqa: E402
from prefect_bacalhau_publish.testing import KuboServer, binary, running_kubo  # noqa: E402

MiB = 1024 * 1024


def ipfs(kubo: KuboServer, *args: str) -> str:
    env = {**os.environ, "IPFS_PATH": str(kubo.repo_dir)}
    done = subprocess.run([str(binary("ipfs")), *args], env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def empty_node(kubo: KuboServer) -> None:
    """Unpin everything recursive and garbage-collect, so each run starts from an empty blockstore."""
    pins = ipfs(kubo, "pin", "ls", "--type=recursive", "-q").split()
    if pins:
        ipfs(kubo, "pin", "rm", *pins)
    ipfs(kubo, "repo", "gc", "--quiet")


def cli_add(kubo: KuboServer, folder: Path, params: ImportParams) -> str:
    return ipfs(
        kubo, "add", "-r", "-H", "-Q", f"--cid-version={params.cid_version}",
        f"--raw-leaves={str(params.raw_leaves).lower()}", f"--chunker={params.chunker}",
        f"--max-file-links={params.max_file_links}", str(folder),
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="unixfs-v1-2025")
    parser.add_argument("--dir", type=Path, default=REPO / "bench" / "work")
    parser.add_argument("--output", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    if args.runs < 3:
        parser.error("use at least 3 runs")
    params = PROFILES[args.profile]
    args.dir.mkdir(parents=True, exist_ok=True)
    folder = build_mixed_folder(args.dir, args.size_mib)
    files = [p for p in folder.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    print(f"folder: {size / MiB:.1f} MiB in {len(files)} files; profile {args.profile}")
    ours: list[float] = []
    theirs: list[float] = []
    cids: set[str] = set()
    with running_kubo(args.dir) as kubo:
        node = IPFSNode(api_address=kubo.api_url, cid_profile=args.profile, pin=True)
        for run in range(args.runs):
            for name, times in (("ours", ours), ("ipfs add", theirs)):
                empty_node(kubo)
                start = time.perf_counter()
                cid = publish_folder(folder, node) if name == "ours" else cli_add(kubo, folder, params)
                times.append(time.perf_counter() - start)
                cids.add(cid)
                print(
                    f"run {run + 1} {name:8s} {times[-1]:7.2f}s  {size / MiB / times[-1]:7.1f} MiB/s  {cid}"
                )
    if len(cids) != 1:
        raise SystemExit(f"CIDs differ between runs or tools: {cids}")
    ours_median, theirs_median = statistics.median(ours), statistics.median(theirs)
    result = {
        "size_mib": round(size / MiB, 1),
        "profile": args.profile,
        "runs": args.runs,
        "ours_median_s": round(ours_median, 3),
        "ipfs_add_median_s": round(theirs_median, 3),
        "ratio_ours_over_ipfs_add": round(ours_median / theirs_median, 3),
        "ratio_median_of_pairs": round(
            statistics.median(a / b for a, b in zip(ours, theirs, strict=True)), 3
        ),
        "cid": cids.pop(),
    }
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    row = ratio_row("W3 IPFS publish (CID verified) vs ipfs add -r", ours, theirs, target=1.1)
    print_table(f"IPFS publish, {args.size_mib} MiB, profile {args.profile}", [row])


if __name__ == "__main__":
    main()
