"""`make mlflow-server` (`python -m foldwise.scale.server`): one MLflow tracking server for a team.

It runs `mlflow server` with a PostgreSQL backend store and the artifacts served by the server
itself (`--artifacts-destination`): a client needs only the server's address, never the
database's password nor access to the artifact store. Point every checkout at it with
`MLFLOW_TRACKING_URI=http://HOST:PORT` (or params.yaml's `mlflow.tracking_uri`); the fold runs
of every machine, queued experiment and worker then meet their parent runs there.

`--backend-store-uri postgresql+psycopg://USER:PASSWORD@HOST:5432/DB` uses a database the team already
runs. Without it the server gets a PostgreSQL cluster of its own in `--pgdata` (created with the
distribution's `initdb` on first start, listening on 127.0.0.1 only, stopped when the server
stops); as root the cluster runs as the `postgres` user, as PostgreSQL requires. Its role has a
random password (SCRAM), kept beside the cluster in `<pgdata>.password` (mode 600) and handed
to the MLflow server through its environment, never on a command line, so other local users
can neither connect nor read it. The SQLite store beside the project stays the default for one
person. The cluster also holds `foldwise_search`, where `foldwise-search` keeps its study when
this cluster (the default `--pgdata`) is running.
"""
from __future__ import annotations

import argparse
import glob
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from foldwise.errors import InputError

DATABASE, ROLE = "mlflow", "foldwise"
# foldwise-search's Optuna study: a database of its own, since Optuna's tables and MLflow's
# share names (alembic_version among them)
SEARCH_DATABASE = "foldwise_search"


def pg_tool(name: str) -> str:
    """A PostgreSQL server program: on PATH, else the newest in Debian's /usr/lib/postgresql."""
    found = shutil.which(name) or next(iter(sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]),
        reverse=True)), None)
    if not found:
        raise InputError(f"PostgreSQL's {name} was not found: install the distribution's PostgreSQL "
                         "(apt-get install postgresql), or pass --backend-store-uri to use a running "
                         "database")
    return found


def _as_owner(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its programs as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: list[str], what: str) -> None:
    res = subprocess.run(_as_owner(cmd), capture_output=True, text=True)
    if res.returncode != 0:
        raise InputError(f"{what} failed ({' '.join(cmd)}):\n{(res.stdout + res.stderr)[-2000:]}")


def password_file(pgdata: Path) -> Path:
    return pgdata.with_name(pgdata.name + ".password")


def init_cluster(pgdata: Path) -> None:
    """initdb in the empty `pgdata`: the role's random password asked for over TCP (SCRAM),
    written beside the cluster readable by this user only."""
    if pgdata.exists() and any(pgdata.iterdir()):
        raise InputError(f"{pgdata}: not empty and not a PostgreSQL cluster; name another --pgdata")
    pgdata.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(pgdata, "postgres", "postgres")
        if subprocess.run(_as_owner(["test", "-w", str(pgdata)])).returncode != 0:
            raise InputError(f"{pgdata}: the postgres user cannot reach it; every folder above "
                             "it must be open to others (chmod o+x), or name another --pgdata")
    password = secrets.token_urlsafe(24)
    fd, pwfile = tempfile.mkstemp(prefix="foldwise-pw-")  # initdb reads it, then it goes
    try:
        os.write(fd, password.encode())
        os.close(fd)
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres", "postgres")
        _run([pg_tool("initdb"), "-D", str(pgdata), "-U", ROLE, "--auth=scram-sha-256",
              f"--pwfile={pwfile}", "-E", "UTF8"], f"initdb of {pgdata}")
    finally:
        os.unlink(pwfile)
    secret = password_file(pgdata)
    secret.touch(mode=0o600)
    secret.write_text(password)


def start_postgres(pgdata: str | Path, port: int) -> str:
    """Start (creating it the first time) the PostgreSQL cluster in `pgdata` on 127.0.0.1:`port`
    with a database for MLflow; its SQLAlchemy URI, whose password is in this process's
    PGPASSWORD (inherited by the MLflow server, read by libpq)."""
    pgdata = Path(pgdata).resolve()
    if not (pgdata / "PG_VERSION").exists():
        init_cluster(pgdata)
    if password_file(pgdata).is_file():  # a cluster made before passwords: trust, none needed
        os.environ["PGPASSWORD"] = password_file(pgdata).read_text().strip()
    _run([pg_tool("pg_ctl"), "-D", str(pgdata), "-l", str(pgdata / "server.log"), "-w", "start",
          "-o", f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"],
         f"starting PostgreSQL in {pgdata} on port {port} (its log: {pgdata / 'server.log'})")
    for name in (DATABASE, SEARCH_DATABASE):
        ensure_database(port, name)
    return f"postgresql+psycopg://{ROLE}@127.0.0.1:{port}/{DATABASE}"


def ensure_database(port: int, name: str) -> None:
    res = subprocess.run(_as_owner([pg_tool("psql"), "-h", "127.0.0.1", "-p", str(port), "-U", ROLE,
                                    "-d", "postgres", "-tAc",
                                    f"SELECT 1 FROM pg_database WHERE datname = '{name}'"]),
                         capture_output=True, text=True)
    if res.stdout.strip() != "1":
        _run([pg_tool("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", ROLE, name],
             f"creating the database {name}")


def search_storage(pgdata: str | Path) -> str | None:
    """foldwise-search's study database in the server's own cluster, if that cluster is running
    (None otherwise); its password goes to this process's PGPASSWORD, not into the URL."""
    pgdata = Path(pgdata).resolve()
    try:
        port = int((pgdata / "postmaster.pid").read_text().splitlines()[3])
    except (OSError, IndexError, ValueError):
        return None
    if password_file(pgdata).is_file():
        os.environ["PGPASSWORD"] = password_file(pgdata).read_text().strip()
    ensure_database(port, SEARCH_DATABASE)  # a cluster started before the search existed
    return f"postgresql+psycopg://{ROLE}@127.0.0.1:{port}/{SEARCH_DATABASE}"


def stop_postgres(pgdata: str | Path) -> None:
    pgdata = Path(pgdata).resolve()
    if (pgdata / "postmaster.pid").exists():
        _run([pg_tool("pg_ctl"), "-D", str(pgdata), "-w", "-m", "fast", "stop"],
             f"stopping PostgreSQL in {pgdata}")


def check_backend(uri: str) -> None:
    """Connect once to a database backend store (5 s at most), so that a wrong address or
    password is one line naming the database (its password hidden), not MLflow's retries."""
    if "://" not in uri or uri.startswith(("file:", "sqlite:")):
        return
    import sqlalchemy
    url = sqlalchemy.engine.make_url(uri)
    args = {"connect_timeout": 5} if url.get_backend_name() == "postgresql" else {}
    try:
        with sqlalchemy.create_engine(url, connect_args=args).connect():
            pass
    except Exception as err:  # the driver's own error says why (refused, auth, no database)
        why = str(getattr(err, "orig", err)).strip().splitlines()[0]
        raise InputError(f"cannot reach the backend store {url.render_as_string(hide_password=True)}:"
                         f" {why}") from None


def server_command(backend: str, artifacts: str, host: str, port: int, workers: int,
                   allowed_hosts: str = "") -> list[str]:
    """`mlflow server` over `backend`, serving (proxying) the artifacts it keeps in `artifacts`
    (a folder, or an s3://, gs://, ... URI)."""
    if "://" not in artifacts:
        artifacts = str(Path(artifacts).resolve())
        Path(artifacts).mkdir(parents=True, exist_ok=True)
    mlflow = Path(sys.executable).with_name("mlflow")
    return [str(mlflow) if mlflow.exists() else "mlflow", "server", "--backend-store-uri", backend,
            "--artifacts-destination", artifacts, "--serve-artifacts", "--host", host,
            "--port", str(port), "--workers", str(workers),
            *(["--allowed-hosts", allowed_hosts] if allowed_hosts else [])]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m foldwise.scale.server", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend-store-uri", default="",
                    help="a running database (postgresql+psycopg://USER:PASSWORD@HOST:5432/DB); "
                         "default: a PostgreSQL cluster of the server's own in --pgdata")
    ap.add_argument("--pgdata", default=".foldwise/postgres",
                    help="that cluster's folder (default: %(default)s)")
    ap.add_argument("--pg-port", type=int, default=5433, help="its port on 127.0.0.1 (%(default)s)")
    ap.add_argument("--artifacts-destination", default=".foldwise/mlflow-artifacts",
                    help="where the server keeps the runs' artifacts: a folder or an object store "
                         "URI (default: %(default)s)")
    ap.add_argument("--host", default="127.0.0.1",
                    help="address to listen on; 0.0.0.0 for other machines (default: %(default)s)")
    ap.add_argument("--port", type=int, default=5000, help="(default: %(default)s)")
    ap.add_argument("--workers", type=int, default=2, help="server processes (default: %(default)s)")
    ap.add_argument("--allowed-hosts", default="",
                    help="Host headers the server accepts (MLflow's own check; its default: localhost "
                         "and private addresses), e.g. mlflow.example.org:5000")
    args = ap.parse_args(argv)
    own = not args.backend_store_uri
    try:
        backend = start_postgres(args.pgdata, args.pg_port) if own else args.backend_store_uri
        check_backend(backend)
        cmd = server_command(backend, args.artifacts_destination, args.host, args.port, args.workers,
                             args.allowed_hosts)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"MLflow tracking server on http://{args.host}:{args.port} (backend {backend}); "
          f"clients: export MLFLOW_TRACKING_URI=http://{args.host}:{args.port}", flush=True)
    server = subprocess.Popen(cmd)
    # a stop request (Ctrl-C, SIGTERM) goes to the server; the database is stopped after it
    signal.signal(signal.SIGTERM, lambda *_: server.terminate())
    try:
        code = server.wait()
    except KeyboardInterrupt:
        server.terminate()
        code = server.wait()
    finally:
        if own:
            stop_postgres(args.pgdata)
    return code


if __name__ == "__main__":
    sys.exit(main())
