"""Test helper: validate GLB files with the Khronos glTF validator (the npm package ``gltf-validator``).

The package is installed on first use into a cache folder outside the repository:
``$DREAMENGINE_NODE_DIR`` if set, else ``$XDG_CACHE_HOME/dreamengine/node`` (``~/.cache/dreamengine/node``),
in a sub-folder named after the pinned version. It is installed into a fresh temporary folder and
renamed into place, so two processes installing at once cannot leave a half-installed package behind.

Node.js and npm are required: our CI machines have them, and a missing one is a test failure with a
message saying so, never a skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

GLTF_VALIDATOR_VERSION = "2.0.0-dev.3.10"  # `npm view gltf-validator version`, 2025
SCRIPT = Path(__file__).with_name("validate_gltf.js")


class ValidatorUnavailable(RuntimeError):
    """Node.js or npm is missing, or the validator package cannot be installed."""


def node_cache_dir() -> Path:
    """The folder that holds installed npm packages for the tests."""
    if os.environ.get("DREAMENGINE_NODE_DIR"):
        return Path(os.environ["DREAMENGINE_NODE_DIR"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "dreamengine" / "node"


def _require(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        raise ValidatorUnavailable(
            f"`{tool}` was not found on PATH. The GLB tests run the Khronos glTF validator with Node.js: "
            "install Node.js 18+ with npm (e.g. `apt-get install nodejs npm`) and run the tests again."
        )
    return found


def ensure_validator() -> Path:
    """Install ``gltf-validator@GLTF_VALIDATOR_VERSION`` if needed; return the ``--prefix`` folder."""
    base = node_cache_dir()
    prefix = base / f"gltf-validator-{GLTF_VALIDATOR_VERSION}"
    if (prefix / "node_modules" / "gltf-validator" / "package.json").is_file():
        return prefix

    npm = _require("npm")
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=base, prefix=".install-"))
    try:
        proc = subprocess.run(
            [npm, "install", "--prefix", str(staging), f"gltf-validator@{GLTF_VALIDATOR_VERSION}",
             "--no-audit", "--no-fund", "--no-save", "--loglevel=error"],
            capture_output=True, text=True, timeout=300,
        )
        if proc.returncode != 0:
            raise ValidatorUnavailable(
                f"`npm install gltf-validator@{GLTF_VALIDATOR_VERSION}` failed (exit {proc.returncode}); "
                f"check network access to the npm registry.\n{proc.stderr[-2000:]}"
            )
        staging.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        try:
            staging.rename(prefix)
        except OSError:
            if not prefix.is_dir():  # not "another process got there first"
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return prefix


def validate_glb(path: str | os.PathLike) -> dict:
    """Validate a GLB file; return the validator's report.

    Returns:
        {"validatorVersion": str, "numErrors": int, "numWarnings": int, "numInfos": int, "numHints": int,
         "messages": [{"code", "message", "severity", "pointer"?, "offset"?}, ...], "truncated": bool}
    """
    node = _require("node")
    prefix = ensure_validator()
    proc = subprocess.run([node, str(SCRIPT), str(prefix), str(path)], capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"the glTF validator could not check {path}: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout)


def assert_valid_glb(path: str | os.PathLike) -> dict:
    """Validate a GLB file and fail unless the validator reports 0 errors and 0 warnings; return the report."""
    report = validate_glb(path)
    assert report["numErrors"] == 0 and report["numWarnings"] == 0, report["messages"]
    return report
