"""Headless Chromium screenshots of the pages pgpo writes (Debian's ``chromium``), for the rendering tests."""

import shutil
import subprocess
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"


def screenshot(page: Path, width: int, height: int):
    """``page`` rendered by headless Chromium at ``width`` x ``height``, as a float64 ``[H, W, 3]`` RGB array."""
    import numpy as np
    from PIL import Image

    shot, profile = page.with_suffix(".shot.png"), page.parent / "chromium-profile"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--screenshot={shot}",
        f"--window-size={width},{height}",
        page.as_uri(),
    ]
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
        assert shot.exists() and shot.stat().st_size > 0
        with Image.open(shot) as im:
            return np.asarray(im.convert("RGB"), dtype=np.float64)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
