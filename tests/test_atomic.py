"""A failed write keeps the previous file whole and leaves no temporary file behind."""

import pytest

from virion.atomic import atomic_write, atomic_write_text


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "model.weights.h5"
    atomic_write_text(target, "old")

    def crash(tmp):
        assert tmp.endswith(".weights.h5")  # Keras picks the format from the suffix
        with open(tmp, "w") as fh:
            fh.write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.weights.h5"]
