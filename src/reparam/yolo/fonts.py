"""Plot fonts for Ultralytics without downloads or files: only while one of our plotting commands runs.

Ultralytics' plots (``plotting.Annotator``, and the font pre-check in ``data.utils.check_det_dataset``)
ask ``ultralytics.utils.checks.check_font("Arial.ttf")``, which looks in Ultralytics' config folder and in
matplotlib's font list and otherwise downloads Arial from the Ultralytics assets. ``plot_fonts()`` swaps
``check_font`` in those modules' namespaces, for the duration of the ``with`` block only, for a lookup that
does the same two searches but never downloads: when the font is not on the machine it returns matplotlib's
bundled DejaVuSans under its own name. Nothing is written, nothing is named Arial, and Ultralytics runs that
do not go through reparam's commands (train, demo) are untouched. DDP worker processes that Ultralytics
spawns do not inherit the swap (they fall back to Ultralytics' own behaviour).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["bundled_font", "local_font", "plot_fonts"]

# Modules whose global ``check_font`` Ultralytics' plotting calls (checked in 8.3 and 8.4).
_USERS = ("ultralytics.utils.checks", "ultralytics.utils.plotting", "ultralytics.data.utils")


def bundled_font() -> Path:
    """matplotlib's bundled DejaVuSans.ttf (always installed with matplotlib)."""
    from matplotlib import get_data_path

    font = Path(get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    if not font.is_file():
        raise FileNotFoundError(f"matplotlib's bundled font is missing: {font}")
    return font


def local_font(font: str = "Arial.ttf") -> Path:
    """``check_font`` without the download: the font from Ultralytics' config folder or matplotlib's font
    list when present, else matplotlib's DejaVuSans."""
    from matplotlib import font_manager
    from ultralytics.utils import checks

    kept = Path(checks.USER_CONFIG_DIR) / Path(font).name
    if kept.exists():
        return kept
    for entry in font_manager.fontManager.ttflist:
        if font in entry.fname and os.path.exists(entry.fname):
            return Path(entry.fname)
    return bundled_font()


@contextmanager
def plot_fonts() -> Iterator[Path]:
    """Within the block, Ultralytics' plots find their font locally (see the module docstring); yields the
    fallback font. Nests; restores whatever ``check_font`` each module had before."""
    import importlib

    modules = [importlib.import_module(name) for name in _USERS]
    missing = [m.__name__ for m in modules if not callable(getattr(m, "check_font", None))]
    if missing:
        import ultralytics

        raise RuntimeError(
            f"Ultralytics {ultralytics.__version__} has no check_font in {', '.join(missing)}: reparam's "
            "offline font lookup needs updating for this version"
        )
    fallback = bundled_font()
    saved = [m.check_font for m in modules]
    for m in modules:
        m.check_font = local_font
    try:
        yield fallback
    finally:
        for m, original in zip(modules, saved, strict=True):
            m.check_font = original
