"""S3 partitioning (`partition.py`) against Bacalhau v1.9.3's own `s3.PartitionObjects`, and its Go regexp and
time-layout ports against Go's `regexp` and `time` (tests/interop, built with the local Go toolchain).

Each hypothesis example is a batch of cases sent to one `bacalhau-interop` call, so thousands of cases run in
seconds (the regexp and date batches are built by `random.Random` from a hypothesis-drawn seed: drawing each
token through hypothesis costs more than all the checks); examples are derandomized, so a run is reproducible, and
a failing assertion names its case.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from prefect_bacalhau_publish.errors import SpecError
from prefect_bacalhau_publish.golayout import _Time
from prefect_bacalhau_publish.partition import (
    GoRegexpError,
    PartitionConfig,
    _go_format,
    _go_parse,
    compile_go_regexp,
    partition_objects,
)
from prefect_bacalhau_publish.specs import S3Params, describe
from prefect_bacalhau_publish.testing import binary

batches = settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


def go(command: str, cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One batch call of the Go helper (its local time zone UTC, as on a compute node in a container)."""
    done = subprocess.run(
        [str(binary("bacalhau-interop")), command, "-"],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "TZ": "UTC"},
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip())
    out: list[dict[str, Any]] = json.loads(done.stdout)
    return out


def ours(
    keys: list[str], params: dict[str, Any], count: int, index: int
) -> tuple[list[str] | None, str | None]:
    """(keys, None) or (None, error text), like a Go case's Keys / DecodeError-or-Error."""
    try:
        source = S3Params.model_validate(params)
    except ValidationError as exc:
        return None, describe(exc).removeprefix("Partition: ")
    try:
        return partition_objects(keys, source, count, index), None
    except SpecError as exc:
        return None, str(exc)


def theirs(row: dict[str, Any]) -> tuple[list[str] | None, str | None]:
    if "DecodeError" in row:
        return None, row["DecodeError"]
    if "Error" in row:
        return None, row["Error"]
    return row["Keys"], None


# ------------------------------------------------------------------------------------------ key sets

PREFIXES = ["", "data/", "data/*", " data/ ", "data", "logs/", "data/users/*", "\tdata/**"]
SEGMENTS = [
    "2024-01-15", "2023-12-31", "2024-02-29", "2024-1-5", "Jan  2", "Mon", "15:04:05", "03PM", "file", "a",
    "b1", "001", "002.txt", "x.csv", "é", "日本", "K", "", "/", "-", "_", ".", " ", "Z", "+0530", "UTC",
]  # fmt: skip


@st.composite
def listing(draw: st.DrawFn, prefix: str) -> list[str]:
    """Keys as a listing of `prefix` holds them: under it (some with `//`), folder markers, a few outside."""
    base = prefix.strip().rstrip("*")
    keys = []
    for _ in range(draw(st.integers(0, 30))):
        parts = draw(st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=4))
        tail = draw(st.sampled_from(["", "/", ".csv", "-data.csv", "_backup.tar", "/x.log"]))
        lead = draw(st.sampled_from([base, base, base, base + "/", "other/", ""]))
        keys.append(lead + "/".join(parts) + tail)
    return keys


REGEXES = [
    r"(\d{4})/(\d{2})",
    r"data/(\d{4})/(\d{2})/.*\.csv",
    r"00\d",
    r"00\d\.txt",
    r"\d+",
    r"^(\d{4})-(\d{2})",
    r"(a)|(b)",
    r"(?P<year>\d{4})-(?<month>\d\d)",
    r"(?i)(k)",
    r"[[:alpha:]]+",
    r"\w+$",
    r"(x)?(y)?",
    r"é|日",
    r"\pL+",
    r"(?m)^(\w)",
    r"\b\w",
    r".*",
]
LAYOUTS = [
    "2006-01-02",
    "2006-01",
    "Jan _2",
    "2006-01-02T15:04:05Z07:00",
    "02 Jan 06 15:04 MST",
    "Monday",
    "060102",
    "2006-002",
    "3:04PM",
    "15:04:05.000",
]


@st.composite
def partition_params(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["", "none", "object", "regex", "substring", "date"]))
    partition: dict[str, Any] = {"Type": kind}
    if kind == "regex":
        partition["Pattern"] = draw(st.sampled_from(REGEXES))
    elif kind == "substring":
        start = draw(st.integers(0, 6))
        partition.update(StartIndex=start, EndIndex=start + draw(st.integers(1, 8)))
    elif kind == "date":
        partition["DateFormat"] = draw(st.sampled_from(LAYOUTS))
    return {"Bucket": "b", "Key": draw(st.sampled_from(PREFIXES)), "Partition": partition}


@st.composite
def partition_batch(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Sources with key sets, each at several counts and every index."""
    cases = []
    for _ in range(draw(st.integers(5, 12))):
        params = draw(partition_params())
        keys = draw(listing(params["Key"]))
        for count in sorted(set(draw(st.lists(st.integers(1, 7), min_size=1, max_size=3))) | {3}):
            cases += [{"Keys": keys, "Params": params, "Count": count, "Index": i} for i in range(count)]
    return cases


@batches
@given(partition_batch())
def test_partition_objects_picks_what_bacalhau_picks(cases: list[dict[str, Any]]) -> None:
    for case, row in zip(cases, go("partition", cases), strict=True):
        got = ours(case["Keys"], case["Params"], case["Count"], case["Index"])
        assert got == theirs(row), case
        if got[0] is not None:
            assert got[0] == sorted(got[0], key=case["Keys"].index)  # listing order kept


def test_every_type_and_count_covered_and_shares_partition_the_listing() -> None:
    """Each execution's share is disjoint from the others' and together they are the listing less its folders
    (type none: every execution gets it all)."""
    keys = [f"data/{d}/part-{i:03d}.csv" for d in ("2024-01-15", "2024-02-01") for i in range(40)] + ["data/"]
    files = keys[:-1]
    configs: list[dict[str, Any]] = [
        {"Type": "none"},
        {"Type": "object"},
        {"Type": "regex", "Pattern": r"part-(\d)(\d)"},
        {"Type": "regex", "Pattern": r"part-\d\d"},
        {"Type": "substring", "StartIndex": 11, "EndIndex": 19},
        {"Type": "date", "DateFormat": "2006-01-02"},
    ]
    cases = [
        {"Keys": keys, "Params": {"Bucket": "b", "Key": "data/", "Partition": c}, "Count": n, "Index": i}
        for c in configs
        for n in (1, 2, 3, 5)
        for i in range(n)
    ]
    rows = go("partition", cases)
    for case, row in zip(cases, rows, strict=True):
        assert ours(case["Keys"], case["Params"], case["Count"], case["Index"]) == theirs(row)
    for c in configs:
        for n in (2, 5):
            shares = [
                ours(keys, {"Bucket": "b", "Key": "data/", "Partition": c}, n, i)[0] or [] for i in range(n)
            ]
            if c["Type"] == "none":
                assert shares == [files] * n
            else:
                assert sorted(k for share in shares for k in share) == sorted(files)
    # Date keys: the trimmed key starts with the date, so both days' objects land as two groups.
    by_date = [
        ours(keys, {"Bucket": "b", "Key": "data/", "Partition": configs[-1]}, 2, i)[0] for i in range(2)
    ]
    assert {len(share or []) for share in by_date} <= {0, 40, 80}


# ----------------------------------------------------------------------------- validation and specs

INVALID = [
    {"Type": "Regex", "Pattern": "a"},
    {"Type": "hash"},
    {"Type": "regex"},
    {"Type": "regex", "Pattern": "("},
    {"Type": "regex", "Pattern": "a**"},
    {"Type": "regex", "Pattern": r"(?<=a)b"},
    {"Type": "regex", "Pattern": r"\1"},
    {"Type": "regex", "Pattern": "[z-a]"},
    {"Type": "regex", "Pattern": "x{1001}"},
    {"Type": "regex", "Pattern": r"\p{Klingon}"},
    {"Type": "regex", "Pattern": "(?P<n-1>a)"},
    {"Type": "substring", "StartIndex": -1, "EndIndex": 3},
    {"Type": "substring", "StartIndex": 3, "EndIndex": 3},
    {"Type": "substring"},
    {"Type": "date"},
    {"Type": "date", "DateFormat": "12"},
    {"Type": "date", "DateFormat": "2006-01-02 45"},
]


@pytest.mark.parametrize("partition", INVALID, ids=lambda p: json.dumps(p))
def test_invalid_configs_refused_with_bacalhaus_text(partition: dict[str, Any]) -> None:
    (row,) = go(
        "partition", [{"Keys": [], "Params": {"Bucket": "b", "Partition": partition}, "Count": 2, "Index": 0}]
    )
    assert "DecodeError" in row, "Bacalhau accepts it: the case is not an invalid one"
    with pytest.raises(ValidationError) as caught:
        PartitionConfig.model_validate(partition)
    assert describe(caught.value) == row["DecodeError"]
    _, error = ours([], {"Bucket": "b", "Partition": partition}, 2, 0)
    assert error == row["DecodeError"]


@pytest.mark.parametrize(("count", "index"), [(0, 0), (-1, 0), (3, 3), (3, -1), (1, 1)])
def test_count_and_index_errors_are_bacalhaus(count: int, index: int) -> None:
    params = {"Bucket": "b", "Key": "k/", "Partition": {"Type": "object"}}
    (row,) = go("partition", [{"Keys": ["k/a"], "Params": params, "Count": count, "Index": index}])
    assert ours(["k/a"], params, count, index) == (None, row["Error"])


def test_invalid_config_is_reported_before_a_bad_count() -> None:
    params = {"Bucket": "b", "Partition": {"Type": "regex"}}
    (row,) = go("partition", [{"Keys": [], "Params": params, "Count": 0, "Index": 0}])
    assert row["Error"] == "regex pattern cannot be empty" == ours([], params, 0, 0)[1]


@pytest.mark.parametrize(
    "partition",
    [
        {"Type": "regex", "Pattern": r"(\d+)"},
        {"type": "substring", "startindex": 2.9, "ENDINDEX": 5},
        {"Type": "date", "DateFormat": "2006-01-02", "Extra": 1},
        {"Type": "", "Pattern": None},
        {},
    ],
)
def test_partition_written_back_as_bacalhaus_to_map_writes_it(partition: dict[str, Any]) -> None:
    params = {"Bucket": "b", "Key": "data/", "Partition": partition}
    (row,) = go("partition", [{"Keys": [], "Params": params, "Count": 1, "Index": 0}])
    dumped = S3Params.model_validate(params).model_dump(mode="json", by_alias=True, exclude_none=True)
    assert dumped["Partition"] == row["ToMap"]["Partition"]
    again = S3Params.model_validate(dumped).model_dump(mode="json", by_alias=True, exclude_none=True)
    assert again == dumped


def test_spec_without_partition_dumps_without_it() -> None:
    for params in ({"Bucket": "b", "Key": "k"}, {"Bucket": "b", "Key": "k", "Partition": None}):
        dumped = S3Params.model_validate(params).model_dump(mode="json", by_alias=True, exclude_none=True)
        assert "Partition" not in dumped
        source = S3Params.model_validate(params)
        assert partition_objects(["k/a", "k/", "k/b"], source, 3, 1) == ["k/a", "k/b"]


def test_model_is_frozen_and_strict_about_types() -> None:
    config = PartitionConfig.model_validate({"TYPE": "object"})
    with pytest.raises(ValidationError):
        config.type = "none"  # type: ignore[misc]
    for bad in ({"Type": 1}, {"StartIndex": "2"}, {"EndIndex": True}, {"Type": "a", "type": "b"}):
        with pytest.raises(ValidationError):
            PartitionConfig.model_validate(bad)


# ------------------------------------------------------------------------------------------- Go regexp

TOKENS = [
    "a", "b", "ab", "K", "k", "é", "/", "-", "\n", ".", "^", "$", r"\b", r"\B", r"\A", r"\z", r"\d", r"\w",
    r"\s", r"\W", r"\D", r"\S", "*", "+", "?", "*?", "+?", "??", "{2}", "{1,3}", "{,2}", "{2,}", "{0}", "{0,1}",
    "{", "}", "{1001}", "{3,2}", "(", ")", "(", ")", "(?:", "(?i)", "(?i:", "(?-i)", "(?m)", "(?s)", "(?U)",
    "(?P<n>", "(?<x>", "(?P<", "(?<", "(?i-s:", "(?-)", "(?)", "|", "|", "[a-c]", "[^a]", "[", "]", "[]a]",
    "[^]a]", "-", "[[:alpha:]]", "[[:^digit:]]", "[[:foo:]]", r"[\d-z]", "[z-a]", r"[\w.]", r"[^\n]",
    r"\Q.*\E", r"\Q", r"\x41", r"\x{6B}", r"\x{}", r"\xZ", r"\101", r"\0", r"\8", r"\1", r"\.", "\\",
    r"\pL", r"\p{Lu}", r"\PN", r"\p{^Ll}", r"\pZ", r"\p{Foo}", r"\p", r"\p{", r"\C", "(?=", "(?x)", "(?#",
    r"\Z", r"\e", r"\_", r"\-", "[a-]", r"[\pL\d]", r"[^\PL]",
]  # fmt: skip
INPUT_ALPHABET = "aAbBkK01 /.-_\nſéK"


def regexp_batch(rng: random.Random) -> list[dict[str, Any]]:
    """Patterns of 1-7 tokens (valid or not), each with inputs over letters that fold, digits, `/`, `\\n`."""
    return [
        {
            "Pattern": "".join(rng.choices(TOKENS, k=rng.randint(1, 7))),
            "Inputs": [
                "".join(rng.choices(INPUT_ALPHABET, k=rng.randint(0, 8))) for _ in range(rng.randint(1, 8))
            ],
        }
        for _ in range(400)
    ]


def matches(pattern: str, inputs: list[str]) -> dict[str, Any]:
    try:
        compiled = compile_go_regexp(pattern)
    except GoRegexpError as exc:
        return {"Error": str(exc)}
    out: list[list[str | None] | None] = []
    for text in inputs:
        found = compiled.search(text)
        out.append(None if found is None else [found.group(0), *found.groups()])
    return {"Matches": out}


@batches
@given(st.integers(0, 2**32))
def test_go_regexp_through_re2_matches_go(seed: int) -> None:
    """Same refusals, same match and same capture groups (null for a group that took no part) on every
    input. A pattern with several faults may name another one first than Go (RE2 checks in its own
    order), so refusal texts are compared exactly in the single-fault tests below."""
    cases = regexp_batch(random.Random(seed))
    for case, row in zip(cases, go("regexp", cases), strict=True):
        ours = matches(case["Pattern"], case["Inputs"])
        if "Error" in row:
            assert "Error" in ours and ours["Error"].startswith("error parsing regexp: "), (case, row)
        else:
            assert ours == row, case


def test_go_regexp_refusals_name_the_offending_part() -> None:
    cases = [{"Pattern": p, "Inputs": []} for p in ["a{2}{3}", "(a{100}){100}", r"\x{110000}", "(?i-", "x)"]]
    for case, row in zip(cases, go("regexp", cases), strict=True):
        assert matches(case["Pattern"], []) == row


def test_unicode_scripts_match_as_in_go() -> None:
    cases = [{"Pattern": r"\p{Greek}+", "Inputs": ["abγδε", "abc"]}]
    assert [matches(c["Pattern"], c["Inputs"]) for c in cases] == go("regexp", cases)


# --------------------------------------------------------------------------------------- Go time layouts

LAYOUT_TOKENS = [
    "2006", "06", "01", "1", "Jan", "January", "02", "2", "_2", "__2", "002", "Mon", "Monday", "15", "03",
    "3", "04", "4", "05", "5", "PM", "pm", "MST", "Z07:00", "Z0700", "Z07", "-0700", "-07:00", "-07",
    "-070000", "-07:00:00", "Z070000", "Z07:00:00", ".000", ".999", ",000", ".9", ".0", "-", "/", " ", ":",
    "T", "_", "x", "Z", "0", "Month", "Janx", "é",
]  # fmt: skip
ZONES = [
    (b"UTC", 0),
    (b"", 3600),
    (b"", -25200),
    (b"MST", -25200),
    (b"GMT+3", 10800),
    (b"+05", 0),
    (b"", -30),
]


def date_batch(rng: random.Random) -> list[dict[str, Any]]:
    """Layouts of 1-6 elements and literals; keys: random times in the layout, some cut short, given trailing
    text, a character swapped or a space doubled, and some random text."""
    cases = []
    for _ in range(150):
        layout = "".join(rng.choices(LAYOUT_TOKENS, k=rng.randint(1, 6)))
        raw = layout.encode()
        keys = []
        for _ in range(12):
            seconds = rng.randint(-62167219200, 253402300799)  # years 0..9999
            nsec = rng.choice([0, 5, 120_000_000, 999_999_999, 500_000])
            name, offset = rng.choice(ZONES)
            value = _go_format((seconds, nsec, name, offset), raw).decode(errors="replace")
            mutation = rng.choice(["", "", "cut", "junk", "swap", "space"])
            if mutation == "cut":
                value = value[: rng.randint(0, len(value))]
            elif mutation == "junk":
                value += rng.choice(["/data.csv", ".5", ",123", "Z", " ", "x"])
            elif mutation == "swap" and value:
                i = rng.randrange(len(value))
                value = value[:i] + rng.choice("09 -:+aZ") + value[i + 1 :]
            elif mutation == "space":
                value = value.replace(" ", "  ", 1)
            keys.append(value)
        keys += ["".join(rng.choices("0123456789 -:+.,TZaAMPJnuy", k=rng.randint(0, 12))) for _ in range(3)]
        cases.append({"Layout": layout, "Keys": keys})
    return cases


def our_date(layout: str, key: str) -> str | None:
    raw = layout.encode()
    parsed = _go_parse(raw, key.encode()[: len(raw)])
    return None if parsed is None else _go_format(parsed, raw).decode()


@batches
@given(st.integers(0, 2**32))
def test_go_time_layout_port_matches_go(seed: int) -> None:
    """A layout's validity (Bacalhau's validateDateFormat) and, for each key, the key partitionByDate hashes:
    Go's time.Parse of the key's first len(layout) bytes, formatted back with the layout."""
    cases = date_batch(random.Random(seed))
    for case, row in zip(cases, go("date", cases), strict=True):
        layout = case["Layout"]
        try:
            PartitionConfig(type="date", date_format=layout)
            error = None
        except ValidationError as exc:
            error = describe(exc)
        assert error == row.get("Error"), case
        assert [our_date(layout, key) for key in case["Keys"]] == row["Formatted"], case


def test_documented_layouts_round_trip() -> None:
    """The layouts Bacalhau's docs and tests use, with the values they show."""
    cases = [
        {"Layout": "2006-01-02", "Keys": ["2024-01-15-data.csv", "2024-02-30", "20240115", "2024-1-15"]},
        {
            "Layout": "2006-01-02T15:04:05Z07:00",
            "Keys": ["2024-01-15T10:00:00+05:30", "2024-01-15T10:00:00Z/x"],
        },
        {"Layout": "Jan _2 15:04:05.000", "Keys": ["Feb  3 04:05:06.789", "feb  3 04:05:06.789xyz"]},
        {"Layout": "02 Jan 06 15:04 MST", "Keys": ["03 Feb 24 10:00 CEST", "03 Feb 24 10:00 GMT+1"]},
        {"Layout": "2006-01-02 3PM", "Keys": ["2024-03-01 12AM", "2024-03-01 0PM"]},
    ]
    for case, row in zip(cases, go("date", cases), strict=True):
        assert [our_date(case["Layout"], key) for key in case["Keys"]] == row["Formatted"]
    assert our_date("2006-01-02", "2024-01-15-data.csv") == "2024-01-15"


def test_reference_time_read_back_as_go_reads_it() -> None:
    """Go's reference time in each layout, read back: a layout without a year gives year 0 (so `Monday`
    comes back as `Saturday`, the weekday of 0000-01-01)."""
    reference: _Time = (1136214245, 0, b"UTC", 0)
    cases = [
        {"Layout": layout, "Keys": [_go_format(reference, layout.encode()).decode()]} for layout in LAYOUTS
    ]
    for case, row in zip(cases, go("date", cases), strict=True):
        assert [our_date(case["Layout"], key) for key in case["Keys"]] == row["Formatted"]
    assert our_date("Monday", "Monday") == "Saturday"
