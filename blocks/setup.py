"""Save the Prefect block documents the deployments in `flows/prefect.yaml` need, from environment variables.

Usage (from anywhere; the blocks go to the Prefect API of the current profile, or `PREFECT_API_URL`):

    python blocks/setup.py                 # save all three blocks (and the S3 credentials block)
    python blocks/setup.py --only s3       # just the S3 blocks (repeat --only for more)
    python blocks/setup.py --dry-run       # show what would be saved, save nothing
    python blocks/setup.py --no-create-buckets   # do not create the deployments' buckets

With the S3 block it also creates, when missing, every bucket the deployments in `flows/prefect.yaml` use
(their `bucket` parameter), so the first scheduled run does not fail on a missing bucket; it says which it
created. Skip that with `--no-create-buckets` where these credentials may not create buckets.

Re-running updates the same block documents in place (`save(name, overwrite=True)`); it never duplicates
them. Secret values are never printed: the output names the variables that were read, not their values.

S3 (block `bacalhau-s3`, an `S3Storage`; its credentials are saved as a block of their own,
`bacalhau-s3-credentials`, and referenced from it, so they can be edited or rotated in the Prefect UI):

    MINIO_ROOT_USER, MINIO_ROOT_PASSWORD   both set: a prefect-aws `MinIOCredentials` block (MinIO's root
                                           user); these win over the AWS_* keys below
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
                                           both set: a prefect-aws `AwsCredentials` block
    AWS_SESSION_TOKEN                      optional, with the AWS keys (temporary credentials)
    AWS_PROFILE                            no keys set: an `AwsCredentials` block naming this profile
                                           of ~/.aws/credentials
                                           nothing set at all: no credentials block; boto3's default chain
                                           (environment, ~/.aws, instance role) is used when the flow runs
    AWS_REGION, else AWS_DEFAULT_REGION    region of the buckets (e.g. us-east-1)
    AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL
                                           S3 endpoint for MinIO or another S3-compatible store, e.g.
                                           http://127.0.0.1:9000 (unset: AWS)

IPFS (block `bacalhau-ipfs`, an `IPFSNode`):

    IPFS_API                               the Kubo RPC API, a multiaddr (/ip4/127.0.0.1/tcp/5001) or an
                                           http(s):// URL (default /ip4/127.0.0.1/tcp/5001)
    IPFS_GATEWAY                           HTTP gateway base URL for links to results (e.g. http://127.0.0.1:8080)

Local result server (block `bacalhau-local`, a `LocalResultServer`):

    BACALHAU_LOCAL_STORAGE_DIR             folder the archives are written to and served from
    BACALHAU_LOCAL_PORT                    port of the result server (default 6001)
    BACALHAU_LOCAL_ADDRESS                 host/IP put in result URLs, or an address type (private, public,
                                           loopback, ...), as Bacalhau's local publisher takes it

Block names (defaults in brackets; the flows take the S3 block name as their `s3_block` parameter):

    BACALHAU_S3_BLOCK [bacalhau-s3]        BACALHAU_S3_CREDENTIALS_BLOCK [<S3 block name>-credentials]
    BACALHAU_IPFS_BLOCK [bacalhau-ipfs]    BACALHAU_LOCAL_BLOCK [bacalhau-local]

Exit status: 0 when every block was saved, 2 for a bad setting (the message names the variable), 1 when the
Prefect API refused or could not be reached.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("s3", "ipfs", "local")
REPO = Path(__file__).resolve().parents[1]


class SettingError(ValueError):
    """An environment variable holds something unusable; the message names the variable, never a secret."""


@dataclass
class Plan:
    """One block document to save: its name, the block object, and how to describe it without secrets."""

    kind: str
    name: str
    block: Any
    summary: str
    nested: list[Plan] = field(default_factory=list)


def _get(env: Mapping[str, str], *names: str) -> str | None:
    """The first of `names` set to a non-blank value in `env`, stripped."""
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return None


def _pair(env: Mapping[str, str], first: str, second: str) -> tuple[str, str] | None:
    a, b = _get(env, first), _get(env, second)
    if a is None and b is None:
        return None
    if a is None or b is None:
        missing, given = (first, second) if a is None else (second, first)
        raise SettingError(f"{given} is set but {missing} is not: set both, or neither")
    return a, b


def _name(env: Mapping[str, str], variable: str, default: str) -> str:
    value = _get(env, variable) or default
    if not all(c.isalnum() or c == "-" for c in value) or value != value.lower():
        raise SettingError(
            f"{variable}={value!r} is not a valid block name (lower-case letters, digits and dashes only)"
        )
    return value


def s3_plan(env: Mapping[str, str]) -> Plan:
    """The S3Storage block (and its nested credentials block) the environment describes."""
    from prefect_aws import AwsCredentials, MinIOCredentials
    from pydantic import SecretStr

    from prefect_bacalhau_publish import S3Storage

    name = _name(env, "BACALHAU_S3_BLOCK", "bacalhau-s3")
    creds_name = _name(env, "BACALHAU_S3_CREDENTIALS_BLOCK", f"{name}-credentials")
    region = _get(env, "AWS_REGION", "AWS_DEFAULT_REGION")
    endpoint = _get(env, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        variable = "AWS_ENDPOINT_URL_S3" if _get(env, "AWS_ENDPOINT_URL_S3") else "AWS_ENDPOINT_URL"
        raise SettingError(f"{variable}={endpoint!r} is not an http(s):// URL")
    minio = _pair(env, "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD")
    aws = _pair(env, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    token = _get(env, "AWS_SESSION_TOKEN")
    profile = _get(env, "AWS_PROFILE")
    nested: list[Plan] = []
    credentials: AwsCredentials | MinIOCredentials | None = None
    if minio is not None:
        credentials = MinIOCredentials(
            minio_root_user=minio[0], minio_root_password=SecretStr(minio[1]), region_name=region
        )
        source = "MinIOCredentials from MINIO_ROOT_USER/MINIO_ROOT_PASSWORD"
    elif aws is not None:
        credentials = AwsCredentials(
            aws_access_key_id=aws[0],
            aws_secret_access_key=SecretStr(aws[1]),
            aws_session_token=token,
            region_name=region,
        )
        source = "AwsCredentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY" + (
            "/AWS_SESSION_TOKEN" if token else ""
        )
    elif profile is not None:
        credentials = AwsCredentials(profile_name=profile, region_name=region)
        source = f"AwsCredentials with AWS_PROFILE={profile}"
    else:
        source = "none (boto3's default credential chain when the flow runs)"
    if credentials is not None:
        nested.append(Plan("s3-credentials", creds_name, credentials, source))
    block = S3Storage(credentials=credentials, endpoint_url=endpoint, region_name=region)
    summary = f"endpoint {endpoint or 'AWS'}, region {region or '(boto3 default)'}, credentials: " + (
        f"block '{creds_name}' ({source})" if credentials is not None else source
    )
    return Plan("s3", name, block, summary, nested)


def ipfs_plan(env: Mapping[str, str]) -> Plan:
    """The IPFSNode block the environment describes."""
    from prefect_bacalhau_publish import IPFSNode
    from prefect_bacalhau_publish.blocks import multiaddr_to_url

    name = _name(env, "BACALHAU_IPFS_BLOCK", "bacalhau-ipfs")
    api = _get(env, "IPFS_API") or "/ip4/127.0.0.1/tcp/5001"
    try:
        url = multiaddr_to_url(api)
    except ValueError:
        raise SettingError(f"IPFS_API={api!r} is neither an API multiaddr nor an http(s):// URL") from None
    gateway = _get(env, "IPFS_GATEWAY")
    if gateway is not None and not gateway.startswith(("http://", "https://")):
        raise SettingError(f"IPFS_GATEWAY={gateway!r} is not an http(s):// URL")
    block = IPFSNode(api_address=api, gateway_url=gateway.rstrip("/") if gateway else None)
    return Plan("ipfs", name, block, f"API {url}, gateway {gateway or '(none: links use https://ipfs.io)'}")


def local_plan(env: Mapping[str, str]) -> Plan:
    """The LocalResultServer block the environment describes."""
    from prefect_bacalhau_publish import LocalResultServer

    name = _name(env, "BACALHAU_LOCAL_BLOCK", "bacalhau-local")
    values: dict[str, Any] = {}
    storage = _get(env, "BACALHAU_LOCAL_STORAGE_DIR")
    if storage is not None:
        values["storage_dir"] = Path(storage).expanduser().absolute()
    port = _get(env, "BACALHAU_LOCAL_PORT")
    if port is not None:
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise SettingError(f"BACALHAU_LOCAL_PORT={port!r} is not a port number (1-65535)")
        values["port"] = int(port)
    address = _get(env, "BACALHAU_LOCAL_ADDRESS")
    if address is not None:
        values["public_address"] = address
    block = LocalResultServer(**values)
    summary = f"storage {block.storage_dir}, results served as {block.base_url()}/..."
    return Plan("local", name, block, summary)


PLANNERS: dict[str, Callable[[Mapping[str, str]], Plan]] = {
    "s3": s3_plan,
    "ipfs": ipfs_plan,
    "local": local_plan,
}


def plan_blocks(env: Mapping[str, str], only: Sequence[str] = KINDS) -> list[Plan]:
    """Every block document to save for the kinds in `only`, from `env` (raises SettingError)."""
    return [PLANNERS[kind](env) for kind in KINDS if kind in only]


def save_blocks(plans: Sequence[Plan], *, echo: Callable[[str], None] = print) -> dict[str, str]:
    """Save each plan (nested credentials first, so the parent references them); returns name → doc id."""
    saved: dict[str, str] = {}
    for plan in plans:
        for nested in plan.nested:
            saved[nested.name] = str(nested.block.save(nested.name, overwrite=True))
            echo(f"saved {type(nested.block).__name__} block '{nested.name}': {nested.summary}")
        saved[plan.name] = str(plan.block.save(plan.name, overwrite=True))
        echo(f"saved {type(plan.block).__name__} block '{plan.name}': {plan.summary}")
    return saved


def deployment_buckets(prefect_file: Path = REPO / "flows" / "prefect.yaml") -> list[str]:
    """The `bucket` parameter of every deployment in `prefect_file`, in order, once each."""
    import yaml

    document = yaml.safe_load(prefect_file.read_text())
    found: list[str] = []
    for deployment in document.get("deployments") or []:
        bucket = (deployment.get("parameters") or {}).get("bucket")
        if isinstance(bucket, str) and bucket not in found:
            found.append(bucket)
    return found


def create_buckets(storage: Any, buckets: Sequence[str], *, echo: Callable[[str], None] = print) -> None:
    """Create each bucket that does not exist yet at the S3 block's endpoint, saying what it did."""
    from botocore.exceptions import ClientError

    from prefect_bacalhau_publish.s3errors import error_code

    client = storage.get_client()
    endpoint, region = storage.resolve()
    where = endpoint or "AWS"
    for bucket in buckets:
        try:
            client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            if error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise
            extra = (
                {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
            )
            client.create_bucket(Bucket=bucket, **extra)
            echo(f"created bucket '{bucket}' at {where} (used by flows/prefect.yaml)")
        else:
            echo(f"bucket '{bucket}' exists at {where}")


def _api_description() -> str:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    return f"the Prefect API at {url}" if url else "the local Prefect database (PREFECT_API_URL is not set)"


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Parse the command line, plan the blocks from the environment, save them; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python blocks/setup.py",
        description="Save the Prefect blocks the bacalhau deployments need, from environment variables "
        "(see the module docstring for the variables).",
    )
    parser.add_argument(
        "--only", action="append", choices=KINDS, help="save only these blocks (repeatable; default: all)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print what would be saved, save nothing")
    parser.add_argument(
        "--no-create-buckets",
        action="store_true",
        help="do not create the buckets the deployments in flows/prefect.yaml use",
    )
    args = parser.parse_args(argv)
    from pydantic import ValidationError

    try:
        plans = plan_blocks(os.environ if env is None else env, args.only or KINDS)
    except SettingError as exc:
        print(f"blocks/setup.py: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:  # name the field and the problem, never the (possibly secret) value
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"
            for error in exc.errors(include_input=False)
        )
        print(f"blocks/setup.py: invalid {exc.title} setting: {problems}", file=sys.stderr)
        return 2
    if args.dry_run:
        for plan in plans:
            for nested in plan.nested:
                print(f"would save {type(nested.block).__name__} block '{nested.name}': {nested.summary}")
            print(f"would save {type(plan.block).__name__} block '{plan.name}': {plan.summary}")
        return 0
    print(f"saving blocks to {_api_description()}")
    try:
        save_blocks(plans)
    except Exception as exc:  # the API refused or is unreachable: one line, no traceback, no secrets
        print(f"blocks/setup.py: saving failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    s3 = [plan for plan in plans if plan.kind == "s3"]
    if s3 and not args.no_create_buckets:
        from prefect_bacalhau_publish.s3errors import explain, is_client_error

        buckets = deployment_buckets()
        try:
            create_buckets(s3[0].block, buckets)
        except Exception as exc:
            if not is_client_error(exc):
                raise
            endpoint = s3[0].block.resolve()[0]
            print(
                "blocks/setup.py: "
                + explain(exc, action="create", bucket=", ".join(buckets), endpoint=endpoint)
                + " (or rerun with --no-create-buckets)",
                file=sys.stderr,
            )
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
