"""`s3PreSigned` in Bacalhau v1.9.3's shape: `PreSignedResultSpec{SourceSpec, PreSignedURL, Managed}.ToMap()`
nests the S3 spec under `SourceSpec` (pkg/s3/types.go); read and written so, the flat form still read."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from prefect_bacalhau_publish.blocks import S3Storage
from prefect_bacalhau_publish.errors import ChecksumMismatchError, SpecError
from prefect_bacalhau_publish.parse import load_result
from prefect_bacalhau_publish.presign import presign
from prefect_bacalhau_publish.publishers import publish_to
from prefect_bacalhau_publish.sources import fetch_source
from prefect_bacalhau_publish.specs import (
    ExecutionContext,
    PublishedResult,
    PublisherSpec,
    S3Params,
    S3PreSignedParams,
)
from prefect_bacalhau_publish.tasks import fetch_inputs, get_result

from .test_bacalhau_interop import bacalhau, tree

URL = "https://s3.example.org/b/runs/j.tar.gz?X-Amz-Signature=s"
FLAT = {
    "Bucket": "b",
    "Key": "runs/j.tar.gz",
    "Region": "eu-west-1",
    "Endpoint": "https://s3.example.org",
    "VersionID": "v1",
    "ChecksumSHA256": "n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg=",
    "PreSignedURL": URL,
}
NESTED = {
    "SourceSpec": {k: v for k, v in FLAT.items() if k != "PreSignedURL"},
    "PreSignedURL": URL,
    "Managed": False,
}


def presigned(params: dict[str, Any]) -> PublishedResult:
    return PublishedResult.model_validate({"Type": "s3PreSigned", "Params": params})


# ---------------------------------------------------------------------------------------------- shape


def test_nested_shape_is_read_and_written_with_bacalhaus_keys() -> None:
    result = presigned(NESTED)
    params = result.params
    assert isinstance(params, S3PreSignedParams) and isinstance(params, S3Params)
    assert (params.bucket, params.key, params.version_id, params.checksum_sha256) == (
        "b",
        "runs/j.tar.gz",
        "v1",
        FLAT["ChecksumSHA256"],
    )
    assert (params.pre_signed_url, params.managed, params.is_prefix, result.archived) == (
        URL,
        False,
        False,
        True,
    )
    written = result.to_bacalhau()
    assert written == {"Type": "s3PreSigned", "Params": NESTED}
    assert list(written["Params"]) == ["SourceSpec", "PreSignedURL", "Managed"]  # Bacalhau's field order
    # round trips: JSON text, python field names, and a copy
    assert PublishedResult.model_validate_json(result.model_dump_json(by_alias=True)) == result
    assert S3PreSignedParams.model_validate(params.model_dump()) == params
    assert params.model_dump()["source_spec"]["bucket"] == "b"
    assert load_result(json.dumps(written)) == result


def test_flat_form_of_earlier_versions_is_still_read_and_written_nested() -> None:
    flat = presigned(FLAT)
    assert flat == presigned(NESTED)
    assert flat.to_bacalhau()["Params"] == NESTED
    # keys in any case, as everywhere
    lower = presigned(
        {
            "sourcespec": {k.lower(): v for k, v in NESTED["SourceSpec"].items()},
            "presignedurl": URL,
            "MANAGED": False,
        }
    )
    assert lower == flat
    # the presign() of this package still builds a valid one (from the flat S3 result)
    assert isinstance(flat.params, S3PreSignedParams)


def test_an_input_source_keeps_the_shape_and_adds_extract() -> None:
    source = presigned(NESTED).to_input_source("/inputs/prev").to_bacalhau()["Source"]
    assert source == {
        "Type": "s3PreSigned",
        "Params": {
            "SourceSpec": {**NESTED["SourceSpec"], "Extract": True},
            "PreSignedURL": URL,
            "Managed": False,
        },
    }


def test_a_managed_result_has_an_empty_source_spec_and_is_an_archive() -> None:
    """As s3managed's ResultTransformer writes it (pkg/publisher/s3managed/result_transformer.go)."""
    managed = presigned(
        {
            "SourceSpec": {
                "Bucket": "",
                "Key": "",
                "Filter": "",
                "Region": "",
                "Endpoint": "",
                "VersionID": "",
                "ChecksumSHA256": "",
                "Partition": {"Type": "", "Pattern": "", "StartIndex": 0, "EndIndex": 0, "DateFormat": ""},
            },
            "PreSignedURL": URL,
            "Managed": True,
        }
    )
    assert isinstance(managed.params, S3PreSignedParams) and managed.params.managed
    assert managed.archived  # <job>/<execution>.tar.gz: extracted when fetched
    assert managed.to_input_source("/x").source.params.extract is True  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"SourceSpec": NESTED["SourceSpec"], "Managed": False}, r"Params\.PreSignedURL: Field required"),
        ({**NESTED, "PreSignedURL": ""}, r"Params\.PreSignedURL: .*signed url cannot be empty"),
        (
            {**NESTED, "PreSignedURL": "ftp://h/k"},
            r"Params\.PreSignedURL: .*must be an http\(s\) URL, got 'ftp://h/k'",
        ),
        (
            {**NESTED, "PreSignedURL": "file:///etc/passwd"},
            r"Params\.PreSignedURL: .*must be an http\(s\) URL",
        ),
        (
            {**NESTED, "PreSignedURL": "s3.example.org/b/k"},
            r"Params\.PreSignedURL: .*must be an http\(s\) URL",
        ),
        (
            {"SourceSpec": {"Key": "k.tar.gz"}, "PreSignedURL": URL},
            r"SourceSpec\.Bucket: .*bucket cannot be empty",
        ),
        ({**NESTED, "SourceSpec": "b"}, r"SourceSpec must be an object"),
        ({**NESTED, "Bucket": "other"}, r"Bucket given beside SourceSpec, where Bacalhau does not read it"),
    ],
)
def test_a_malformed_presigned_spec_is_a_spec_error_naming_the_field(
    params: dict[str, Any], problem: str
) -> None:
    with pytest.raises(
        SpecError, match=r"invalid published result: invalid s3PreSigned published result spec: "
    ):
        load_result({"Type": "s3PreSigned", "Params": params})
    with pytest.raises(SpecError, match=problem):
        load_result({"Type": "s3PreSigned", "Params": params})
    with pytest.raises(SpecError, match=problem):  # as an input source too, before anything runs
        fetch_inputs.fn(
            [{"Source": {"Type": "s3PreSigned", "Params": params}, "Target": "/x"}], Path("/nonexistent")
        )


# ------------------------------------------------------------------------------------------- interop


def test_bacalhau_decodes_our_nested_spec_and_we_read_its_tomap() -> None:
    ours = presigned(FLAT).to_bacalhau()
    got = bacalhau("decode-presigned", json.dumps(ours))
    decoded = got["Decoded"]
    for name in ("Bucket", "Key", "Region", "Endpoint", "VersionID", "ChecksumSHA256"):
        assert decoded[name] == FLAT[name], name
    assert (decoded["PreSignedURL"], decoded["Managed"]) == (URL, False)
    # Bacalhau's ToMap (what its requester writes): the same top-level keys as ours, read back equal
    written = got["ToMap"]
    assert set(written) == set(ours["Params"]) == {"SourceSpec", "PreSignedURL", "Managed"}
    assert set(ours["Params"]["SourceSpec"]) <= set(written["SourceSpec"])
    read = presigned(written).params
    assert read.model_copy(update={"partition": None}) == presigned(FLAT).params  # it writes Partition zeroed
    # and an input source's Extract (ours) does not disturb Bacalhau's decoder
    source = presigned(FLAT).to_input_source("/x").source.to_bacalhau()
    assert bacalhau("decode-presigned", json.dumps(source))["Decoded"]["Bucket"] == "b"


def test_bacalhau_cannot_read_the_flat_form_which_is_why_we_write_nested() -> None:
    with pytest.raises(RuntimeError, match="invalid s3 storage params: bucket cannot be empty"):
        bacalhau("decode-presigned", json.dumps({"Type": "s3PreSigned", "Params": FLAT}))


def test_bacalhau_managed_spec_is_read() -> None:
    got = bacalhau(
        "decode-presigned", json.dumps(presigned({"PreSignedURL": URL, "Managed": True}).to_bacalhau())
    )
    assert got["Decoded"]["Managed"] is True and got["Decoded"]["Bucket"] == ""
    managed = presigned(got["ToMap"])
    assert isinstance(managed.params, S3PreSignedParams) and managed.params.managed and managed.archived


# -------------------------------------------------------------------------------- fetch, for real


def test_fetch_through_a_real_presigned_url_from_the_nested_form(
    result_dir: Path, s3_storage: S3Storage, bucket: str, tmp_path: Path
) -> None:
    spec = PublisherSpec.model_validate({"Type": "s3", "Params": {"Bucket": bucket, "Key": "pre/{jobID}"}})
    result = publish_to(result_dir, spec, ExecutionContext.new(job_id="j-pre"), s3=s3_storage)
    assert isinstance(result.params, S3Params) and result.params.checksum_sha256
    signed = presign(result.params, s3_storage)
    nested = json.loads(json.dumps(presigned(signed.to_bacalhau()).to_bacalhau()))  # as saved and read back
    assert nested["Params"]["SourceSpec"]["ChecksumSHA256"] == result.params.checksum_sha256
    assert nested["Params"]["PreSignedURL"].startswith(str(s3_storage.endpoint_url))

    # get_result: no credentials at all, the URL is enough; checksum checked as the bytes arrive
    got = get_result.fn(nested, tmp_path / "got")
    assert tree(got) == tree(result_dir)
    # fetch_inputs: the same spec as a job's input, extracted at its Target
    paths = fetch_inputs.fn([presigned(nested["Params"]).to_input_source("/inputs/prev")], tmp_path / "work")
    assert tree(paths["/inputs/prev"]) == tree(result_dir)
    # Bacalhau's own ToMap of it fetches alike
    written = bacalhau("decode-presigned", json.dumps(nested))["ToMap"]
    again = fetch_source(presigned(written).to_input_source("/x").source, tmp_path / "again")
    assert tree(again) == tree(result_dir)

    # the managed form (no SourceSpec to speak of) fetches through the same URL, extracted
    managed = {
        "Type": "s3PreSigned",
        "Params": {"PreSignedURL": nested["Params"]["PreSignedURL"], "Managed": True},
    }
    assert tree(get_result.fn(managed, tmp_path / "managed")) == tree(result_dir)

    # a tampered ChecksumSHA256 is refused, and nothing is placed
    tampered = json.loads(json.dumps(nested))
    wrong = base64.b64encode(hashlib.sha256(b"something else").digest()).decode()
    tampered["Params"]["SourceSpec"]["ChecksumSHA256"] = wrong
    with pytest.raises(
        ChecksumMismatchError, match=rf"checksum mismatch for s3://{bucket}/pre/j-pre\.tar\.gz"
    ):
        get_result.fn(tampered, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ChecksumMismatchError):
        fetch_inputs.fn([presigned(tampered["Params"]).to_input_source("/inputs/prev")], tmp_path / "work2")
    assert not (tmp_path / "work2" / "inputs" / "prev").exists()
