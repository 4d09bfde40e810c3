"""The README's "Deploy the chain on a schedule" block, run exactly as written in a fresh copy of the project:
`make stack`, the env file, blocks (and buckets), a work pool, `prefect deploy`, a triggered run, a worker
`--run-once`, and `prefect-bacalhau get` of the run. If the README drifts from the code, this fails."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from prefect_bacalhau_publish.testing import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Deploy the chain on a schedule"


def readme_block() -> str:
    """The first ```bash block of the README's deploy section."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(SECTION) :]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, "the deploy section has no bash block"
    return match.group(1)


def fresh_copy(dest: Path) -> Path:
    """The files a clone has (tracked by git), with this checkout's venv linked in (installing it again
    would only repeat what `make test` did)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(
        b"\0"
    )
    for name in filter(None, (f.decode() for f in files)):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    (dest / ".venv").symlink_to(ROOT / ".venv")
    return dest


@pytest.fixture()
def project(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    clone = fresh_copy(tmp_path / "clone")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_", "MINIO_", "IPFS_"))}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if ".venv" not in p)
    env.update(
        {
            "PREFECT_HOME": str(tmp_path / "user-prefect-home"),
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
            **{
                name: str(free_port())
                for name in (
                    "STACK_MINIO_PORT",
                    "STACK_MINIO_CONSOLE_PORT",
                    "STACK_KUBO_API_PORT",
                    "STACK_KUBO_GATEWAY_PORT",
                    "STACK_RESULTS_PORT",
                    "STACK_PREFECT_PORT",
                )
            },
        }
    )
    try:
        yield clone, env
    finally:
        subprocess.run(
            ["make", "stack-down"], cwd=clone, env=env, capture_output=True, timeout=120, check=False
        )


def test_readme_deploy_section_runs_as_written(project: tuple[Path, dict[str, str]]) -> None:
    clone, env = project
    script = "set -eo pipefail\n" + readme_block()
    done = subprocess.run(
        ["bash", "-c", script], cwd=clone, env=env, capture_output=True, text=True, timeout=1200, check=False
    )
    output = f"--- stdout ---\n{done.stdout[-6000:]}\n--- stderr ---\n{done.stderr[-6000:]}"
    assert done.returncode == 0, output
    assert "created bucket 'bacalhau-results'" in done.stdout, output
    prefect_url = f"http://127.0.0.1:{env['STACK_PREFECT_PORT']}/api"
    with httpx.Client(base_url=prefect_url, trust_env=False, timeout=30) as api:
        runs = api.post("/flow_runs/filter", json={}).json()
        states = sorted(r["state_type"] for r in runs)
        assert "SCHEDULED" in states, states  # the nightly schedule is on
        runs = [r for r in runs if r["state_type"] != "SCHEDULED"]
        assert [r["state_type"] for r in runs] == ["COMPLETED"], output
        artifacts = api.post(
            "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [runs[0]["id"]]}}}
        ).json()
    assert len([a for a in artifacts if a["type"] == "table"]) == 2, artifacts
    results = clone / "results"
    assert (results / "outputs" / "sum.txt").read_text().strip() == "500500", output  # job B's result
    assert len((results / "outputs" / "numbers.txt").read_text().split()) == 1000  # job A's result
    assert (clone / ".stack" / "env").stat().st_mode & 0o077 == 0  # the env file holds a password

    def stack(action: str) -> subprocess.CompletedProcess[str]:
        python = str(clone / ".venv" / "bin" / "python")
        return subprocess.run(
            [python, "scripts/stack.py", action],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    again = stack("up")
    assert again.returncode == 0 and again.stdout.count("already running") == 4, again.stdout  # idempotent
    assert stack("status").returncode == 0
    subprocess.run(["make", "stack-down"], cwd=clone, env=env, capture_output=True, timeout=120, check=True)
    stopped = stack("status")
    assert stopped.returncode == 1 and stopped.stdout.count(": down") == 4, stopped.stdout
