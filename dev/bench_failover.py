"""Failover under write load (dev/bench's `failover` phase): a TLS primary and its streaming
standby (pg_basebackup -R), a credswap target with both hosts and
target_session_attrs=read-write in transaction mode, and 64 writer threads (psycopg, one
connection each, reconnecting on error) inserting through credswap's PostgreSQL socket. Each
round stops the primary (pg_ctl -m fast), promotes the standby (pg_promote), and measures the
time from the stop to the first write that lands on the new primary (each INSERT returns
inet_server_port()), then rebuilds the old primary as a standby of the new one for the next
round. Failed writes are counted: those that started before the stop (in flight), and those
that started after the promotion finished (the goal is none).
"""
import os
import shutil
import subprocess
import threading
import time

ROUNDS = int(os.environ.get("BENCH_FAILOVERS", "5"))
WRITERS = 64


def run(b, bench):
    import psycopg  # the bench's virtualenv has it (dev/test installs it)

    ports = [bench.free_port(), bench.free_port()]
    dirs = [b.path("fo-0"), b.path("fo-1")]
    primary_setup(b, bench, dirs[0], ports[0])
    psql(b, bench, ports[0], "CREATE ROLE app LOGIN PASSWORD 'bench-app-pw'; "
         "CREATE TABLE fo (id bigserial PRIMARY KEY, at timestamptz DEFAULT now()); "
         "GRANT ALL ON fo, fo_id_seq TO app")
    standby_setup(b, bench, dirs[1], ports[1], ports[0])
    url = (f"postgresql://localhost:{ports[0]},localhost:{ports[1]}/postgres?sslmode=verify-full"
           f"&sslrootcert={b.path('ca.crt')}&target_session_attrs=read-write")
    wire = b.path("fo-wire")
    os.makedirs(wire, exist_ok=True)
    config = b.path("fo.toml")
    with open(config, "w") as f:
        f.write(f'[api]\nsocket = "{b.path("fo.sock")}"\nadmin_uids = [{os.getuid()}]\n\n'
                f'[postgres]\nsocket_dir = "{wire}"\nsocket_mode = "0666"\n\n'
                f'[[target]]\nname = "fo"\nurl = "{url}"\npool_mode = "transaction"\n'
                f'min_rotation_interval = "0s"\n'
                f'pool = {{ max_size = 16, checkout_timeout = "10s", connect_timeout = "2s" }}\n'
                f'source = {{ kind = "file", path = "{b.write_secret("fo", "app")}" }}\n')
    env = dict(os.environ, RUST_LOG="warn", GLIBC_TUNABLES="glibc.malloc.mmap_threshold=131072")
    daemon = b.spawn([bench.DAEMON, "run", "--config", config], "fo-daemon.log", env=env)
    bench.wait_for("the failover daemon", lambda: os.path.exists(os.path.join(wire, ".s.PGSQL.5432")),
                   timeout=30)
    rounds = []
    primary = 0
    try:
        for r in range(ROUNDS):
            rounds.append(one_round(b, bench, psycopg, wire, dirs, ports, primary))
            bench.log(f"failover {r + 1}: {rounds[-1]}")
            primary = 1 - primary
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        for d in dirs:
            subprocess.run([f"{bench.PGBIN}/pg_ctl", "-D", os.path.join(d, "data"), "-m", "immediate", "stop"],
                           capture_output=True, **({"user": "postgres"} if bench.AS_ROOT else {}))
    firsts = sorted(r["stop_to_first_write_ms"] for r in rounds)
    promotes = sorted(r["pg_promote_ms"] for r in rounds)
    return {
        "rounds": rounds,
        "writers": WRITERS,
        "stop_to_first_write_ms_p50": firsts[len(firsts) // 2],
        "pg_promote_ms_p50": promotes[len(promotes) // 2],
        "failed_after_promotion": sum(r["failed_after_promotion"] for r in rounds),
        "failed": sum(r["failed"] for r in rounds),
    }


def one_round(b, bench, psycopg, wire, dirs, ports, primary):
    standby = 1 - primary
    log, lock, stop = [], threading.Lock(), threading.Event()

    def writer():
        conn = None
        while not stop.is_set():
            started = time.monotonic()
            port, ok = None, False
            try:
                if conn is None:
                    conn = psycopg.connect(host=wire, port=5432, dbname="fo", user="x", autocommit=True,
                                           connect_timeout=15)
                port = conn.execute("INSERT INTO fo DEFAULT VALUES RETURNING inet_server_port()").fetchone()[0]
                ok = True
            except psycopg.Error:
                if conn is not None:
                    conn.close()
                conn = None
            with lock:
                log.append((started, time.monotonic(), ok, port))
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=writer) for _ in range(WRITERS)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    stopped = time.monotonic()
    bench.as_postgres([f"{bench.PGBIN}/pg_ctl", "-D", os.path.join(dirs[primary], "data"), "-m", "fast", "-w",
                       "stop"], capture_output=True)
    down = time.monotonic()
    t0 = time.monotonic()
    psql(b, bench, ports[standby], "SELECT pg_promote(true, 60)")
    promoted = time.monotonic()
    deadline = promoted + 15
    first = None
    while first is None and time.monotonic() < deadline:
        with lock:
            landed = [e for s, e, ok, port in log if ok and port == ports[standby]]
        first = min(landed) if landed else None
        time.sleep(0.01)
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    failed = [(s, e) for s, e, ok, _ in log if not ok]
    result = {
        "writes": len(log),
        "failed": len(failed),
        "failed_in_flight_at_stop": sum(1 for s, _ in failed if s < stopped),
        "failed_after_promotion": sum(1 for s, _ in failed if s > promoted),
        "pg_ctl_stop_ms": round((down - stopped) * 1000, 1),
        "pg_promote_ms": round((promoted - t0) * 1000, 1),
        "stop_to_first_write_ms": round((first - stopped) * 1000, 1) if first else None,
    }
    # The old primary comes back as a standby of the new one, for the next round.
    shutil.rmtree(os.path.join(dirs[primary], "data"))
    standby_setup(b, bench, dirs[primary], ports[primary], ports[standby])
    return result


def psql(b, bench, port, sql):
    subprocess.run(["psql", "-qX", "-v", "ON_ERROR_STOP=1", "-h", b.w, "-p", str(port), "-U", "postgres",
                    "-d", "postgres", "-c", sql], check=True, capture_output=True)


def conf(b, port):
    return (f"listen_addresses='127.0.0.1'\nport={port}\nunix_socket_directories='{b.w}'\n"
            "ssl=on\nssl_cert_file='server.crt'\nssl_key_file='server.key'\nfsync=off\n"
            "synchronous_commit=off\nmax_connections=200\n")


def primary_setup(b, bench, d, port):
    data = os.path.join(d, "data")
    os.makedirs(data)
    bench.chown_postgres(d, data)
    bench.as_postgres([f"{bench.PGBIN}/initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync"],
                      capture_output=True)
    for f in ("server.crt", "server.key"):
        shutil.copy(b.path(f), os.path.join(data, f))
        os.chmod(os.path.join(data, f), 0o600)
        bench.chown_postgres(os.path.join(data, f))
    with open(os.path.join(data, "postgresql.auto.conf"), "w") as f:
        f.write(conf(b, port))
    with open(os.path.join(data, "pg_hba.conf"), "w") as f:
        f.write("local all postgres trust\nlocal replication postgres trust\n"
                "hostssl all all 127.0.0.1/32 scram-sha-256\n")
    start(bench, d)


def standby_setup(b, bench, d, port, primary_port):
    data = os.path.join(d, "data")
    os.makedirs(d, exist_ok=True)
    bench.chown_postgres(d)
    bench.as_postgres([f"{bench.PGBIN}/pg_basebackup", "-D", data, "-h", b.w, "-p", str(primary_port), "-U", "postgres",
                       "-R", "-X", "stream", "--no-sync"], capture_output=True)
    with open(os.path.join(data, "postgresql.auto.conf"), "a") as f:
        f.write(f"\nport={port}\n")
    start(bench, d)


def start(bench, d):
    data = os.path.join(d, "data")
    bench.as_postgres([f"{bench.PGBIN}/pg_ctl", "-D", data, "-l", os.path.join(d, "server.log"), "-w", "start"],
                      capture_output=True)
