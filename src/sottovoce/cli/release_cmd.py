"""`sottovoce verify-build`: check a checkout, a wheel or the installed copy against a
release's signed MANIFEST.sha256 (docs/operations.md §Releases)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sottovoce.cli.options import Subparsers, subcommand
from sottovoce.errors import UsageError

EXAMPLE = """\
  sottovoce verify-build --manifest MANIFEST.sha256               # the installed package
  sottovoce verify-build ./sottovoce-checkout                     # uses its MANIFEST.sha256
  sottovoce verify-build dist/release/sottovoce-0.1.0-py3-none-any.whl

The signature (MANIFEST.sha256.minisig beside the manifest) is checked first
against the release key built into this copy, or --key FILE (a minisign .pub);
then every file is compared with the manifest. It names each file that differs,
is missing or is extra, and exits 1 if there is any; 0 means all match.
The same checks with standard tools, in a checkout:
  minisign -Vm MANIFEST.sha256 -p release/sottovoce-release.pub && sha256sum -c MANIFEST.sha256
"""


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", type=Path, metavar="FILE",
                   help="the release's MANIFEST.sha256 (default: in PATH if a directory, "
                        "beside PATH if a file, else in the current directory)")
    p.add_argument("--signature", type=Path, metavar="FILE",
                   help="its minisign signature (default: the manifest's name + .minisig)")
    p.add_argument("--key", type=Path, metavar="FILE",
                   help="minisign public key to trust (default: the sottovoce release key)")


def add_commands(sub: Subparsers) -> None:
    p = subcommand(
        sub,
        "verify-build",
        help="check an installed copy, a checkout or a wheel against a signed release manifest",
        description="Verifies the minisign signature of MANIFEST.sha256, then compares every "
        "file of PATH (default: the installed sottovoce package) with it.",
        example=EXAMPLE,
        heading="examples",
        func=run,
        options=_options,
    )
    p.add_argument("path", nargs="?", type=Path, metavar="PATH",
                   help="a checkout, a sottovoce package directory, or a .whl "
                        "(default: the installed package)")


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {what} {path}: {exc}") from None


def _default_manifest(path: Path | None) -> Path:
    from sottovoce.release.manifest import MANIFEST_NAME

    if path is None:
        return Path(MANIFEST_NAME)
    return path / MANIFEST_NAME if path.is_dir() else path.parent / MANIFEST_NAME


def run(args: argparse.Namespace) -> int:
    from sottovoce.release import manifest, verify

    manifest_path: Path = args.manifest or _default_manifest(args.path)
    sig_path: Path = args.signature or manifest_path.with_name(
        manifest_path.name + manifest.SIGNATURE_SUFFIX)
    key_text = _read(args.key, "key") if args.key else verify.RELEASE_PUBLIC_KEY
    manifest_text = _read(manifest_path, "manifest")
    signature = _read(sig_path, "signature")
    target = verify.collect(args.path)
    comment, diff = verify.check(target, manifest_text, signature, key_text)
    print(f"signature: good ({comment})")
    print(f"{target.kind}: {target.where}")
    for label, paths in (("changed", diff.changed), ("missing", diff.missing),
                         ("extra", diff.extra)):
        for p in paths:
            print(f"{label}: {p}")
    if diff.ok:
        print(f"OK: all {diff.checked} files match {manifest_path}")
        return 0
    print(f"DIFFERS: {len(diff.changed)} changed, {len(diff.missing)} missing, "
          f"{len(diff.extra)} extra, of {diff.checked} files in {manifest_path}")
    return 1
