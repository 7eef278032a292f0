"""localmem ships py.typed (PEP 561), so its annotations are a promise to its users'
type checkers: mypy, with the [tool.mypy] settings of pyproject.toml, finds no error."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_finds_no_type_errors_in_the_package(tmp_path):
    # mypy is in the test extra: when it is missing, this fails ("No module named mypy").
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(tmp_path / "mypy-cache")],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, f"mypy exited {done.returncode}:\n{done.stdout}{done.stderr}"
