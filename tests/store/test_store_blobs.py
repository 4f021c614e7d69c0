"""Blob store: content addressing, atomic idempotent writes, hash checks, path safety, and
files that other tools read without our code."""

from __future__ import annotations

import hashlib
import posixpath
from pathlib import Path, PurePosixPath

import duckdb
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from store import BlobCorruptedError, BlobNotFoundError, BlobRef, BlobStore, UnsafeBlobPathError
from store.blobs import check_relative_uri


def _table(n: int = 5) -> pa.Table:
    return pa.table({"layer": list(range(n)), "channel": [i * 7 for i in range(n)],
                     "ratio": [i / 10 for i in range(n)]})


def test_put_is_content_addressed_idempotent_and_leaves_no_temp_files(tmp_path):
    store = BlobStore(tmp_path / "b")
    ref = store.put_table("outlier_channels", _table())
    again = store.put_table("outlier_channels", _table())
    assert ref == again
    path = Path(store.path_of(ref.uri))
    data = path.read_bytes()
    assert ref.sha256 == hashlib.sha256(data).hexdigest() and ref.bytes == len(data)
    assert ref.uri == f"outlier_channels/{ref.sha256[:2]}/{ref.sha256}.parquet"
    assert ref.row_count == 5 and '"layer"' in ref.schema_json
    assert [p.name for p in (tmp_path / "b").rglob("*") if p.is_file()] == [path.name]
    assert store.get_table(ref).equals(_table())
    assert list(store.iter_uris()) == [ref.uri]
    other = store.put_table("outlier_channels", _table(6))
    assert other.uri != ref.uri


def test_files_are_plain_parquet_for_duckdb_and_pandas(tmp_path):
    store = BlobStore(tmp_path / "b")
    ref = store.put_table("scales", _table(4))
    store.put_table("scales", _table(3))
    path = store.full_uri(ref)
    assert pd.read_parquet(path)["channel"].tolist() == [0, 7, 14, 21]
    con = duckdb.connect()
    assert con.execute("SELECT sum(channel) FROM read_parquet(?)", [path]).fetchone()[0] == 42
    pattern = str(tmp_path / "b" / "scales" / "*" / "*.parquet")
    assert con.execute("SELECT count(*) FROM read_parquet(?)", [pattern]).fetchone()[0] == 7


def test_corrupted_blob_is_detected_with_its_name(tmp_path):
    store = BlobStore(tmp_path / "b")
    ref = store.put_table("outlier_channels", _table())
    path = Path(store.path_of(ref.uri))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BlobCorruptedError) as info:
        store.get_table(ref)
    assert ref.uri in str(info.value) and "outlier_channels" in str(info.value)


def test_missing_blob_names_the_file(tmp_path):
    store = BlobStore(tmp_path / "b")
    ref = store.put_table("k", _table())
    Path(store.path_of(ref.uri)).unlink()
    with pytest.raises(BlobNotFoundError, match=ref.sha256):
        store.get_table(ref)


SHA = "ab" + "0" * 62
UNSAFE_URIS = [
    "",
    f"../k/ab/{SHA}.parquet",
    f"k/../../ab/{SHA}.parquet",
    f"k/ab/../../../etc/{SHA}.parquet",
    f"/etc/k/ab/{SHA}.parquet",
    f"s3://bucket/k/ab/{SHA}.parquet",
    f"file:///k/ab/{SHA}.parquet",
    f"C:/k/ab/{SHA}.parquet",
    f"k\\ab\\{SHA}.parquet",
    f"k/./ab/{SHA}.parquet",
    f"k//ab/{SHA}.parquet",
    f"k/cd/{SHA}.parquet",  # prefix folder does not match the hash
    "k/ab/passwd",
]


@pytest.mark.parametrize("uri", UNSAFE_URIS)
def test_uris_that_could_escape_the_root_are_rejected(tmp_path, uri):
    store = BlobStore(tmp_path / "b")
    with pytest.raises(UnsafeBlobPathError):
        check_relative_uri(uri)
    with pytest.raises(UnsafeBlobPathError):
        store.get_table(BlobRef(kind="k", uri=uri, sha256=SHA, bytes=1, row_count=1,
                                schema_json="[]"))


@pytest.mark.parametrize("kind", ["", "..", "a/b", "A", "../x", "x y"])
def test_bad_kinds_are_rejected(tmp_path, kind):
    with pytest.raises(ValueError):
        BlobStore(tmp_path / "b").put_table(kind, _table())


def test_pyarrow_filesystem_uri_root(tmp_path):
    store = BlobStore((tmp_path / "fsroot").as_uri())  # file:///..., via FileSystem.from_uri
    ref = store.put_table("k", _table())
    assert (tmp_path / "fsroot" / ref.uri).is_file()
    assert BlobStore(tmp_path / "fsroot").get_table(ref).equals(_table())


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(list("ab0/.\\:-_~%") + ["..", "//", "ab/", SHA, ".parquet"]),
                max_size=12).map("".join))
@example(f"a/ab/{SHA}.parquet")
def test_accepted_uris_always_stay_inside_the_root(uri):
    try:
        check_relative_uri(uri)
    except UnsafeBlobPathError:
        return
    root = PurePosixPath("/blob/root")
    resolved = PurePosixPath(posixpath.normpath(root / uri))
    assert resolved.parent.parent.parent == root


# --- damaged files are rewritten, not reused --------------------------------------------------
def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("damage", ["truncate", "flip", "append", "empty"])
def test_a_damaged_file_is_rewritten_by_the_next_put_of_its_content(tmp_path, damage):
    store = BlobStore(tmp_path / "b")
    ref = store.put_table("outlier_channels", _table())
    path = Path(store.path_of(ref.uri))
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        del data[len(data) // 2:]
    elif damage == "flip":  # same size, other bytes: only the hash can tell
        data[len(data) // 2] ^= 0xFF
    elif damage == "append":
        data += b"junk"
    else:
        data.clear()
    path.write_bytes(bytes(data))
    assert store.verify(ref) is not None
    assert store.put_table("outlier_channels", _table()) == ref
    assert _sha(path) == ref.sha256 and path.stat().st_size == ref.bytes
    assert store.verify(ref) is None and store.get_table(ref).equals(_table())
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left


def test_verify_names_what_is_wrong(tmp_path):
    store = BlobStore(tmp_path / "b")
    ref = store.put_table("k", _table())
    path = Path(store.path_of(ref.uri))
    path.write_bytes(path.read_bytes()[:10])
    assert "has 10 bytes, expected" in store.verify(ref)
    path.unlink()
    assert store.verify(ref) == "missing"
    assert store.remove(ref.uri) is False


# --- blob roots and symlinks --------------------------------------------------------------------
def test_a_relative_root_may_not_leave_the_working_directory(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for root in ("../elsewhere", "results/../../elsewhere"):
        with pytest.raises(UnsafeBlobPathError, match="outside the working directory") as info:
            BlobStore(root)
        assert str(tmp_path / "elsewhere") in str(info.value)
    assert not (tmp_path / "elsewhere").exists()  # refused before anything was created
    assert BlobStore("results/../blobs").root == str(work / "blobs")  # stays inside: fine
    assert BlobStore(tmp_path / "elsewhere").root == str(tmp_path / "elsewhere")  # explicit


def test_a_symlinked_file_inside_the_root_is_never_followed(tmp_path):
    store = BlobStore(tmp_path / "b")
    ref = store.put_table("k", _table())
    path = Path(store.path_of(ref.uri))
    secret = tmp_path / "secret"
    secret.write_bytes(path.read_bytes())  # even a link to the right bytes is refused
    path.unlink()
    path.symlink_to(secret)
    for action in (lambda: store.get_table(ref), lambda: store.put_table("k", _table())):
        with pytest.raises(UnsafeBlobPathError, match="is a symlink") as info:
            action()
        assert str(path) in str(info.value)
    assert "symlink" in store.verify(ref)
    assert list(store.iter_uris()) == []
    assert store.remove(ref.uri) and secret.exists() and not path.is_symlink()


def test_a_symlinked_folder_inside_the_root_is_never_written_through(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    store = BlobStore(tmp_path / "b")
    (tmp_path / "b" / "k").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafeBlobPathError, match=r"b/k is a symlink"):
        store.put_table("k", _table())
    assert list(outside.iterdir()) == []
    ref = BlobStore(tmp_path / "other").put_table("k", _table())
    (outside / ref.uri.split("/")[1]).mkdir()
    (outside / ref.uri.split("/", 1)[1]).write_bytes(
        Path(BlobStore(tmp_path / "other").path_of(ref.uri)).read_bytes())
    with pytest.raises(UnsafeBlobPathError):
        store.get_table(ref)  # the file exists through the link, and is still refused
