"""`virion cache info|clear` over a real decode-cache entry."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image

from virion.cli.main import main


def test_cache_info_and_clear(tmp_path, capsys):
    from virion.data.cache import load_split_arrays
    from virion.data.decode import DecodeSettings
    from virion.data.layout import load_dataset

    for c in ("a", "b"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((16, 16), 60 * (i + 1), np.uint8)).save(tmp_path / "data" / c / f"{i}.png")
    cache = tmp_path / "cache"
    split = load_dataset(tmp_path / "data", val_fraction=0.25, test_fraction=0.0).splits["train"]
    load_split_arrays(split, DecodeSettings(size=16, stretch=None), cache_dir=cache, progress=False)

    assert main(["cache", "info", "--cache-dir", str(cache)]) == 0
    assert "entries: 1" in capsys.readouterr().out
    # Another process: entries this process has open are kept on purpose.
    code = "import sys; from virion.cli.main import main; sys.exit(main(sys.argv[1:]))"
    cleared = subprocess.run(
        [sys.executable, "-c", code, "cache", "clear", "--cache-dir", str(cache)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert cleared.returncode == 0 and "removed 1" in cleared.stdout, cleared.stderr
    assert main(["cache", "info", "--cache-dir", str(cache)]) == 0
    assert "entries: 0" in capsys.readouterr().out
