"""The release build: reproducible sdist and wheel, signed manifest, hashed SBOM.

``scripts/release`` runs :func:`main`. Everything is built from a clean export
of a commit (``git archive``), never from the working tree, so untracked files
cannot slip in and the manifest lists exactly that commit's files.

What makes setuptools' output differ between two runs, and what is done about it:

* timestamps: file dates inside the wheel and the sdist, the gzip header date of
  the sdist and the date the egg-info files are written. ``SOURCE_DATE_EPOCH``
  is set to the commit's date, and both archives are then rewritten with every
  date set to it (the gzip header carries none);
* file order and modes: members are rewritten sorted by name (the wheel's
  ``RECORD`` last, as wheels expect) with modes 0644/0755 and no owner names,
  so the umask and the build user do not show;
* the build directory's path: builds run in a fresh temporary export and no
  path of it ends up in an artefact.

The contents of every member are kept byte for byte, so the wheel's ``RECORD``
stays valid.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from sottovoce.release import manifest, minisign

SUMS_NAME = "SHA256SUMS"
LOCK_NAME = "requirements.lock"
_EARLIEST_ZIP = 315532800  # 1980-01-01: zip dates cannot be earlier


# --- source tree ---------------------------------------------------------------------


def git(repo: Path, *args: str) -> bytes:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=False)  # noqa: S603, S607
    if done.returncode != 0:
        raise manifest.ManifestError(
            f"git {' '.join(args)} failed in {repo}: {done.stderr.decode(errors='replace').strip()}"
        )
    return done.stdout


def commit_epoch(repo: Path, rev: str = "HEAD") -> int:
    """The commit's date (committer time): SOURCE_DATE_EPOCH for its build."""
    return int(git(repo, "log", "-1", "--format=%ct", rev).decode().strip())


def export(repo: Path, dest: Path, rev: str = "HEAD") -> Path:
    """The tracked files of ``rev`` (``git archive``) unpacked into ``dest``."""
    data = git(repo, "archive", "--format=tar", rev)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def tree_manifest(tree: Path) -> str:
    """``MANIFEST.sha256`` of every regular file under ``tree`` (an export: no caches)."""
    digests: dict[str, str] = {}
    for here, dirs, files in os.walk(tree):
        dirs.sort()
        for name in files:
            path = Path(here, name)
            if path.is_file() and not path.is_symlink():
                digests[path.relative_to(tree).as_posix()] = manifest.sha256_hex(path.read_bytes())
    return manifest.render(digests)


# --- reproducible artefacts ----------------------------------------------------------


def run_build(tree: Path, outdir: Path, epoch: int) -> list[Path]:
    """``python -m build`` (sdist, then the wheel from it) without isolation: the
    backend comes from the dev extras, so no network is needed."""
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch), "PYTHONHASHSEED": "0", "TZ": "UTC"}
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(outdir), str(tree)],
        capture_output=True, text=True, env=env, cwd=tree, check=False,
    )
    if done.returncode != 0:
        raise manifest.ManifestError(
            f"python -m build failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    built = sorted(p for p in outdir.iterdir() if p.suffix == ".whl" or p.name.endswith(".tar.gz"))
    for path in built:
        if path.suffix == ".whl":
            normalize_wheel(path, epoch)
        else:
            normalize_sdist(path, epoch)
    return built


def _mode(mode: int) -> int:
    return 0o755 if mode & 0o111 else 0o644


def normalize_wheel(path: Path, epoch: int) -> None:
    """Rewrite a wheel: sorted members (RECORD last), fixed dates and modes."""
    stamp = time.gmtime(max(epoch, _EARLIEST_ZIP))[:6]
    with zipfile.ZipFile(path) as zin:
        members = [(i, zin.read(i)) for i in zin.infolist() if not i.is_dir()]
    members.sort(key=lambda m: (m[0].filename.endswith(".dist-info/RECORD"), m[0].filename))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zout:
        for info, data in members:
            out = zipfile.ZipInfo(info.filename, date_time=stamp)
            out.compress_type = zipfile.ZIP_DEFLATED
            out.create_system = 3  # Unix, so the mode below is read
            out.external_attr = (0o100000 | _mode(info.external_attr >> 16)) << 16
            zout.writestr(out, data, compresslevel=9)
    path.write_bytes(buf.getvalue())


def normalize_sdist(path: Path, epoch: int) -> None:
    """Rewrite an sdist: sorted members, fixed dates, modes and owners, and a gzip
    header with no date or file name."""
    with tarfile.open(path, "r:gz") as tin:
        members = []
        for info in tin.getmembers():
            data = tin.extractfile(info).read() if info.isfile() else None  # type: ignore[union-attr]
            members.append((info, data))
    members.sort(key=lambda m: m[0].name)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tout:
        for info, data in members:
            info.mtime = epoch
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o755 if info.isdir() else _mode(info.mode)
            info.pax_headers = {}
            tout.addfile(info, io.BytesIO(data) if data is not None else None)
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    path.write_bytes(out.getvalue())


# --- SBOM ----------------------------------------------------------------------------


@dataclass(slots=True)
class Locked:
    name: str
    version: str
    hashes: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)


_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def read_lock(text: str) -> list[Locked]:
    """The pins, hashes and ``# via`` parents of a pip-compile hashed lock."""
    out: list[Locked] = []
    in_via = False
    for line in text.splitlines():
        stripped = line.strip()
        pin = _PIN.match(line)
        if pin:
            out.append(Locked(_canonical(pin.group(1)), pin.group(2)))
            in_via = False
        elif stripped.startswith("--hash=sha256:") and out:
            out[-1].hashes.append(stripped.split(":", 1)[1].rstrip(" \\"))
        elif stripped.startswith("# via") and out:
            rest = stripped[len("# via"):].strip()
            in_via = not rest
            if rest:
                out[-1].via.append(rest)
        elif in_via and stripped.startswith("#   ") and out:
            out[-1].via.append(stripped[4:].strip())
        elif in_via and stripped.startswith("#"):
            out[-1].via.append(stripped[1:].strip())
        else:
            in_via = False
    return out


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def sbom(lock_text: str, name: str, version: str, epoch: int) -> dict[str, object]:
    """A CycloneDX 1.5 SBOM of the locked runtime dependencies, reproducible: its
    serial number derives from the lock and the version, its date is the commit's."""
    locked = read_lock(lock_text)
    root = f"pkg:pypi/{name}@{version}"
    purl = {p.name: f"pkg:pypi/{p.name}@{p.version}" for p in locked}
    depends: dict[str, list[str]] = {root: [], **{v: [] for v in purl.values()}}
    for p in locked:
        for parent in p.via:
            parent_ref = root if parent.startswith(f"{name} (") else purl.get(_canonical(parent))
            if parent_ref is not None:
                depends[parent_ref].append(purl[p.name])
    serial = uuid.uuid5(uuid.NAMESPACE_URL, f"{root}#{manifest.sha256_hex(lock_text.encode())}")
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{serial}",
        "version": 1,
        "metadata": {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)),
            "tools": {"components": [{"type": "application", "name": "sottovoce-release",
                                      "version": version}]},
            "component": {"type": "application", "bom-ref": root, "name": name,
                          "version": version, "purl": root,
                          "licenses": [{"license": {"id": "Apache-2.0"}}]},
        },
        "components": [
            {"type": "library", "bom-ref": purl[p.name], "name": p.name, "version": p.version,
             "purl": purl[p.name],
             "hashes": [{"alg": "SHA-256", "content": h} for h in sorted(p.hashes)]}
            for p in sorted(locked, key=lambda p: p.name)
        ],
        "dependencies": [{"ref": ref, "dependsOn": sorted(set(deps))}
                         for ref, deps in sorted(depends.items())],
    }


# --- the release command -------------------------------------------------------------


def _project(tree: Path) -> tuple[str, str]:
    import tomllib

    data = tomllib.loads((tree / "pyproject.toml").read_text(encoding="utf-8"))
    return str(data["project"]["name"]), str(data["project"]["version"])


def _sign_file(key: minisign.SecretKey, path: Path, comment: str) -> Path:
    sig = path.with_name(path.name + manifest.SIGNATURE_SUFFIX)
    sig.write_text(minisign.sign(key, path.read_bytes(), comment), encoding="utf-8")
    return sig


def release(repo: Path, out: Path, key: minisign.SecretKey | None, rev: str = "HEAD") -> list[Path]:
    """Build ``rev`` of ``repo`` into ``out``: sdist, wheel, MANIFEST.sha256, the SBOM,
    SHA256SUMS of those, and (given a key) minisign signatures of both lists."""
    epoch = commit_epoch(repo, rev)
    commit = git(repo, "rev-parse", rev).decode().strip()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sottovoce-release-") as tmp:
        tree = export(repo, Path(tmp, "src"), rev)
        name, version = _project(tree)
        (out / manifest.MANIFEST_NAME).write_text(tree_manifest(tree), encoding="utf-8")
        built = run_build(tree, out, epoch)
        lock = (tree / LOCK_NAME).read_text(encoding="utf-8")
    bom = out / f"{name}-{version}.cdx.json"
    bom.write_text(json.dumps(sbom(lock, name, version, epoch), indent=2) + "\n", encoding="utf-8")
    files = [*built, bom]
    sums = out / SUMS_NAME
    sums.write_text(
        manifest.render({p.name: manifest.sha256_hex(p.read_bytes()) for p in files}),
        encoding="utf-8",
    )
    made = [out / manifest.MANIFEST_NAME, *files, sums]
    if key is not None:
        comment = f"{name} {version} commit {commit} timestamp:{epoch}"
        for path in (out / manifest.MANIFEST_NAME, sums):
            made.append(_sign_file(key, path, f"{comment} file:{path.name}"))
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/release",
        description="Build a release of a commit reproducibly and sign its manifest.",
    )
    parser.add_argument("--key", type=Path, metavar="FILE",
                        help="minisign secret key without a passphrase (minisign -G -W); "
                             "without it nothing is signed")
    parser.add_argument("--out", type=Path, default=Path("dist/release"), metavar="DIR",
                        help="where the artefacts go (default dist/release)")
    parser.add_argument("--rev", default="HEAD", help="the commit to release (default HEAD)")
    parser.add_argument("--repo", type=Path, default=Path.cwd(), help=argparse.SUPPRESS)
    parser.add_argument("--generate-key", type=Path, metavar="FILE",
                        help="write a new key pair (FILE and FILE.pub) and exit")
    args = parser.parse_args(argv)
    try:
        if args.generate_key is not None:
            return _generate(args.generate_key)
        key = None
        if args.key is not None:
            key = minisign.load_secret_key(args.key.read_text(encoding="utf-8"))
        for path in release(args.repo, args.out, key, args.rev):
            print(f"{manifest.sha256_hex(path.read_bytes())}  {path}")
    except (minisign.MinisignError, OSError) as exc:
        print(f"release: {exc}", file=sys.stderr)
        return 1
    return 0


def _generate(path: Path) -> int:
    if path.exists():
        print(f"release: {path} exists; not overwriting a key", file=sys.stderr)
        return 1
    key = minisign.generate(os.urandom(40))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(key.to_text())
    path.with_name(path.name + ".pub").write_text(key.public.to_text(), encoding="utf-8")
    print(f"key id {key.public.key_id_hex}; public key {key.public.base64}")
    return 0
