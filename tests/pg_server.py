"""A throw-away PostgreSQL server for the tests that need one (initdb + pg_ctl on a free port)."""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PASSWORD = "s3cret-pw"


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """initdb in a temporary folder, started on 127.0.0.1:PORT with password authentication.

    The server refuses to run as root, so as root it runs as the ``postgres`` user.
    """

    def __init__(self):
        self.bin = _bin_dir()
        if self.bin is None:
            raise RuntimeError("no PostgreSQL server installed (apt-get install postgresql)")
        self.root = Path(tempfile.mkdtemp(prefix="dime_nas_pg_"))
        self.port = _free_port()
        self.user = "postgres" if os.geteuid() == 0 else None
        self.pid: int | None = None

    def _run(self, *args: str) -> None:
        cmd = [str(a) for a in args]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def start(self) -> PostgresServer:
        os.chmod(self.root, 0o777)
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        os.chmod(pwfile, 0o644)
        data = self.root / "data"
        self._run(self.bin / "initdb", "-D", data, "-U", "postgres", "--auth=scram-sha-256", f"--pwfile={pwfile}")
        self._run(self.bin / "pg_ctl", "-D", data, "-l", self.root / "log", "-w", "-t", "60", "start", "-o",
                  f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off")
        self.pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        return self

    def url(self, database: str = "postgres", password: str = PASSWORD) -> str:
        return f"postgresql://postgres:{password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGINT)  # "fast" shutdown
                for _ in range(300):
                    os.kill(self.pid, 0)
                    time.sleep(0.1)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)
