"""Benchmark: our IPFS publish (CID verified locally) against `ipfs add -r` with the same flags.

Builds a mixed result folder (half random bytes, half text), starts its own Kubo daemon on loopback and
times, for each run, our `publish_folder` and the Kubo CLI on the same folder; before every measurement
the node is emptied (unpin + `repo gc`) so both start from the same state. Prints medians and the ratio.

    .venv/bin/python bench/bench_ipfs.py --size-mib 256 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from prefect_bacalhau_publish.blocks import IPFSNode
from prefect_bacalhau_publish.kubo.unixfs import PROFILES, ImportParams
from prefect_bacalhau_publish.publishers.ipfs import publish_folder
from prefect_bacalhau_publish.testing import KuboServer, binary, running_kubo

MiB = 1024 * 1024
WORDS = [
    "result",
    "output",
    "stdout",
    "stderr",
    "exit",
    "code",
    "job",
    "node",
    "execution",
    "bacalhau",
    "prefect",
    "publish",
    "ipfs",
    "cid",
]


def build_folder(root: Path, size_mib: int, seed: int = 7) -> int:
    """Half random files (assorted sizes), half text files; returns the byte count written."""
    rnd = random.Random(seed)
    half = size_mib * MiB // 2
    (root / "outputs" / "random").mkdir(parents=True)
    (root / "outputs" / "text").mkdir(parents=True)
    written, index = 0, 0
    sizes = [16 * MiB, 3 * MiB + 17, MiB, 300 * 1024, 40 * 1024, 1500]
    while written < half:
        size = min(sizes[index % len(sizes)], half - written)
        (root / "outputs" / "random" / f"blob-{index:04d}.bin").write_bytes(rnd.randbytes(size))
        written, index = written + size, index + 1
    text_written, index = 0, 0
    while text_written < half:
        target = min([8 * MiB, 2 * MiB, 200 * 1024, 5000][index % 4], half - text_written)
        line = " ".join(rnd.choice(WORDS) for _ in range(12)) + "\n"
        data = (line * (target // len(line) + 1)).encode()[:target]
        (root / "outputs" / "text" / f"log-{index:04d}.txt").write_bytes(data)
        text_written, index = text_written + len(data), index + 1
    (root / "stdout").write_text("done\n")
    (root / "stderr").write_text("")
    (root / "exitCode").write_text("0")
    return written + text_written


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="unixfs-v1-2025")
    parser.add_argument("--output", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    if args.runs < 3:
        parser.error("use at least 3 runs")
    params = PROFILES[args.profile]
    with tempfile.TemporaryDirectory(prefix="pbp-bench-ipfs-") as tmp:
        folder = Path(tmp) / "result"
        size = build_folder(folder, args.size_mib)
        print(
            f"folder: {size / MiB:.1f} MiB in {sum(1 for _ in folder.rglob('*'))} entries; profile {args.profile}"
        )
        with running_kubo(Path(tmp)) as kubo:
            node = IPFSNode(api_address=kubo.api_url, cid_profile=args.profile, pin=True)
            ours: list[float] = []
            theirs: list[float] = []
            cids: set[str] = set()
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
        "cid": cids.pop(),
    }
    print(json.dumps(result, indent=2))
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
