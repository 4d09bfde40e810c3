"""Pydantic models in Bacalhau's exact JSON shapes: publisher specs, published results, input sources.

Keys are read case-insensitively (as Bacalhau's decoders do) and written in Bacalhau's spelling
(`Type`, `Params`, `Bucket`, `VersionID`, ...) by `model_dump(mode="json", by_alias=True, exclude_none=True)`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import urlparse

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializeAsAny,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from .context import ExecutionContext
from .errors import SpecError
from .partition import PartitionConfig

if TYPE_CHECKING:
    from .parse import load_result, parse_input_string, parse_job_spec, parse_publisher_string

__all__ = [
    "EmptyParams",
    "ExecutionContext",
    "IPFSParams",
    "InlineParams",
    "InputSource",
    "LocalDirectoryParams",
    "LocalParams",
    "PublishedResult",
    "PublisherSpec",
    "ResultPath",
    "S3Params",
    "S3PreSignedParams",
    "S3PublisherParams",
    "SourceSpec",
    "TaskIO",
    "URLParams",
    "load_result",
    "parse_input_string",
    "parse_job_spec",
    "parse_publisher_string",
]


def _fold_keys(model: type[BaseModel], data: Any) -> Any:
    """Rename the keys of `data` that match a field alias or name case-insensitively to the alias."""
    if not isinstance(data, Mapping):
        return data
    wanted: dict[str, str] = {}
    for name, field in model.model_fields.items():
        alias = field.alias or name
        wanted[alias.lower()] = alias
        wanted[name.lower()] = alias
    out: dict[str, Any] = {}
    for key, value in data.items():
        canonical = wanted.get(str(key).lower(), str(key))
        if canonical in out:
            raise ValueError(f"{canonical} is given twice (keys differ only in case)")
        out[canonical] = value
    return out


def describe(exc: ValidationError, prefix: str = "") -> str:
    """A ValidationError as `Field.Path: message; ...`, one line."""
    problems = []
    for err in exc.errors():
        where = ".".join(str(part) for part in (prefix, *err["loc"]) if part != "")
        message = str(err["msg"]).removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)


class BacalhauModel(BaseModel):
    """A model whose keys are matched case-insensitively and written with Bacalhau's spelling."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _case_insensitive_keys(cls, data: Any) -> Any:
        return _fold_keys(cls, data)

    def to_bacalhau(self) -> dict[str, Any]:
        """This spec as Bacalhau's JSON object."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# --------------------------------------------------------------------------------------------- params


class EmptyParams(BacalhauModel):
    """Params of a type that takes none (`ipfs` and `local` publishers)."""


class S3PublisherParams(BacalhauModel):
    """Params of the `s3` publisher."""

    bucket: str = Field(alias="Bucket")
    key: str = Field(alias="Key")
    endpoint: str | None = Field(default=None, alias="Endpoint")
    region: str | None = Field(default=None, alias="Region")
    encoding: Literal["gzip", "plain"] | None = Field(default=None, alias="Encoding")

    @model_validator(mode="before")
    @classmethod
    def _legacy_compress(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            data = dict(data)
            compress = next((k for k in data if str(k).lower() == "compress"), None)
            if compress is not None:
                value = data.pop(compress)
                has_encoding = any(str(k).lower() == "encoding" for k in data)
                if not has_encoding and value not in (None, ""):
                    flag = value if isinstance(value, bool) else str(value).lower() in ("true", "1", "yes")
                    data["Encoding"] = "gzip" if flag else "plain"
        return data

    @field_validator("encoding", mode="before")
    @classmethod
    def _encoding(cls, value: Any) -> Any:
        if value is None or value == "":
            return None
        if isinstance(value, str) and value.lower() in ("gzip", "plain"):
            return value.lower()
        raise ValueError("invalid s3 params. encoding must be either 'plain' or 'gzip'")

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("invalid s3 params. bucket cannot be empty")
        return value

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("invalid s3 params. key cannot be empty")
        return value

    @property
    def archived(self) -> bool:
        """True when results are published as one tar.gz object (`Encoding` gzip, the default)."""
        return self.encoding != "plain"


class S3Params(BacalhauModel):
    """Params of an `s3` published result and of the `s3` input source."""

    bucket: str = Field(alias="Bucket")
    key: str = Field(default="", alias="Key")
    filter: str | None = Field(default=None, alias="Filter")
    region: str | None = Field(default=None, alias="Region")
    endpoint: str | None = Field(default=None, alias="Endpoint")
    version_id: str | None = Field(default=None, alias="VersionID")
    checksum_sha256: str | None = Field(default=None, alias="ChecksumSHA256")
    extract: bool | None = Field(default=None, alias="Extract")
    partition: PartitionConfig | None = Field(default=None, alias="Partition")

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("invalid s3 storage params: bucket cannot be empty")
        return value

    @field_validator("filter", "region", "endpoint", "version_id", "checksum_sha256", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @property
    def is_prefix(self) -> bool:
        """True when Key names a prefix (empty, or ends in `/` or `*`), as Bacalhau's S3 source decides."""
        return not self.key or self.key.endswith(("/", "*"))


class S3PreSignedParams(S3Params):
    """Params of Bacalhau's `s3PreSigned` result (`PreSignedResultSpec`, pkg/s3/types.go): a presigned GET URL
    and the S3 source spec it was made from.

    Written as Bacalhau v1.9 writes it, `{"SourceSpec": {"Bucket": ..., "Key": ..., ...}, "PreSignedURL": ...,
    "Managed": false}`, and read in that shape or flat (the S3 keys beside `PreSignedURL`, as earlier versions
    of this package wrote it; one spec may not mix the two). The S3 fields stay attributes (`params.bucket`).
    `Managed: true` (Bacalhau's managed publisher) carries an empty `SourceSpec`: then Bucket may be empty.
    """

    bucket: str = Field(default="", alias="Bucket")
    pre_signed_url: str = Field(alias="PreSignedURL")
    managed: bool = Field(default=False, alias="Managed")

    @model_validator(mode="before")
    @classmethod
    def _unnest(cls, data: Any) -> Any:
        """Bring the S3 fields of a nested `SourceSpec` up beside `PreSignedURL` (Bacalhau reads only those)."""
        if not isinstance(data, Mapping):
            return data
        nested_key = next((k for k in data if str(k).lower().replace("_", "") == "sourcespec"), None)
        if nested_key is None:
            return data
        nested = data[nested_key]
        if not isinstance(nested, Mapping):
            raise ValueError("SourceSpec must be an object with Bucket, Key, ...")
        outer = _fold_keys(cls, {k: v for k, v in data.items() if k != nested_key})
        s3_keys = {field.alias or name for name, field in S3Params.model_fields.items()}
        mixed = sorted(key for key in outer if key in s3_keys)
        if mixed:
            raise ValueError(
                f"{', '.join(mixed)} given beside SourceSpec, where Bacalhau does not read it: "
                "put the S3 fields only under SourceSpec"
            )
        return {**outer, **_fold_keys(S3Params, nested)}

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        """Replaces S3Params' check: a managed spec has no Bucket (`_source_spec` checks the others)."""
        return value

    @field_validator("pre_signed_url")
    @classmethod
    def _pre_signed_url(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("invalid s3 signed storage params: signed url cannot be empty")
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            shown = value if len(value) <= 80 else value[:80] + "…"
            raise ValueError(
                f"invalid s3 signed storage params: PreSignedURL must be an http(s) URL, got {shown!r}"
            )
        return value

    @model_validator(mode="after")
    def _source_spec(self) -> S3PreSignedParams:
        if not self.managed and not self.bucket.strip():
            raise ValueError("SourceSpec.Bucket: invalid s3 storage params: bucket cannot be empty")
        return self

    @model_serializer(mode="wrap")
    def _nest(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> dict[str, Any]:
        """Bacalhau's shape: the S3 fields under `SourceSpec`, then `PreSignedURL` and `Managed`."""
        flat: dict[str, Any] = handler(self)
        names = (
            ("PreSignedURL", "Managed", "SourceSpec")
            if info.by_alias
            else ("pre_signed_url", "managed", "source_spec")
        )
        out: dict[str, Any] = {names[2]: {k: v for k, v in flat.items() if k not in names[:2]}}
        for name in names[:2]:
            if name in flat:
                out[name] = flat[name]
        return out


class IPFSParams(BacalhauModel):
    """Params of an `ipfs` published result and input source."""

    cid: str = Field(alias="CID")

    @field_validator("cid")
    @classmethod
    def _cid(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("invalid ipfs params: CID cannot be empty")
        return value


class URLParams(BacalhauModel):
    """Params of a `urlDownload` published result (the local publisher's) and input source."""

    url: str = Field(alias="URL")
    extract: bool | None = Field(default=None, alias="Extract")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if urlparse(value).scheme not in ("http", "https"):
            raise ValueError(f"invalid urlDownload params: URL must be http(s), got {value!r}")
        return value


class InlineParams(BacalhauModel):
    """Params of Bacalhau's `inline` input source (pkg/storage/inline): the data itself as an RFC 2397 `data:`
    URL, checked when the spec is read; `application/gzip` data is a tar.gz to extract at Target."""

    url: str = Field(alias="URL")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        from .sources.inline import decode_data_url

        if not value.strip():
            raise ValueError("invalid inline params: url cannot be empty")
        decode_data_url(value)
        return value


class LocalParams(BacalhauModel):
    """Params of the `local` input source and of `localDirectory`, its deprecated alias (Bacalhau v1.9)."""

    source_path: str = Field(alias="SourcePath")
    read_write: bool | None = Field(default=None, alias="ReadWrite")
    create_as: Literal["noCreate", "dir", "file"] | None = Field(default=None, alias="CreateAs")

    @field_validator("source_path")
    @classmethod
    def _source_path(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("invalid local params: SourcePath cannot be empty")
        return value

    @field_validator("read_write", mode="before")
    @classmethod
    def _read_write(cls, value: Any) -> Any:
        # Bacalhau's DecodeSpec: a string ReadWrite is true only when it is exactly "true"
        return value == "true" if isinstance(value, str) else value

    @field_validator("create_as", mode="before")
    @classmethod
    def _create_as(cls, value: Any) -> Any:
        if value is None or value == "":
            return None
        for known in ("dir", "file", "noCreate"):
            if isinstance(value, str) and value.lower() == known.lower():
                return known
        raise ValueError(f"invalid CreateAs value {value}; CreateAs must be one of [dir, file, noCreate]")


LocalDirectoryParams = LocalParams


# ---------------------------------------------------------------------------------------- type specs

_PUBLISHER_PARAMS: dict[str, type[BacalhauModel]] = {
    "s3": S3PublisherParams,
    "ipfs": EmptyParams,
    "local": EmptyParams,
}
_RESULT_PARAMS: dict[str, type[BacalhauModel]] = {
    "s3": S3Params,
    "s3PreSigned": S3PreSignedParams,
    "ipfs": IPFSParams,
    "urlDownload": URLParams,
}
_SOURCE_PARAMS: dict[str, type[BacalhauModel]] = {
    **_RESULT_PARAMS,
    "local": LocalParams,
    "localDirectory": LocalParams,
    "inline": InlineParams,
}


def _canonical_type(kind: str, value: Any, table: Mapping[str, type[BacalhauModel]]) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{kind} Type is missing; supported types: {', '.join(table)}")
    for name in table:
        if name.lower() == value.strip().lower():
            return name
    raise ValueError(f"unsupported {kind} type {value!r}; supported types: {', '.join(table)}")


class _TypedSpec(BacalhauModel):
    """`{"Type": ..., "Params": {...}}` with Params validated by the model registered for Type."""

    _kind: ClassVar[str]
    _table: ClassVar[Mapping[str, type[BacalhauModel]]]

    type: str = Field(alias="Type")
    params: SerializeAsAny[BacalhauModel] = Field(default_factory=EmptyParams, alias="Params")

    @model_validator(mode="before")
    @classmethod
    def _typed_params(cls, data: Any) -> Any:
        data = _fold_keys(cls, data)
        if isinstance(data, BaseModel):
            return data
        if not isinstance(data, Mapping):
            raise ValueError(f"a {cls._kind} spec must be an object with Type and Params")
        data = dict(data)
        kind = _canonical_type(cls._kind, data.get("Type"), cls._table)
        data["Type"] = kind
        params = data.get("Params")
        params_model = cls._table[kind]
        if params is None:
            params = {}
        if not isinstance(params, params_model):
            try:
                data["Params"] = params_model.model_validate(params)
            except ValidationError as exc:
                raise ValueError(f"invalid {kind} {cls._kind} spec: {describe(exc, 'Params')}") from None
        return data


class PublisherSpec(_TypedSpec):
    """Where a job's results go: Bacalhau's publisher `{"Type": "s3"|"ipfs"|"local", "Params": {...}}`."""

    _kind = "publisher"
    _table = _PUBLISHER_PARAMS

    @property
    def s3(self) -> S3PublisherParams:
        """The S3 params; raises SpecError for another type."""
        if not isinstance(self.params, S3PublisherParams):
            raise SpecError(f"invalid publisher type. expected s3, but received: {self.type}")
        return self.params


class SourceSpec(_TypedSpec):
    """Bacalhau's storage source `{"Type": "s3"|"ipfs"|"urlDownload"|"local"|..., "Params": {...}}`."""

    _kind = "input source"
    _table = _SOURCE_PARAMS


class PublishedResult(_TypedSpec):
    """Where a published result now lives: `s3` (Bucket, Key, ...), `ipfs` (CID) or `urlDownload` (URL)."""

    _kind = "published result"
    _table = _RESULT_PARAMS

    @property
    def archived(self) -> bool:
        """True when the result is one tar.gz (S3 gzip, local); False for an S3 prefix or an IPFS folder."""
        if isinstance(self.params, S3PreSignedParams) and self.params.managed:
            return True  # Bacalhau's managed publisher always uploads `<job>/<execution>.tar.gz`
        if isinstance(self.params, S3Params):
            return not self.params.is_prefix
        return isinstance(self.params, URLParams)

    def to_input_source(self, target: str, *, alias: str | None = None) -> InputSource:
        """The input source that hands this result to the next job at `target` (archives get `Extract`)."""
        params = self.params
        if isinstance(params, S3Params):
            source_params: BacalhauModel = params.model_copy(
                update={"extract": True if self.archived else None}
            )
        elif isinstance(params, URLParams):
            source_params = params.model_copy(update={"extract": True})
        else:
            source_params = params
        source = SourceSpec.model_validate({"Type": self.type, "Params": source_params})
        return InputSource.model_validate({"Alias": alias, "Source": source, "Target": target})


class InputSource(BacalhauModel):
    """Bacalhau's `{"Alias"?: ..., "Source": {"Type": ..., "Params": ...}, "Target": "/inputs/..."}`."""

    alias: str | None = Field(default=None, alias="Alias")
    source: SourceSpec = Field(alias="Source")
    target: str = Field(alias="Target")

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        parts = [p for p in value.replace("\\", "/").split("/") if p not in ("", ".")]
        if not parts:
            raise ValueError("input source Target cannot be empty or '/'")
        if ".." in parts:
            raise ValueError(f"input source Target must not contain '..': {value!r}")
        return value

    @classmethod
    def inline(cls, path: str | os.PathLike[str], target: str, *, alias: str | None = None) -> InputSource:
        """An `inline` input carrying `path` in the spec, as Bacalhau's inline storage `Upload` makes it: a file
        of at most 512 bytes as base64 data (it lands as one file at Target), a bigger file or a folder as a
        base64 tar.gz (it lands at Target/<its name>). SpecError when the data URL would exceed 1 MiB, or
        `path` cannot be read or holds a symlink, a special file or a file over 10 MiB (`sources.inline`)."""
        from .sources.inline import encode_path

        data = {"Alias": alias, "Source": {"Type": "inline", "Params": {"URL": encode_path(path)}}}
        try:
            return cls.model_validate({**data, "Target": target})
        except ValidationError as exc:
            raise SpecError(f"invalid inline input for {os.fspath(path)}: {describe(exc)}") from None

    @property
    def relative_target(self) -> str:
        """Target with its leading `/` dropped, the path under a job's working folder."""
        return "/".join(p for p in self.target.split("/") if p not in ("", "."))


class ResultPath(BacalhauModel):
    """Bacalhau's `{"Name": "outputs", "Path": "/outputs"}`."""

    name: str = Field(alias="Name", min_length=1)
    path: str = Field(alias="Path", min_length=1)

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"result path must be absolute, got {value!r}")
        return value


class TaskIO(BacalhauModel):
    """What one task of a Bacalhau job spec publishes and reads, and the job's `Count` (its executions: with
    a partitioned S3 input, `run_partitioned(command, io.count, ...)` runs them as Bacalhau would)."""

    publisher: PublisherSpec | None = Field(default=None, alias="Publisher")
    inputs: list[InputSource] = Field(default_factory=list, alias="InputSources")
    result_paths: list[ResultPath] = Field(default_factory=list, alias="ResultPaths")
    count: int = Field(default=1, alias="Count")


# ----------------------------------------------------------------------------- parsers, re-exported

_PARSERS = frozenset({"load_result", "parse_input_string", "parse_job_spec", "parse_publisher_string"})


def __getattr__(name: str) -> Any:
    """The readers that moved to `parse`, imported on first use (parse imports this module)."""
    if name in _PARSERS:
        from . import parse

        value = getattr(parse, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
