"""MANIFEST.sha256 (sha256sum's format), checking trees against it, the hashed
lock and the SBOM made from it."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
import zipfile
from pathlib import Path

import pytest

from sottovoce.release import build, manifest, minisign, verify

ROOT = Path(__file__).resolve().parents[2]
KEY = minisign.generate(bytes(range(40)))


def _tree(root: Path) -> Path:
    (root / "src/sottovoce/sub").mkdir(parents=True)
    (root / "src/sottovoce/__init__.py").write_text("x = 1\n")
    (root / "src/sottovoce/py.typed").write_text("")
    (root / "src/sottovoce/sub/mod.py").write_text("y = 2\n")
    (root / "README.md").write_text("# readme\n")
    return root


def _signed(tree: Path) -> tuple[str, str]:
    text = build.tree_manifest(tree)
    return text, minisign.sign(KEY, text.encode(), "test")


def test_the_manifest_is_what_sha256sum_checks(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    text = build.tree_manifest(tree)
    assert text.splitlines()[0].endswith("  README.md")  # sorted by path
    assert manifest.parse(text)["src/sottovoce/sub/mod.py"] == manifest.sha256_hex(b"y = 2\n")
    if shutil.which("sha256sum") is None:
        pytest.skip("sha256sum is not installed")
    (tree / "MANIFEST.sha256").write_text(text)
    ok = subprocess.run(["sha256sum", "-c", "--quiet", "MANIFEST.sha256"], cwd=tree,
                        capture_output=True, check=False)
    assert ok.returncode == 0, ok.stdout
    (tree / "README.md").write_text("# readmE\n")
    bad = subprocess.run(["sha256sum", "-c", "MANIFEST.sha256"], cwd=tree, capture_output=True,
                         text=True, check=False)
    assert bad.returncode != 0 and "README.md: FAILED" in bad.stdout


def test_parse_refuses_malformed_and_escaping_lines() -> None:
    good = "a" * 64 + "  x.py\n"
    for bad in ("", "zz  x.py\n", "a" * 64 + " x.py\n", good + good, "a" * 64 + "  ../etc/x\n",
                "a" * 64 + "  /etc/passwd\n"):
        with pytest.raises(manifest.ManifestError):
            manifest.parse(bad)
    with pytest.raises(manifest.ManifestError):
        manifest.render({"a\nb": "0" * 64})


def test_a_checkout_names_each_changed_missing_and_extra_file(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "t")
    text, sig = _signed(tree)
    (tree / "src/sottovoce/__pycache__").mkdir()
    (tree / "src/sottovoce/__pycache__/x.cpython-311.pyc").write_bytes(b"cache")
    _, diff = verify.check(verify.collect(tree), text, sig, KEY.public.to_text())
    assert diff.ok and diff.checked == 4
    (tree / "src/sottovoce/sub/mod.py").write_text("y = 3\n")
    (tree / "README.md").unlink()
    (tree / "src/sottovoce/evil.py").write_text("")
    _, diff = verify.check(verify.collect(tree), text, sig, KEY.public.to_text())
    assert diff.changed == ("src/sottovoce/sub/mod.py",)
    assert diff.missing == ("README.md",)
    assert diff.extra == ("src/sottovoce/evil.py",)


def test_a_wheel_and_a_package_directory_are_checked_for_the_package_only(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "t")
    text, sig = _signed(tree)
    wheel = tmp_path / "sottovoce-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for rel in ("__init__.py", "py.typed", "sub/mod.py"):
            zf.write(tree / "src/sottovoce" / rel, f"sottovoce/{rel}")
        zf.writestr("sottovoce-0.1.0.dist-info/RECORD", "")
    _, diff = verify.check(verify.collect(wheel), text, sig, KEY.public.to_text())
    assert diff.ok and diff.checked == 3  # README.md is not in a wheel
    target = verify.collect(tree / "src/sottovoce")
    assert target.kind == "installed"
    (tree / "src/sottovoce/sub/mod.py").write_bytes(b"y = 2\r\n")
    _, diff = verify.check(verify.collect(tree / "src/sottovoce"), text, sig,
                           KEY.public.to_text())
    assert diff.changed == ("src/sottovoce/sub/mod.py",)


def test_nothing_is_compared_under_a_bad_signature(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "t")
    text, sig = _signed(tree)
    with pytest.raises(minisign.MinisignError, match="changed"):
        verify.check(verify.collect(tree), text.replace("README", "READYOU"), sig,
                     KEY.public.to_text())
    with pytest.raises(minisign.MinisignError, match="another key"):
        verify.check(verify.collect(tree), text, sig, verify.RELEASE_PUBLIC_KEY)
    with pytest.raises(verify.VerifyError, match="does not exist"):
        verify.collect(tmp_path / "nowhere")


def test_the_release_key_in_the_code_is_the_one_in_the_repository() -> None:
    assert (ROOT / "release/sottovoce-release.pub").read_text() == verify.RELEASE_PUBLIC_KEY
    key = minisign.load_public_key(verify.RELEASE_PUBLIC_KEY)
    for doc in ("SECURITY.md", "TEST_PLAN.md", "docs/operations.md"):
        assert key.base64 in (ROOT / doc).read_text(), f"{doc} does not show the release key"


# --- the hashed lock and the SBOM ---------------------------------------------------------

_PIN = re.compile(r"^([A-Za-z0-9._-]+)==(\S+)", re.M)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_lock_pins_every_runtime_dependency_with_hashes_as_constraints_do() -> None:
    lock = (ROOT / "requirements.lock").read_text()
    locked = build.read_lock(lock)
    pins = {p.name: p.version for p in locked}
    assert all(p.hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in p.hashes)
               for p in locked), "every pin needs --hash lines"
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        name = _canonical(re.split(r"[<>=!~;\[ ]", dep, maxsplit=1)[0])
        assert name in pins, f"{name} is a runtime dependency missing from requirements.lock"
    pinned = _PIN.findall((ROOT / "constraints.txt").read_text())
    constraints = {_canonical(n): v for n, v in pinned}
    differ = {n: (v, constraints.get(n)) for n, v in pins.items() if constraints.get(n) != v}
    assert differ == {}, "requirements.lock and constraints.txt pin different versions"
    assert "--find-links" not in lock and "--index-url" not in lock


def test_the_sbom_is_cyclonedx_1_5_of_every_locked_package() -> None:
    lock = (ROOT / "requirements.lock").read_text()
    bom = build.sbom(lock, "sottovoce", "0.1.0", 1_700_000_000)
    assert bom == build.sbom(lock, "sottovoce", "0.1.0", 1_700_000_000)  # reproducible
    assert (bom["bomFormat"], bom["specVersion"], bom["version"]) == ("CycloneDX", "1.5", 1)
    assert re.fullmatch(r"urn:uuid:[0-9a-f-]{36}", str(bom["serialNumber"]))
    components = bom["components"]
    assert isinstance(components, list)
    names = {c["name"]: c for c in components}
    assert set(names) == {p.name for p in build.read_lock(lock)}
    crypto = names["cryptography"]
    assert crypto["purl"] == f"pkg:pypi/cryptography@{crypto['version']}"
    assert crypto["hashes"] and all(h["alg"] == "SHA-256" for h in crypto["hashes"])
    deps = {d["ref"]: d["dependsOn"] for d in bom["dependencies"]}  # type: ignore[attr-defined]
    root = deps["pkg:pypi/sottovoce@0.1.0"]
    assert crypto["purl"] in root and any(r.startswith("pkg:pypi/aiortc@") for r in root)
    assert not any(r.startswith("pkg:pypi/anyio@") for r in root)  # only via httpx
    refs = set(deps)
    assert all(set(d) <= refs for d in deps.values()), "a dependsOn names no component"


def test_the_release_steps_in_the_docs_are_the_commands_the_release_test_runs() -> None:
    plan = (ROOT / "TEST_PLAN.md").read_text()
    key = minisign.load_public_key(verify.RELEASE_PUBLIC_KEY).base64
    for command in (f"minisign -Vm SHA256SUMS -P {key}", "sha256sum -c SHA256SUMS",
                    f"minisign -Vm MANIFEST.sha256 -P {key}", "sha256sum -c ../MANIFEST.sha256",
                    "scripts/release --out rebuilt", "sottovoce verify-build --manifest "
                    "MANIFEST.sha256", "sottovoce verify-build sottovoce-0.1.0-py3-none-any.whl"):
        assert command in plan, f"TEST_PLAN.md lacks `{command}`"
    # 66 = 64 hex digits and two spaces: the cut in TEST_PLAN.md gives the path.
    assert "cut -c67-" in plan and len(build.tree_manifest(ROOT / "release").split("  ")[0]) == 64
    security = (ROOT / "SECURITY.md").read_text()
    assert "docs/threat-model.md" in security and "Supported versions" in security


def test_verify_build_help_says_what_it_checks(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.help_promises import assert_help_says

    assert_help_says(["verify-build", "--help"], [
        "checked first against the release key built into this copy, or --key FILE",
        "names each file that differs, is missing or is extra, and exits 1 if there is any",
        "minisign -Vm MANIFEST.sha256 -p release/sottovoce-release.pub && sha256sum -c "
        "MANIFEST.sha256",
    ], capsys)
