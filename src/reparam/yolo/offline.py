"""Keep Ultralytics from downloading anything on machines without internet access."""

from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["FONT_NAMES", "setup_offline"]

# The fonts Ultralytics' plotting asks check_font() for; it downloads them when they are not in its
# config directory (ultralytics.utils.checks.check_font).
FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")


def setup_offline() -> list[Path]:
    """Place matplotlib's bundled DejaVuSans under the font names Ultralytics fetches; returns the paths.

    Existing files (e.g. a real Arial downloaded earlier) are kept. Training and validation on CPU with
    ``amp=False`` then attempt no downloads: no font, no AMP-check weights, no hub call (offline
    ``is_online()`` is False, so hub sync and asset downloads are skipped by Ultralytics itself).
    """
    from matplotlib import get_data_path
    from ultralytics.utils import USER_CONFIG_DIR

    source = Path(get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    if not source.is_file():
        raise FileNotFoundError(f"matplotlib's bundled font is missing: {source}")
    USER_CONFIG_DIR.mkdir(parents=True, exist_ok=True)
    placed = []
    for name in FONT_NAMES:
        target = Path(USER_CONFIG_DIR) / name
        if not target.exists():
            shutil.copyfile(source, target)
        placed.append(target)
    return placed
