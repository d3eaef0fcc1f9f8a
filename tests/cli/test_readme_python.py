"""The README stays short and true: its "From Python" section runs as written (tiny settings on
purpose), every `virion COMMAND --option` it shows exists, and every local link resolves."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
README_MAX_LINES = 200


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


def _shown_commands(text: str) -> list[tuple[str, list[str]]]:
    """(sub-command, options) of every `virion ...` in the README's shell blocks and inline code."""
    shown = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            shown += [(m.group(1), m.group(2)) for m in re.finditer(r"\bvirion ([a-z]+)([^#]*)", line.split(" # ")[0])]
    for span in re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S)):
        shown += [(m.group(1), m.group(2)) for m in re.finditer(r"\bvirion ([a-z]+)(.*)", span)]
    return [(command, re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", rest)) for command, rest in shown]


def test_readme_is_short_and_shows_only_commands_and_options_that_exist():
    from virion.cli.main import build_parser

    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES, "README.md is for users; studies go to docs/"
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    shown = _shown_commands(text)
    assert {"train", "predict", "serve", "export", "demo"} <= {command for command, _ in shown}
    for command, options in shown:
        assert command in commands, f"README shows `virion {command}`, which does not exist"
        known = commands[command]._option_string_actions
        for option in options:
            assert option in known, f"README shows `virion {command} {option}`, which it does not take"
    # Options named on their own (`--preset tem`) belong to some command.
    every_option = {o for sub in commands.values() for o in sub._option_string_actions}
    alone = set(re.findall(r"`(--[a-z][a-z0-9-]*)", text))
    assert alone and not alone - every_option, f"README names options no command takes: {alone - every_option}"


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_links_resolve():
    text = README.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        if re.match(r"[a-z]+:", link):
            continue  # a web address
        path, _, anchor = link.partition("#")
        target = README.parent / path
        assert target.is_file(), f"README links to {path}, which does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", target.read_text(encoding="utf-8"), flags=re.M)
            assert anchor in {_anchor(h) for h in headings}, f"README links to {link}: no such heading"
