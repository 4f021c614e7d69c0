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
