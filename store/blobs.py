"""Content-addressed Parquet blobs (trace tables) on a local folder or any pyarrow filesystem.

A blob lives at `<root>/<kind>/<sha[:2]>/<sha>.parquet` where `sha` is the sha256 of the
Parquet file's bytes. The database stores only the relative part, so a row can never point
outside the root, and the files are plain Parquet that pandas, pyarrow or duckdb read
without this code, e.g. `SELECT * FROM read_parquet('results/blobs/outlier_channels/*/*.parquet')`.

Local roots: a relative root must stay inside the working directory (`../x` is refused; give
an absolute path to use a folder elsewhere), and nothing inside the root is reached through a
symlink: every component below the root is opened with O_NOFOLLOW, so a planted link (to
another user's file, to /etc) is refused with an error naming it, on read and write alike.
An existing file is reused only when its size and sha256 match; otherwise it is rewritten.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
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
    """A blob URI that is not a plain relative path inside the blob root, a relative root that
    leaves the working directory, or a symlink inside the root."""


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


def local_root(root: str) -> str:
    """The absolute path of a local blob root. A relative root must stay inside the working
    directory: `../shared/blobs` typed (or read from a spec) by mistake would write elsewhere
    unnoticed; an absolute path says the folder is meant."""
    if not os.path.isabs(root):
        cwd = os.getcwd()
        lexical = os.path.normpath(os.path.join(cwd, root))
        if os.path.commonpath([cwd, lexical]) != cwd:
            raise UnsafeBlobPathError(
                f"blob root {root!r} is {lexical}, outside the working directory {cwd} ('..' "
                "may not leave it); pass the folder as an absolute path to use it anyway")
    return Path(root).resolve().as_posix()


def _is_symlink(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


class BlobStore:
    """Parquet blobs under `root_uri`: a local folder (default `results/blobs`) or a pyarrow
    filesystem URI (`s3://bucket/prefix`, `gs://...`, `file:///...`). `create=False`: a local
    root is not created (for checks, which must not leave an empty folder behind)."""

    def __init__(self, root_uri: str | os.PathLike[str] = DEFAULT_BLOB_ROOT, *,
                 create: bool = True) -> None:
        root = os.fspath(root_uri)
        if "://" in root:
            self.fs, path = pafs.FileSystem.from_uri(root)
            self.root = path.rstrip("/")
        else:
            self.fs = pafs.LocalFileSystem()
            self.root = local_root(root)
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)
        if self.is_local and create:
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
        """Stores `table` as Parquet; returns its reference. Idempotent: same bytes, same file.
        A file already there is reused only if its size and sha256 are right: a truncated or
        altered one would otherwise be referenced by every later result with this content."""
        check_kind(kind)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        data = sink.getvalue().to_pybytes()
        sha = hashlib.sha256(data).hexdigest()
        uri = f"{kind}/{sha[:2]}/{sha}.parquet"
        if not self._holds(uri, len(data), sha):
            self._write_atomically(uri, data)
        return BlobRef(kind=kind, uri=uri, sha256=sha, bytes=len(data),
                       row_count=table.num_rows, schema_json=schema_json(table.schema))

    def _holds(self, uri: str, size: int, sha: str) -> bool:
        """Whether the file of `uri` exists with exactly `size` bytes hashing to `sha`."""
        if not self.is_local:  # size from the listing first: a wrong one needs no download
            info = self.fs.get_file_info(self.path_of(uri))
            if info.type != pafs.FileType.File or info.size != size:
                return False
        try:
            data = self._read_uri(uri, limit=size + 1)  # a longer file is wrong: stop reading
        except BlobNotFoundError:
            return False
        return len(data) == size and hashlib.sha256(data).hexdigest() == sha

    def _write_atomically(self, uri: str, data: bytes) -> None:
        path = self.path_of(uri)
        if not self.is_local:
            # Object stores publish an object only once its upload completes: already atomic.
            self.fs.create_dir(str(PurePosixPath(path).parent), recursive=True)
            with self.fs.open_output_stream(path) as out:
                out.write(data)
            return
        # Readers (and concurrent writers of the same content) must never see a partial file:
        # write a unique temp name in the same folder, fsync, then rename over the final name
        # (which replaces a damaged file in one step).
        *dirs, name = uri.split("/")
        tmp = f"{name}.tmp-{os.getpid()}-{uuid.uuid4().hex}"
        with self._folder(dirs, create=True) as dir_fd:
            fd = self._open(tmp, dir_fd, os.O_WRONLY | os.O_CREAT | os.O_EXCL, uri + ".tmp")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            finally:
                try:
                    os.unlink(tmp, dir_fd=dir_fd)
                except FileNotFoundError:
                    pass

    def remove(self, uri: str) -> bool:
        """Deletes the file of `uri` (a symlink there: the link itself); False if there is none."""
        path = self.path_of(uri)
        if not self.is_local:
            if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
                return False
            self.fs.delete_file(path)
            return True
        *dirs, name = uri.split("/")
        try:
            with self._folder(dirs, create=False) as dir_fd:
                os.unlink(name, dir_fd=dir_fd)  # unlink never follows a link
        except FileNotFoundError:
            return False
        return True

    # --- local paths without symlinks -------------------------------------------------------
    @contextmanager
    def _folder(self, dirs: list[str], *, create: bool) -> Iterator[int]:
        """A descriptor of root/dirs, opened one component at a time without following links
        (checking each path first and opening it after would leave a window to swap in one)."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i, name in enumerate(dirs):
                if create:
                    try:
                        os.mkdir(name, dir_fd=fd)
                    except FileExistsError:
                        pass
                sub = self._open(name, fd, os.O_RDONLY | os.O_DIRECTORY, "/".join(dirs[:i + 1]))
                os.close(fd)
                fd = sub
            yield fd
        finally:
            os.close(fd)

    def _open(self, name: str, dir_fd: int, flags: int, rel: str) -> int:
        """os.open of `name` in `dir_fd` that refuses a symlink; `rel` (its path below the
        root) is for the message."""
        try:
            return os.open(name, flags | os.O_NOFOLLOW, 0o666, dir_fd=dir_fd)
        except OSError as exc:
            # O_NOFOLLOW fails with ELOOP on a file link, ENOTDIR on a link with O_DIRECTORY.
            if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_symlink(name, dir_fd):
                raise UnsafeBlobPathError(
                    f"{self.root}/{rel} is a symlink inside the blob root: blob files and "
                    "folders are never reached through links (remove it)") from None
            raise

    # --- reading ----------------------------------------------------------------------------
    def read_bytes(self, ref: BlobRef) -> bytes:
        return self._read_uri(ref.uri, ref.kind)

    def _read_uri(self, uri: str, kind: str | None = None, limit: int | None = None) -> bytes:
        """The file's bytes (locally at most `limit`)."""
        path = self.path_of(uri)
        try:
            if not self.is_local:
                with self.fs.open_input_stream(path) as fh:
                    return fh.read()
            *dirs, name = uri.split("/")
            with self._folder(dirs, create=False) as dir_fd:
                with os.fdopen(self._open(name, dir_fd, os.O_RDONLY, uri), "rb") as fh:
                    return fh.read(-1 if limit is None else limit)
        except FileNotFoundError as exc:
            what = f"blob {kind!r} {uri}" if kind else f"blob {uri}"
            raise BlobNotFoundError(f"{what} is missing at {path}") from exc

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

    def verify(self, ref: BlobRef) -> str | None:
        """What is wrong with the stored file of `ref`, in words (None: its size, sha256 and
        row count match and it reads as Parquet). For `store.integrity.check_blobs`."""
        try:
            _, sha_in_name = check_relative_uri(ref.uri)
            data = self.read_bytes(ref)
        except BlobNotFoundError:
            return "missing"
        except (UnsafeBlobPathError, OSError) as exc:
            return f"cannot be read: {exc}"
        if len(data) != ref.bytes:
            return f"has {len(data)} bytes, expected {ref.bytes} (truncated or altered)"
        actual = hashlib.sha256(data).hexdigest()
        if actual != ref.sha256 or actual != sha_in_name:
            return f"sha256 is {actual}, expected {ref.sha256} (altered)"
        try:
            rows = pq.read_table(pa.BufferReader(data)).num_rows
        except (pa.ArrowException, OSError) as exc:
            return f"is not readable Parquet: {exc}"
        return None if rows == ref.row_count else f"has {rows} rows, expected {ref.row_count}"

    def iter_uris(self) -> Iterator[str]:
        """Relative URIs of all blob files under the root (temp files, strays and, locally,
        symlinks skipped)."""
        if self.is_local:
            for folder, _dirs, files in os.walk(self.root):  # does not descend into links
                for name in files:
                    full = os.path.join(folder, name)
                    rel = os.path.relpath(full, self.root).replace(os.sep, "/")
                    if _URI_RE.match(rel) and not os.path.islink(full):
                        yield rel
            return
        selector = pafs.FileSelector(self.root, recursive=True, allow_not_found=True)
        for info in self.fs.get_file_info(selector):
            if info.type != pafs.FileType.File:
                continue
            rel = PurePosixPath(info.path).relative_to(PurePosixPath(self.root)).as_posix()
            if _URI_RE.match(rel):
                yield rel
