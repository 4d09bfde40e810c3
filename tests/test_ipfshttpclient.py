"""IPFSNode.get_client(): ipfshttpclient 0.7.0 against today's Kubo, and why the publisher does not use it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import ipfshttpclient
import pytest

from prefect_bacalhau_publish.blocks import IPFSNode
from prefect_bacalhau_publish.publishers import publish_to
from prefect_bacalhau_publish.specs import ExecutionContext, PublisherSpec
from prefect_bacalhau_publish.testing import KuboServer, binary


def test_get_client_works_where_connect_refuses(kubo: KuboServer, tmp_path: Path) -> None:
    with pytest.raises(ipfshttpclient.exceptions.VersionMismatch):
        ipfshttpclient.connect(kubo.api_multiaddr)
    for address in (kubo.api_multiaddr, kubo.api_url):
        client = IPFSNode(api_address=address).get_client()
        assert client.version()["Version"] == "0.42.0"
        cid = client.add_bytes(b"hello world\n")
        assert cid == "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
        assert client.cat(cid) == b"hello world\n"


def test_publisher_cid_matches_ipfs_add_where_ipfshttpclient_does_not(
    kubo: KuboServer, tmp_path: Path
) -> None:
    folder = tmp_path / "r"
    (folder / "outputs").mkdir(parents=True)
    (folder / "outputs" / "a.txt").write_text("some result\n")
    env = {"IPFS_PATH": str(kubo.repo_dir)}
    cli = subprocess.run(
        [
            str(binary("ipfs")),
            "add",
            "-r",
            "-Q",
            "--cid-version=1",
            "--raw-leaves=true",
            "--chunker=size-1048576",
            str(folder / "outputs" / "a.txt"),
        ],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.strip()
    client = IPFSNode(api_address=kubo.api_url).get_client()
    theirs = client.add(str(folder / "outputs" / "a.txt"), cid_version=1)["Hash"]
    assert theirs != cli  # ipfshttpclient forces raw-leaves=false (its issue #293)
    result = publish_to(
        folder, PublisherSpec(type="ipfs"), ExecutionContext.new(), ipfs=IPFSNode(api_address=kubo.api_url)
    )
    tree_cli = subprocess.run(
        [
            str(binary("ipfs")),
            "add",
            "-r",
            "-Q",
            "--cid-version=1",
            "--raw-leaves=true",
            "--chunker=size-1048576",
            str(folder),
        ],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.strip()
    assert result.params.cid == tree_cli  # type: ignore[attr-defined]
