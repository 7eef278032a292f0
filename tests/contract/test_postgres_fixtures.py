"""The PostgreSQL the contract suite runs on (``tests/postgres_server.py``): a fresh,
empty database per test that can hold pgvector, dropped afterwards. These check the
fixtures, not localmem: they pass whether or not the PostgreSQL backend exists.

psycopg is imported inside the tests: without it these fail, and nothing else does (an
import error here would stop the whole run at collection)."""

from __future__ import annotations

import pytest
from postgres_server import create_database, database_exists, database_name, database_uri, drop_database


@pytest.mark.parametrize("server, name, expected", [
    ("postgresql://postgres:@/postgres?host=/tmp/dir", "db_1",
     "postgresql://postgres:@/db_1?host=/tmp/dir"),
    ("postgresql://u:p%40ss@db.example:6543/postgres?sslmode=require&application_name=t", "x",
     "postgresql://u:p%40ss@db.example:6543/x?sslmode=require&application_name=t"),
    ("postgres://u@localhost", "x", "postgres://u@localhost/x"),
    ("postgresql://u@/postgres?host=/run/pg&dbname=other", "x", "postgresql://u@/x?host=/run/pg"),
    ("postgresql://u@h/postgres", "odd name/é", "postgresql://u@h/odd%20name%2F%C3%A9"),
])
def test_database_uri_replaces_only_the_database(server, name, expected):
    import psycopg

    uri = database_uri(server, name)
    assert uri == expected
    assert database_name(uri) == name
    assert psycopg.conninfo.conninfo_to_dict(uri)["dbname"] == name


def test_a_fresh_database_is_empty_and_takes_pgvector(postgres_server, postgres_url):
    import psycopg

    name = database_name(postgres_url)
    assert name.startswith("localmem_test_") and database_exists(postgres_server, name)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == name
        assert conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public'").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'vector'").fetchone()[0] == 0
        conn.execute("CREATE EXTENSION vector")
        conn.execute("CREATE TABLE t (id int, v vector(3))")
        conn.execute("INSERT INTO t VALUES (1, '[1,0,0]'), (2, '[0,1,0]'), (3, '[0.9,0.1,0]')")
        nearest = conn.execute("SELECT id FROM t ORDER BY v <=> '[1,0,0]' LIMIT 2").fetchall()
        assert [row[0] for row in nearest] == [1, 3]


def test_databases_are_unique_and_dropped_with_their_connections(postgres_server):
    import psycopg

    first, second = create_database(postgres_server), create_database(postgres_server)
    assert first != second
    held = psycopg.connect(first)  # a connection left open (a Memory not closed) does not block the drop
    try:
        drop_database(first, server_uri=postgres_server)
        drop_database(second)  # through the server's "postgres" database
        assert not database_exists(postgres_server, database_name(first))
        assert not database_exists(postgres_server, database_name(second))
    finally:
        held.close()
    drop_database(first, server_uri=postgres_server)  # dropping twice is harmless
    with pytest.raises(ValueError):
        drop_database(postgres_server)  # never the maintenance database itself
