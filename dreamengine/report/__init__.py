"""Run reports: ``report.html`` per run directory, its turntable video, and a batch index page.

* :func:`write_report` (page.py): the page of one run directory, from whatever files it holds.
* :func:`make_turntable` (turntable.py): an orbit render of a trained scene as MP4, GIF and thumbnail, from
  any ``render(cameras, H, W) -> RenderOut`` callback.
* :func:`write_index` (index.py): a page linking many runs' reports with thumbnails.
* :func:`report_run` / :func:`report_after_training` (build.py): turntable + page for a trained scene, as
  ``dreamengine report`` and the end of ``dreamengine generate`` do.
"""

from dreamengine.report.build import report_after_training, report_run, turntable_settings
from dreamengine.report.index import write_index
from dreamengine.report.page import write_report
from dreamengine.report.turntable import make_turntable

__all__ = ["make_turntable", "report_after_training", "report_run", "turntable_settings", "write_index",
           "write_report"]
