"""The streamed archive upload (publishers/s3_stream.py): part cutting, multipart via boto3, failures, limits."""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from prefect_bacalhau_publish.blocks import S3Storage
from prefect_bacalhau_publish.errors import PublishError, S3PublishError
from prefect_bacalhau_publish.publishers import publish_to, s3, s3_stream
from prefect_bacalhau_publish.publishers.s3_stream import PartSink, StreamAborted, upload_stream
from prefect_bacalhau_publish.specs import ExecutionContext, PublisherSpec, S3Params
from prefect_bacalhau_publish.testing import MinioServer

MiB = 1024 * 1024


def small_parts(minio: MinioServer) -> S3Storage:
    return minio.storage(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)


def composite(body: bytes, part: int) -> str:
    digests = b"".join(hashlib.sha256(body[i : i + part]).digest() for i in range(0, len(body), part))
    return f"{base64.b64encode(hashlib.sha256(digests).digest()).decode()}-{-(-len(body) // part)}"


def big_result(tmp_path: Path, size: int) -> Path:
    root = tmp_path / "result"
    (root / "outputs").mkdir(parents=True)
    (root / "outputs" / "random.bin").write_bytes(os.urandom(size))
    return root


def spec(bucket: str) -> PublisherSpec:
    return PublisherSpec.model_validate({"Type": "s3", "Params": {"Bucket": bucket, "Key": "{executionID}"}})


def drain(sink: PartSink) -> list[tuple[int, bytes, bool]]:
    out = []
    while (part := sink.next_part()) is not None:
        number, buffer, length, final = part
        out.append((number, buffer[:length], final))
        sink.release(buffer)
    return out


def test_sink_cuts_parts_in_order_and_ends_with_a_final_one() -> None:
    sink = PartSink(part_size=8, buffers=8)
    sink.write(b"abcdefghij")
    sink.write(memoryview(b"klmnop"))
    sink.finish()
    assert drain(sink) == [(1, b"abcdefgh", False), (2, b"ijklmnop", False), (3, b"", True)]
    assert sink.size == 16
    sink.unmap()


def test_sink_blocks_the_producer_at_its_buffer_count() -> None:
    sink = PartSink(part_size=4, buffers=2)
    written: list[int] = []

    def produce() -> None:
        for _ in range(6):
            sink.write(b"1234")
            written.append(4)
        sink.finish()

    producer = threading.Thread(target=produce)
    producer.start()
    first = sink.next_part()
    second = sink.next_part()
    assert first is not None and second is not None
    producer.join(timeout=0.2)  # a bounded wait: the producer must still be blocked on a free buffer
    assert producer.is_alive() and len(written) == 2
    sink.release(first[1])
    sink.release(second[1])
    rest = drain(sink)
    producer.join()
    assert [number for number, _, _ in rest] == [3, 4, 5, 6, 7] and rest[-1] == (7, b"", True)
    assert len(sink._all) == 2  # never more buffers than allowed
    sink.unmap()


def test_closing_the_sink_stops_a_blocked_producer() -> None:
    sink = PartSink(part_size=4, buffers=1)
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            sink.write(b"12345678")
        except BaseException as exc:
            errors.append(exc)

    producer = threading.Thread(target=produce)
    producer.start()
    assert sink.next_part() is not None  # part 1 taken and never released: the producer waits
    sink.close()
    producer.join(timeout=30)
    assert not producer.is_alive() and len(errors) == 1 and isinstance(errors[0], StreamAborted)
    sink.unmap()


def test_multipart_checksum_and_version_come_from_the_complete_response(
    tmp_path: Path, minio: MinioServer, versioned_bucket: str, s3_client: Any
) -> None:
    result = publish_to(
        big_result(tmp_path, 13 * MiB), spec(versioned_bucket), ExecutionContext.new(), s3=small_parts(minio)
    )
    params = result.params
    assert isinstance(params, S3Params)
    body = s3_client.get_object(Bucket=versioned_bucket, Key=params.key)["Body"].read()
    assert params.checksum_sha256 == composite(body, 5 * MiB)
    assert params.checksum_sha256.endswith("-3")
    head = s3_client.head_object(Bucket=versioned_bucket, Key=params.key, ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == params.checksum_sha256  # what S3 stored
    assert params.version_id == head["VersionId"]


def test_parts_are_signed_with_their_checksum_not_hashed_twice(
    minio: MinioServer, bucket: str, s3_client: Any
) -> None:
    """The SigV4 payload hash of a PUT is its x-amz-checksum-sha256, so botocore does not hash it again;
    MinIO checks both against the body, so a wrong one would be refused."""
    client = small_parts(minio).get_client()
    seen: list[tuple[str, str]] = []
    client.meta.events.register(
        "before-send.s3.PutObject",
        lambda request, **_: seen.append(
            (
                request.headers["X-Amz-Content-SHA256"].decode(),
                request.headers["x-amz-checksum-sha256"].decode(),
            )
        ),
    )
    body = os.urandom(1000)
    checksum = base64.b64encode(hashlib.sha256(body).digest()).decode()
    client.put_object(Bucket=bucket, Key="signed", Body=body, ChecksumSHA256=checksum)
    assert seen == [(hashlib.sha256(body).hexdigest(), checksum)]
    assert s3_client.get_object(Bucket=bucket, Key="signed")["Body"].read() == body


def test_exact_multiple_of_the_part_size_sends_no_empty_part(
    minio: MinioServer, bucket: str, s3_client: Any
) -> None:
    storage = small_parts(minio)
    client = storage.get_client()
    sink = PartSink(5 * MiB, 3)
    data = os.urandom(10 * MiB)

    def produce() -> None:
        sink.write(data)
        sink.finish()

    producer = threading.Thread(target=produce)
    producer.start()
    ids: list[str] = []
    checksum, version = upload_stream(
        client, bucket, "exact", sink, threshold=5 * MiB, in_flight=2, content_type="x/y", started=ids.append
    )
    assert len(ids) == 1
    producer.join()
    sink.unmap()
    assert checksum == composite(data, 5 * MiB) and checksum.endswith("-2")
    assert version is None  # unversioned bucket
    assert s3_client.get_object(Bucket=bucket, Key="exact")["Body"].read() == data


def test_producer_failure_after_parts_were_sent_leaves_nothing(
    tmp_path: Path, minio: MinioServer, bucket: str, s3_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = threading.Event()

    def failing_archive(src: Path, out: Any, **kwargs: Any) -> None:
        out.write(os.urandom(12 * MiB))  # two parts go out
        while not s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads"):
            sent.wait(0.01)
        raise PublishError(f"cannot read {src}/outputs/x: Input/output error")

    monkeypatch.setattr(s3, "write_archive", failing_archive)
    with pytest.raises(PublishError, match="Input/output error"):
        publish_to(big_result(tmp_path, 1024), spec(bucket), ExecutionContext.new(), s3=small_parts(minio))
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_too_many_parts_is_a_clear_error(
    tmp_path: Path, minio: MinioServer, bucket: str, s3_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_stream, "MAX_PARTS", 2)
    with pytest.raises(
        S3PublishError, match=r"more than 2 parts of 5242880 bytes; raise multipart_chunksize"
    ):
        publish_to(
            big_result(tmp_path, 13 * MiB), spec(bucket), ExecutionContext.new(), s3=small_parts(minio)
        )
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
