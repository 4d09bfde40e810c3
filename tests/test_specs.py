"""Specs read and write Bacalhau's exact JSON/YAML shapes."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from prefect_bacalhau_publish.errors import SpecError
from prefect_bacalhau_publish.specs import (
    InputSource,
    PublishedResult,
    PublisherSpec,
    S3Params,
    S3PublisherParams,
    SourceSpec,
    parse_input_string,
    parse_job_spec,
    parse_publisher_string,
)

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20).filter(
    str.strip
)
maybe = st.one_of(st.none(), text)


def random_case(draw: st.DrawFn, key: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(key), max_size=len(key)))
    return "".join(c.upper() if f else c.lower() for c, f in zip(key, flips, strict=True))


@st.composite
def s3_publisher(draw: st.DrawFn) -> dict[str, Any]:
    params: dict[str, Any] = {"Bucket": draw(text), "Key": draw(text)}
    for name in ("Endpoint", "Region"):
        value = draw(maybe)
        if value is not None:
            params[name] = value
    encoding = draw(st.sampled_from([None, "gzip", "plain"]))
    if encoding:
        params["Encoding"] = encoding
    return {"Type": "s3", "Params": params}


@st.composite
def mixed_case(draw: st.DrawFn, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        random_case(draw, "Type"): spec["Type"].upper() if draw(st.booleans()) else spec["Type"],
        random_case(draw, "Params"): {random_case(draw, k): v for k, v in spec["Params"].items()},
    }


@given(s3_publisher().flatmap(lambda spec: st.tuples(st.just(spec), mixed_case(spec))))
def test_publisher_round_trip_any_key_case(pair: tuple[dict[str, Any], dict[str, Any]]) -> None:
    canonical, mixed = pair
    parsed = PublisherSpec.model_validate(mixed)
    dumped = parsed.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert dumped == canonical
    assert PublisherSpec.model_validate(dumped) == parsed
    assert PublisherSpec.model_validate_json(json.dumps(dumped)) == parsed


@st.composite
def s3_result(draw: st.DrawFn) -> dict[str, Any]:
    params: dict[str, Any] = {"Bucket": draw(text), "Key": draw(text)}
    for name in ("Region", "Endpoint", "VersionID", "ChecksumSHA256"):
        value = draw(maybe)
        if value is not None:
            params[name] = value
    return {"Type": "s3", "Params": params}


results = st.one_of(
    s3_result(),
    text.map(lambda cid: {"Type": "ipfs", "Params": {"CID": cid}}),
    st.from_regex(r"\Ahttps?://[a-z0-9.]{1,20}(:[0-9]{1,5})?/[a-z0-9._-]{1,20}\Z").map(
        lambda url: {"Type": "urlDownload", "Params": {"URL": url}}
    ),
)


@given(results)
def test_published_result_round_trip(spec: dict[str, Any]) -> None:
    parsed = PublishedResult.model_validate(spec)
    assert parsed.to_bacalhau() == spec
    assert PublishedResult.model_validate(parsed.to_bacalhau()) == parsed


@given(results, st.from_regex(r"\A(/[a-z0-9_]{1,10}){1,3}\Z"))
def test_input_source_round_trip(spec: dict[str, Any], target: str) -> None:
    source = PublishedResult.model_validate(spec).to_input_source(target, alias="prev")
    dumped = source.to_bacalhau()
    assert set(dumped) == {"Alias", "Source", "Target"}
    assert set(dumped["Source"]) == {"Type", "Params"}
    assert dumped["Source"]["Type"] == spec["Type"]
    assert InputSource.model_validate(dumped) == source


def test_encoding_and_legacy_compress() -> None:
    def encoding(params: dict[str, Any]) -> str | None:
        return PublisherSpec.model_validate(
            {"Type": "s3", "Params": {"Bucket": "b", "Key": "k", **params}}
        ).s3.encoding

    assert encoding({}) is None
    assert encoding({"encoding": "PLAIN"}) == "plain"
    assert encoding({"Compress": True}) == "gzip"
    assert encoding({"compress": "false"}) == "plain"
    assert encoding({"Compress": True, "Encoding": "plain"}) == "plain"  # Encoding wins
    spec = PublisherSpec.model_validate({"Type": "s3", "Params": {"Bucket": "b", "Key": "k"}})
    assert spec.s3.archived is True


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"Type": "s3", "Params": {"Bucket": "", "Key": "k"}}, "Params.Bucket: .*bucket cannot be empty"),
        ({"Type": "s3", "Params": {"Bucket": "b", "Key": " "}}, "Params.Key: .*key cannot be empty"),
        ({"Type": "s3", "Params": {"Key": "k"}}, "Params.Bucket: Field required"),
        (
            {"Type": "s3", "Params": {"Bucket": "b", "Key": "k", "Encoding": "zstd"}},
            "encoding must be either",
        ),
        ({"Type": "s3managed"}, "unsupported publisher type 's3managed'; supported types: s3, ipfs, local"),
        ({"Type": "noop"}, "unsupported publisher type 'noop'"),
        ({"Params": {}}, "publisher Type is missing"),
        ({"Type": "s3", "Params": {"Bucket": "a", "bucket": "b", "Key": "k"}}, "Bucket is given twice"),
    ],
)
def test_publisher_errors_name_the_field(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PublisherSpec.model_validate(spec)


def test_source_types_and_errors() -> None:
    assert (
        SourceSpec.model_validate({"type": "URLDOWNLOAD", "params": {"url": "http://h/x"}}).type
        == "urlDownload"
    )
    local = SourceSpec.model_validate(
        {"Type": "localDirectory", "Params": {"SourcePath": "/data", "ReadWrite": True}}
    )
    assert local.to_bacalhau() == {
        "Type": "localDirectory",
        "Params": {"SourcePath": "/data", "ReadWrite": True},
    }
    with pytest.raises(
        ValidationError,
        match="supported types: s3, s3PreSigned, ipfs, urlDownload, local, localDirectory, inline",
    ):
        SourceSpec.model_validate({"Type": "wasm"})
    with pytest.raises(ValidationError, match="URL must be http"):
        SourceSpec.model_validate({"Type": "urlDownload", "Params": {"URL": "file:///etc/passwd"}})
    with pytest.raises(ValidationError, match=re.escape("must not contain '..'")):
        InputSource.model_validate(
            {"Source": {"Type": "ipfs", "Params": {"CID": "Qm"}}, "Target": "/inputs/../x"}
        )


def test_s3_source_key_kinds() -> None:
    def params(key: str) -> S3Params:
        result = SourceSpec.model_validate({"Type": "s3", "Params": {"Bucket": "b", "Key": key}}).params
        assert isinstance(result, S3Params)
        return result

    assert not params("a/b.tar.gz").is_prefix
    assert params("a/").is_prefix and params("a/b*").is_prefix and params("").is_prefix


def test_to_input_source_sets_extract_only_for_archives() -> None:
    archived = PublishedResult.model_validate({"Type": "s3", "Params": {"Bucket": "b", "Key": "k.tar.gz"}})
    plain = PublishedResult.model_validate({"Type": "s3", "Params": {"Bucket": "b", "Key": "k/"}})
    local = PublishedResult.model_validate(
        {"Type": "urlDownload", "Params": {"URL": "http://127.0.0.1:6001/e.tar.gz"}}
    )
    ipfs = PublishedResult.model_validate({"Type": "ipfs", "Params": {"CID": "bafy"}})
    assert archived.to_input_source("/in").to_bacalhau()["Source"]["Params"]["Extract"] is True
    assert "Extract" not in plain.to_input_source("/in").to_bacalhau()["Source"]["Params"]
    assert local.to_input_source("/in").to_bacalhau()["Source"]["Params"]["Extract"] is True
    assert ipfs.to_input_source("/in").to_bacalhau() == {
        "Source": {"Type": "ipfs", "Params": {"CID": "bafy"}},
        "Target": "/in",
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ipfs", {"Type": "ipfs", "Params": {}}),
        ("local", {"Type": "local", "Params": {}}),
        (
            "s3://MyBucket/out/{jobID},opt=endpoint=http://127.0.0.1:9000,opt=region=us-east-1",
            {
                "Type": "s3",
                "Params": {
                    "Bucket": "MyBucket",
                    "Key": "out/{jobID}",
                    "Endpoint": "http://127.0.0.1:9000",
                    "Region": "us-east-1",
                },
            },
        ),
        (
            "s3://b/k,option=encoding=plain,opt=key=other/{date}",
            {"Type": "s3", "Params": {"Bucket": "b", "Key": "other/{date}", "Encoding": "plain"}},
        ),
        ("dst=s3://b/x", {"Type": "s3", "Params": {"Bucket": "b", "Key": "x"}}),
    ],
)
def test_parse_publisher_string(text: str, expected: dict[str, Any]) -> None:
    assert parse_publisher_string(text).to_bacalhau() == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gcs://b/k", "unknown publisher type: 'gcs'"),
        ("s3://b/k,extra", "invalid publisher option: extra. Must be a key=value pair"),
        ("s3://b/k,foo=bar", "invalid publisher option: foo=bar"),
        ("s3://b/", "key cannot be empty"),
    ],
)
def test_parse_publisher_string_errors(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_publisher_string(text)


def test_parse_input_string() -> None:
    source = parse_input_string("s3://bucket/data/*,opt=region=eu-west-1,dst=/inputs/data")
    assert source.to_bacalhau() == {
        "Source": {"Type": "s3", "Params": {"Bucket": "bucket", "Key": "data/*", "Region": "eu-west-1"}},
        "Target": "/inputs/data",
    }
    assert parse_input_string("ipfs://QmX", "/inputs/x").to_bacalhau()["Source"] == {
        "Type": "ipfs",
        "Params": {"CID": "QmX"},
    }


JOB_YAML = """
name: chained
type: batch
count: 1
tasks:
  - name: main
    engine:
      type: docker
      params:
        Image: ubuntu
    Publisher:
      type: s3
      params:
        bucket: my-bucket
        key: results/{jobID}/{executionID}
        endpoint: http://127.0.0.1:9000
        region: us-east-1
    InputSources:
      - Source:
          Type: s3
          Params:
            Bucket: my-bucket
            Key: inputs/
        Target: /inputs/data
    ResultPaths:
      - Name: outputs
        Path: /outputs
  - Name: second
    Publisher:
      Type: ipfs
"""


def test_parse_job_spec_mixed_case() -> None:
    tasks = parse_job_spec(JOB_YAML)
    assert list(tasks) == ["main", "second"]
    main = tasks["main"]
    assert main.publisher is not None
    assert main.publisher.to_bacalhau() == {
        "Type": "s3",
        "Params": {
            "Bucket": "my-bucket",
            "Key": "results/{jobID}/{executionID}",
            "Endpoint": "http://127.0.0.1:9000",
            "Region": "us-east-1",
        },
    }
    assert [i.target for i in main.inputs] == ["/inputs/data"]
    assert [(p.name, p.path) for p in main.result_paths] == [("outputs", "/outputs")]
    assert tasks["second"].publisher == PublisherSpec(type="ipfs")
    as_json = json.dumps({"Job": {"Tasks": [{"Name": "t", "Publisher": {"Type": "local"}}]}})
    assert parse_job_spec(as_json)["t"].publisher == PublisherSpec(type="local")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tasks: []", "no Tasks"),
        ("- a\n- b", "must be a mapping"),
        (
            "tasks:\n  - name: t\n    publisher:\n      type: noop\n",
            r"Tasks\[0\] \(t\): .*unsupported publisher type 'noop'",
        ),
        (
            "tasks:\n  - name: t\n    resultpaths:\n      - {name: o, path: rel}\n",
            "result path must be absolute",
        ),
        (
            "tasks:\n  - name: t\n    resultpaths:\n      - {name: o, path: /a}\n      - {name: o, path: /b}\n",
            "unique",
        ),
        ("{not json", "neither valid JSON nor YAML"),
    ],
)
def test_parse_job_spec_errors(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_job_spec(text)


def test_s3_publisher_params_are_frozen_models() -> None:
    params = S3PublisherParams.model_validate({"bucket": "b", "key": "k"})
    with pytest.raises(ValidationError):
        params.bucket = "x"  # type: ignore[misc]


def test_unknown_placeholders_are_kept_with_one_warning_each(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from prefect_bacalhau_publish.naming import render_key
    from prefect_bacalhau_publish.specs import ExecutionContext

    context = ExecutionContext.new(job_id="j-1")
    with caplog.at_level(logging.WARNING, logger="prefect_bacalhau_publish.naming"):
        key = render_key("ph/{bogus}/{jobid}/{jobID}", context=context, archive=True)
    assert key == "ph/{bogus}/{jobid}/j-1.tar.gz"  # as Bacalhau writes it
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert "{bogus} is not a placeholder" in warnings[0] and "did you mean" not in warnings[0]
    assert "{jobid} is not a placeholder" in warnings[1] and "did you mean {jobID}?" in warnings[1]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="prefect_bacalhau_publish.naming"):
        render_key("runs/{date}/{time}/{nodeID}/{executionID}", context=context, archive=False)
    assert caplog.records == []
