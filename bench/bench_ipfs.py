"""IPFS both ways against Kubo's own CLI, on one Kubo daemon on loopback, in the same run (issue 20).

W3  publish (CID computed and checked locally) vs `ipfs add -r` with the same flags; the node is emptied
    (unpin + `repo gc`) before every run, so both start from the same state; every run must give one CID
W8  get by CID into a folder (every block hash-checked, the DAG complete before it is placed) vs
    `ipfs get -o DIR CID`; each run writes a fresh folder, checked against the source and deleted (untimed)

Each at every --sizes (MiB) of bench/common.py's mixed folder, twice: in-process (`publish_folder`,
`fetch_cid`) and as whole processes started fresh (`prefect-bacalhau publish DIR -p ipfs --ipfs-api …`,
`prefect-bacalhau get spec.json -o DIR --ipfs-api …`, its stderr on a pseudo-terminal so the progress bar is
drawn). The baseline is always the `ipfs` command. Also the peak RSS of the CLI's get at each size (flat in
the result's size is the goal). Prints Markdown tables. Kubo's repo is kept in memory (a folder on
/dev/shm) unless `--kubo-on disk` or /dev/shm lacks the room, as MinIO's is in bench_many.py (see
`common.server_home`); the table's title says where.

    .venv/bin/python bench/bench_ipfs.py --sizes 256,1024 --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_cli import Runner  # noqa: E402
from common import (  # noqa: E402
    WORK,
    build_mixed_folder,
    checker,
    paired,
    peak_rss_kib,
    print_table,
    ratio_row,
    server_home,
)

from prefect_bacalhau_publish.blocks import IPFSNode  # noqa: E402
from prefect_bacalhau_publish.kubo.unixfs import PROFILES, ImportParams  # noqa: E402
from prefect_bacalhau_publish.publishers.ipfs import publish_folder  # noqa: E402
from prefect_bacalhau_publish.sources.ipfs import fetch_cid  # noqa: E402
from prefect_bacalhau_publish.testing import KuboServer, binary, running_kubo  # noqa: E402

MiB = 1024 * 1024
CLI = str(Path(sys.executable).with_name("prefect-bacalhau"))


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


def add_flags(params: ImportParams) -> list[str]:
    return [
        f"--cid-version={params.cid_version}", f"--raw-leaves={str(params.raw_leaves).lower()}",
        f"--chunker={params.chunker}", f"--max-file-links={params.max_file_links}",
    ]  # fmt: skip


def environment(kubo: KuboServer) -> dict[str, str]:
    """The user's shell: the ipfs command finds its daemon through IPFS_PATH; bytecode caches allowed."""
    env = {**os.environ, "IPFS_PATH": str(kubo.repo_dir), "NO_PROXY": "127.0.0.1,localhost"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def w3(kubo: KuboServer, node: IPFSNode, run: Runner, folder: Path, runs: int, size: int) -> list[str]:
    params = PROFILES[node.cid_profile]
    cids: set[str] = set()

    def ours() -> None:
        cids.add(publish_folder(folder, node))

    def cli_ours() -> None:
        cids.add(
            json.loads(run(CLI, "publish", str(folder), "-p", "ipfs", "--ipfs-api", kubo.api_url))["Params"][
                "CID"
            ]
        )

    def theirs() -> None:
        cids.add(run(str(binary("ipfs")), "add", "-r", "-H", "-Q", *add_flags(params), str(folder)).strip())

    rows = []
    for name, mine in (("in-process", ours), ("CLI", cli_ours)):
        a, b = paired(runs, mine, theirs, cleanup=lambda: empty_node(kubo))
        rows.append(ratio_row(f"W3 IPFS publish {size} MiB, {name}, vs ipfs add -r", a, b, target=1.0))
    if len(cids) != 1:
        raise SystemExit(f"CIDs differ between runs or tools: {cids}")
    return rows


def w8(
    kubo: KuboServer, node: IPFSNode, run: Runner, folder: Path, runs: int, size: int, work: Path
) -> list[str]:
    empty_node(kubo)
    cid = publish_folder(folder, node)
    spec = work / "ipfs-result.json"
    spec.write_text(json.dumps({"Type": "ipfs", "Params": {"CID": cid}}))
    dest = work / "w8-got"
    check = checker(folder, dest)

    def fetch(into: Path) -> Callable[[], None]:
        return lambda: fetch_cid(cid, into, node)

    cli_ours = run.job(CLI, "get", str(spec), "-o", str(dest), "--ipfs-api", kubo.api_url)
    theirs = run.job(str(binary("ipfs")), "get", "-o", str(dest), cid)
    rows = []
    for name, mine in (("in-process", fetch(dest)), ("CLI", cli_ours)):
        a, b = paired(runs, mine, theirs, cleanup=check)
        rows.append(ratio_row(f"W8 IPFS get {size} MiB, {name}, vs ipfs get", a, b, target=1.2))
    rss = peak_rss_kib([CLI, "get", str(spec), "-o", str(dest), "--ipfs-api", kubo.api_url])
    check()
    print(f"peak RSS of `prefect-bacalhau get` at {size} MiB: {rss / 1024:.0f} MiB")
    rows.append(
        f"| R8 peak RSS of the CLI's IPFS get, {size} MiB | {rss / 1024:.0f} MiB | | (flat in size) |"
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="256", help="comma-separated folder sizes in MiB")
    parser.add_argument("--size-mib", type=int, help="one size (same as --sizes N)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", choices=["W3", "W8"], help="one workload")
    parser.add_argument("--dir", type=Path, default=WORK)
    parser.add_argument(
        "--kubo-on", choices=["memory", "disk"], default="memory", help="Kubo's repo on /dev/shm or in --dir"
    )
    args = parser.parse_args()
    sizes = [args.size_mib] if args.size_mib else [int(s) for s in args.sizes.split(",")]
    args.dir.mkdir(parents=True, exist_ok=True)
    rows: list[str] = []
    where = ""
    for size in sizes:
        folder = build_mixed_folder(args.dir, size)
        files = [p for p in folder.rglob("*") if p.is_file()]
        print(f"folder: {sum(p.stat().st_size for p in files) / MiB:.1f} MiB in {len(files)} files")
        home, where = server_home(args.kubo_on, args.dir, 3 * size * MiB)
        with running_kubo(home) as kubo, tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            node = IPFSNode(api_address=kubo.api_url, pin=True)
            run = Runner(environment(kubo))
            run(CLI, "--help")  # writes the bytecode caches once, as an installed package has them
            if args.only != "W8":
                rows += w3(kubo, node, run, folder, args.runs, size)
            if args.only != "W3":
                rows += w8(kubo, node, run, folder, args.runs, size, Path(tmp))
    print_table(f"IPFS publish and get vs Kubo's CLI, Kubo's repo {where}", rows)


if __name__ == "__main__":
    main()
