"""The blocks as Prefect's own block test suite checks them, their round trip through a server, their
registration as a Prefect collection, and `blocks/setup.py` (which saves them from environment variables).
"""

from __future__ import annotations

import asyncio
import importlib.util
import pickle
import re
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import timedelta
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import cloudpickle
import pytest
from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from prefect.testing.standard_test_suites.blocks import BlockStandardTestSuite
from prefect_aws import AwsCredentials, MinIOCredentials
from pydantic import SecretStr

from prefect_bacalhau_publish import IPFSNode, LocalResultServer, S3Storage
from prefect_bacalhau_publish.testing import MinioServer

B = TypeVar("B", bound=Block)


def load(block: type[B], name: str) -> B:
    """`block.load(name)`, typed (Prefect types `load` as sync-or-async)."""
    loaded = block.load(name)
    assert isinstance(loaded, block)
    return loaded


ROOT = Path(__file__).resolve().parents[1]
PREFECT = Path(sys.executable).with_name("prefect")
BLOCKS: list[type[Block]] = [S3Storage, IPFSNode, LocalResultServer]
SECRET = "s3cr3t-" + uuid.uuid4().hex  # a value that must never show up in clear text


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --- Prefect's standard block test suite -------------------------------------------------------------------


class TestBlockStandards(BlockStandardTestSuite):
    """Description, documentation URL, field descriptions ending in a period, a valid code example."""

    @pytest.fixture(params=BLOCKS, ids=lambda block: block.__name__)
    def block(self, request: pytest.FixtureRequest) -> type[Block]:
        block: type[Block] = request.param
        return block

    def test_has_a_valid_image(self, block: type[Block]) -> None:
        # The standard suite downloads the logo (and skips without Pillow); this machine has no internet
        # and tests never skip, so check what can be checked offline: an https URL to an image file.
        logo = str(block._logo_url)
        assert re.fullmatch(r"https://[^\s/]+/\S+\.(png|svg|ico|jpg|jpeg)", logo), logo

    def test_block_typed_fields_have_a_description_too(self, block: type[Block]) -> None:
        # the standard suite skips fields holding blocks (e.g. S3Storage.credentials); the UI shows them
        for name, field in block.model_fields.items():
            assert field.description and field.description.endswith("."), f"{block.__name__}.{name}"


@pytest.mark.parametrize(
    ("block", "name", "slug"),
    [
        (S3Storage, "Bacalhau S3 Storage", "bacalhau-s3-storage"),
        (IPFSNode, "Bacalhau IPFS Node", "bacalhau-ipfs-node"),
        (LocalResultServer, "Bacalhau Local Result Server", "bacalhau-local-result-server"),
    ],
)
def test_block_type_identity(block: type[Block], name: str, slug: str) -> None:
    assert block._block_type_name == name == block.get_block_type_name()
    assert block.get_block_type_slug() == slug
    assert str(block._documentation_url).startswith("https://")
    assert str(block._logo_url).startswith("https://")
    description = block.get_description()
    assert description and description.endswith(".") and "Bacalhau" in (description + name)
    assert block.__doc__ and "Example:" in block.__doc__


# --- schema --------------------------------------------------------------------------------------------------


def test_s3_storage_schema() -> None:
    schema = S3Storage.model_json_schema()
    assert schema["block_type_slug"] == "bacalhau-s3-storage"
    assert schema["description"] == S3Storage.get_description()
    properties = schema["properties"]
    for field in ("credentials", "endpoint_url", "region_name", "presign_expiry", "multipart_chunksize"):
        assert field in properties, field
    assert "max_concurrency" in properties
    # the nested credentials are references to prefect-aws block types, so the UI offers both
    references = schema["block_schema_references"]["credentials"]
    assert sorted(ref["block_type_slug"] for ref in references) == ["aws-credentials", "minio-credentials"]
    assert all(ref["block_schema_checksum"].startswith("sha256:") for ref in references)
    assert properties["presign_expiry"]["default"] == "PT1H"
    assert set(schema["secret_fields"]) == {
        "credentials.aws_secret_access_key",
        "credentials.minio_root_password",
    }


def test_ipfs_node_and_local_server_schemas() -> None:
    ipfs = IPFSNode.model_json_schema()
    assert ipfs["secret_fields"] == ["auth"]
    assert ipfs["properties"]["api_address"]["default"] == "/ip4/127.0.0.1/tcp/5001"
    assert ipfs["properties"]["cid_profile"]["enum"] == ["unixfs-v1-2025", "unixfs-v0-2015"]
    local = LocalResultServer.model_json_schema()
    assert local["secret_fields"] == []
    assert local["properties"]["port"]["default"] == 6001
    assert local["properties"]["host"]["default"] == "0.0.0.0"
    for field in ("storage_dir", "public_address", "max_age", "max_total_bytes"):
        assert field in local["properties"], field


@pytest.mark.parametrize("block", BLOCKS, ids=lambda block: block.__name__)
def test_block_schema_is_stable_and_complete(block: type[Block]) -> None:
    schema = block._to_block_schema(block_type_id=uuid.uuid4())
    again = block._to_block_schema(block_type_id=uuid.uuid4())
    assert schema.checksum == again.checksum == block._calculate_schema_checksum()
    assert schema.checksum.startswith("sha256:")
    assert schema.fields == block.model_json_schema()
    assert schema.block_type is not None and schema.block_type.slug == block.get_block_type_slug()
    assert schema.block_type.code_example == block.get_code_example()
    assert schema.version  # the package version the schema was registered with


# --- round trip through a server -----------------------------------------------------------------------------


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def _creds_minio(named: bool) -> Callable[[], MinIOCredentials]:
    def make() -> MinIOCredentials:
        creds = MinIOCredentials(
            minio_root_user="root-user", minio_root_password=SECRET, region_name="eu-west-3"
        )
        if named:
            creds.save(_unique("minio-creds"))
        return creds

    return make


def _creds_aws(named: bool) -> Callable[[], AwsCredentials]:
    def make() -> AwsCredentials:
        creds = AwsCredentials(
            aws_access_key_id="AKIAEXAMPLE", aws_secret_access_key=SECRET, aws_session_token="token"
        )
        if named:
            creds.save(_unique("aws-creds"))
        return creds

    return make


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize(
    "make_credentials",
    [_creds_minio(False), _creds_minio(True), _creds_aws(False), _creds_aws(True), lambda: None],
    ids=["minio-nested", "minio-saved-block", "aws-nested", "aws-saved-block", "none"],
)
def test_s3_storage_round_trip(
    make_credentials: Callable[[], AwsCredentials | MinIOCredentials | None],
) -> None:
    credentials = make_credentials()
    original = S3Storage(
        credentials=credentials,
        endpoint_url="http://127.0.0.1:9000",
        region_name="us-west-2",
        presign_expiry=timedelta(minutes=5),
        multipart_chunksize=32 * 1024 * 1024,
        max_concurrency=4,
    )
    name = _unique("s3")
    original.save(name)
    loaded = load(S3Storage, name)
    assert loaded.endpoint_url == "http://127.0.0.1:9000" and loaded.region_name == "us-west-2"
    assert loaded.presign_expiry == timedelta(minutes=5)
    assert loaded.multipart_chunksize == 32 * 1024 * 1024 and loaded.max_concurrency == 4
    if credentials is None:
        assert loaded.credentials is None
        return
    # the same credentials type comes back, with every value (a saved block is referenced, not copied)
    assert type(loaded.credentials) is type(credentials), loaded.credentials
    if isinstance(credentials, MinIOCredentials):
        assert isinstance(loaded.credentials, MinIOCredentials)
        assert loaded.credentials.minio_root_user == "root-user"
        assert isinstance(loaded.credentials.minio_root_password, SecretStr)
        assert loaded.credentials.minio_root_password.get_secret_value() == SECRET
        assert loaded.credentials.region_name == "eu-west-3"
    else:
        assert isinstance(loaded.credentials, AwsCredentials)
        assert loaded.credentials.aws_access_key_id == "AKIAEXAMPLE"
        assert isinstance(loaded.credentials.aws_secret_access_key, SecretStr)
        assert _secret(loaded.credentials.aws_secret_access_key) == SECRET
        assert loaded.credentials.aws_session_token == "token"
    _assert_no_clear_secret(loaded)


@pytest.mark.usefixtures("prefect_server")
def test_ipfs_node_and_local_server_round_trip(tmp_path: Path) -> None:
    node = IPFSNode(
        api_address="https://ipfs.example:5001",
        auth=SecretStr(f"Bearer {SECRET}"),
        gateway_url="http://127.0.0.1:8080",
        pin=False,
        cid_profile="unixfs-v0-2015",
        timeout=12.5,
    )
    node_name = _unique("ipfs")
    node.save(node_name)
    loaded_node = load(IPFSNode, node_name)
    assert (
        isinstance(loaded_node.auth, SecretStr) and loaded_node.auth.get_secret_value() == f"Bearer {SECRET}"
    )
    assert loaded_node.api_url == "https://ipfs.example:5001"
    assert (loaded_node.pin, loaded_node.cid_profile, loaded_node.timeout) == (False, "unixfs-v0-2015", 12.5)
    _assert_no_clear_secret(loaded_node)

    server = LocalResultServer(
        storage_dir=tmp_path / "results",
        port=6123,
        public_address="loopback",
        max_age=timedelta(days=2),
        max_total_bytes=10_000,
    )
    server_name = _unique("local")
    server.save(server_name)
    loaded_server = load(LocalResultServer, server_name)
    assert loaded_server.storage_dir == tmp_path / "results"
    assert loaded_server.base_url() == "http://127.0.0.1:6123"
    assert (loaded_server.max_age, loaded_server.max_total_bytes) == (timedelta(days=2), 10_000)


def _assert_no_clear_secret(block: Block) -> None:
    assert SECRET not in repr(block)
    assert SECRET not in str(block)
    assert SECRET not in str(block.model_dump())
    assert SECRET not in block.model_dump_json()


def test_secrets_are_secretstr_and_masked_before_saving() -> None:
    storage = S3Storage(credentials=MinIOCredentials(minio_root_user="u", minio_root_password=SECRET))
    assert isinstance(storage.credentials, MinIOCredentials)
    assert isinstance(storage.credentials.minio_root_password, SecretStr)
    _assert_no_clear_secret(storage)
    _assert_no_clear_secret(IPFSNode(auth=SecretStr(SECRET)))
    # the API only ever gets the secret when saving, on purpose
    assert SECRET in str(storage.model_dump(context={"include_secrets": True}))


@pytest.mark.usefixtures("prefect_server")
def test_loaded_s3_storage_pickles_for_dask(minio: MinioServer) -> None:
    name = _unique("s3-pickle")
    minio.storage().save(name)
    loaded = load(S3Storage, name)
    loaded.get_client().list_buckets()  # a client built (and cached) before pickling
    for dumps, loads in ((pickle.dumps, pickle.loads), (cloudpickle.dumps, cloudpickle.loads)):
        copy = loads(dumps(loaded))
        assert isinstance(copy, S3Storage) and isinstance(copy.credentials, MinIOCredentials)
        assert copy.credentials.minio_root_password.get_secret_value() == minio.password
        names = {b["Name"] for b in copy.get_client().list_buckets()["Buckets"]}
        assert "pbp-unversioned" in names  # the copy really reaches MinIO


# --- the docstring examples work when pasted -----------------------------------------------------------------


def _example_code(block: type[Block]) -> str:
    example = block.get_code_example()
    assert example is not None
    match = re.search(r"```python\n(.*?)```", example, re.DOTALL)
    assert match, example
    return match.group(1)


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("block", BLOCKS, ids=lambda block: block.__name__)
def test_docstring_example_runs_when_pasted(block: type[Block], minio: MinioServer, tmp_path: Path) -> None:
    instances: dict[type[Block], Block] = {
        S3Storage: minio.storage(),
        IPFSNode: IPFSNode(api_address="/ip4/127.0.0.1/tcp/5999"),
        LocalResultServer: LocalResultServer(storage_dir=tmp_path, port=6124),
    }
    code = _example_code(block)
    assert f'{block.__name__}.load("BLOCK_NAME")' in code
    # Prefect refuses "BLOCK_NAME" as a document name (lower-case letters, digits, dashes only), so do what
    # the UI does when it shows a saved block's snippet: put the saved block's name in its place
    name = _unique(f"example-{block.get_block_type_slug()}")
    instances[block].save(name)
    code = code.replace('"BLOCK_NAME"', f'"{name}"')
    namespace: dict[str, Any] = {}
    exec(compile(code, f"<{block.__name__} docstring example>", "exec"), namespace)
    loaded = [value for value in namespace.values() if isinstance(value, block)]
    assert len(loaded) == 1
    if block is S3Storage:
        clients = [v for k, v in namespace.items() if k == "client"]
        assert clients, "the S3Storage example builds a client"
        assert {"pbp-unversioned"} <= {b["Name"] for b in clients[0].list_buckets()["Buckets"]}
    elif block is IPFSNode:
        assert loaded[0].api_url == "http://127.0.0.1:5999"  # type: ignore[attr-defined]
    else:
        assert loaded[0].base_url() == "http://127.0.0.1:6124"  # type: ignore[attr-defined]


# --- registration as a Prefect collection --------------------------------------------------------------------


def test_entry_point_collection_is_discovered() -> None:
    ours = [ep for ep in entry_points(group="prefect.collections") if ep.name == "prefect_bacalhau_publish"]
    assert len(ours) == 1 and ours[0].value == "prefect_bacalhau_publish"
    from prefect.plugins import load_prefect_collections

    collections = load_prefect_collections()
    assert "prefect_bacalhau_publish" in collections
    module = collections["prefect_bacalhau_publish"]
    assert isinstance(module, ModuleType) and module.S3Storage is S3Storage
    # importing the collection registered the block classes with Prefect's block registry
    from prefect.utilities.dispatch import lookup_type

    for block in BLOCKS:
        assert lookup_type(Block, block.get_block_type_slug()) is block


@pytest.mark.usefixtures("prefect_server")
def test_prefect_block_register_cli_registers_the_block_types(tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL

    api_url = PREFECT_API_URL.value()
    assert api_url and api_url.startswith("http://127.0.0.1:")
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        {
            "PREFECT_API_URL": api_url,
            "PREFECT_HOME": str(tmp_path),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
    )
    registered = subprocess.run(
        [str(PREFECT), "block", "register", "-m", "prefect_bacalhau_publish"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    output = registered.stdout + registered.stderr
    assert registered.returncode == 0, output
    assert "Successfully registered 3 blocks" in output, output
    for block in BLOCKS:
        assert block.get_block_type_name() in output
    listed = subprocess.run(
        [str(PREFECT), "block", "type", "ls"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    for block in BLOCKS:
        assert block.get_block_type_slug() in listed.stdout, listed.stdout

    async def read() -> tuple[dict[str, Any], dict[str, set[str]]]:
        async with get_client() as client:
            types = {t.slug: t for t in await client.read_block_types()}
            schemas: dict[str, set[str]] = {}
            for schema in await client.read_block_schemas():
                if schema.block_type is not None:
                    schemas.setdefault(schema.block_type.slug, set()).add(schema.checksum)
            return types, schemas

    types, schemas = asyncio.run(read())
    for block in BLOCKS:
        slug = block.get_block_type_slug()
        assert types[slug].name == block.get_block_type_name()
        assert types[slug].description == block.get_description()
        assert types[slug].code_example == block.get_code_example()
        assert str(types[slug].documentation_url) == str(block._documentation_url)
        assert block._calculate_schema_checksum() in schemas[slug]


# --- blocks/setup.py -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup_module() -> ModuleType:
    """`blocks/setup.py`, imported as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("pbp_blocks_setup", ROOT / "blocks" / "setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _names(suffix: str) -> dict[str, str]:
    return {
        "BACALHAU_S3_BLOCK": f"s3-{suffix}",
        "BACALHAU_IPFS_BLOCK": f"ipfs-{suffix}",
        "BACALHAU_LOCAL_BLOCK": f"local-{suffix}",
    }


async def _all_block_documents() -> list[Any]:
    async with get_client() as client:
        response = await client.request(
            "POST",
            "/block_documents/filter",
            json={"block_documents": {"is_anonymous": None}, "include_secrets": False},
        )
        documents: list[Any] = response.json()
        return documents


@pytest.mark.usefixtures("prefect_server")
def test_setup_saves_aws_blocks_idempotently_without_printing_secrets(
    setup_module: ModuleType, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    env = {
        **_names(suffix),
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_SESSION_TOKEN": f"token-{SECRET}",
        "AWS_DEFAULT_REGION": "eu-central-1",
        "AWS_ENDPOINT_URL": "https://s3.example.test",
        "IPFS_API": "/dns/ipfs.example/tcp/443/https",
        "IPFS_GATEWAY": "https://gw.example/",
        "BACALHAU_LOCAL_STORAGE_DIR": str(tmp_path / "served"),
        "BACALHAU_LOCAL_PORT": "6200",
        "BACALHAU_LOCAL_ADDRESS": "results.example",
    }
    # the endpoint is made up: no bucket is created there (nothing leaves this machine)
    assert setup_module.main(["--no-create-buckets"], env) == 0
    first = asyncio.run(_all_block_documents())
    assert setup_module.main(["--no-create-buckets"], env) == 0  # again: updates in place
    second = asyncio.run(_all_block_documents())
    printed = capsys.readouterr()
    assert SECRET not in printed.out + printed.err
    assert "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN" in printed.out
    assert sorted(d["id"] for d in first) == sorted(d["id"] for d in second)
    ours = sorted(d["name"] for d in second if d["name"] and suffix in d["name"])
    assert ours == [f"ipfs-{suffix}", f"local-{suffix}", f"s3-{suffix}", f"s3-{suffix}-credentials"]

    s3 = load(S3Storage, f"s3-{suffix}")
    assert isinstance(s3.credentials, AwsCredentials)
    assert s3.credentials.aws_access_key_id == "AKIAEXAMPLE"
    assert _secret(s3.credentials.aws_secret_access_key) == SECRET
    assert s3.credentials.aws_session_token == f"token-{SECRET}"
    assert (s3.endpoint_url, s3.region_name) == ("https://s3.example.test", "eu-central-1")
    assert load(AwsCredentials, f"s3-{suffix}-credentials").region_name == "eu-central-1"
    node = load(IPFSNode, f"ipfs-{suffix}")
    assert node.api_url == "https://ipfs.example:443" and node.gateway_url == "https://gw.example"
    local = load(LocalResultServer, f"local-{suffix}")
    assert local.storage_dir == tmp_path / "served"
    assert local.base_url() == "http://results.example:6200"


@pytest.mark.usefixtures("prefect_server")
def test_setup_minio_blocks_reach_minio(
    setup_module: ModuleType, minio: MinioServer, capsys: pytest.CaptureFixture[str]
) -> None:
    suffix = uuid.uuid4().hex[:8]
    env = {
        **_names(suffix),
        "BACALHAU_S3_CREDENTIALS_BLOCK": f"minio-{suffix}",
        "MINIO_ROOT_USER": minio.user,
        "MINIO_ROOT_PASSWORD": minio.password,
        "AWS_ACCESS_KEY_ID": "ignored-when-minio-is-set",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_ENDPOINT_URL_S3": minio.endpoint,
        "AWS_ENDPOINT_URL": "http://wrong.example",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "wrong-region-1",
    }
    assert setup_module.main(["--only", "s3"], env) == 0
    printed = capsys.readouterr()
    assert minio.password not in printed.out + printed.err and SECRET not in printed.out + printed.err
    assert f"saved MinIOCredentials block 'minio-{suffix}'" in printed.out
    s3 = load(S3Storage, f"s3-{suffix}")
    assert (s3.endpoint_url, s3.region_name) == (minio.endpoint, "us-east-1")
    assert isinstance(s3.credentials, MinIOCredentials), s3.credentials
    assert s3.credentials.minio_root_user == minio.user
    buckets = {b["Name"] for b in s3.get_client().list_buckets()["Buckets"]}
    assert {"pbp-unversioned", "bacalhau-results"} <= buckets  # the deployments' bucket was created
    assert re.search(r"(created bucket|bucket) 'bacalhau-results'", printed.out), printed.out
    assert setup_module.main(["--only", "s3"], env) == 0  # again: it exists now, and says so
    assert f"bucket 'bacalhau-results' exists at {minio.endpoint}" in capsys.readouterr().out
    with pytest.raises(ValueError):  # --only s3: no IPFS block
        load(IPFSNode, f"ipfs-{suffix}")


@pytest.mark.usefixtures("prefect_server")
def test_setup_without_credentials_uses_the_default_chain(setup_module: ModuleType) -> None:
    suffix = uuid.uuid4().hex[:8]
    no_aws = ["--no-create-buckets"]  # no endpoint means AWS itself: nothing may be sent there from here
    assert setup_module.main(["--only", "s3", "--only", "local", *no_aws], _names(suffix)) == 0
    assert load(S3Storage, f"s3-{suffix}").credentials is None
    assert load(LocalResultServer, f"local-{suffix}").port == 6001
    documents = asyncio.run(_all_block_documents())
    assert not [d for d in documents if d["name"] == f"s3-{suffix}-credentials"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AWS_ACCESS_KEY_ID": "AKIA"}, "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not"),
        ({"MINIO_ROOT_PASSWORD": SECRET}, "MINIO_ROOT_PASSWORD is set but MINIO_ROOT_USER is not"),
        (
            {"AWS_ENDPOINT_URL_S3": "127.0.0.1:9000"},
            "AWS_ENDPOINT_URL_S3='127.0.0.1:9000' is not an http(s)://",
        ),
        ({"IPFS_API": "localhost:5001"}, "IPFS_API='localhost:5001' is neither"),
        ({"IPFS_GATEWAY": "gw"}, "IPFS_GATEWAY='gw' is not an http(s):// URL"),
        ({"BACALHAU_LOCAL_PORT": "70000"}, "BACALHAU_LOCAL_PORT='70000' is not a port number"),
        ({"BACALHAU_S3_BLOCK": "Bad_Name"}, "BACALHAU_S3_BLOCK='Bad_Name' is not a valid block name"),
    ],
)
def test_setup_rejects_bad_settings_naming_the_variable(
    setup_module: ModuleType, capsys: pytest.CaptureFixture[str], env: dict[str, str], message: str
) -> None:
    assert setup_module.main(["--dry-run"], env) == 2
    printed = capsys.readouterr()
    assert message in printed.err
    assert SECRET not in printed.out + printed.err


def test_setup_dry_run_saves_nothing_and_prints_no_secret(
    setup_module: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"MINIO_ROOT_USER": "root", "MINIO_ROOT_PASSWORD": SECRET, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    assert setup_module.main(["--dry-run"], env) == 0
    out = capsys.readouterr().out
    assert SECRET not in out
    assert "would save MinIOCredentials block 'bacalhau-s3-credentials'" in out
    assert "would save S3Storage block 'bacalhau-s3': endpoint http://127.0.0.1:9" in out
    assert "would save IPFSNode block 'bacalhau-ipfs'" in out
    assert "would save LocalResultServer block 'bacalhau-local'" in out


def test_setup_reports_an_unreachable_api_in_one_line_without_secrets(tmp_path: Path) -> None:
    import os

    from prefect_bacalhau_publish.testing import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_", "MINIO_"))}
    env.update(
        {
            "PREFECT_HOME": str(tmp_path),
            "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api",  # nothing listens there
            "PREFECT_CLIENT_MAX_RETRIES": "0",
            "MINIO_ROOT_USER": "root",
            "MINIO_ROOT_PASSWORD": SECRET,
        }
    )
    done = subprocess.run(
        [sys.executable, str(ROOT / "blocks" / "setup.py"), "--only", "s3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert SECRET not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("blocks/setup.py: saving failed:"), line


def test_setup_module_docstring_documents_every_variable(setup_module: ModuleType) -> None:
    source = (ROOT / "blocks" / "setup.py").read_text()
    used = set(re.findall(r'"((?:AWS|MINIO|IPFS|BACALHAU)_[A-Z0-9_]+)"', source))
    assert {"AWS_ACCESS_KEY_ID", "MINIO_ROOT_USER", "IPFS_API", "BACALHAU_LOCAL_PORT"} <= used
    doc = setup_module.__doc__ or ""
    assert not [name for name in sorted(used) if name not in doc]


def test_s3_storage_has_its_own_logo_and_documentation() -> None:
    assert "aws" not in str(S3Storage._logo_url).lower()
    assert str(S3Storage._documentation_url).endswith("README.md#s3")


def test_prefect_aws_blocks_stand_for_s3_storage() -> None:
    from prefect_aws import AwsCredentials, MinIOCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    minio = MinIOCredentials(
        minio_root_user="u",
        minio_root_password="p",
        region_name="eu-west-1",
        aws_client_parameters=AwsClientParameters(endpoint_url="http://127.0.0.1:9"),
    )
    for value in (minio, S3Bucket(bucket_name="b", credentials=minio)):
        storage = S3Storage.coerce(value)
        assert storage.credentials is minio
        assert storage.resolve() == ("http://127.0.0.1:9", "eu-west-1")
    aws = AwsCredentials(region_name="ap-south-1")
    assert S3Storage.coerce(aws).resolve(region="us-east-2") == (None, "us-east-2")
    assert S3Storage.coerce(None).credentials is None
    with pytest.raises(TypeError, match="expected an S3Storage, S3Bucket"):
        S3Storage.coerce("not a block")  # type: ignore[arg-type]


def test_blocks_read_well_in_the_ui() -> None:
    """Titles where the generated ones read badly, and logos a browser renders (not favicons)."""
    fields = IPFSNode.model_json_schema()["properties"]
    assert fields["api_address"]["title"] == "RPC API address"
    assert fields["cid_profile"]["title"] == "CID profile"
    assert S3Storage.model_json_schema()["properties"]["endpoint_url"]["title"] == "Endpoint URL"
    for block in (S3Storage, IPFSNode, LocalResultServer):
        assert str(block._logo_url).endswith((".svg", ".png")), block


def test_s3_storage_refuses_an_endpoint_without_scheme() -> None:
    from pydantic import ValidationError

    from prefect_bacalhau_publish.blocks import S3Storage

    with pytest.raises(
        ValidationError, match=r"S3 endpoint '127\.0\.0\.1:9000' has no scheme: write http://127"
    ):
        S3Storage(endpoint_url="127.0.0.1:9000")
    assert S3Storage(endpoint_url="https://127.0.0.1:9000").endpoint_url == "https://127.0.0.1:9000"
    assert S3Storage(endpoint_url="").endpoint_url is None
