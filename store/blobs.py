"""Content-addressed Parquet blobs (trace tables) on a local folder or any pyarrow filesystem.

A blob lives at `<root>/<kind>/<sha[:2]>/<sha>.parquet` where `sha` is the sha256 of the
Parquet file's bytes. The database stores only the relative part, so a row can never point
outside the root, and the files are plain Parquet that pandas, pyarrow or duckdb read
without this code, e.g. `SELECT * FROM read_parquet('results/blobs/outlier_channels/*/*.parquet')`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .entities import BlobRef

DEFAULT_BLOB_ROOT = "results/blobs"
_KIND_RE = re.compile(r"^[a-z0-9_][a-z0-9_-]{0,127}$")
_URI_RE = re.compile(r"^([a-z0-9_][a-z0-9_-]{0,127})/([0-9a-f]{2})/([0-9a-f]{64})\.parquet$")


class BlobError(Exception):
    """Base class of blob store errors."""


class UnsafeBlobPathError(BlobError, ValueError):
    """A blob URI that is not a plain relative path inside the blob root."""


class BlobNotFoundError(BlobError, FileNotFoundError):
    """A referenced blob file does not exist."""


class BlobCorruptedError(BlobError):
    """A blob file's content does not match its sha256."""


def check_kind(kind: str) -> str:
    if not isinstance(kind, str) or not _KIND_RE.match(kind):
        raise ValueError(f"blob kind {kind!r} must match {_KIND_RE.pattern} "
                         "(lowercase letters, digits, '_' and '-')")
    return kind


def check_relative_uri(uri: str) -> tuple[str, str]:
    """(kind, sha256) of a blob URI; UnsafeBlobPathError unless it is `<kind>/<xx>/<sha>.parquet`."""
    if not isinstance(uri, str) or not uri:
        raise UnsafeBlobPathError(f"blob URI {uri!r} is empty")
    if "://" in uri or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri):
        raise UnsafeBlobPathError(f"blob URI {uri!r} has a scheme; only paths relative to the "
                                  "blob root are allowed")
    if uri.startswith(("/", "\\")) or "\\" in uri:
        raise UnsafeBlobPathError(f"blob URI {uri!r} is absolute or uses backslashes")
    if any(part in ("..", ".", "") for part in uri.split("/")):
        raise UnsafeBlobPathError(f"blob URI {uri!r} has '..', '.' or empty path components")
    m = _URI_RE.match(uri)
    if not m or m.group(2) != m.group(3)[:2]:
        raise UnsafeBlobPathError(f"blob URI {uri!r} is not of the form "
                                  "<kind>/<sha[:2]>/<sha256>.parquet")
    return m.group(1), m.group(3)


def schema_json(schema: pa.Schema) -> str:
    return json.dumps([{"name": f.name, "type": str(f.type), "nullable": f.nullable}
                       for f in schema])


class BlobStore:
    """Parquet blobs under `root_uri`: a local folder (default `results/blobs`) or a pyarrow
    filesystem URI (`s3://bucket/prefix`, `gs://...`, `file:///...`)."""

    def __init__(self, root_uri: str | os.PathLike[str] = DEFAULT_BLOB_ROOT) -> None:
        root = os.fspath(root_uri)
        if "://" in root:
            self.fs, path = pafs.FileSystem.from_uri(root)
            self.root = path.rstrip("/")
        else:
            self.fs = pafs.LocalFileSystem()
            self.root = Path(root).resolve().as_posix()
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)
        if self.is_local:
            Path(self.root).mkdir(parents=True, exist_ok=True)
        self.root_uri = root

    def __repr__(self) -> str:
        return f"BlobStore({self.root_uri!r})"

    # --- paths ------------------------------------------------------------------------------
    def path_of(self, uri: str) -> str:
        """Filesystem path of a relative blob URI, after checking it cannot escape the root."""
        check_relative_uri(uri)
        return str(PurePosixPath(self.root) / uri)

    def full_uri(self, ref: BlobRef | str) -> str:
        """Location usable without this code (local path, or `s3://...`), e.g. for duckdb."""
        path = self.path_of(ref.uri if isinstance(ref, BlobRef) else ref)
        if self.is_local:
            return path
        scheme = {"gcs": "gs"}.get(self.fs.type_name, self.fs.type_name)
        return f"{scheme}://{path}"

    # --- writing ----------------------------------------------------------------------------
    def put_table(self, kind: str, table: pa.Table) -> BlobRef:
        """Stores `table` as Parquet; returns its reference. Idempotent: same bytes, same file."""
        check_kind(kind)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        data = sink.getvalue().to_pybytes()
        sha = hashlib.sha256(data).hexdigest()
        uri = f"{kind}/{sha[:2]}/{sha}.parquet"
        path = self.path_of(uri)
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            self._write_atomically(path, data)
        return BlobRef(kind=kind, uri=uri, sha256=sha, bytes=len(data),
                       row_count=table.num_rows, schema_json=schema_json(table.schema))

    def _write_atomically(self, path: str, data: bytes) -> None:
        parent = str(PurePosixPath(path).parent)
        self.fs.create_dir(parent, recursive=True)
        if not self.is_local:
            # Object stores publish an object only once its upload completes: already atomic.
            with self.fs.open_output_stream(path) as out:
                out.write(data)
            return
        # Readers (and concurrent writers of the same content) must never see a partial file:
        # write a unique temp name in the same folder, fsync, then rename over the final name.
        tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    # --- reading ----------------------------------------------------------------------------
    def read_bytes(self, ref: BlobRef) -> bytes:
        path = self.path_of(ref.uri)
        try:
            with self.fs.open_input_stream(path) as fh:
                return fh.read()
        except FileNotFoundError as exc:
            raise BlobNotFoundError(f"blob {ref.kind!r} {ref.uri} is missing at {path}") from exc

    def get_table(self, ref: BlobRef) -> pa.Table:
        """Reads a blob, verifying its sha256; BlobCorruptedError names the blob on mismatch."""
        _, sha_in_name = check_relative_uri(ref.uri)
        data = self.read_bytes(ref)
        actual = hashlib.sha256(data).hexdigest()
        if actual != ref.sha256 or actual != sha_in_name:
            raise BlobCorruptedError(
                f"blob {ref.kind!r} at {self.path_of(ref.uri)} is corrupted: expected sha256 "
                f"{ref.sha256}, file has {actual} ({len(data)} bytes, expected {ref.bytes})"
            )
        return pq.read_table(pa.BufferReader(data))

    def iter_uris(self) -> Iterator[str]:
        """Relative URIs of all blob files under the root (temp files and strays skipped)."""
        selector = pafs.FileSelector(self.root, recursive=True, allow_not_found=True)
        for info in self.fs.get_file_info(selector):
            if info.type != pafs.FileType.File:
                continue
            rel = PurePosixPath(info.path).relative_to(PurePosixPath(self.root)).as_posix()
            if _URI_RE.match(rel):
                yield rel
