"""The exception hierarchy: everything this package raises on purpose derives from one of these."""

from __future__ import annotations


class BacalhauPublishError(Exception):
    """Base of every error this package raises on purpose."""


class SpecError(BacalhauPublishError, ValueError):
    """A publisher spec, input source or published result is malformed or unsupported."""


class PublishError(BacalhauPublishError):
    """Publishing a result folder failed; nothing usable was published."""


class S3PublishError(PublishError):
    """An S3 publish failed (bucket missing, access denied, endpoint unreachable, upload aborted)."""


class IPFSPublishError(PublishError):
    """An IPFS publish failed (node unreachable, add refused, CID mismatch)."""


class LocalPublishError(PublishError):
    """A local publish failed (storage folder not writable, disk full)."""


class FetchError(BacalhauPublishError):
    """Fetching an input source or a published result failed; the destination is left as it was."""


class ChecksumMismatchError(FetchError):
    """Downloaded or stored bytes do not match the checksum the spec records."""


class UnsafeArchiveError(FetchError):
    """An archive holds a member that would escape or damage the destination, or exceeds a cap."""


class JobError(BacalhauPublishError):
    """A job could not be started: its callable cannot be sent to its own process."""
