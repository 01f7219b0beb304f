"""Downloaders, against a local Range-capable HTTP server on 127.0.0.1 (no outside network)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mi_llm.corpus.download import LOCK_NAME, Manifest, RemoteFile, download, extract, get_manifest
from mi_llm.corpus.importers import import_corpus
from mi_llm.errors import MiLlmError
from tests.corpus.rangeserver import serve

FIXTURES = Path(__file__).parent / "fixtures"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest_of(root: Path, rels: list[str], **known: dict[str, object]) -> Manifest:
    """A manifest of files under `root` (the upstream URL is never used: tests pass base_url)."""
    files = tuple(RemoteFile(r, f"https://invalid.example/{r}", **known.get(r, {})) for r in rels)  # type: ignore[arg-type]
    return Manifest("test", "test files", "https://invalid.example", "none", files)


@pytest.fixture
def blob_root(tmp_path: Path) -> Path:
    root = tmp_path / "srv"
    root.mkdir()
    # Incompressible, several chunks long, so a cut lands mid-file.
    (root / "blob.bin").write_bytes(hashlib.sha256(b"seed").digest() * 20000)
    (root / "dir with space").mkdir()
    (root / "dir with space" / "a&b.txt").write_text("small file\n")
    return root


def test_manifests_cover_the_sources():
    cps = get_manifest("cpsycound")
    assert len(cps.files) == 3084 + 45
    assert "CPsyCounD/case_1899.txt" in {f.path for f in cps.files}
    assert "CPsyCounD/case_1900.txt" not in {f.path for f in cps.files}
    assert all(f.url.startswith("https://raw.githubusercontent.com/CAS-SIAT-XinHai/CPsyCoun/") for f in cps.files)
    assert any("Family%20Relationship" in f.url for f in cps.files)
    assert [f.path for f in get_manifest("annomi").files] == ["AnnoMI-simple.csv", "AnnoMI-full.csv"]
    mibot = get_manifest("mibot")
    assert len([f for f in mibot.files if f.path.startswith("transcripts/")]) == 106
    assert get_manifest("smile").archives[0].members == "data/*.json"
    with pytest.raises(MiLlmError, match="choose one of: cpsycound"):
        get_manifest("nosuch")


def test_download_verifies_and_records_then_skips(blob_root: Path, tmp_path: Path):
    m = manifest_of(blob_root, ["blob.bin", "dir with space/a&b.txt"])
    dest = tmp_path / "dest"
    with serve(blob_root) as (base, state):
        rep = download("test", dest, base, manifest=m, show_progress=False)
        assert rep.downloaded == 2 and rep.present == 0
        assert (dest / "blob.bin").read_bytes() == (blob_root / "blob.bin").read_bytes()
        assert (dest / "dir with space" / "a&b.txt").read_text() == "small file\n"
        lock = json.loads((dest / LOCK_NAME).read_text())
        entry = lock["sources"]["test"]["files"]["blob.bin"]
        assert entry == {"size": 640000, "sha256": sha(blob_root / "blob.bin"), "url": f"{base}/blob.bin"}
        n = len(state.requests)
        rep = download("test", dest, base, manifest=m, show_progress=False)
        assert rep.downloaded == 0 and rep.present == 2 and len(state.requests) == n
    assert not list(dest.rglob("*.part"))


def test_resume_after_truncated_part(blob_root: Path, tmp_path: Path):
    m = manifest_of(blob_root, ["blob.bin"])
    dest = tmp_path / "dest"
    dest.mkdir()
    data = (blob_root / "blob.bin").read_bytes()
    (dest / "blob.bin.part").write_bytes(data[:250_000])  # an earlier run stopped here
    with serve(blob_root) as (base, state):
        rep = download("test", dest, base, manifest=m, show_progress=False)
    assert state.requests == [("blob.bin", "bytes=250000-", 206)]
    assert rep.bytes == len(data) - 250_000
    assert (dest / "blob.bin").read_bytes() == data and not (dest / "blob.bin.part").exists()


def test_dropped_connection_resumes_with_range(blob_root: Path, tmp_path: Path):
    m = manifest_of(blob_root, ["blob.bin"])
    with serve(blob_root, cut_once={"blob.bin": 100_000}) as (base, state):
        download("test", tmp_path / "dest", base, manifest=m, show_progress=False)
    assert [r[2] for r in state.requests] == [200, 206]
    assert state.requests[1][1] == "bytes=100000-"
    assert (tmp_path / "dest" / "blob.bin").read_bytes() == (blob_root / "blob.bin").read_bytes()


def test_server_ignoring_range_starts_over(blob_root: Path, tmp_path: Path):
    m = manifest_of(blob_root, ["blob.bin"])
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "blob.bin.part").write_bytes(b"stale bytes that must not survive")
    with serve(blob_root, ignore_range=True) as (base, state):
        download("test", dest, base, manifest=m, show_progress=False)
    assert state.requests[0][2] == 200
    assert (dest / "blob.bin").read_bytes() == (blob_root / "blob.bin").read_bytes()


def test_checksum_mismatch_is_an_error_and_leaves_no_file(blob_root: Path, tmp_path: Path):
    m = manifest_of(blob_root, ["blob.bin"], **{"blob.bin": {"sha256": "0" * 64}})
    dest = tmp_path / "dest"
    with serve(blob_root) as (base, _):
        with pytest.raises(MiLlmError, match="sha256 mismatch.*expected values from the manifest"):
            download("test", dest, base, manifest=m, show_progress=False)
    assert not (dest / "blob.bin").exists() and not (dest / "blob.bin.part").exists()


def test_size_mismatch_from_manifest(blob_root: Path, tmp_path: Path):
    m = manifest_of(blob_root, ["blob.bin"], **{"blob.bin": {"size": 10}})
    with serve(blob_root) as (base, _):
        with pytest.raises(MiLlmError, match="reports 640,000 bytes, expected 10"):
            download("test", tmp_path / "dest", base, manifest=m, show_progress=False)
    assert not (tmp_path / "dest" / "blob.bin").exists()


def test_changed_upstream_fails_against_first_download(blob_root: Path, tmp_path: Path):
    m = manifest_of(blob_root, ["dir with space/a&b.txt"])
    dest = tmp_path / "dest"
    with serve(blob_root) as (base, _):
        download("test", dest, base, manifest=m, show_progress=False)
        target = dest / "dir with space" / "a&b.txt"
        target.write_text("edited locally\n")  # no longer matches the record: fetched again
        download("test", dest, base, manifest=m, show_progress=False)
        assert target.read_text() == "small file\n"
        (blob_root / "dir with space" / "a&b.txt").write_text("other file\n")  # upstream changed, same size
        target.unlink()
        with pytest.raises(MiLlmError, match="sha256 mismatch.*first download"):
            download("test", dest, base, manifest=m, show_progress=False)
    assert not target.exists()


def test_http_404_is_a_clear_error(blob_root: Path, tmp_path: Path):
    m = manifest_of(blob_root, ["missing.txt"])
    with serve(blob_root) as (base, _):
        with pytest.raises(MiLlmError, match=r"/missing.txt: HTTP 404"):
            download("test", tmp_path / "dest", base, manifest=m, show_progress=False)


def test_unreachable_server_keeps_part_for_resume(tmp_path: Path):
    m = manifest_of(tmp_path, ["x.bin"])
    # Port 9 (discard) on 127.0.0.1 is closed here: the connection is refused.
    with pytest.raises(MiLlmError, match="run the command again to resume"):
        download("test", tmp_path / "dest", "http://127.0.0.1:9", manifest=m, show_progress=False, timeout=2, retries=1)


def test_smile_archive_download_and_extract(tmp_path: Path):
    srv = tmp_path / "srv"
    srv.mkdir()
    with zipfile.ZipFile(srv / "smile.zip", "w") as z:
        for f in sorted((FIXTURES / "smile").glob("*.json")):
            z.write(f, f"smile-0123abc/data/{f.name}")
        z.writestr("smile-0123abc/README.md", "not extracted")
    dest = tmp_path / "dest"
    with serve(srv) as (base, _):
        rep = download("smile", dest, base, show_progress=False)
        assert rep.extracted == 2
        assert sorted(p.name for p in (dest / "data").iterdir()) == ["12.json", "7.json"]
        assert not (dest / "README.md").exists()
        rep = download("smile", dest, base, show_progress=False)
        assert rep.present == 1 and rep.extracted == 0
    dialogues, _ = import_corpus("smile", dest)
    assert len(dialogues) == 2


def test_extract_refuses_paths_outside(tmp_path: Path):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("../evil.json", "{}")
    with pytest.raises(MiLlmError, match="refusing to write outside"):
        extract(bad, tmp_path / "out", "*.json")
    assert not (tmp_path / "evil.json").exists()


@pytest.mark.integration
def test_download_annomi_from_shared_mirror(shared_data: Path, tmp_path: Path):
    for source, folder, expected in (("annomi", "annomi", 106),):
        dest = tmp_path / source
        with serve(shared_data / folder) as (base, _):
            rep = download(source, dest, base, show_progress=False)
        assert rep.downloaded == len(get_manifest(source).files)
        for f in get_manifest(source).files:
            assert sha(dest / f.path) == sha(shared_data / folder / f.path)
        dialogues, _ = import_corpus(source, dest)
        assert len(dialogues) == expected


@pytest.mark.integration
def test_download_cpsycoun_from_shared_mirror(shared_data: Path, tmp_path: Path):
    """Every CPsyCounE file (names with spaces and '&') and every 10th CPsyCounD case."""
    full = get_manifest("cpsycound")
    files = tuple(f for i, f in enumerate(full.files) if f.path.startswith("CPsyCounE/") or i % 10 == 0)
    m = Manifest(full.source, full.description, full.homepage, full.license, files)
    dest = tmp_path / "cpsycound"
    with serve(shared_data / "cpsycound") as (base, state):
        rep = download("cpsycound", dest, base, manifest=m, show_progress=False)
    assert rep.downloaded == len(files) == 45 + 309 and {s for _, _, s in state.requests} == {200}
    for f in files:
        assert sha(dest / f.path) == sha(shared_data / "cpsycound" / f.path)
    assert len(import_corpus("cpsycoune", dest / "CPsyCounE")[0]) == 45
    assert len(import_corpus("cpsycound", dest / "CPsyCounD")[0]) == 309


@pytest.mark.integration
def test_cli_download_mibot_from_shared_mirror(shared_data: Path, tmp_path: Path):
    dest = tmp_path / "mibot"
    with serve(shared_data / "mibot") as (base, state):
        r = subprocess.run(
            [sys.executable, "-m", "mi_llm", "data", "download", "mibot", str(dest), "--base-url", base],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert len(state.requests) == 108
    assert len(list((dest / "transcripts").glob("*.json"))) == 106 and (dest / LOCK_NAME).is_file()
    assert len(import_corpus("mibot", dest)[0]) == 106


def test_cli_download_error_is_one_line(tmp_path: Path):
    r = subprocess.run(
        [sys.executable, "-m", "mi_llm", "data", "download", "annomi", str(tmp_path / "d"), "--base-url", "ftp://x"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["--base-url must be an http(s) URL (got 'ftp://x')"]


def test_unreadable_lock_is_a_clear_error(blob_root: Path, tmp_path: Path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / LOCK_NAME).write_text("[1, 2]")
    with pytest.raises(MiLlmError, match="unreadable; delete it"):
        download("test", dest, "http://127.0.0.1:9", manifest=manifest_of(blob_root, ["blob.bin"]), show_progress=False)
