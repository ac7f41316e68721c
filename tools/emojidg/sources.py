"""Pinned npm sources: fetch with `npm pack`, verify sha256, check licences, extract.

Why npm: every emoji set used here is published there with a licence field, `npm pack` gives a
byte-stable tarball per (name, version), so a sha256 pin makes the raw data reproducible.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from clipood_zoo.hub import sha256_file

MANIFEST = Path(__file__).with_name("sources.json")

# SPDX ids we accept for the artwork (open licences; CC-BY-SA is share-alike: keep attribution).
OPEN_LICENSES = {"MIT", "Apache-2.0", "CC-BY-4.0", "CC-BY-SA-4.0", "CC0-1.0", "OFL-1.1", "ISC", "BSD-3-Clause"}
# Files copied beside the data so every set keeps its licence and attribution.
ATTRIBUTION_PREFIXES = ("license", "licence", "readme", "copying", "notice", "citation", "info.json", "package.json")


class ChecksumError(RuntimeError):
    """A cached or freshly packed tarball does not match the pinned sha256."""


class LicenseError(RuntimeError):
    """A package's licence field is missing, not open, or differs from the pinned one."""


@dataclass
class Package:
    """One pinned npm tarball and the styles/domains it provides."""

    name: str
    version: str
    role: str
    styles: dict[str, str]
    license: str
    homepage: str
    sha256: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def tarball_name(self) -> str:
        """The file name `npm pack` writes: scope '@a/b' becomes 'a-b'."""
        return f"{self.name.lstrip('@').replace('/', '-')}-{self.version}.tgz"

    @property
    def safe_name(self) -> str:
        return self.name.lstrip("@").replace("/", "__")


def load_manifest(path: Path = MANIFEST) -> list[Package]:
    data = json.loads(path.read_text())
    keys = {"name", "version", "role", "styles", "license", "homepage", "sha256"}
    return [Package(**{k: v for k, v in p.items() if k in keys},
                    extra={k: v for k, v in p.items() if k not in keys}) for p in data["packages"]]


def in_version(pkg: Package, version: str) -> bool:
    """Whether the package belongs to benchmark ``version`` (an entry without ``versions`` is in all)."""
    return version in pkg.extra.get("versions", [version])


def save_manifest(packages: list[Package], path: Path = MANIFEST) -> None:
    """Rewrite the manifest, keeping its comment; used once to pin new hashes (--pin)."""
    data = json.loads(path.read_text())
    by_name = {p.name: p for p in packages}
    for entry in data["packages"]:
        p = by_name[entry["name"]]
        entry.update(version=p.version, sha256=p.sha256, license=p.license)
        entry.update(p.extra)
    path.write_text(json.dumps(data, indent=2) + "\n")


def verify_sha256(path: Path, expected: str | None) -> str:
    """Return the file's sha256; raise ChecksumError naming both hashes if it is not `expected`.

    `expected=None` means "not pinned yet": the caller decides whether pinning is allowed.
    """
    actual = sha256_file(path)
    if expected is not None and actual != expected:
        raise ChecksumError(
            f"sha256 mismatch for {path.name}:\n  pinned   {expected}\n  actual   {actual}\n"
            f"Delete the cached file to refetch, or re-pin deliberately with --pin.")
    return actual


def npm_pack(pkg: Package, cache: Path) -> Path:
    """Fetch NAME@VERSION into `cache` with `npm pack` unless the tarball is already there."""
    cache.mkdir(parents=True, exist_ok=True)
    dest = cache / pkg.tarball_name
    if not dest.exists():
        if shutil.which("npm") is None:
            raise RuntimeError(f"{dest} is not cached and `npm` is not installed")
        subprocess.run(["npm", "pack", f"{pkg.name}@{pkg.version}", "--pack-destination", str(cache)],
                       check=True, stdout=subprocess.DEVNULL)
    if not dest.exists():
        raise RuntimeError(f"npm pack did not produce {dest}")
    return dest


def read_package_json(tarball: Path) -> dict:
    with tarfile.open(tarball) as tf:
        return json.load(tf.extractfile("package/package.json"))


def check_license(label: str, package_json: dict, pinned: str | None) -> str:
    """The licence is taken from the tarball itself, never trusted from the manifest alone."""
    lic = package_json.get("license")
    if not isinstance(lic, str) or lic not in OPEN_LICENSES:
        raise LicenseError(f"{label}: licence field {lic!r} is not an accepted open licence")
    if pinned is not None and lic != pinned:
        raise LicenseError(f"{label}: tarball licence {lic!r} != pinned {pinned!r}")
    return lic


def extract(tarball: Path, root: Path) -> Path:
    """Extract once into root/<tarball stem>/ and return its `package/` folder."""
    dest = root / tarball.name.removesuffix(".tgz")
    marker = dest / ".complete"
    if not marker.exists():
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        with tarfile.open(tarball) as tf:
            tf.extractall(dest, filter="data")
        marker.touch()
    return dest / "package"


def copy_attribution(pkg_dir: Path, out: Path) -> list[str]:
    """Copy LICENSE/README/package.json-style files (top level) into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    copied = []
    for f in sorted(pkg_dir.iterdir()):
        if f.is_file() and f.name.lower().startswith(ATTRIBUTION_PREFIXES):
            shutil.copy2(f, out / f.name)
            copied.append(f.name)
    return copied


def author_and_license_url(pkg_dir: Path) -> tuple[str, str]:
    """Who to credit and the licence's URL: from an Iconify set's ``info.json``, else from a Fontsource
    package's ``metadata.json`` (``license.attribution``, the font's copyright line); empty if neither."""
    info_path, meta_path = pkg_dir / "info.json", pkg_dir / "metadata.json"
    if info_path.exists():
        info = json.loads(info_path.read_text())
        return info.get("author", {}).get("name", ""), info.get("license", {}).get("url", "")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    lic = meta.get("license") if isinstance(meta.get("license"), dict) else {}
    return lic.get("attribution", ""), lic.get("url", "")


def write_attribution(packages: list[Package], dirs: dict[str, Path], out: Path) -> None:
    """licenses/ATTRIBUTION.md: one line per set (author, licence, source) -- what CC-BY asks for."""
    lines = ["# EmojiDG image sources and licences", ""]
    for p in packages:
        author, lic_url = author_and_license_url(dirs[p.name])
        lines.append(f"- {', '.join(p.styles)}: {p.name}@{p.version}" + (f" by {author}" if author else "")
                     + f", licence {p.license}" + (f" ({lic_url})" if lic_url else "") + f", {p.homepage}")
    lines += ["", "Images were rasterised, rescaled and composited onto random backgrounds (modified).", ""]
    out.mkdir(parents=True, exist_ok=True)
    (out / "ATTRIBUTION.md").write_text("\n".join(lines))


def fetch_all(packages: list[Package], cache: Path, pin: bool = False) -> dict[str, Path]:
    """Fetch, verify and extract every package; returns name -> extracted `package/` dir.

    Unpinned hashes (null) are filled in only with pin=True, so a normal run never silently
    accepts new bytes.
    """
    dirs: dict[str, Path] = {}
    changed = False
    for pkg in packages:
        tgz = npm_pack(pkg, cache)
        expected = None if pin else pkg.sha256
        if expected is None and not pin:
            raise ChecksumError(f"{pkg.name}@{pkg.version} has no pinned sha256; run with --pin once")
        actual = verify_sha256(tgz, expected)
        pkg.extra["tarball_bytes"] = tgz.stat().st_size
        pkg.license = check_license(f"{pkg.name}@{pkg.version}", read_package_json(tgz),
                                    None if pin else pkg.license)
        if pkg.sha256 != actual:
            pkg.sha256, changed = actual, True
        dirs[pkg.name] = extract(tgz, cache / "extracted")
    if pin and changed:
        save_manifest(packages)
    return dirs
