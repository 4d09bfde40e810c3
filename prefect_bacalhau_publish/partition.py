"""Bacalhau's S3 partitioning: which objects of a prefix each of a job's `count` executions fetches.

A port of Bacalhau v1.9.3's `pkg/s3/partitioning.go`: `PartitionConfig` (its fields, validation rules and
error texts) and `partition_objects` (its `PartitionObjects`: folder markers dropped, the source Key trimmed
from each object key, FNV-1a 32-bit hash of the partition key modulo `count`, unmatched keys to
partition 0). The `regex` and `date` types need Go's own semantics: patterns go through RE2 (`goregexp`,
the syntax and matching Go's `regexp` implements), layouts through a port of Go's `time.Parse`/`Format`
(`golayout`).

Known gaps, outside what S3 keys and job specs normally hold: RE2's and Go's Unicode tables may differ
by a version, and dates with a zone name or offset are read as Go reads them on a node whose local time
zone is UTC.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import SpecError
from .golayout import REFERENCE as _REFERENCE
from .golayout import go_format as _go_format
from .golayout import go_parse as _go_parse
from .goregexp import GoRegexpError, compile_go_regexp

__all__ = [
    "PARTITION_TYPES",
    "GoRegexpError",
    "PartitionConfig",
    "PartitionedSource",
    "compile_go_regexp",
    "partition_objects",
]

PARTITION_TYPES = ("none", "object", "regex", "substring", "date")
"""Bacalhau's `PartitionKeyType` values; an empty `Type` means `none`."""

_FALLBACK_PARTITION = 0
_GROUP_DELIMITER = "\x1f"  # ASCII Unit Separator, between regex capture groups
_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193
# Go's unicode.IsSpace, which strings.TrimSpace uses (Python's str.strip also strips \x1c-\x1f).
_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000" + "".join(
    map(chr, range(0x2000, 0x200B))
)


# ------------------------------------------------------------------------------------------- the model


def _go_type(value: Any) -> str:
    """The Go type encoding/json gives a JSON value, as mapstructure names it in its errors."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "map[string]interface {}"
    if isinstance(value, list | tuple):
        return "[]interface {}"
    return type(value).__name__


class PartitionConfig(BaseModel):
    """Bacalhau's `PartitionConfig` (pkg/s3/partitioning.go): how a prefix's objects are split across a
    job's executions. `Type` is one of `none`, `object`, `regex` (`Pattern`, Go RE2 syntax), `substring`
    (`StartIndex`, `EndIndex`, in characters) or `date` (`DateFormat`, a Go time layout), or empty.

    Keys are read case-insensitively, as Bacalhau's mapstructure decoder reads them; all five fields are
    written back, zero values included, as Bacalhau's `SourceSpec.ToMap` writes them.
    """

    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    type: str = Field(default="", alias="Type")
    pattern: str = Field(default="", alias="Pattern")
    start_index: int = Field(default=0, alias="StartIndex")
    end_index: int = Field(default=0, alias="EndIndex")
    date_format: str = Field(default="", alias="DateFormat")

    @model_validator(mode="before")
    @classmethod
    def _decode(cls, data: Any) -> Any:
        if isinstance(data, BaseModel) or data is None:
            return {} if data is None else data
        if not isinstance(data, Mapping):
            raise ValueError(
                f"'Partition' expected a map, got unconvertible type '{_go_type(data)}', value: '{data}'"
            )
        from .specs import _fold_keys  # specs imports this module: resolved once both are loaded

        return _fold_keys(cls, {key: value for key, value in data.items() if value is not None})  # null: zero

    @field_validator("type", "pattern", "date_format", mode="before")
    @classmethod
    def _string(cls, value: Any) -> Any:
        if not isinstance(value, str):
            raise ValueError(
                f"expected type 'string', got unconvertible type '{_go_type(value)}', value: '{value}'"
            )
        return value

    @field_validator("start_index", "end_index", mode="before")
    @classmethod
    def _integer(cls, value: Any) -> Any:
        if isinstance(value, float) and value == value and abs(value) != float("inf"):
            return int(value)  # a JSON number: mapstructure truncates it toward zero
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(
                f"expected type 'int', got unconvertible type '{_go_type(value)}', value: '{value}'"
            )
        return value

    @model_validator(mode="after")
    def _validate(self) -> PartitionConfig:
        """Bacalhau's `PartitionConfig.Validate`, with its texts."""
        kind = self.type
        if kind not in PARTITION_TYPES and kind != "":
            raise ValueError(f"unsupported partition key type {kind}")
        if kind == "regex":
            if self.pattern == "":
                raise ValueError("regex pattern cannot be empty")
            try:
                compile_go_regexp(self.pattern)
            except GoRegexpError as exc:
                raise ValueError(f"invalid regex pattern: {exc}") from None
        elif kind == "substring":
            if self.start_index < 0:
                raise ValueError("start index cannot be negative")
            if self.end_index <= self.start_index:
                raise ValueError("end index must be greater than start index")
        elif kind == "date":
            if self.date_format == "":
                raise ValueError("date format cannot be empty")
            layout = self.date_format.encode("utf-8", "surrogateescape")
            if _go_parse(layout, _go_format(_REFERENCE, layout)) is None:
                raise ValueError(f"invalid date format: {self.date_format}")
        return self


# -------------------------------------------------------------------------------------- partitioning


class PartitionedSource(Protocol):
    """What `partition_objects` reads of an S3 source: its `Key` (the prefix) and `Partition`."""

    @property
    def key(self) -> str: ...

    @property
    def partition(self) -> PartitionConfig | None: ...


def _fnv1a(data: bytes, h: int = _FNV_OFFSET) -> int:
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return h


def partition_objects(keys: Sequence[str], source: PartitionedSource, count: int, index: int) -> list[str]:
    """The keys execution `index` of `count` fetches from a listing of `source`'s prefix, in order, as
    Bacalhau's `PartitionObjects` picks them (S3Params fits `source`; no Partition means type none).

    Keys ending in `/` (folder markers) are dropped, also when `count` is 1. Raises SpecError (a
    ValueError) with Bacalhau's text when `count` < 1 or `index` is outside `0..count-1`.
    """
    config = source.partition or PartitionConfig()
    if count <= 0:
        raise SpecError("job partitions/count must be greater than 0")
    if index < 0 or index >= count:
        raise SpecError(f"partition index must be between 0 and {count - 1}")
    files = [key for key in keys if not key.endswith("/")]
    if count == 1 or config.type in ("", "none"):
        return files
    modulus = count & 0xFFFFFFFF  # Go: hash % uint32(totalPartitions)
    if modulus == 0:
        raise SpecError("runtime error: integer divide by zero")
    if config.type == "object":
        encoded = [key.encode("utf-8", "surrogateescape") for key in files]
        shared = _common_prefix(encoded)
        start = _fnv1a(shared)
        cut = len(shared)
        return [
            key
            for key, raw in zip(files, encoded, strict=True)
            if _fnv1a(raw[cut:], start) % modulus == index
        ]
    prefix = source.key.strip(_GO_SPACE).removesuffix("*")
    partition_key = _key_function(config)
    picked = []
    for key in files:
        relative = key.removeprefix(prefix).removeprefix("/")
        chosen = partition_key(relative)
        where = _FALLBACK_PARTITION if chosen is None else _fnv1a(chosen) % modulus
        if where == index:
            picked.append(key)
    return picked


def _common_prefix(items: list[bytes]) -> bytes:
    if not items:
        return b""
    low, high = min(items), max(items)
    size = 0
    for a, b in zip(low, high, strict=False):
        if a != b:
            break
        size += 1
    return low[:size]


def _key_function(config: PartitionConfig) -> Callable[[str], bytes | None]:
    """What a trimmed key is hashed by for `config`'s type; None sends the object to partition 0."""
    if config.type == "regex":
        search = compile_go_regexp(config.pattern).search

        def by_regex(key: str) -> bytes | None:
            found = search(key)
            if found is None or found.group(0) == "":
                return None
            groups = [group for group in found.groups() if group]
            chosen = _GROUP_DELIMITER.join(groups) if groups else found.group(0)
            return chosen.encode("utf-8", "surrogateescape")

        return by_regex
    if config.type == "substring":
        start, end = config.start_index, config.end_index

        def by_substring(key: str) -> bytes | None:
            if len(key) < end:
                return None
            return key[start:end].encode("utf-8", "surrogateescape")

        return by_substring
    layout = config.date_format.encode("utf-8", "surrogateescape")
    seen: dict[bytes, bytes | None] = {}

    def by_date(key: str) -> bytes | None:
        head = key.encode("utf-8", "surrogateescape")[: len(layout)]
        if head not in seen:
            parsed = _go_parse(layout, head)
            seen[head] = None if parsed is None else _go_format(parsed, layout)
        return seen[head]

    return by_date
