"""Every ```python block of README.md runs as written (each in a fresh namespace, in a temporary
folder). A block that reads ../shared data skips when that data is missing."""
import linecache
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks():
    text = README.read_text()
    return [pytest.param(match.group(1), id=f"README.md:{text.count(chr(10), 0, match.start()) + 2}")
            for match in BLOCK.finditer(text)]


def test_the_readme_has_python_examples():
    assert len(python_blocks()) >= 2


@pytest.mark.parametrize("code", python_blocks())
def test_readme_python_block_runs(code, request, tmp_path, monkeypatch):
    for shared in sorted(set(re.findall(r"\.\./shared/[\w./-]+", code))):
        if not (README.parent / shared).exists():
            pytest.skip(f"needs {shared}")
    monkeypatch.chdir(tmp_path)
    name = request.node.callspec.id  # README.md:<first line of the block>
    linecache.cache[name] = (len(code), None, code.splitlines(True), name)  # tracebacks show the README lines
    exec(compile(code, name, "exec"), {"__name__": "__readme__"})
