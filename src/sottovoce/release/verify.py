"""Check a checkout, a wheel or an installed copy against a signed manifest.

The manifest names files as they sit in the source tree (``src/sottovoce/...``);
a wheel and an installed copy hold only the package, so their files are mapped
back to those paths and only the package's entries are expected in them.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from sottovoce.release import manifest, minisign

PACKAGE = "sottovoce"
SOURCE_PREFIX = f"src/{PACKAGE}/"
#: Made by tools, never part of a release: skipped when a directory is walked.
_SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", ".mypy_cache", ".pytest_cache",
              ".ruff_cache", ".hypothesis", "build", "dist"}
_SKIP_SUFFIXES = (".pyc", ".pyo")
_SKIP_FILES = {manifest.MANIFEST_NAME, manifest.MANIFEST_NAME + manifest.SIGNATURE_SUFFIX}
#: The release public key (release/sottovoce-release.pub; docs/operations.md §Releases).
RELEASE_PUBLIC_KEY = """\
untrusted comment: minisign public key 654B039FF2D8AFB9
RWS5r9jynwNLZQYymEHlzcyBEA1ooEk0dZgyrc4M3S7fRi/9EmZoZVaf
"""


class VerifyError(minisign.MinisignError):
    """The thing to check cannot be read or is of an unknown kind."""


@dataclass(frozen=True, slots=True)
class Target:
    """What was checked: its kind (checkout, wheel, installed), where, and its files."""

    kind: str
    where: str
    digests: dict[str, str]


def _walk(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every regular file under ``root``, tool caches skipped."""
    out: dict[str, str] = {}
    for here, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.endswith(".egg-info"))
        for name in files:
            if name.endswith(_SKIP_SUFFIXES):
                continue
            path = Path(here, name)
            rel = path.relative_to(root).as_posix()
            if rel in _SKIP_FILES or not path.is_file():
                continue
            out[rel] = manifest.sha256_hex(path.read_bytes())
    return out


def installed_package_dir() -> Path:
    """The directory of the ``sottovoce`` package this interpreter imports."""
    import sottovoce

    return Path(sottovoce.__file__).resolve().parent


def collect(path: Path | None) -> Target:
    """The files of ``path``: a wheel, a checkout, a package directory, or (None) the
    installed package."""
    if path is None:
        where = installed_package_dir()
        return Target("installed", str(where), _package(_walk(where)))
    if path.is_file() and path.suffix == ".whl":
        return Target("wheel", str(path), _package(_wheel(path)))
    if path.is_dir() and (path / SOURCE_PREFIX / "__init__.py").is_file():
        return Target("checkout", str(path), _walk(path))
    if path.is_dir() and (path / "__init__.py").is_file() and path.name == PACKAGE:
        return Target("installed", str(path), _package(_walk(path)))
    if not path.exists():
        raise VerifyError(f"{path} does not exist")
    raise VerifyError(
        f"{path} is neither a checkout (with {SOURCE_PREFIX}), a sottovoce package "
        "directory, nor a .whl file"
    )


def _wheel(path: Path) -> dict[str, str]:
    try:
        with zipfile.ZipFile(path) as zf:
            return {
                info.filename: manifest.sha256_hex(zf.read(info))
                for info in zf.infolist()
                if not info.is_dir() and info.filename.startswith(f"{PACKAGE}/")
            }
    except (zipfile.BadZipFile, OSError) as exc:
        raise VerifyError(f"{path} is not a readable wheel: {exc}") from None


def _package(files: dict[str, str]) -> dict[str, str]:
    """Package-relative paths (``sottovoce/x.py`` or ``x.py``) as the manifest names them."""
    out: dict[str, str] = {}
    for rel, digest in files.items():
        inner = rel.removeprefix(f"{PACKAGE}/")
        if inner.endswith(_SKIP_SUFFIXES) or "__pycache__/" in inner:
            continue
        out[SOURCE_PREFIX + inner] = digest
    return out


def check(target: Target, manifest_text: str, signature: str,
          public_key: str) -> tuple[str, manifest.Difference]:
    """Verify the manifest's signature first (nothing unsigned is trusted), then
    compare ``target`` with it; returns the trusted comment and the differences."""
    key = minisign.load_public_key(public_key)
    comment = minisign.verify(key, manifest_text.encode(), signature)
    expected = manifest.parse(manifest_text)
    scope = None
    if target.kind != "checkout":
        scope = [p for p in expected if p.startswith(SOURCE_PREFIX)]
        # Installed copies hold package data only where setuptools ships it.
        scope = [p for p in scope if p.endswith((".py", "py.typed"))]
    return comment, manifest.compare(expected, target.digests, scope)
