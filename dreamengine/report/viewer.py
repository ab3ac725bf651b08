"""The interactive GLB viewer of a report: Google's ``<model-viewer>``, bundled, with the model embedded.

Two browser rules shape this module:

* Reports open from disk, and Chromium runs ES module scripts from ``file://`` pages under CORS, which an
  opaque ``null`` origin fails. The bundled script is model-viewer's UMD build (three.js included), a
  classic script that a ``<script src>`` loads from a relative path. It is copied next to the report
  (``report_files/``) with its license, made by ``tools/bundle_model_viewer.py`` (see docs/report.md).
* model-viewer loads models with ``fetch``, which browsers refuse for ``file://`` URLs. The GLB's bytes
  go into the page as base64 in an inert ``<script type="application/octet-stream">`` block; a few lines
  of inline script turn them into a ``blob:`` URL, which ``fetch`` reads from any page.
"""

from __future__ import annotations

import base64
import html
import json
import shutil
from pathlib import Path

from dreamengine.errors import DreamEngineError

ASSETS = Path(__file__).resolve().parent / "assets"
SCRIPT, LICENSE, RECORD = "model-viewer.min.js", "model-viewer.LICENSE", "model-viewer.json"
FILES_DIR = "report_files"  # next to report.html

LOADER_JS = """
(function () {
  var viewer = document.getElementById('viewer');
  var status = document.getElementById('viewer-status');
  function fail(message) { status.textContent = message; status.classList.add('error'); status.hidden = false; }
  if (!window.customElements || !customElements.get('model-viewer')) {
    fail('The 3D viewer script (report_files/model-viewer.min.js) did not load: copy the whole run folder, ' +
         'report_files/ included. The model can still be downloaded below.');
    return;
  }
  var binary = atob(document.getElementById('glb-data').textContent.trim());
  var bytes = new Uint8Array(binary.length);
  for (var i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  viewer.addEventListener('load', function () { status.hidden = true; });
  viewer.addEventListener('error', function (event) {
    var kind = event.detail && event.detail.type ? event.detail.type : 'error';
    var why = kind === 'loadfailure' ? 'the embedded GLB could not be read' : kind + '; is WebGL enabled?';
    fail('The model could not be displayed (' + why + '). It can still be downloaded below.');
  });
  viewer.setAttribute('src', URL.createObjectURL(new Blob([bytes], {type: 'model/gltf-binary'})));
})();
"""


def bundled_version() -> str:
    """The vendored model-viewer version (from ``assets/model-viewer.json``)."""
    return json.loads((ASSETS / RECORD).read_text())["version"]


def install_viewer_script(report_dir: Path) -> str:
    """Copy the bundled script and its license to ``report_dir/report_files/``; return the script's relative URL."""
    source = ASSETS / SCRIPT
    if not source.is_file():
        raise DreamEngineError(f"the bundled 3D viewer {source} is missing from this install of dreamengine; "
                               "reinstall the package, or in a source checkout run "
                               "python tools/bundle_model_viewer.py")
    target_dir = report_dir / FILES_DIR
    target_dir.mkdir(exist_ok=True)
    for name in (SCRIPT, LICENSE):
        target = target_dir / name
        if not target.is_file() or target.stat().st_size != (ASSETS / name).stat().st_size:
            shutil.copyfile(ASSETS / name, target)
    return f"{FILES_DIR}/{SCRIPT}"


def viewer_html(glb: Path, alt: str) -> str:
    """A ``<model-viewer>`` element showing ``glb``, with the GLB embedded. Needs :data:`LOADER_JS` after the
    viewer script. The camera starts where the turntable does: at the object's front (world +X, which is
    glTF +X: orbit angle 90 degrees) and 15 degrees above it (polar angle 75 degrees), orbiting the scene's
    origin (as the turntable and the training cameras do) rather than the model's bounding-box center."""
    data = base64.b64encode(glb.read_bytes()).decode("ascii")
    return ('<div class="viewer-wrap">'
            f'<model-viewer id="viewer" alt="{html.escape(alt)}" camera-controls camera-orbit="90deg 75deg auto" '
            'camera-target="0m 0m 0m" '
            'interaction-prompt="none" shadow-intensity="0.7" tone-mapping="neutral"></model-viewer>'
            '<div id="viewer-status" class="viewer-status">Loading the model&hellip;</div></div>'
            f'<script type="application/octet-stream" id="glb-data">{data}</script>')
