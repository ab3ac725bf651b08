"""Vendor Google's <model-viewer> web component into ``dreamengine/report/assets/``.

Run reports show the exported GLB with ``<model-viewer>``. Reports must open offline and from disk
(``file://``), so its JavaScript ships inside the Python package instead of coming from a CDN. This
script is the one reproducible way the committed files are made::

    python tools/bundle_model_viewer.py           # npm pack the pinned version, verify, extract
    python tools/bundle_model_viewer.py --check   # verify the committed files against the record

It runs ``npm pack @google/model-viewer@VERSION`` (the registry tarball, no install, no build), checks the
tarball against the pinned integrity hash, and writes:

* ``model-viewer.min.js``: the package's ``dist/model-viewer-umd.min.js``, a classic (UMD) script with
  three.js and lit bundled in; ES module builds cannot be loaded from ``file://`` pages (Chromium applies
  CORS to module scripts and a file page has an opaque origin). The trailing ``sourceMappingURL`` comment
  is dropped because the map is not shipped.
* ``model-viewer.LICENSE``: the package's license (Apache-2.0). The bundled three.js (MIT) and lit
  (BSD-3-Clause) keep their ``@license`` headers inside the script.
* ``model-viewer.json``: version, tarball integrity, source path and the sha256 of the written script.

To upgrade: set VERSION and INTEGRITY (``npm view @google/model-viewer@X.Y.Z dist.integrity``), rerun,
and open a report in a real browser (``python -m pytest tests/test_report_browser.py``).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "@google/model-viewer"
VERSION = "4.4.0"
# sha512 of the registry tarball, as `npm pack --json` reports it ("integrity")
INTEGRITY = "sha512-8z1SB5sPlzKoak5mdx/D31brBakPYm3Qi31EfAucHAUrtrHHCbabypkKvSwReYhUpPaxyJ46oT47uWE/hrs1Zw=="
SOURCE = "package/dist/model-viewer-umd.min.js"
LICENSE = "package/LICENSE"
ASSETS = Path(__file__).resolve().parents[1] / "dreamengine" / "report" / "assets"


def npm_pack(destination: Path) -> Path:
    """Download the pinned tarball with ``npm pack`` into ``destination``; return its path."""
    try:
        result = subprocess.run(["npm", "pack", f"{PACKAGE}@{VERSION}", "--json", "--pack-destination",
                                 str(destination)], capture_output=True, text=True, check=True)
    except FileNotFoundError:
        sys.exit("npm is not on PATH: install Node.js (which ships npm) and rerun")
    except subprocess.CalledProcessError as error:
        sys.exit(f"npm pack {PACKAGE}@{VERSION} failed:\n{error.stderr}")
    return destination / json.loads(result.stdout)[0]["filename"]


def sri_sha512(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def strip_source_map(script: bytes) -> bytes:
    """Drop a trailing ``//# sourceMappingURL=...`` line (the map file is not shipped)."""
    lines = script.rstrip(b"\n").split(b"\n")
    if lines[-1].startswith(b"//# sourceMappingURL="):
        lines = lines[:-1]
    return b"\n".join(lines) + b"\n"


def extract(tarball: bytes) -> dict[str, bytes]:
    """The files this script writes, from the tarball's bytes."""
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        script = archive.extractfile(SOURCE).read()
        license_text = archive.extractfile(LICENSE).read()
    script = strip_source_map(script)
    record = {"package": PACKAGE, "version": VERSION, "integrity": sri_sha512(tarball), "source": SOURCE,
              "sha256": hashlib.sha256(script).hexdigest(), "tool": "tools/bundle_model_viewer.py"}
    return {"model-viewer.min.js": script, "model-viewer.LICENSE": license_text,
            "model-viewer.json": (json.dumps(record, indent=2) + "\n").encode()}


def check() -> int:
    """Verify the committed script against the record (no network)."""
    record = json.loads((ASSETS / "model-viewer.json").read_text())
    digest = hashlib.sha256((ASSETS / "model-viewer.min.js").read_bytes()).hexdigest()
    ok = record["version"] == VERSION and record["integrity"] == INTEGRITY and digest == record["sha256"]
    print(f"{PACKAGE}@{record['version']}: " + ("ok" if ok else "MISMATCH: rerun tools/bundle_model_viewer.py"))
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="verify the committed files, download nothing")
    args = parser.parse_args()
    if args.check:
        return check()
    with tempfile.TemporaryDirectory() as tmp:
        tarball = npm_pack(Path(tmp)).read_bytes()
    if sri_sha512(tarball) != INTEGRITY:
        sys.exit(f"{PACKAGE}@{VERSION} from npm has integrity {sri_sha512(tarball)}, expected {INTEGRITY}: "
                 "the registry served different bytes; do not vendor them without review")
    ASSETS.mkdir(parents=True, exist_ok=True)
    for name, data in extract(tarball).items():
        (ASSETS / name).write_bytes(data)
        print(f"wrote {ASSETS / name} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
