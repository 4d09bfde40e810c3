"""A bad spec from user input raises SpecError naming the field, never pydantic's ValidationError."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from prefect_bacalhau_publish import parse, specs
from prefect_bacalhau_publish.errors import SpecError
from prefect_bacalhau_publish.specs import load_result, parse_input_string, parse_job_spec
from prefect_bacalhau_publish.tasks import as_publisher


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"Type": "s3", "Params": {"Key": "k"}}, "invalid publisher: .*Params.Bucket: Field required"),
        ({"Type": "s3", "Params": {"Bucket": "", "Key": "k"}}, r"Params\.Bucket: .*bucket cannot be empty"),
        ({"Type": "s3", "Params": {"Bucket": "b", "Key": "k", "Encoding": "zstd"}}, r"Params\.Encoding: "),
        ({"Type": "s3", "Params": ["b"]}, r"Params: Input should be a valid dictionary"),
        ({"Params": {}}, "publisher Type is missing"),
        ({"Type": "noop"}, "unsupported publisher type 'noop'"),
    ],
)
def test_as_publisher_bad_dict_raises_spec_error(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message) as caught:
        as_publisher(spec)
    assert not isinstance(caught.value, ValidationError)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_as_publisher_bad_string_raises_spec_error() -> None:
    with pytest.raises(SpecError, match=r"Params\.Bucket: .*bucket cannot be empty"):
        as_publisher("s3:///key")


def test_as_publisher_good_inputs_unchanged() -> None:
    spec = as_publisher({"type": "S3", "params": {"bucket": "b", "key": "k"}})
    assert spec.to_bacalhau() == {"Type": "s3", "Params": {"Bucket": "b", "Key": "k"}}
    assert as_publisher(spec) is spec
    assert as_publisher("s3://b/k") == spec


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"Type": "s3", "Params": {"Key": "k"}},
            r"invalid published result: .*Params\.Bucket: Field required",
        ),
        ({"Type": "ipfs", "Params": {"CID": " "}}, r"Params\.CID: .*CID cannot be empty"),
        ({"Type": "urlDownload", "Params": {"URL": "file:///x"}}, r"Params\.URL: .*URL must be http"),
        ({"Type": "local"}, "unsupported published result type 'local'"),
    ],
)
def test_load_result_bad_dict_raises_spec_error(data: dict[str, Any], message: str, tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    for source in (data, json.dumps(data), json.dumps(data).encode(), path):
        with pytest.raises(SpecError, match=message) as caught:
            load_result(source)
        assert not isinstance(caught.value, ValidationError)
        assert caught.value.__cause__ is None


def test_load_result_bad_text_raises_spec_error() -> None:
    with pytest.raises(SpecError, match="neither JSON nor YAML"):
        load_result("{Type: [")
    with pytest.raises(SpecError, match="not UTF-8"):
        load_result(b"\xff\xfe")
    with pytest.raises(SpecError, match="must be an object"):
        load_result("")


def test_parse_input_string_errors_are_spec_errors() -> None:
    with pytest.raises(SpecError, match="input source is empty"):
        parse_input_string("  ")
    with pytest.raises(SpecError, match=re.escape("Target: input source Target must not contain '..'")):
        parse_input_string("ipfs://Qm,dst=/inputs/../x")
    with pytest.raises(SpecError, match=r"Source: .*Params\.CID: .*CID cannot be empty"):
        parse_input_string("ipfs://")


def test_parse_job_spec_task_names_compare_as_text() -> None:
    text = "tasks:\n  - name: 5\n  - name: '5'\n"
    with pytest.raises(SpecError, match="is used twice"):
        parse_job_spec(text)


def test_spec_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"Params\.Bucket"):
        as_publisher({"Type": "s3", "Params": {"Key": "k"}})


def test_parsers_are_the_same_objects_from_specs_and_parse() -> None:
    for name in ("load_result", "parse_input_string", "parse_job_spec", "parse_publisher_string"):
        assert getattr(specs, name) is getattr(parse, name)
        assert name in specs.__all__
    with pytest.raises(AttributeError):
        specs.no_such_name  # type: ignore[attr-defined]  # noqa: B018


def test_overlapping_input_targets_are_a_spec_error(tmp_path: Path) -> None:
    from prefect_bacalhau_publish.jobs import fetch_all
    from prefect_bacalhau_publish.specs import InputSource

    inputs = [
        InputSource.model_validate({"Source": {"Type": "ipfs", "Params": {"CID": cid}}, "Target": target})
        for cid, target in (
            ("bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku", "/inputs/a"),
            ("bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku", "/inputs/a/b"),
        )
    ]
    with pytest.raises(SpecError, match="input targets overlap: /inputs/a and /inputs/a/b"):
        fetch_all(inputs, tmp_path)
    assert list(tmp_path.iterdir()) == []  # refused before anything was fetched
