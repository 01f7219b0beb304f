"""Downloaders of the public corpora: resumable, size- and checksum-verified, atomic.

`download(source, dest)` fetches every file of a source's manifest into DEST, laid out as
the importers expect (the layout of ../shared/data). Each file streams into
`<file>.part`; an interrupted download resumes from there with an HTTP Range request
(a server that ignores Range makes it start over). A finished file is checked against
the size and sha256 the manifest knows; where it knows none, the values measured on the
first download are recorded in DEST/.mi-llm-download.json and later downloads must match
them (trust on first use). Only a verified file is renamed into place; a file that fails
verification is removed, so DEST never holds one.

`base_url` replaces the upstream URLs by a mirror laid out like DEST (file `p` is fetched
from `<base_url>/<p>`): the tests serve ../shared/data from 127.0.0.1 this way.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import logging
import os
import threading
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

import httpx
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from mi_llm import __version__
from mi_llm.console import console
from mi_llm.errors import MiLlmError
from mi_llm.io import write_json
from mi_llm.registry import Registry

log = logging.getLogger(__name__)

LOCK_NAME = ".mi-llm-download.json"
CHUNK = 1 << 16
RETRIES = 3  # per file, for dropped connections; each retry resumes where it stopped


@dataclass(frozen=True)
class RemoteFile:
    path: str  # relative path inside DEST, and under a mirror's base URL
    url: str  # upstream URL
    size: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Archive:
    """A zip whose members matching `members` (top folder stripped) are extracted into DEST/`into`."""

    file: RemoteFile
    members: str
    into: str = ""


@dataclass(frozen=True)
class Manifest:
    source: str
    description: str
    homepage: str
    license: str
    files: tuple[RemoteFile, ...] = ()
    archives: tuple[Archive, ...] = ()


@dataclass
class DownloadReport:
    source: str
    dest: Path
    downloaded: int = 0  # files fetched now
    present: int = 0  # files already there and verified (or recorded)
    bytes: int = 0  # bytes received now
    extracted: int = 0  # archive members written
    files: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- manifests

_GH_RAW = "https://raw.githubusercontent.com"


def _raw(repo: str, path: str) -> str:
    # HEAD resolves to the default branch of the repository.
    return f"{_GH_RAW}/{repo}/HEAD/{quote(path)}"


_CPSYCOUN = "CAS-SIAT-XinHai/CPsyCoun"
# case_0 .. case_3133; upstream has no case_1900 .. case_1949 (3,084 files).
_CPSYCOUND_IDS = [i for i in range(3134) if not 1900 <= i <= 1949]
_CPSYCOUNE_TOPICS = (
    "Career", "Education", "Emotion&Stress", "Family Relationship", "Love&Marriage",
    "Mental Disease", "Self-growth", "Sex", "Social Relationship",
)  # fmt: skip


# source name -> its manifest (what to fetch), each registered below
MANIFESTS: Registry[Callable[[], Manifest]] = Registry("downloadable source")


@MANIFESTS.register("cpsycound")
def _cpsycound() -> Manifest:
    files = [
        RemoteFile(f"CPsyCounD/case_{i}.txt", _raw(_CPSYCOUN, f"CPsyCounD/Data/case_{i}.txt")) for i in _CPSYCOUND_IDS
    ]
    files += [
        RemoteFile(f"CPsyCounE/{t}/{n}.json", _raw(_CPSYCOUN, f"CPsyCounE/{t}/{n}.json"))
        for t in _CPSYCOUNE_TOPICS
        for n in range(1, 6)
    ]
    return Manifest(
        "cpsycound",
        "CPsyCounD (3,084 counseling dialogues, zh) and CPsyCounE (45 evaluation dialogues)",
        f"https://github.com/{_CPSYCOUN}",
        "CC BY 4.0",
        tuple(files),
    )


@MANIFESTS.register("annomi")
def _annomi() -> Manifest:
    repo = "uccollab/AnnoMI"
    return Manifest(
        "annomi",
        "AnnoMI: expert-annotated MI demonstration transcripts (en), simple and full CSV",
        f"https://github.com/{repo}",
        "Public Domain per an earlier upstream README; none stated now",
        tuple(RemoteFile(n, _raw(repo, n)) for n in ("AnnoMI-simple.csv", "AnnoMI-full.csv")),
    )


@MANIFESTS.register("smile")
def _smile() -> Manifest:
    # 55,165 files under data/: one repository archive instead of 55k requests.
    repo = "qiuhuachuan/smile"
    archive = RemoteFile("smile.zip", f"https://github.com/{repo}/archive/HEAD.zip")
    return Manifest(
        "smile",
        "SMILE / SmileChat: about 55k ChatGPT-expanded support dialogues (zh)",
        f"https://github.com/{repo}",
        "CC0 1.0",
        archives=(Archive(archive, "data/*.json"),),
    )


_MIBOT_REPO = "zaffnet/MIBOT_ACL2025"
_MIBOT_IDS = """
    0110514810081a14412b0109a285d159b0f3750656a2ac3ffd043100d20a1901 047fe41ceb3135bfcd94349ab17add5e3121e7703e9d5797b5d70b41d655bf4c
    09ee10eaa6a4be1768535f19cf336b78b4d5ae010b68b3601c280f608c201036 0a805e11784db17b95f0bd7a0d6c87ddf1adb1fdb8029fcb50f1c70a802d428e
    0cbb93fe613a2b83ffefd0be63df7e977b40fd9b5a5f6d09b9e4060e5766591d 1033a5027aee5668b7c65ed740955ea05339e6af76acf598af0494de27a5d04d
    108bd4247334d17dea255139c4937bdfccc359e70ece14259c28d77093c20bd6 10ecffb199e13fe9ff6e57921ed22e0554ada5eba9bbe80136eb676c43c370f2
    162a3dc4c47f439cbb5740045df3a8df23f76a5c0f56b601c4a992ffa507a213 184b8fd52cb470f43f3e1f65a726c93be9fd7eecffbea64b7c580b9c67fbd7d5
    20178ccbfb0dbfc1a8eafe6e407bf5dd60e79ecd7ecfc436402a1d64e27a9970 2111b7cdfd817bdc5f282bdb0fe524fe59ba08d7ca26cdb2585ad6334c396101
    218b835cd29a638f9fa77b13baaf1105fb0f1d8be72f8b6ba89c5a6391a94706 24effbd8d75ed6e85ea0c8649a0a3491d6bae65d5cd66ced428a7a7faf7d3f87
    259b87df7e9a8c3dd84afd3be3a66d6899a26142aeb86ddea4799270a7fc0f61 2656d57f17e32b14c98a7b03db8d706e233902c240c6b536be1dafa621add9d9
    29bfa0dfc16b846988629b5e44d350b66908d7989af87f29193f91b0ef36797e 2a60b56a604378a1d33794b7d9e08908467a66b0cffa4fb808f887188e935217
    2a80464184b3ccfed64abe7154cc3b7878b05d6a10833381c889f858d4222d7e 2d9abf954d5b896c11e0889061f7b5ed000387b5ac90b8c19824c6e50d9923ce
    2e899743cdc5fce8c15cb25bf2235cd44ad5f797c7b9db6c07a7a2fdda1ed59a 2f0426b554b2d574bace0809fc267fee08ebe548e205dbdce351dbc37a38aed4
    32f8d8604c5b1e50d9d3b7124d3cda80acae0b6ad49f484999b0f0bbbbbaac62 35c45b9a59d8a782e2d7a73b4ccce475fb287655bc5851492c5b55865cf7da17
    3737c68401c25d6be56efb3af774ebe82547e8e05ede12c25e0c8af3cc43314e 3ad9d2bc481eb4443d7bbd45e223b896eeffe27c9e326a1b7b0debb53de4280a
    3b49e9cd1c0321ec90cc0583723e1ab839d5c874400afa6dc4320363d5fb5fe7 40c5f14f05200f16a5b186e8950936549317c2f6196e3e3a0237263b7e987f39
    4434567edf8c864e3c014aca376e940cc7a989d5f8ae5265366aaefcb838f4b9 4591349070a4eaca70d10df8cb7528f7086cab4b606bcfd62c404061b6a393b1
    48799ff3ae5b711079f1d52448b71e5efb364a1577dc05e99205eb00c77c69b3 49cc305b40bbca5704281ba2497ef2ebf5ee8d28887d281e2c0a52ae46183101
    4aace70dbddf57e64933b9cd97f023522de475638795aa747c5c1e2f610981de 4bee8782399396fb6659e8f083e4ea184fa4decbb051d4255a33de12afb4b456
    4fc38b6110d93d0d5cf7ff42bdf9cf099956c751cc68fcff96767aaff3e62b12 5996b6253cd636fbd5b00b2493c862652ec00f16a5c45428f04d0fbc11611adf
    5c387f7cfc0daa42951d9dec0f8e935dfb555a9fbdffcf95cbc613966474adce 5d8615ccd6de5c06822ff055cc0ac0dd1fcfba1b67537205997e23da49837722
    5e21c8a46bb1d67e70ba3f188791b55581ab9afa647521e3b715030d7773b9ea 63122c2e7ab10224a6e63f18c1518222654def5c61d7118937fcfbee61e8bde0
    65b97014b66ba449d06fc4cf45c32d3c718994c73f70130082421e27cbc125e4 67cf3e7cf5c94f5aac70474529c21b2fb4baed122d429f4c2b8b91eb7c5f4e1c
    683536b44af7992f074e61d5f9eeabae9ad2cd383c1289f85cfce3ae579d0484 6d1dd676592f0bf70801943b78990a9349d32db8b3da19bc4018b5c3c7007c9d
    6e9e4a270b45998f20b9f7bcb14b3328124b9955c03651b0489cc375db922e25 735b2245c912ddf437c12f6faad8d0708a8905fa6a19adf140b9220d7ff8dc1a
    74d3e6d1f172fd553be550f8d6edfa8780653653efb3f73f25a06394fa8a5fd5 78281d5092bf1cb463081d55626f9996c64642ec552ca636397eb22925c880bd
    794c0ee325a989cf837280a83f06392124b4daa217483689a80e0bbbe5e98443 796b23739579e7c3755cda44db7d691d631b889d6f1198425b67e0a0610b4590
    7a12975775f62b736759e9743fab91f78e4b1fb10e4d1ede88fcfe2c040e2d83 7ab90d390617f6f4f6c91cf991a551f901cdde1c9429bbc63c248975f6f72075
    7d91436fa2ffc9dab4a0f4ecd9ee274228b17a6ebbf0cf49b2874d4cc471be96 7da851ffacd7c0f517b48c670c102e79d0d7ac853d1b22c662ca56fa315ef298
    8278ce23f6a06c234c49baa9ce0213def50cec974190d123f65db81561b03a07 82e2a30d610a7ce8ec8b5451dd5c14f6a6b70c201580d3c85aecf03378f19b4b
    84e2251a3367685700f3712347f840d2646ee010f63d7b60929f55f1b76db9dd 85a134ca55f414a93a5704f1c7fa6417e378ee194b0322731a1f86eb0dade827
    8882edab2daf45ee669f8a3f4f4269e9b61417750b4f75b33ce5021e1d815039 8bc7d560bedee77260cd4836c4ea34b39fd19df5048485e4fcaef1c77a170ac5
    8e640573f6620bc26c2897ea6f1b258bbda7055cc27e3278646e150ab1d85924 96bb90dc7ce30f4da620aa39b548b190994fda2c42952e92002a84db82cda8c4
    9a0935f1d6f43dbd2c714600983ce64ec7736014a8e6eb3c1a30fba29e6f5b50 9e67946efae0b54144a8c1561118dc5cf04196921a017877aa917a5512e9e8b6
    9fb8812cc64a4f1ade535e2642a1d385e7ccc6365fcdd5466ca4a78a3e7e2ce5 a01419b6e1e57c915ced70136fdcbf602207e91f54098c5cc82a17a2346aef1d
    a24cbd5c371dc53d1c2846a47344696672c6a519e1b8e071e6e0e5f33c4d07ea a5c723d29fca0dfe677132fec5e7ed2b98426f42e3aa9b514ab2cf68710174db
    ac770af97d36b6c8f677cd09241ccd8f70c531a15426601dfaf8771be55c090a ad755425be7ae0942e263c689a89845d5bd08f984033357f54f715286c838de0
    b0726c18bf0af0262dae0f98ae361f8d214e3350f3045186364f9b037ebc3e56 b500c442a4bb96d844a31d1b635e0ed49238c889dfb09db0da2a8585ebd5614c
    b563621cd4906f3fb846c1fd361de520685fc909a2ac575d1a0360e2fe8dd1b6 b5bdea4f8dd8bc63a20aef8c698f415e8d5cedf24f60bfbf58335b6d4ec969a2
    b69a08af285236449744c388e2d8d4d23163fe4c56276ff1bace460b607b22e8 baafbbba33eacc4b4ff7eb764fe24c0286d7760e3a8ca8ddd92d77a4972614d1
    bcc4d849096001d842e261bf40c6ea29aca729d0d2ec311aeb284c041f7976c2 be71cc06bfc01718afb0175b9c0a77c26b9e2aad54f623cd6c84d9b6ffc78f71
    be8510300ef44dc74accdf2585a00821be6fd1ec5f04f76802faff38701139fc beecff2c2f593d7ddf349f224e7be7d24f56a166af1ab6345d8de2bf39c59d6e
    c146a1b6946afb33b19c0b02623120946a250cbaff4438fea9c491de7655e570 c2ea01ec438077728e64102f15e923c1b9924d56c4ca124c4a44b156184641de
    c35feb5059ac1650fa3c3bf5ec069f069a92b06239a25465e6071cf137e978b9 c5a95f88717e3b2a6a99cdbc03436bbf9119ef91bcc452fe03ec6735f5f9357a
    cac15d48bf1cd17d22962562ab22c01160ce9f2762baa1a8d48c93fab7768d22 cb519cba03ed74d6f69d50f819ec669ce79984567e187e02e3e58b4226b455cf
    cc7d4be9cbd9b04f8efd49456ccb38667e2c4a5b20b933c193abf9d6d48ec740 d3f54cd33c0b60a07852ffee13edb21c4b1632a7f6c9101bd4add7f6b023dc42
    db3cbb35b8d65b6353047caaff93fe6ba2527f91fee803a783abb6d3c363fc5c ddc43c9669a1414be30e74978a60b6a088918277fc4152ead7acca38b2d54c4c
    dfffc6f9f4f0518866c3fc85bab0332f4ec21a89f494c945c51e48f870a5a618 e15aa92132895e885201fe0bb6d6250dbb831e3d0de66bea1345f8417dcf61d0
    e70dd27e727fcb6316019352875d0022bb644cc0f744af04f22265300dd41711 e72df8452e94684d3f980c2f9c6f8fad7afe7ae1fb2f16568ad75fb40d219ca2
    eb4076dff17a2aafb446f52babd6f0c99634deac4ec6edf7035475610125ab8d ec3ec3978576f4383a14e3b95f66f817e3f941f151a483710574cd2dbb758dc1
    edb21855e0c462e9826394519b36cf8760c8e9971cdbf05ea82496d70782595b eeaf7d08faa9fda3a4092569188bdd0d52e98fd57ed79ca45044bdc6f51c4b68
    efa419cc108637838a236fa7df7a1608ecd34f6eceff193952486b688cee24af f4064fe8387847bc1e8d680cef42fef201d0a5a7eeed511f71650c0a5d4be3bf
    f47445ce6aba403614df527ca08bd9a33f7c66260142ef1a160b37f53f0c357d f4abfb18eb20d97ff3fa5edb9249b4878c4cdcdae9630b09511af30bc436aaf2
    f8011cdf312facfe2843d3ce6d3f290714c67f4ce21e955429bf030556b24f58 f8bdfc7adf165262e7645dfb0350e27784a5088d2f5c67f803256dfc88007e9e
    f93eeb7228fa6c9be1bbcf120ef1c8d87072056de37ac2d4d15f914feaa28bc0 fc1dec6083723a1388a74d34ae4fedda4e31c791d0c842f85844d6d1dc5df335
""".split()


@MANIFESTS.register("mibot")
def _mibot() -> Manifest:
    files = [RemoteFile("data.csv", _raw(_MIBOT_REPO, "data.csv")), RemoteFile("LICENSE", _raw(_MIBOT_REPO, "LICENSE"))]
    files += [RemoteFile(f"transcripts/{p}.json", _raw(_MIBOT_REPO, f"transcripts/{p}.json")) for p in _MIBOT_IDS]
    return Manifest(
        "mibot",
        "MIBot v6.3A: 106 smoking-cessation sessions with a GPT-4o MI counsellor (en), surveys",
        f"https://github.com/{_MIBOT_REPO}",
        "CC BY-SA 4.0",
        tuple(files),
    )


def get_manifest(source: str) -> Manifest:
    return MANIFESTS.get(source)()


# ---------------------------------------------------------------- the lock file


class _Lock:
    """DEST/.mi-llm-download.json: size and sha256 of every file as first downloaded."""

    def __init__(self, dest: Path, source: str):
        self.path = dest / LOCK_NAME
        self.source = source
        self.data: dict[str, Any] = {"version": 1, "sources": {}}
        if self.path.exists():
            try:
                self.data = json.loads(self.path.read_text(encoding="utf-8"))
            except (ValueError, OSError):
                self.data = {}
            if not isinstance(self.data, dict) or not isinstance(self.data.get("sources"), dict):
                raise MiLlmError(f"{self.path}: unreadable; delete it to download (and record checksums) afresh")
        self.entries: dict[str, dict[str, Any]] = self.data["sources"].setdefault(source, {}).setdefault("files", {})
        self._mutex = threading.Lock()
        self._dirty = 0
        self._saved = time.monotonic()

    def get(self, path: str) -> dict[str, Any]:
        return self.entries.get(path, {})

    def record(self, path: str, url: str, size: int, sha256: str) -> None:
        with self._mutex:
            self.entries[path] = {"size": size, "sha256": sha256, "url": url}
            self._dirty += 1
        # Many small files: save now and then, not after each one.
        if self._dirty >= 200 or time.monotonic() - self._saved > 5:
            self.save()

    def save(self) -> None:
        with self._mutex:
            if self._dirty or not self.path.exists():
                write_json(self.path, self.data)
                self._dirty = 0
                self._saved = time.monotonic()


# ---------------------------------------------------------------- downloading


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _url_for(rf: RemoteFile, base_url: str | None) -> str:
    if base_url:
        return base_url.rstrip("/") + "/" + quote(rf.path)
    return rf.url


def _safe_target(dest: Path, rel: str) -> Path:
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise MiLlmError(f"refusing to write outside {dest}: {rel!r}")
    return dest.joinpath(*p.parts)


class _Fetcher:
    def __init__(self, client: httpx.Client, progress: Progress, lock: _Lock, report: DownloadReport, retries: int):
        self.client = client
        self.retries = retries
        self.progress = progress
        self.lock = lock
        self.report = report
        self._mutex = threading.Lock()

    def fetch(self, dest: Path, rf: RemoteFile, url: str) -> Path:
        """Make DEST/rf.path a verified copy of `url`; returns its path."""
        final = _safe_target(dest, rf.path)
        recorded = self.lock.get(rf.path)
        size = rf.size if rf.size is not None else recorded.get("size")
        sha = rf.sha256 or recorded.get("sha256")
        if final.is_file():
            have = final.stat().st_size
            if sha is None:  # there before any record (copied in by hand): trust it, record it
                self.lock.record(rf.path, url, have, sha256_of(final))
                return self._present(final)
            if (size is None or have == size) and sha256_of(final) == sha:
                return self._present(final)
            # A file that fails verification does not stay in DEST, even if the download fails.
            log.warning("%s does not match its recorded checksum: downloading it again", final)
            final.unlink()
        final.parent.mkdir(parents=True, exist_ok=True)
        part = final.with_name(final.name + ".part")
        received = self._stream(url, part, size, rf.path)
        got_size = part.stat().st_size
        got_sha = sha256_of(part)
        problem = None
        if size is not None and got_size != size:
            problem = f"size mismatch: expected {size:,} bytes, got {got_size:,}"
        elif sha is not None and got_sha != sha:
            problem = f"sha256 mismatch: expected {sha}, got {got_sha}"
        if problem:
            part.unlink(missing_ok=True)
            final.unlink(missing_ok=True)
            origin = (
                "the manifest"
                if (rf.sha256 or rf.size is not None)
                else f"the first download (recorded in {self.lock.path})"
            )
            raise MiLlmError(f"{url}: {problem} (expected values from {origin}); the download was removed")
        # No fsync per file (thousands of small files): a file damaged by a crash fails the
        # checksum recorded for it and is fetched again on the next run.
        os.replace(part, final)
        self.lock.record(rf.path, url, got_size, got_sha)
        with self._mutex:
            self.report.downloaded += 1
            self.report.bytes += received
        return final

    def _present(self, final: Path) -> Path:
        with self._mutex:
            self.report.present += 1
        return final

    def _stream(self, url: str, part: Path, size: int | None, label: str) -> int:
        """Download into `part`, resuming what is there; returns the bytes received now."""
        received = 0
        failures = 0
        task: TaskID | None = None
        try:
            while True:
                offset = part.stat().st_size if part.exists() else 0
                if size is not None and offset > size:
                    part.unlink()
                    offset = 0
                if size is not None and offset == size:
                    return received
                headers = {"Range": f"bytes={offset}-"} if offset else {}
                try:
                    with self.client.stream("GET", url, headers=headers) as r:
                        if r.status_code == 416 and offset:
                            # The server has nothing past our end: complete, or longer than the file.
                            total = _total_from_content_range(r.headers.get("content-range"))
                            if total == offset:
                                return received
                            part.unlink()
                            continue
                        if r.status_code == 206 and offset and _start_of(r.headers.get("content-range")) == offset:
                            mode = "ab"
                        elif r.status_code == 200 or (r.status_code == 206 and not offset):
                            mode, offset = "wb", 0
                        elif r.status_code == 206:
                            part.unlink()  # a range we did not ask for: start over
                            continue
                        else:
                            raise MiLlmError(f"{url}: HTTP {r.status_code} {r.reason_phrase}")
                        length = r.headers.get("content-length")
                        total = (
                            offset + int(length)
                            if length and length.isdigit() and "content-encoding" not in r.headers
                            else None
                        )
                        if size is not None and total is not None and total != size:
                            raise MiLlmError(f"{url}: the server reports {total:,} bytes, expected {size:,}")
                        if task is None and (total is None or total > (1 << 20)):
                            task = self.progress.add_task(label, total=total, completed=offset)
                        elif task is not None:
                            self.progress.update(task, total=total, completed=offset)
                        with open(part, mode) as f:
                            for chunk in r.iter_bytes():  # as received: a dropped link loses nothing
                                f.write(chunk)
                                received += len(chunk)
                                if task is not None:
                                    self.progress.advance(task, len(chunk))
                        if total is None or part.stat().st_size == total:
                            return received
                        raise httpx.RemoteProtocolError("the connection closed before the end of the file")
                except httpx.TransportError as e:
                    failures += 1
                    have = part.stat().st_size if part.exists() else 0
                    if failures > self.retries:
                        kept = f"{part} keeps the {have:,} bytes received: " if have else "nothing received; "
                        raise MiLlmError(
                            f"{url}: {e or type(e).__name__}; {kept}run the command again to resume"
                        ) from None
                    log.info("%s: %s; resuming at byte %d (retry %d of %d)", label, e, have, failures, self.retries)
                    time.sleep(0.2 * failures)
        finally:
            if task is not None:
                self.progress.remove_task(task)


def _start_of(content_range: str | None) -> int | None:
    # "bytes 100-199/200"
    try:
        return int(content_range.split()[1].split("-")[0]) if content_range else None
    except (IndexError, ValueError):
        return None


def _total_from_content_range(content_range: str | None) -> int | None:
    try:
        total = content_range.rsplit("/", 1)[1] if content_range else "*"
        return int(total)
    except (IndexError, ValueError):
        return None


def extract(archive: Path, dest: Path, pattern: str, into: str = "") -> int:
    """Write the zip's members matching `pattern` (top folder stripped) under DEST/into.

    Members already there with the right size are left alone; each is written to a temp
    file and renamed. Returns the number written.
    """
    try:
        z = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as e:
        raise MiLlmError(f"{archive}: not a valid zip ({e}); delete it and download again") from None
    written = 0
    with z:
        infos = [i for i in z.infolist() if not i.is_dir()]
        for i in infos:
            _safe_target(dest, i.filename)  # no absolute or '..' member names at all
        tops = {i.filename.split("/", 1)[0] for i in infos}
        strip = len(tops.pop()) + 1 if len(tops) == 1 and all("/" in i.filename for i in infos) else 0
        root = _safe_target(dest, into) if into else dest
        for info in infos:
            rel = info.filename[strip:]
            if not fnmatch.fnmatch(rel, pattern):
                continue
            target = _safe_target(root, rel)
            if target.is_file() and target.stat().st_size == info.file_size:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            try:
                with z.open(info) as src, open(tmp, "wb") as out:
                    for chunk in iter(lambda: src.read(CHUNK), b""):
                        out.write(chunk)
                os.replace(tmp, target)
            except (zipfile.BadZipFile, OSError) as e:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                raise MiLlmError(f"{archive}: cannot extract {info.filename}: {e}") from None
            written += 1
    return written


class _AmountColumn(ProgressColumn):
    """Files as 'done/total', bytes as sizes: one bar counts files, the others bytes."""

    def __init__(self) -> None:
        super().__init__()
        self._files = MofNCompleteColumn()
        self._bytes = DownloadColumn()
        self._speed = TransferSpeedColumn()

    def render(self, task: Task) -> Text:
        if task.fields.get("unit") == "files":
            return self._files.render(task)
        return Text.assemble(self._bytes.render(task), " ", self._speed.render(task))


def _progress(show: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        _AmountColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not show,
    )


def download(
    source: str,
    dest: str | Path,
    base_url: str | None = None,
    *,
    manifest: Manifest | None = None,
    workers: int = 8,
    timeout: float = 60.0,
    retries: int = RETRIES,
    show_progress: bool = True,
    client: httpx.Client | None = None,
) -> DownloadReport:
    """Download `source` into `dest` (see the module doc); returns what was done."""
    manifest = manifest or get_manifest(source)
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise MiLlmError(f"{dest}: exists and is not a folder")
    dest.mkdir(parents=True, exist_ok=True)
    if base_url is not None and not base_url.startswith(("http://", "https://")):
        raise MiLlmError(f"--base-url must be an http(s) URL (got {base_url!r})")
    report = DownloadReport(manifest.source, dest)
    lock = _Lock(dest, manifest.source)
    own_client = client is None
    client = client or httpx.Client(
        follow_redirects=True,
        timeout=httpx.Timeout(timeout, connect=20.0),
        # identity: Range offsets and Content-Length then count the bytes we store.
        headers={"User-Agent": f"mi-llm/{__version__}", "Accept-Encoding": "identity"},
        transport=httpx.HTTPTransport(retries=min(retries, 2)),
    )
    log.info("downloading %s from %s into %s", manifest.source, base_url or manifest.homepage, dest)
    try:
        with _progress(show_progress) as progress:
            fetcher = _Fetcher(client, progress, lock, report, retries)
            _fetch_all(fetcher, dest, manifest.files, base_url, workers, progress, manifest.source)
            for arc in manifest.archives:
                path = fetcher.fetch(dest, arc.file, _url_for(arc.file, base_url))
                task = progress.add_task(f"extracting {arc.members}", total=None, unit="files")
                report.extracted += extract(path, dest, arc.members, arc.into)
                progress.remove_task(task)
                report.files.append(arc.file.path)
    except httpx.HTTPError as e:  # anything the per-file handling did not turn into a message
        raise MiLlmError(f"download of {manifest.source} failed: {e}") from None
    finally:
        lock.save()
        if own_client:
            client.close()
    report.files.extend(f.path for f in manifest.files)
    log.info(
        "%s: %d downloaded (%s bytes), %d already present, %d extracted",
        manifest.source, report.downloaded, f"{report.bytes:,}", report.present, report.extracted,
    )  # fmt: skip
    return report


def _fetch_all(
    fetcher: _Fetcher,
    dest: Path,
    files: tuple[RemoteFile, ...],
    base_url: str | None,
    workers: int,
    progress: Progress,
    label: str,
) -> None:
    if not files:
        return
    overall = progress.add_task(f"{label}: files", total=len(files), unit="files")

    def one(rf: RemoteFile) -> None:
        fetcher.fetch(dest, rf, _url_for(rf, base_url))
        progress.advance(overall)

    # Many small files: a few requests in flight hide the round-trip time.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(one, rf) for rf in files]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for f in pending:
            f.cancel()
        for f in futures:
            if f.done() and not f.cancelled() and f.exception() is not None:
                raise f.exception()  # type: ignore[misc]
