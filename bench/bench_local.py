"""Local-publisher workload of issue 9 against the tools a user would otherwise script, in the same run.

W4  local publish of the W1 mixed folder (archive + SHA-256 sidecar, fsynced, into the storage folder)
    vs (a) GNU `tar czf`, (b) `tar cf - | pigz -1 -p 2 >`, each writing its archive on the same filesystem

    .venv/bin/python bench/bench_local.py --size-mib 1024 --runs 5

Wall time; each run writes into a temp folder under --dir whose archive is deleted after the run (untimed).
Nothing is served or fetched. Prints a Markdown table.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import build_mixed_folder, empty, folder_args, paired, print_table, ratio_row  # noqa: E402

from prefect_bacalhau_publish.blocks import LocalResultServer  # noqa: E402
from prefect_bacalhau_publish.publishers import publish_to  # noqa: E402
from prefect_bacalhau_publish.specs import ExecutionContext, PublisherSpec  # noqa: E402


def w4(folder: Path, runs: int, work: Path) -> list[str]:
    storage = work / "storage"
    storage.mkdir(mode=0o700)
    server = LocalResultServer(storage_dir=storage, host="127.0.0.1", port=6001, public_address="loopback")
    spec = PublisherSpec.model_validate({"Type": "local"})
    archive = storage / "baseline.tar.gz"

    def ours() -> None:
        publish_to(folder, spec, ExecutionContext.new(), local=server)

    def tar_czf() -> None:
        subprocess.run(["tar", "czf", str(archive), "-C", str(folder), "."], check=True)

    def tar_pigz() -> None:
        subprocess.run(
            f"set -o pipefail; tar cf - -C {folder} . | pigz -1 -p 2 > {archive}",
            shell=True,
            check=True,
            executable="/bin/bash",
        )

    def cleanup() -> None:
        empty(storage)

    rows = []
    a, b = paired(runs, ours, tar_pigz, cleanup=cleanup)
    rows.append(ratio_row("W4b local publish vs tar cf \\| pigz -1 -p 2", a, b, target=0.6))
    a2, c = paired(runs, ours, tar_czf, cleanup=cleanup)
    rows.append(ratio_row("W4a local publish vs tar czf", a2, c, target=0.1))
    return rows


def main() -> None:
    args = folder_args(__doc__)
    if shutil.which("pigz") is None:
        raise SystemExit("pigz is needed for the W4 baseline: apt-get install pigz")
    folder = build_mixed_folder(args.dir, args.size_mib)
    with tempfile.TemporaryDirectory(prefix="w4-", dir=args.dir) as tmp:
        rows = w4(folder, args.runs, Path(tmp))
    print_table(f"Local publisher, {args.size_mib} MiB", rows)


if __name__ == "__main__":
    main()
