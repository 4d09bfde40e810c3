"""Every Type the spec models accept resolves to importable, callable code (no Type ends in ModuleNotFoundError)."""

from __future__ import annotations

import inspect
import re
from typing import Any

import pytest
from pydantic import ValidationError

from prefect_bacalhau_publish import sources
from prefect_bacalhau_publish.publishers import get_publisher
from prefect_bacalhau_publish.sources import fetch_source, get_source
from prefect_bacalhau_publish.specs import PublishedResult, PublisherSpec, SourceSpec

# the Types each model accepts, read from the model's own Type → params table
SOURCE_TYPES = list(SourceSpec._table)
PUBLISHER_TYPES = list(PublisherSpec._table)
RESULT_TYPES = list(PublishedResult._table)


def test_the_lists_are_not_empty_and_hold_the_v19_names() -> None:
    assert {"s3", "ipfs", "urlDownload", "local", "localDirectory"} <= set(SOURCE_TYPES)
    assert {"s3", "ipfs", "local"} <= set(PUBLISHER_TYPES)
    assert set(RESULT_TYPES) <= set(SOURCE_TYPES)  # every published result can feed a next job


@pytest.mark.parametrize(("model", "types"), [(SourceSpec, SOURCE_TYPES), (PublisherSpec, PUBLISHER_TYPES)])
def test_unsupported_type_error_lists_exactly_the_accepted_types(model: Any, types: list[str]) -> None:
    with pytest.raises(ValidationError) as info:
        model.model_validate({"Type": "no-such-type"})
    listed = re.search(r"supported types: (.*)$", info.value.errors()[0]["msg"])
    assert listed is not None
    assert [t.strip() for t in listed[1].split(",")] == types


@pytest.mark.parametrize("type_", SOURCE_TYPES)
def test_source_type_resolves_to_a_fetcher(type_: str) -> None:
    fetch = get_source(type_)
    assert callable(fetch)
    parameters = list(inspect.signature(fetch).parameters.values())
    assert [p.name for p in parameters[:3]] == ["source", "dest", "target"]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters[3:])  # e.g. s3's partition
    # and fetch_source knows which block (or allow-list) to hand it
    assert sources._TARGETS[type_] in inspect.signature(fetch_source).parameters


def test_source_registry_matches_the_model() -> None:
    assert set(sources._MODULES) == set(SOURCE_TYPES) == set(sources._TARGETS)


@pytest.mark.parametrize("type_", PUBLISHER_TYPES)
def test_publisher_type_resolves_to_a_publisher(type_: str) -> None:
    publish = get_publisher(type_)
    assert callable(publish)
    parameters = list(inspect.signature(publish).parameters.values())
    assert [p.name for p in parameters[:4]] == ["result_dir", "spec", "context", "target"]
    # anything more (the archive feed of a fan-out) is keyword-only with a default: publish_to passes four
    extra = parameters[4:]
    assert all(p.kind is p.KEYWORD_ONLY and p.default is not p.empty for p in extra), extra


@pytest.mark.parametrize("type_", RESULT_TYPES)
def test_result_type_becomes_a_source_with_a_fetcher(type_: str) -> None:
    params = {
        "s3": {"Bucket": "b", "Key": "k.tar.gz"},
        "s3PreSigned": {"Bucket": "b", "Key": "k.tar.gz", "PreSignedURL": "http://h/k"},
        "ipfs": {"CID": "bafkqaaa"},
        "urlDownload": {"URL": "http://h/x.tar.gz"},
    }.get(type_)
    if params is None:
        pytest.fail(f"add sample params for the new result Type {type_}")
    result = PublishedResult.model_validate({"Type": type_, "Params": params})
    source = result.to_input_source("/inputs/x").source
    assert callable(get_source(source.type))
