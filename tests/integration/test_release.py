"""The release kit end to end: ``scripts/release`` run twice on a temporary commit of
this tree gives byte-identical artefacts and signatures; the manifest checks with
sha256sum and minisign; ``sottovoce verify-build`` names a tampered file and refuses
a bad signature with a plain message.

The temporary commit is made from the files git tracks here (as they are in the
working tree), so the test never depends on the committed manifest matching HEAD.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sottovoce.release import manifest, minisign

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
KEY = minisign.generate(bytes(range(7, 47)))  # a throwaway key, never the release key
SOTTOVOCE = [sys.executable, "-m", "sottovoce"]


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_DATE": "2026-01-02T03:04:05Z",
           "GIT_COMMITTER_DATE": "2026-01-02T03:04:05Z", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@127.0.0.1", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@127.0.0.1", "GIT_CONFIG_GLOBAL": os.devnull}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env=env).stdout


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A temporary commit of this tree, released twice (into A and B)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    base = tmp_path_factory.mktemp("release")
    repo = base / "repo"
    files = _git(ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    for rel in filter(None, files.split("\0")):
        src = ROOT / rel
        if src.is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / rel)
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "release test")
    (base / "k.key").write_text(KEY.to_text())
    for out in ("A", "B"):
        done = subprocess.run(
            [sys.executable, str(ROOT / "scripts/release"), "--key", str(base / "k.key"),
             "--out", str(base / out), "--repo", str(repo)],
            capture_output=True, text=True, check=False, timeout=300,
        )
        assert done.returncode == 0, done.stderr
    return repo, base / "A", base / "B"


def _digests(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def test_two_builds_are_byte_identical(release: tuple[Path, Path, Path]) -> None:
    _, a, b = release
    da, db = _digests(a), _digests(b)
    assert da == db
    assert {"MANIFEST.sha256", "MANIFEST.sha256.minisig", "SHA256SUMS", "SHA256SUMS.minisig",
            "sottovoce-0.1.0.tar.gz", "sottovoce-0.1.0-py3-none-any.whl",
            "sottovoce-0.1.0.cdx.json"} == set(da)
    with zipfile.ZipFile(a / "sottovoce-0.1.0-py3-none-any.whl") as zf:
        names = zf.namelist()
        assert names[-1].endswith(".dist-info/RECORD")
        assert {i.date_time for i in zf.infolist()} == {(2026, 1, 2, 3, 4, 4)}


def test_the_manifest_checks_with_standard_tools(release: tuple[Path, Path, Path]) -> None:
    repo, a, _ = release
    listed = manifest.parse((a / "MANIFEST.sha256").read_text())
    tracked = set(filter(None, _git(repo, "ls-files", "-z").split("\0")))
    assert set(listed) == tracked
    shutil.copy(a / "MANIFEST.sha256", repo)
    shutil.copy(a / "MANIFEST.sha256.minisig", repo)
    ok = subprocess.run(["sha256sum", "-c", "--quiet", "MANIFEST.sha256"], cwd=repo,
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stdout[-2000:]
    sums = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=a,
                          capture_output=True, text=True, check=False)
    assert sums.returncode == 0, sums.stdout
    if shutil.which("minisign") is None:
        pytest.skip("the minisign binary is not installed (.ci/services installs it)")
    for name in ("MANIFEST.sha256", "SHA256SUMS"):
        checked = subprocess.run(["minisign", "-Vm", str(a / name), "-P", KEY.public.base64],
                                 capture_output=True, text=True, check=False)
        assert checked.returncode == 0, checked.stderr
        assert f"file:{name}" in checked.stdout


def _verify(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SOTTOVOCE, "verify-build", *map(str, args)], capture_output=True,
                          text=True, check=False, timeout=120)


def test_verify_build_names_a_tampered_file_and_refuses_a_bad_signature(
    release: tuple[Path, Path, Path], tmp_path: Path,
) -> None:
    repo, a, _ = release
    pub = tmp_path / "k.pub"
    pub.write_text(KEY.public.to_text())
    mf = a / "MANIFEST.sha256"
    checkout = _verify(repo, "--manifest", mf, "--key", pub)
    assert checkout.returncode == 0, checkout.stdout + checkout.stderr
    assert "OK: all" in checkout.stdout and "checkout" in checkout.stdout
    wheel = _verify(a / "sottovoce-0.1.0-py3-none-any.whl", "--key", pub)
    assert wheel.returncode == 0, wheel.stdout + wheel.stderr
    installed = _verify("--manifest", mf, "--key", pub)  # the copy this interpreter imports
    assert installed.returncode == 0 and "installed" in installed.stdout, installed.stdout

    target = repo / "src/sottovoce/errors.py"
    data = bytearray(target.read_bytes())
    data[10] ^= 1
    target.write_bytes(bytes(data))
    (repo / "src/sottovoce/planted.py").write_text("")
    (repo / "LICENSE").unlink()
    tampered = _verify(repo, "--manifest", mf, "--key", pub)
    assert tampered.returncode == 1
    assert "changed: src/sottovoce/errors.py" in tampered.stdout
    assert "extra: src/sottovoce/planted.py" in tampered.stdout
    assert "missing: LICENSE" in tampered.stdout
    assert "1 changed, 1 missing, 1 extra" in tampered.stdout

    sig = tmp_path / "bad.minisig"
    text = (a / "MANIFEST.sha256.minisig").read_text().splitlines()
    raw = bytearray(minisign.base64.b64decode(text[1]))
    raw[-1] ^= 1
    sig.write_text("\n".join([text[0], minisign.base64.b64encode(raw).decode(), *text[2:]]) + "\n")
    bad = _verify(repo, "--manifest", mf, "--signature", sig, "--key", pub)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "signature does not match" in bad.stderr and bad.stdout == ""
    release_key = _verify(repo, "--manifest", mf)  # signed by the throwaway, not the release key
    assert release_key.returncode == 1 and "another key" in release_key.stderr
    absent = _verify(repo, "--manifest", tmp_path / "none.sha256")
    assert absent.returncode == 1 and "does not exist" in absent.stderr
