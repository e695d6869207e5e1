"""Tests for utils.search.study: the storage checks made before a search opens its study.

No server is contacted: a missing driver is found by importing it, as SQLAlchemy would.
"""

from __future__ import annotations

import importlib.util

import pytest

from utils.search import study


def _absent(*modules):
    present = [m for m in modules if importlib.util.find_spec(m) is not None]
    if present:
        pytest.skip(f"{present} installed here")


@pytest.mark.parametrize(
    "url, module, hint",
    [
        ("postgresql+psycopg2://u:pw@h/db", "psycopg2", "`pip install psycopg2-binary`"),
        ("mysql+pymysql://u:pw@h/db", "pymysql", "`pip install PyMySQL`"),
        ("mysql://u:pw@h/db", "MySQLdb", "`pip install PyMySQL` and write the URL as 'mysql+pymysql://...'"),
        ("mssql+pyodbc://u:pw@h/db", "pyodbc", "`pip install pyodbc`"),  # generic: the driver the URL names
    ],
)
def test_a_missing_driver_names_the_package_to_install(url, module, hint):
    pytest.importorskip("sqlalchemy")
    _absent(module)
    with pytest.raises(ImportError, match="needs the database driver") as caught:
        study.check_storage_driver(url)
    message = str(caught.value)
    assert hint in message and "u:***@h" in message and "pw" not in message


@pytest.mark.parametrize("storage", [None, "sqlite:///search.db", "not a url", "nosuchdb://h/db", object()])
def test_what_is_not_a_missing_driver_is_left_to_optuna(storage):
    study.check_storage_driver(storage)  # nothing raised: sqlite's driver is in the standard library


def test_the_password_is_masked():
    assert study.mask_password("postgresql://bob:s3cret@db.local/optuna") == "postgresql://bob:***@db.local/optuna"
    assert study.mask_password("sqlite:///search.db") == "sqlite:///search.db"
