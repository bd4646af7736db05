"""The sample module repository of ``--simulate``: synthetic images in Intel's layout.

Intel's layout (image-formats.md §1): ``mapping_file.json`` at the root and
``joined_files/<M>.<m>/tdx_module_<M>.<m>.<u>.blob``. The images (``data/sample-images.json``)
are small synthetic modules in both container formats with Intel's versions, dates, SEAMSVNs
and CPU tables; each sigstruct carries its version at offset 1000 (which the emulator needs) and
is signed with an RSA-3072 key generated on first use (pure Python, about a second) and cached
in the cache directory. The mapping (``data/sample-mapping.json``) is the matching part of
Intel's ``mapping_file.json``. Nothing trusts that key except a simulated host and the tool in
``--simulate`` mode.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from tdxupdate.image import FORMAT_A, FORMAT_B
from tdxupdate.imagebuild import build, make_sigstruct
from tdxupdate.signing import RsaKey, generate_key
from tdxupdate.versions import Version

#: bump when the repository's content rules change, so caches are rebuilt
LAYOUT_VERSION = 1
KEY_FILE = "sample-key.json"
REPO_DIR = "sample-repo"
TRUSTED_KEYS_FILE = "sample-trusted-keys.txt"
_MARKER = ".tdxsim-sample.json"
DEBUG_BIT = 1 << 31


@dataclass(frozen=True)
class SampleRepo:
    """A generated sample repository and what trusts it."""

    path: Path
    trusted_signers: frozenset[str]
    mapping_path: Path
    key_path: Path
    #: a ``--trusted-keys`` file listing the sample key
    trusted_keys_path: Path

    def key(self) -> RsaKey:
        return RsaKey.from_json(self.key_path.read_text(encoding="utf-8"))

    def image_path(self, version: Version | str) -> Path:
        v = version if isinstance(version, Version) else Version.parse(version)
        return self.path / "joined_files" / f"{v.major}.{v.minor}" / f"tdx_module_{v}.blob"


def _data(name: str) -> bytes:
    return resources.files("tdxupdate.sim").joinpath("data", name).read_bytes()


def sample_images() -> list[dict[str, Any]]:
    """The image list of ``data/sample-images.json``."""
    images: list[dict[str, Any]] = json.loads(_data("sample-images.json"))["images"]
    return images


def synthetic_module(version: Version, pages: int = 2) -> bytes:
    """Deterministic filler bytes standing in for a module binary (whole pages)."""
    head = f"tdxupdate-sim synthetic TDX module {version}\n".encode()
    out = bytearray(head)
    counter = 0
    while len(out) < pages * 4096:
        out += hashlib.sha256(f"{version}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[: pages * 4096])


@dataclass(frozen=True)
class ImageSpec:
    """What a synthetic image's sigstruct says about it (``data/sample-images.json``)."""

    cpuid_table: tuple[int, ...] = (0x806F8, 0xC06F0, 0xA06F0)
    debug: bool = False
    date: int = 0x20250101
    seamsvn: int = 0x0100
    #: False leaves offset 1000 zero: a sigstruct that declares no version
    declare_version: bool = True

    @classmethod
    def from_sample(cls, entry: Mapping[str, Any]) -> ImageSpec:
        """One item of ``sample-images.json``'s ``images``."""
        return cls(
            cpuid_table=tuple(int(x, 16) for x in entry["cpuid_table"]),
            debug=bool(entry.get("debug", False)),
            date=int(entry["date"], 16),
            seamsvn=int(entry["seamsvn"], 16),
        )


DEFAULT_SPEC = ImageSpec()


def synthesize_image(
    key: RsaKey,
    version: Version | str,
    spec: ImageSpec = DEFAULT_SPEC,
    *,
    fmt: int = FORMAT_B,
    module_pages: int = 2,
    module: bytes | None = None,
) -> bytes:
    """One signed synthetic image of ``version`` whose sigstruct says what ``spec`` says."""
    v = version if isinstance(version, Version) else Version.parse(version)
    body = module if module is not None else synthetic_module(v, module_pages)
    sigstruct = make_sigstruct(
        module=body,
        key=key,
        cpuid_table=list(spec.cpuid_table),
        version=v if spec.declare_version else None,
        module_type=DEBUG_BIT if spec.debug else 0,
        date=spec.date,
        seamsvn=spec.seamsvn,
    )
    return build(sigstruct, body, fmt)


@contextlib.contextmanager
def _locked(cache_dir: Path) -> Iterator[None]:
    with open(cache_dir / ".sample.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _load_or_create_key(path: Path) -> RsaKey:
    if path.exists():
        try:
            return RsaKey.from_json(path.read_text(encoding="utf-8"))
        except ValueError:
            pass  # a damaged cache entry: make a new key (and so a new repository)
    key = generate_key(3072)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(key.to_json())
    os.replace(tmp, path)
    return key


def _spec_digest() -> str:
    h = hashlib.sha256(str(LAYOUT_VERSION).encode())
    for name in ("sample-images.json", "sample-mapping.json"):
        h.update(_data(name))
    return h.hexdigest()


def _write_repo(target: Path, key: RsaKey) -> None:
    target.mkdir(parents=True)
    (target / "mapping_file.json").write_bytes(_data("sample-mapping.json"))
    for spec in sample_images():
        version = Version.parse(spec["version"])
        fmt = {"0x100": FORMAT_A, "0x200": FORMAT_B}[spec["format"]]
        image = synthesize_image(key, version, ImageSpec.from_sample(spec), fmt=fmt)
        folder = target / "joined_files" / f"{version.major}.{version.minor}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"tdx_module_{version}.blob").write_bytes(image)
    (target / _MARKER).write_text(json.dumps(_marker(key, _contents(target))) + "\n", "utf-8")


def _marker(key: RsaKey, files: dict[str, str]) -> dict[str, object]:
    return {
        "layout": LAYOUT_VERSION,
        "fingerprint": key.fingerprint,
        "spec": _spec_digest(),
        "files": files,
    }


def _contents(repo: Path) -> dict[str, str]:
    """Every file of the repository but the marker, by path: its SHA-256."""
    return {
        path.relative_to(repo).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(repo.rglob("*"))
        if path.is_file() and path.name != _MARKER
    }


def _is_current(repo: Path, key: RsaKey) -> bool:
    """The repository is the one this key and this spec make, file for file: a changed,
    missing or extra file (a damaged disk, a hand edit) means it is generated again."""
    try:
        marker: object = json.loads((repo / _MARKER).read_text(encoding="utf-8"))
        return marker == _marker(key, _contents(repo))
    except (OSError, ValueError):
        return False


def is_cached(cache_dir: Path) -> bool:
    """Whether :func:`ensure_sample_repo` will find the key and a current repository (and so
    return in well under a second instead of generating them, which takes seconds)."""
    key_path = Path(cache_dir) / KEY_FILE
    try:
        key = RsaKey.from_json(key_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return _is_current(Path(cache_dir) / REPO_DIR, key)


def ensure_sample_repo(cache_dir: Path) -> SampleRepo:
    """The sample repository under ``cache_dir``, generated (with its key) on first use."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key_path = cache_dir / KEY_FILE
    repo = cache_dir / REPO_DIR
    with _locked(cache_dir):
        key = _load_or_create_key(key_path)
        if not _is_current(repo, key):
            staging = Path(tempfile.mkdtemp(prefix=".sample-repo-", dir=cache_dir))
            try:
                _write_repo(staging / "repo", key)
                if repo.exists():
                    shutil.rmtree(repo)
                os.replace(staging / "repo", repo)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        keys = cache_dir / TRUSTED_KEYS_FILE
        text = f"# the tdxupdate-sim sample repository's signing key\n{key.fingerprint}\n"
        if not keys.exists() or keys.read_text(encoding="utf-8") != text:
            keys.write_text(text, encoding="utf-8")
    return SampleRepo(
        path=repo,
        trusted_signers=frozenset({key.fingerprint}),
        mapping_path=repo / "mapping_file.json",
        key_path=key_path,
        trusted_keys_path=keys,
    )
