"""Databases on a Citus cluster, made and dropped on every node together.

A Citus database is one per node: the coordinator's holds the tables kept there and the
metadata (which shard of a distributed table is where), each worker's same-named database holds
its shards. Citus 13 creates neither the workers' databases nor the extension in them
(``citus.enable_create_database_propagation`` is off, and even on it copies no template), so a
new database for the platform is made here the way an operator makes one: the database on every
node, ``CREATE EXTENSION citus`` in each, the coordinator's own address set and the workers
registered in the coordinator's. A database made ``TEMPLATE`` another is copied on every node
alike, so that the coordinator's metadata and the workers' shards still match (the tests' fresh
databases, copied from one migrated template).

These serve the tests and the benchmarks, which make a database per run; a deployment's
database is made once, by its operator, and the store only checks it (``migrate.citus_ready``).
"""

from __future__ import annotations

import psycopg


def _with(url: str, **changes: str) -> str:
    conninfo = psycopg.conninfo.conninfo_to_dict(url)
    conninfo.update(changes)
    return psycopg.conninfo.make_conninfo(**conninfo)


def nodes(admin_url: str) -> tuple[str, ...]:
    """``admin_url`` and, when its database is a Citus coordinator, each active primary worker
    registered there, as the same URL with the worker's host and port."""
    with psycopg.connect(admin_url, autocommit=True) as admin:
        if admin.execute("SELECT 1 FROM pg_extension WHERE extname = 'citus'").fetchone() is None:
            return (admin_url,)
        workers = admin.execute(
            "SELECT nodename, nodeport FROM pg_dist_node"
            " WHERE groupid <> 0 AND noderole = 'primary' AND isactive ORDER BY nodeid"
        ).fetchall()
    return (admin_url, *(_with(admin_url, host=host, port=str(port)) for host, port in workers))


def create_database(cluster: tuple[str, ...], name: str, *, template: str | None = None) -> str:
    """Create database ``name`` on each node of ``cluster`` (from :func:`nodes`; the first is
    the coordinator), or copy ``template`` on each; a new one on more than one node is made a
    Citus coordinator over the workers' namesakes. Returns the coordinator's URL of it."""
    made = []
    try:
        for node in cluster:
            with psycopg.connect(node, autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{name}"'
                              + (f' TEMPLATE "{template}"' if template else ""))
            made.append(node)
        if template is None and len(cluster) > 1:
            _make_coordinator(cluster, name)
    except BaseException:
        drop_database(tuple(made), name)
        raise
    return _with(cluster[0], dbname=name)


def _make_coordinator(cluster: tuple[str, ...], name: str) -> None:
    for node in cluster:
        with psycopg.connect(_with(node, dbname=name), autocommit=True) as conn:
            conn.execute("SET client_min_messages = warning")
            conn.execute("CREATE EXTENSION citus")
    coordinator, *workers = (psycopg.conninfo.conninfo_to_dict(node) for node in cluster)
    with psycopg.connect(_with(cluster[0], dbname=name), autocommit=True) as conn:
        conn.execute("SELECT citus_set_coordinator_host(%s, %s)",
                     (coordinator.get("host", "localhost"), int(coordinator.get("port", 5432))))
        for worker in workers:
            conn.execute("SELECT citus_add_node(%s, %s)", (worker["host"], int(worker["port"])))


def close_database(cluster: tuple[str, ...], name: str) -> None:
    """Refuse new connections to ``name`` on every node and end those there: what a template
    needs (Citus's and TimescaleDB's background workers connect to every database with their
    extension, and ``CREATE DATABASE ... TEMPLATE`` refuses a template in use)."""
    for node in cluster:
        with psycopg.connect(node, autocommit=True) as admin:
            if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                             (name,)).fetchone():
                admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                              " WHERE datname = %s AND pid <> pg_backend_pid()", (name,))


def drop_database(cluster: tuple[str, ...], name: str) -> None:
    """Drop ``name`` on every node, closed on all of them first: one Citus node's background
    workers connect to the other nodes' same-named database, and would come back between a
    ``DROP DATABASE ... WITH (FORCE)`` ending them and the drop."""
    close_database(cluster, name)
    for node in cluster:
        with psycopg.connect(node, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
