"""Skipping unchanged jobs: the Prefect cache policy behind `run_job(..., reuse=True)`.

A job's cache key (`job_key`) hashes what decides its result: the command (a string or argv as given; a
callable by its cloudpickle bytes, which carry its closure's values, plus its source text when Python can
find it, since cloudpickle sends a function of an importable module by name only), `env`, the result
paths, `partition`, the publisher spec as given (placeholders such as `{executionID}` unexpanded) and where
its block sends it (S3 endpoint and region, the local server's folder and address; never credentials), and
each input's Target and *content identity* — what it holds, not where it lies:

- S3 object: the spec's `ChecksumSHA256`, else the checksum S3 reports on a HEAD (`ChecksumMode`), else
  its ETag and size; a plain result's prefix with a `ChecksumSHA256`: the path, SHA-256, size and mode of
  every file its manifest lists; any other prefix: the relative key, ETag and size of every listed object;
- IPFS: the CID; URL: the SHA-256 a HEAD declares in `Repr-Digest` (or `Digest`); inline: the data itself.

An input without one (a `local` path, a URL whose server declares no digest, an S3 object that cannot be
reached) turns reuse off for that call, with a log line saying why.

The records themselves are Prefect's: the key names a record in the task's result storage (by default
`PREFECT_LOCAL_STORAGE_PATH`, `~/.prefect/storage`), written by Prefect when the job completes. Before
handing Prefect the key, the policy reads the record there and checks that the earlier published result
still exists and is what was published (`verify_published`); a record whose result is gone or altered, or
whose job exited non-zero, is expired in place (Prefect's own `expiration`), so Prefect runs the job again
and writes a fresh record under the same key. A record that verifies is re-stored marked `reused`, so the
`JobResult` Prefect returns from it says so.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from prefect.cache_policies import CachePolicy

from .jobs import DEFAULT_RESULT_PATHS, JobResult, job_name
from .specs import (
    InlineParams,
    InputSource,
    IPFSParams,
    PublishedResult,
    PublisherSpec,
    ResultPath,
    S3Params,
    S3PreSignedParams,
    URLParams,
)

if TYPE_CHECKING:
    from prefect.context import TaskRunContext
    from prefect.results import ResultStore

__all__ = ["REUSE", "REUSE_WHEN_ASKED", "JobInputs", "NoIdentity", "Stale", "job_key", "verify_published"]

KEY_PREFIX = "bacalhau-job-"
KEY_VERSION = "prefect-bacalhau-publish/reuse/v1"
_HEAD_TIMEOUT = 30.0

_fallback_logger = logging.getLogger("prefect_bacalhau_publish.reuse")


class NoIdentity(Exception):
    """A job input whose content cannot be identified: the call runs without reuse."""


class Stale(Exception):
    """An earlier published result that no longer verifies: the job runs again."""


@dataclass
class JobInputs(CachePolicy):
    """The cache key of a `run_job` call from its command, env, result paths, publisher spec and its inputs'
    content (module docstring); a record whose published result no longer verifies is expired first.

    `flag` names a boolean parameter that must be true for the call to be cached (`run_job`'s own policy,
    `REUSE_WHEN_ASKED`, uses `reuse`); None (`REUSE`) caches every call, for
    `run_job.with_options(cache_policy=REUSE)`.
    """

    flag: str | None = None

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        if self.flag is not None and not inputs.get(self.flag):
            return None
        log = _logger()
        name = _name(inputs)
        try:
            key = job_key(inputs)
        except NoIdentity as exc:
            log.warning("job %s: reuse is off for this call: %s", name, exc)
            return None
        store = getattr(task_ctx, "result_store", None)
        if store is not None and not _check_record(store, key, inputs, name, log):
            return None
        return key


REUSE = JobInputs()
"""Cache every call of the task (`run_job.with_options(cache_policy=REUSE)`)."""
REUSE_WHEN_ASKED = JobInputs(flag="reuse")
"""`run_job`'s own policy: cache a call only when it says `reuse=True`."""


# ----------------------------------------------------------------------------------------------- key


def job_key(inputs: Mapping[str, Any]) -> str:
    """The cache key of a `run_job` call given its parameters; `NoIdentity` when an input has none."""
    identity = job_identity(inputs)
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return KEY_PREFIX + hashlib.sha256(text.encode()).hexdigest()


def job_identity(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """What the key hashes, as JSON-able data (module docstring)."""
    from .parse import as_inputs

    env = inputs.get("env") or {}
    paths = inputs.get("result_paths", DEFAULT_RESULT_PATHS)
    partition = inputs.get("partition", (0, 1))
    try:
        sources = as_inputs(inputs.get("inputs") or ())
    except Exception as exc:  # a malformed input fails the job itself, with its own message
        raise NoIdentity(f"its inputs cannot be read ({exc})") from None
    publisher = _publisher_identity(inputs.get("publisher"))
    return {
        "version": KEY_VERSION,
        "command": _command_identity(inputs.get("command")),
        "env": sorted((str(k), str(v)) for k, v in env.items()),
        "result_paths": [_result_path(p).to_bacalhau() for p in paths],
        "partition": list(partition),
        "publisher": publisher,
        "destination": _destination(publisher, inputs),
        "inputs": [input_identity(source, s3=inputs.get("s3")) for source in sources],
    }


def _command_identity(command: Any) -> Any:
    if isinstance(command, str):
        return {"shell": command}
    if callable(command):
        import cloudpickle  # type: ignore[import-untyped]

        try:
            pickled = cloudpickle.dumps(command)
        except Exception as exc:
            raise NoIdentity(f"its callable cannot be pickled ({type(exc).__name__}: {exc})") from None
        try:
            source: str | None = inspect.getsource(command)
        except (OSError, TypeError):
            source = None
        return {
            "callable": getattr(command, "__qualname__", type(command).__qualname__),
            "pickle": hashlib.sha256(pickled).hexdigest(),
            "source": source,
        }
    if isinstance(command, Sequence):
        return {"argv": [str(word) for word in command]}
    raise NoIdentity(f"its command is a {type(command).__name__}")


def _result_path(value: Any) -> ResultPath:
    return value if isinstance(value, ResultPath) else ResultPath.model_validate(value)


def _publisher_identity(publisher: Any) -> Any:
    """The spec(s) as Bacalhau JSON, placeholders as written, whatever form they were given in."""
    if publisher is None:
        return None
    if isinstance(publisher, (list, tuple)):
        return [_publisher_identity(one) for one in publisher]
    if isinstance(publisher, PublisherSpec):
        return publisher.to_bacalhau()
    from .tasks import as_publisher

    return as_publisher(publisher).to_bacalhau()


def _destination(publisher: Any, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Where the blocks send a spec that does not say (no secrets): the S3 endpoint and region, the local
    server's folder and address; so a block moved to another store does not reuse the old store's result."""
    specs = publisher if isinstance(publisher, list) else [publisher]
    kinds = {spec["Type"] for spec in specs if isinstance(spec, dict)}
    out: dict[str, Any] = {}
    if "s3" in kinds:
        from .s3access import s3_access

        try:
            access = s3_access(inputs.get("s3"))
            endpoint = access.endpoint_url or access._client_parameters().get("endpoint_url")
            region = access.region_name or getattr(access.credentials, "region_name", None)
        except Exception as exc:  # an unusable block fails the job itself, with its own message
            raise NoIdentity(f"its s3 block cannot be read ({type(exc).__name__}: {exc})") from None
        out["s3"] = [endpoint, region]
    if "local" in kinds:
        local = inputs.get("local")
        out["local"] = None if local is None else [str(local.storage_dir), local.port, local.public_address]
    return out


def input_identity(source: InputSource, *, s3: Any = None) -> dict[str, Any]:
    """Where an input lands and what it holds (module docstring); `NoIdentity` when that cannot be known."""
    params = source.source.params
    where = f"input {source.target} ({source.source.type})"
    out: dict[str, Any] = {"Target": source.relative_target}
    if isinstance(params, S3PreSignedParams):
        if not params.checksum_sha256:
            raise NoIdentity(
                f"{where} records no ChecksumSHA256, and a presigned URL cannot be asked for one"
            )
        return out | {"object": f"sha256:{params.checksum_sha256}", **_object_naming(params)}
    if isinstance(params, S3Params):
        try:
            return out | _s3_identity(params, s3)
        except NoIdentity as exc:
            raise NoIdentity(f"{where}: {exc}") from None
        except Exception as exc:
            raise NoIdentity(f"{where} cannot be identified ({type(exc).__name__}: {exc})") from None
    if isinstance(params, IPFSParams):
        return out | {"cid": params.cid}
    if isinstance(params, URLParams):
        return out | _url_identity(params, where)
    if isinstance(params, InlineParams):
        return out | {"inline": hashlib.sha256(params.url.encode()).hexdigest()}
    raise NoIdentity(
        f"{where} has no content identity (a path on this machine is not hashed); "
        "use an S3, IPFS, URL or inline input to reuse this job"
    )


def _object_naming(params: S3Params) -> dict[str, Any]:
    """How one object lands: extracted, or as a file named after its key's last part."""
    if params.extract:
        return {"extract": True}
    return {"name": PurePosixPath(params.key).name}


def _s3_identity(params: S3Params, s3: Any) -> dict[str, Any]:
    from .s3access import s3_access
    from .sources import s3 as source

    shape: dict[str, Any] = {
        "filter": params.filter,
        "partition": params.partition.model_dump(mode="json") if params.partition else None,
    }
    if not params.is_prefix:
        if params.checksum_sha256:
            return shape | {"object": f"sha256:{params.checksum_sha256}", **_object_naming(params)}
        client = s3_access(s3).get_client(params.endpoint, params.region)
        request: dict[str, Any] = {"Bucket": params.bucket, "Key": params.key, "ChecksumMode": "ENABLED"}
        if params.version_id:
            request["VersionId"] = params.version_id
        head: Mapping[str, Any] = client.head_object(**request)
        if str(head.get("ContentType", "")).startswith("application/x-directory"):
            raise NoIdentity("the key is a folder marker, listed as a prefix when fetched")
        return shape | {"object": _object_identity(head), **_object_naming(params)}
    client = s3_access(s3).get_client(params.endpoint, params.region)
    if source.has_manifest(params):
        objects = source.objects_from_manifest(client, params)
        files = sorted([o.key[len(params.key) :], o.sha256, o.size, o.mode, o.is_dir] for o in objects)
        return shape | {"manifest": files}
    listed = source.explode_key(client, params)
    entries = sorted(
        [str(source.relative_key(o.key, params.key)), o.is_dir, (o.etag or "").strip('"'), o.size]
        for o in listed
    )
    return shape | {"listing": entries}


_CHECKSUMS = ("SHA256", "CRC64NVME", "CRC32C", "CRC32", "SHA1")


def _object_identity(head: Mapping[str, Any]) -> str:
    """The strongest content identity a HEAD gives: a checksum S3 keeps for the object, else its ETag."""
    for algorithm in _CHECKSUMS:
        value = head.get(f"Checksum{algorithm}")
        if value:
            return f"{algorithm.lower()}:{value}"
    etag = str(head.get("ETag") or "").strip('"')
    if not etag:
        raise NoIdentity("S3 reports neither a checksum nor an ETag for it")
    return f"etag:{etag}:{head.get('ContentLength', 0)}"


def _url_identity(params: URLParams, where: str) -> dict[str, Any]:
    import urllib3

    from .sources.url import expected_sha256, file_name

    extract = (
        params.extract
        if params.extract is not None
        else urlparse(params.url).path.endswith((".tar.gz", ".tgz"))
    )
    try:
        response = _head(params.url)
    except urllib3.exceptions.HTTPError as exc:
        raise NoIdentity(f"{where}: HEAD {params.url} failed ({type(exc).__name__}: {exc})") from None
    if response.status != 200:
        raise NoIdentity(f"{where}: HEAD {params.url} answered HTTP {response.status}")
    try:
        digest = expected_sha256(response.headers)
    except Exception as exc:
        raise NoIdentity(f"{where}: {exc}") from None
    if digest is None:
        raise NoIdentity(f"{where}: {params.url} declares no Repr-Digest (or Digest) SHA-256")
    naming: dict[str, Any] = {"extract": True} if extract else {"name": file_name(params.url)}
    return {"sha256": digest.hex(), **naming}


def _head(url: str) -> Any:
    import urllib3

    pool = urllib3.PoolManager(timeout=urllib3.Timeout(connect=10.0, read=_HEAD_TIMEOUT), retries=False)
    try:
        return pool.request("HEAD", url, redirect=False, preload_content=True)
    finally:
        pool.clear()


# --------------------------------------------------------------------------------------- the record


def _check_record(store: ResultStore, key: str, inputs: Mapping[str, Any], name: str, log: Any) -> bool:
    """Before Prefect looks `key` up: expire a record whose published result no longer verifies; mark one
    that does as reused (and say so). False when the record cannot be read: that call runs uncached."""
    if not store.exists(key):
        log.info("job %s: no earlier result to reuse (key %s); running it", name, key)
        return True
    try:
        record = store.read(key)
        job = record.result
    except Exception as exc:
        log.warning(
            "job %s: reuse is off for this call: its record %s cannot be read (%s: %s); delete it to reuse again",
            name,
            key,
            type(exc).__name__,
            exc,
        )
        return False
    if not isinstance(job, JobResult):
        return True  # not a job's record (the policy on another task): Prefect's usual lookup
    try:
        if job.exit_code != 0:
            raise Stale(f"it exited with {job.exit_code}")
        checked = [
            verify_published(result, s3=inputs.get("s3"), ipfs=inputs.get("ipfs"))
            for result in _published(job)
        ]
    except Stale as exc:
        expired = record.metadata.model_copy(update={"expiration": datetime.now(UTC) - timedelta(seconds=1)})
        store.persist_result_record(record.model_copy(update={"metadata": expired}))
        log.info(
            "job %s: the earlier result of execution %s cannot be reused: %s; running the job again",
            name,
            job.context.execution_id,
            exc,
        )
        return True
    if not job.reused:
        store.persist_result_record(
            record.model_copy(update={"result": job.model_copy(update={"reused": True})})
        )
    log.info(
        "job %s reused: execution %s (task run %s) is unchanged, its command was not run; %s",
        name,
        job.context.execution_id,
        job.task_run_id,
        "; ".join(checked) if checked else "it published nothing",
    )
    return True


def _published(job: JobResult) -> list[PublishedResult]:
    every = getattr(job, "all_published", None)
    if every:
        return list(every)
    return [job.published] if job.published is not None else []


def verify_published(result: PublishedResult, *, s3: Any = None, ipfs: Any = None) -> str:
    """Check that a published result still exists and holds what was published; returns what was checked,
    raises `Stale` saying what is wrong (or why it cannot be checked)."""
    params = result.params
    try:
        if isinstance(params, S3PreSignedParams):
            raise Stale("a presigned result cannot be checked")
        if isinstance(params, S3Params):
            return _verify_s3(params, s3)
        if isinstance(params, IPFSParams):
            return _verify_ipfs(params.cid, ipfs)
        if isinstance(params, URLParams):
            return _verify_url(params.url)
    except Stale:
        raise
    except Exception as exc:
        raise Stale(f"its {result.type} result cannot be checked ({type(exc).__name__}: {exc})") from None
    raise Stale(f"a {result.type} result cannot be checked")


def _verify_s3(params: S3Params, s3: Any) -> str:
    from botocore.exceptions import ClientError

    from .s3access import s3_access
    from .s3errors import error_code
    from .sources import s3 as source

    where = f"s3://{params.bucket}/{params.key}"
    client = s3_access(s3).get_client(params.endpoint, params.region)
    if not params.is_prefix:
        request: dict[str, Any] = {"Bucket": params.bucket, "Key": params.key, "ChecksumMode": "ENABLED"}
        if params.version_id:
            request["VersionId"] = params.version_id
        try:
            head = client.head_object(**request)
        except ClientError as exc:
            if error_code(exc) in ("404", "NoSuchKey", "NotFound", "NoSuchVersion"):
                raise Stale(f"{where} no longer exists") from None
            raise
        got = head.get("ChecksumSHA256")
        if params.checksum_sha256 and got != params.checksum_sha256:
            raise Stale(
                f"{where} now holds other bytes (ChecksumSHA256 {got or 'none'}, published {params.checksum_sha256})"
            )
        return f"{where} is there (ChecksumSHA256 {got})" if got else f"{where} is there"
    wanted: dict[str, tuple[int, str | None]] = {}
    if source.has_manifest(params):
        try:
            objects = source.objects_from_manifest(client, params)
        except Exception as exc:
            raise Stale(f"the manifest of {where} does not verify ({exc})") from None
        wanted = {o.key: (o.size, o.etag) for o in objects if not o.is_dir}
    found: dict[str, tuple[int, str]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=params.bucket, Prefix=params.key):
        for item in page.get("Contents", []):
            found[item["Key"]] = (item.get("Size", 0), str(item.get("ETag", "")).strip('"'))
    if not found:
        raise Stale(f"{where} holds no objects any more")
    for key, (size, etag) in wanted.items():
        if key not in found:
            raise Stale(f"s3://{params.bucket}/{key} no longer exists")
        if found[key][0] != size or (etag and found[key][1] != etag.strip('"')):
            raise Stale(f"s3://{params.bucket}/{key} was replaced after publishing")
    return f"{where} is there ({len(wanted) or len(found)} object(s))"


def _verify_ipfs(cid: str, ipfs: Any) -> str:
    from .errors import FetchError
    from .kubo.node import KuboNode
    from .kubo.rpc import KuboClient

    node = ipfs if ipfs is not None else KuboNode()
    with KuboClient.from_node(node, error=FetchError) as client:
        kind = client.pin_type(cid)
    if kind is None:
        raise Stale(f"{cid} is no longer pinned on the node at {client.api_url}")
    return f"{cid} is pinned ({kind})"


def _verify_url(url: str) -> str:
    from .sources.url import expected_sha256

    response = _head(url)
    if response.status != 200:
        raise Stale(f"{url} answers HTTP {response.status}")
    digest = expected_sha256(response.headers)
    return f"{url} is there" + (f" (sha-256 {digest.hex()})" if digest else "")


# ----------------------------------------------------------------------------------------------- misc


def _name(inputs: Mapping[str, Any]) -> str:
    try:
        return job_name(inputs.get("command") or "job", inputs.get("name"))
    except Exception:
        return "job"


def _logger() -> Any:
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return _fallback_logger
