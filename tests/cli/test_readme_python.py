"""The README's "From Python" section runs as written (it uses tiny settings on purpose)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_python_block() -> str:
    section = README.read_text(encoding="utf-8").split("## From Python", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the From Python section holds one python block"
    return blocks[0]


def test_readme_from_python_section_runs(tmp_path):
    code = readme_python_block()
    assert "virion.train(" in code and "virion.load(" in code and ".predict(" in code and ".explain(" in code
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "notebook"
    assert (run / "report.html").is_file() and (run / "resnet50" / "evaluation" / "summary.json").is_file()
    lines = proc.stdout.strip().splitlines()
    top3 = lines[-2]  # print(pred.top_k(3)[0])
    assert top3.startswith("[(") and top3.count("(") == 3
    cam = lines[-1].split()
    assert cam[-2:] == ["(32,", "32)"]  # the heatmap has the model's input size
