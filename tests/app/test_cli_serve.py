"""`virion serve` on the command line: defaults, the warning for other addresses, clear errors."""

from __future__ import annotations

import socket
import sys

import pytest

pytest.importorskip("starlette", reason='the web page needs the app extra: pip install "virion[app]"')
pytest.importorskip("uvicorn", reason='the web page needs the app extra: pip install "virion[app]"')


@pytest.fixture
def served(monkeypatch):
    """Replace uvicorn.run so the command returns; record what it would have served."""
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    return calls


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serves_on_localhost_by_default(tiny_run, served, capsys):
    from virion.cli.main import main

    port = _free_port()
    assert main(["serve", str(tiny_run), "--port", str(port)]) == 0
    ((app, kw),) = served
    assert kw["host"] == "127.0.0.1" and kw["port"] == port
    assert app.state.serve.model_names == ["tinya", "tinyb"]  # loaded once, before serving
    out = capsys.readouterr()
    assert f"http://127.0.0.1:{port}/" in out.out and "warning" not in out.err


def test_another_address_is_served_with_a_warning(tiny_run, served, capsys):
    from virion.cli.main import main

    assert main(["serve", str(tiny_run), "--host", "0.0.0.0", "--port", str(_free_port()), "--model", "tinyb"]) == 0
    ((app, kw),) = served
    assert kw["host"] == "0.0.0.0" and app.state.serve.model_names == ["tinyb"]
    assert "warning: --host 0.0.0.0" in capsys.readouterr().err


def test_mistakes_are_one_line_errors(tiny_run, tmp_path, served, capsys, monkeypatch):
    from virion.cli.main import main

    assert main(["serve", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", str(tiny_run), "--port", str(port)]) == 2
        assert f"--port {port}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", str(tiny_run), "--port", "70000"])
    monkeypatch.setitem(sys.modules, "starlette", None)  # as if the app extra were not installed
    assert main(["serve", str(tiny_run)]) == 2
    assert "virion[app]" in capsys.readouterr().err
    assert not served
