"""The README's Python examples run as written, at small sizes, so they stay true."""

import pathlib
import re

import pytest

from vqfast import methods

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
# An example holding the key runs with its replacements (every one must match, so an
# edit of the README cannot silently leave an example at full size).
SMALL = {
    "MagneticTile(": {"size=128": "size=32", "epochs=50": "epochs=1",
                                        '"../shared/data/magnetic_tile"': repr(str(SHARED_DATA / "magnetic_tile"))},
    "PixelWiseScorer(vq_model": {"epochs=20": "epochs=1", "epochs=15": "epochs=1", "n_train=160": "n_train=32"},
}


def _examples():
    text = (ROOT / "README.md").read_text()
    blocks = [(m.start(), m.group(1)) for m in re.finditer(r"```python\n(.*?)```", text, re.S)]
    out = []
    for start, code in blocks:
        section = text[:start].rsplit("\n## ", 1)[-1].split("\n", 1)[0]
        replacements = {}
        for key, table in SMALL.items():
            if key in code:
                replacements.update(table)
        out.append(pytest.param(code, replacements, id=f"{section}@{text[:start].count(chr(10)) + 1}"))
    return out


@pytest.mark.parametrize("code,replacements", _examples())
def test_readme_example_runs(code, replacements, tmp_path, monkeypatch):
    for old, new in replacements.items():
        assert old in code, f"the README example no longer has {old!r}: update SMALL"
        code = code.replace(old, new)
    if "shared/data" in code and not SHARED_DATA.is_dir():
        pytest.skip("the shared data is not here")
    monkeypatch.chdir(tmp_path)  # what the examples write (runs/...) lands here
    before = set(methods.names())
    try:
        exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    finally:  # a method an example registers is the example's, not the other tests'
        for name in set(methods.names()) - before:
            methods.unregister(name)


def test_every_example_is_collected():
    examples = _examples()
    assert len(examples) == (ROOT / "README.md").read_text().count("```python")
    for key in SMALL:  # each table is used
        assert any(key in p.values[0] for p in examples), key
