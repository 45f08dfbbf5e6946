"""Where final backups are kept (README "Final backups and restore"): a directory
(``file:///path``, e.g. a PersistentVolume) or an S3 bucket and prefix (``s3://bucket/prefix``,
any S3-compatible store through ``JANITOR_BACKUP_S3_ENDPOINT_URL``).

A store holds objects under keys (``<release>/<timestamp>/<file>``). An object is written from
a stream and read back as chunks, so a dump is never held in memory. Every failure of a store
is one :class:`StoreError` whose message names the object and what the store answered. boto3
is imported only when an ``s3://`` URL is configured.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol, cast
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

CHUNK_BYTES = 1 << 20
# S3 allows 10,000 parts per object: 16 MiB parts hold a 160 GB dump, and at most
# S3_THREADS parts are in memory at once (the chart's memory limit is 512 MiB).
S3_PART_BYTES = 16 << 20
S3_THREADS = 4
# Each S3 request waits this long to connect and for each answer; standard retries on top.
S3_CONNECT_TIMEOUT_S = 10
S3_READ_TIMEOUT_S = 60
S3_ATTEMPTS = 5
# delete_objects takes at most 1,000 keys per request.
S3_DELETE_BATCH = 1000
# S3 bucket naming rules (3-63 lowercase letters, digits, '.', '-'; a letter or digit at
# each end); a prefix made of path segments without '.' or '..' segments.
BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
SEGMENT = re.compile(r"[A-Za-z0-9!_.*'()-]+")


class StoreError(Exception):
    """A store could not do what was asked; the message names the object and the cause."""


@dataclass(frozen=True)
class Location:
    """A parsed ``JANITOR_BACKUP_URL``: a directory, or a bucket and key prefix."""

    scheme: str
    bucket: str
    """The bucket (s3) or the absolute directory path (file)."""
    prefix: str = ""

    @property
    def url(self) -> str:
        """The URL in one canonical form: the root every backup URI starts with."""
        if self.scheme == "file":
            return f"file://{self.bucket}"
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")


def location(url: str) -> Location:
    """``url`` parsed; ValueError naming what is wrong (README "Configuration")."""
    if re.search(r"[\x00-\x20\x7f\\]", url):
        raise ValueError("must not contain spaces, backslashes or control characters")
    parts = urlsplit(url)
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError("must not carry credentials, a query or a fragment")
    if parts.scheme == "file":
        path = unquote(parts.path).rstrip("/")
        if parts.netloc not in ("", "localhost") or not path.startswith("/"):
            raise ValueError("a file:// URL must name an absolute directory: file:///path")
        if any(s in (".", "..") for s in PurePosixPath(path).parts):
            raise ValueError("must not contain '.' or '..' path segments")
        return Location("file", path)
    if parts.scheme == "s3":
        if not BUCKET.fullmatch(parts.netloc):
            raise ValueError(
                "a s3:// URL must name a valid bucket (3-63 lowercase letters, digits, '.', '-')"
            )
        segments = [s for s in parts.path.split("/") if s]
        if any(s in (".", "..") or not SEGMENT.fullmatch(s) for s in segments):
            raise ValueError(
                "the key prefix may hold letters, digits and !_.*'()- between slashes only"
            )
        return Location("s3", parts.netloc, "/".join(segments))
    raise ValueError("must be a file:///path or s3://bucket/prefix URL")


class Readable(Protocol):
    """What a store writes from: anything with ``read`` (a pipe, a hashing wrapper)."""

    def read(self, size: int = -1, /) -> bytes: ...


class BackupStore(Protocol):
    """The operations a final backup needs of a store."""

    @property
    def url(self) -> str:
        """The store's root, as configured (no credentials: they never go in the URL)."""

    def uri(self, key: str) -> str:
        """The address of ``key`` an operator can give back (``janitor restore --backup``)."""

    def put(self, key: str, stream: Readable) -> None:
        """Writes ``stream`` to its end as the object ``key``; never replaces one."""

    def read(self, key: str) -> Iterator[bytes]:
        """The object ``key``, chunk by chunk."""

    def keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (a ``release/`` or ``""`` for all), sorted."""

    def delete(self, keys: Sequence[str]) -> None:
        """Deletes ``keys``; a key already gone is no error."""

    def problems(self) -> list[str]:
        """What keeps the janitor from writing backups here (read only: changes nothing)."""


@dataclass(frozen=True)
class FileStore:
    """A directory; objects are files under it, fsynced before ``put`` returns: the backup
    must survive a crash of the node right after the DROP DATABASE it allowed."""

    root: Path

    @property
    def url(self) -> str:
        return f"file://{self.root}"

    def uri(self, key: str) -> str:
        return f"{self.url}/{key}"

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*PurePosixPath(key).parts)

    def put(self, key: str, stream: Readable) -> None:
        path = self._path(key)
        created = False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("xb") as out:
                created = True
                while chunk := stream.read(CHUNK_BYTES):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            _fsync_directory(path.parent)
        except OSError as exc:
            if created:  # a file that was there before is not this write's to remove
                with contextlib.suppress(OSError):
                    path.unlink()
            raise StoreError(f"cannot write {self.uri(key)}: {exc.strerror or exc}") from exc

    def read(self, key: str) -> Iterator[bytes]:
        try:
            with self._path(key).open("rb") as source:
                while chunk := source.read(CHUNK_BYTES):
                    yield chunk
        except OSError as exc:
            raise StoreError(f"cannot read {self.uri(key)}: {exc.strerror or exc}") from exc

    def keys(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        try:
            found = [p for p in base.rglob("*") if p.is_file()] if base.is_dir() else []
        except OSError as exc:
            raise StoreError(f"cannot list {self.uri(prefix)}: {exc.strerror or exc}") from exc
        return sorted(p.relative_to(self.root).as_posix() for p in found)

    def delete(self, keys: Sequence[str]) -> None:
        try:
            for key in keys:
                self._path(key).unlink(missing_ok=True)
            # Emptied backup and release directories go too; rmdir refuses a non-empty one.
            parents = {p for key in keys for p in self._path(key).parents if p != self.root}
            for directory in sorted(parents, key=lambda p: len(p.parts), reverse=True):
                if directory.is_relative_to(self.root) and directory.is_dir():
                    with contextlib.suppress(OSError):
                        directory.rmdir()
        except OSError as exc:
            raise StoreError(f"cannot delete under {self.url}: {exc.strerror or exc}") from exc

    def problems(self) -> list[str]:
        existing = next((p for p in (self.root, *self.root.parents) if p.exists()), None)
        if existing is None or not existing.is_dir():
            return [f"{self.url}: {existing} is not a directory"]
        if not os.access(existing, os.W_OK | os.X_OK):
            return [f"{self.url}: {existing} is not writable by this process (uid {os.getuid()})"]
        return []


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@dataclass(frozen=True)
class S3Store:
    """A bucket and key prefix on S3 or an S3-compatible store."""

    client: S3Client
    where: Location

    @property
    def url(self) -> str:
        return self.where.url

    @property
    def bucket(self) -> str:
        return self.where.bucket

    @property
    def prefix(self) -> str:
        return self.where.prefix

    def uri(self, key: str) -> str:
        return f"{self.url}/{key}"

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, stream: Readable) -> None:
        from boto3.s3.transfer import TransferConfig  # noqa: PLC0415 - only with s3://

        config = TransferConfig(
            multipart_threshold=S3_PART_BYTES,
            multipart_chunksize=S3_PART_BYTES,
            max_concurrency=S3_THREADS,
        )
        with _answers(f"cannot write {self.uri(key)}"):
            # A non-seekable stream: s3transfer reads it part by part, never whole.
            fileobj = cast(Any, stream)
            self.client.upload_fileobj(fileobj, self.bucket, self._key(key), Config=config)

    def read(self, key: str) -> Iterator[bytes]:
        with _answers(f"cannot read {self.uri(key)}"):
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            try:
                yield from body.iter_chunks(CHUNK_BYTES)
            finally:
                body.close()

    def keys(self, prefix: str) -> list[str]:
        found: list[str] = []
        start = self._key(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        with _answers(f"cannot list {self.uri(prefix)}"):
            pages = self.client.get_paginator("list_objects_v2")
            for page in pages.paginate(Bucket=self.bucket, Prefix=start):
                found += [item["Key"] for item in page.get("Contents", [])]
        cut = len(self.prefix) + 1 if self.prefix else 0
        return sorted(key[cut:] for key in found)

    def delete(self, keys: Sequence[str]) -> None:
        for first in range(0, len(keys), S3_DELETE_BATCH):
            batch: list[ObjectIdentifierTypeDef] = [
                {"Key": self._key(k)} for k in keys[first : first + S3_DELETE_BATCH]
            ]
            with _answers(f"cannot delete under {self.url}"):
                answer = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            errors = answer.get("Errors", [])
            if errors:
                first_error = errors[0]
                raise StoreError(
                    f"cannot delete {self.url}/{first_error.get('Key', '?')}: "
                    f"{first_error.get('Code', '?')} {first_error.get('Message', '')}".rstrip()
                )

    def problems(self) -> list[str]:
        try:
            with _answers(f"cannot use {self.url}"):
                self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except StoreError as exc:
            return [str(exc)]
        return []


@contextlib.contextmanager
def _answers(doing: str) -> Iterator[None]:
    """Turns what boto3 raises into a StoreError prefixed with ``doing``."""
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415 - only with s3://

    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise StoreError(
            f"{doing}: {error.get('Code', '?')} {error.get('Message', '')}".rstrip()
        ) from exc
    except (BotoCoreError, OSError) as exc:
        raise StoreError(f"{doing}: {exc}") from exc


def open_store(url: str, *, endpoint_url: str | None = None) -> BackupStore:
    """The store ``url`` names; an S3 client reads its credentials the way boto3 does (the
    standard AWS variables, a profile, or the pod's web identity)."""
    where = location(url)
    if where.scheme == "file":
        return FileStore(Path(where.bucket))
    import boto3  # noqa: PLC0415 - only with s3://
    from botocore.config import Config  # noqa: PLC0415 - only with s3://

    config = Config(
        connect_timeout=S3_CONNECT_TIMEOUT_S,
        read_timeout=S3_READ_TIMEOUT_S,
        retries={"max_attempts": S3_ATTEMPTS, "mode": "standard"},
        # S3-compatible stores refuse the CRC checksums boto3 adds by default since 1.36;
        # the backup's own sha256 is what is verified (README "Final backups and restore").
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    client = boto3.client("s3", endpoint_url=endpoint_url, config=config)
    return S3Store(client, where)
