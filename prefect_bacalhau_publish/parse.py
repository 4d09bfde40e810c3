"""Readers that turn user text and objects into specs, raising SpecError for anything malformed.

Bacalhau's CLI `-p` (publisher) and `-i` (input source) syntax, the v1 job spec (YAML or JSON), and
published results from JSON/YAML text, a file, or a parsed object. The models live in `specs`.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

from pydantic import BaseModel, ValidationError

from .errors import SpecError
from .specs import InputSource, PublishedResult, PublisherSpec, TaskIO, describe

if TYPE_CHECKING:  # YAML is imported where a text is read (12 ms of every command's start-up otherwise)
    import yaml

__all__ = [
    "as_inputs",
    "load_result",
    "parse_input_string",
    "parse_job_spec",
    "parse_publisher_string",
    "validate_spec",
]

_M = TypeVar("_M", bound=BaseModel)


def validate_spec(model: type[_M], data: Any, context: str = "") -> _M:
    """`model.model_validate(data)`, raising SpecError (`context: Field.Path: message`) instead of ValidationError."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = describe(exc)
        raise SpecError(f"{context}: {problems}" if context else problems) from None


def parse_publisher_string(text: str) -> PublisherSpec:
    """Read Bacalhau's CLI `-p` syntax: `ipfs`, `local`, `s3://bucket/key,opt=endpoint=...,opt=region=...`."""
    try:
        fields = next(csv.reader([text.strip()]))
    except (csv.Error, StopIteration) as exc:
        raise SpecError(f"invalid publisher: {text!r}: {exc}") from None
    destination = ""
    options: dict[str, str] = {}
    for index, field in enumerate(fields):
        if "=" not in field:
            if index == 0:
                destination = field
                continue
            raise SpecError(f"invalid publisher option: {field}. Must be a key=value pair")
        name, value = field.split("=", 1)
        if name in ("target", "dst", "destination"):
            destination = value
        elif name in ("opt", "option"):
            if "=" not in value:
                raise SpecError(f"invalid publisher option: {field}. Must be opt=key=value")
            key, option_value = value.split("=", 1)
            options[key] = option_value
        else:
            raise SpecError(f"invalid publisher option: {field}")
    parsed = urlparse(destination)
    scheme = (parsed.scheme or destination).lower()
    params: dict[str, Any] = {}
    if scheme == "s3":
        params["bucket"] = parsed.netloc
        params["key"] = parsed.path.lstrip("/")
    elif scheme not in ("ipfs", "local"):
        raise SpecError(
            f"unknown publisher type: {scheme or destination!r}; supported: s3://bucket/key, ipfs, local"
        )
    params.update(options)
    return validate_spec(PublisherSpec, {"Type": scheme, "Params": params})


def as_inputs(inputs: Sequence[InputSource | Mapping[str, Any] | str]) -> list[InputSource]:
    """Input sources from themselves, their Bacalhau JSON objects or Bacalhau's CLI `-i` syntax; SpecError
    naming the index of the first malformed one."""
    if isinstance(inputs, (str, Mapping, InputSource)):
        inputs = [inputs]
    out: list[InputSource] = []
    for index, item in enumerate(inputs):
        if isinstance(item, InputSource):
            out.append(item)
        elif isinstance(item, str):
            out.append(parse_input_string(item))
        elif isinstance(item, Mapping):
            out.append(validate_spec(InputSource, item, f"invalid input [{index}]"))
        else:
            raise SpecError(
                f"invalid input [{index}]: {type(item).__name__}; give an InputSource, its JSON object or "
                "an s3:// / ipfs:// / http(s):// string"
            )
    return out


def parse_input_string(text: str, target: str | None = None) -> InputSource:
    """Read Bacalhau's CLI `-i` syntax: `s3://bucket/key[,opt=k=v...][,dst=/inputs/x]`, `ipfs://CID`, URL."""
    try:
        fields = next(csv.reader([text.strip()]))
    except (csv.Error, StopIteration) as exc:
        raise SpecError(f"invalid input source: {text!r}: {exc}") from None
    if not fields:
        raise SpecError("input source is empty; supported: s3://, ipfs://, http(s)://")
    uri, options = fields[0], {}
    for field in fields[1:]:
        name, _, value = field.partition("=")
        if name in ("target", "dst", "destination"):
            target = value
        elif name in ("opt", "option") and "=" in value:
            key, option_value = value.split("=", 1)
            options[key] = option_value
        else:
            raise SpecError(f"invalid input option: {field}")
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        params: dict[str, Any] = {"Bucket": parsed.netloc, "Key": parsed.path.lstrip("/"), **options}
        kind = "s3"
    elif parsed.scheme == "ipfs":
        params, kind = {"CID": parsed.netloc or parsed.path.lstrip("/"), **options}, "ipfs"
    elif parsed.scheme in ("http", "https"):
        params, kind = {"URL": uri, **options}, "urlDownload"
    else:
        raise SpecError(f"unknown input source: {uri!r}; supported: s3://, ipfs://, http(s)://")
    return validate_spec(
        InputSource, {"Source": {"Type": kind, "Params": params}, "Target": target or "/inputs"}
    )


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: the problem and where."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def _get(mapping: Mapping[str, Any], name: str) -> Any:
    """The value of `name` in `mapping`, its key matched case-insensitively; None when absent."""
    for key, value in mapping.items():
        if str(key).lower() == name.lower():
            return value
    return None


def parse_job_spec(text: str) -> dict[str, TaskIO]:
    """Read the Publisher / InputSources / ResultPaths of each task of a Bacalhau v1 job spec (YAML or JSON)."""
    import yaml

    try:
        document = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise SpecError(f"job spec is neither valid JSON nor YAML: {exc}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"job spec is neither valid JSON nor YAML: {_yaml_problem(exc)}") from None
    if not isinstance(document, Mapping):
        raise SpecError("job spec must be a mapping with a Tasks list")
    job = _get(document, "Job") if _get(document, "Tasks") is None else document
    tasks = _get(job, "Tasks") if isinstance(job, Mapping) else None
    if not isinstance(tasks, list) or not tasks:
        raise SpecError("job spec has no Tasks")
    count = _get(job, "Count")
    if count is None:
        count = 1  # as Bacalhau: a batch job without Count runs once
    if isinstance(count, bool) or not isinstance(count, int):
        raise SpecError(f"job spec Count must be a whole number, got {count!r}")
    if count < 0:
        raise SpecError("job count must be >= 0")
    out: dict[str, TaskIO] = {}
    for index, task in enumerate(tasks):
        if not isinstance(task, Mapping):
            raise SpecError(f"Tasks[{index}] must be a mapping")
        name = _get(task, "Name") or f"task-{index}"
        if str(name) in out:
            raise SpecError(f"Tasks[{index}]: task name {name!r} is used twice")
        io = validate_spec(
            TaskIO,
            {
                "Publisher": _get(task, "Publisher") or None,
                "InputSources": _get(task, "InputSources") or [],
                "ResultPaths": _get(task, "ResultPaths") or [],
                "Count": count,
            },
            f"Tasks[{index}] ({name})",
        )
        names = [p.name for p in io.result_paths]
        if len(set(names)) != len(names):
            raise SpecError(f"Tasks[{index}] ({name}): ResultPaths names must be unique")
        out[str(name)] = io
    return out


def _json_object(text: str) -> Any:
    """`text` parsed as JSON when it is a JSON object (what `publish` prints), else None (then YAML)."""
    if not text.lstrip().startswith("{"):
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def load_result(obj: str | bytes | os.PathLike[str] | Mapping[str, Any]) -> PublishedResult:
    """A published result from a JSON/YAML text, a file path holding one, or an already-parsed object."""
    if isinstance(obj, Mapping):
        data: Any = obj
    else:
        try:
            if isinstance(obj, os.PathLike):
                with open(obj, encoding="utf-8") as handle:
                    text = handle.read()
            else:
                text = obj.decode() if isinstance(obj, bytes) else obj
        except UnicodeDecodeError as exc:
            raise SpecError(f"published result is not UTF-8 text: {exc}") from None
        data = _json_object(text)
        if data is None:
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise SpecError(f"published result is neither JSON nor YAML: {_yaml_problem(exc)}") from None
    return validate_spec(PublishedResult, data, "invalid published result")
