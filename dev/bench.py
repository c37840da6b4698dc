"""credswap's benchmarks (run by dev/bench, which builds the release binaries first).

Sets up the real components on loopback -- a TLS PostgreSQL cluster with pgbench's tables,
PgBouncer (server_tls_sslmode=verify-full) in front of it, moto (AWS Secrets Manager) and
OpenBao with its database engine -- then measures, in one run:

  hop        credswap-bench api vs direct, SELECT 1 and the pgbench -S lookup, 1/16/64 clients;
             pgbench -S through PgBouncer's Unix socket vs straight to PostgreSQL (TLS)
  latency    the hop's added latency at 1 client (api minus direct, p50 and p99)
  rotation   trigger -> swapped and trigger -> drained over ROTATIONS rotations per source
  under load ROTATIONS rotations during 64-client api load; failed requests counted
  memory     RSS idle with two targets and under 64 clients; start-up to READY=1
  wire       pgbench -S -M simple and -M prepared at 1/16/64 clients straight to PostgreSQL
             (TLS verify-full), through PgBouncer (transaction mode for simple, session mode for
             prepared) and through credswap's PostgreSQL front end (session mode); throughput
             ratio to direct, each pooler's CPU per transaction, added p50/p99 at 1 client

  transaction pgbench -S (reads) -M simple|extended|prepared and -N (writes) -M simple|prepared
             at 16/64 clients on 16 server connections: direct, PgBouncer's transaction pool,
             credswap's pool_mode = "transaction" with server_reset "auto" and (reads) "always"
             (medians of BENCH_TXN_REPEAT alternated runs); rotations under 64 clients

  failover   BENCH_FAILOVERS (default 5) promotions of a streaming standby under 64 writers
             through a read-write transaction-mode target: primary stop to the first write on
             the new primary (p50) against pg_promote's own time; failed writes
             (dev/bench_failover.py)

  abuse      the front door under abuse: forged webhooks, /v1/health under a forged flood and
             under 10,000 idle connections, RSS under maximal batches (dev/bench_abuse.py)

Prints a table and writes target/bench/results.json. Environment: BENCH_SECONDS (measured time
per hop run, default 5), BENCH_ROTATIONS (default 100), BENCH_PHASES (a comma list of memory,
hop, wire, transaction, rotation, abuse, failover; default all), BENCH_TXN_REPEAT (runs per transaction-mode
row, medians reported; default 3).
"""
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_abuse  # noqa: E402
import bench_failover  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
DAEMON = os.path.join(RELEASE, "credswap")
BENCH = os.path.join(RELEASE, "credswap-bench")
VENV = os.path.join(ROOT, ".venv", "bin")
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
ROTATIONS = int(os.environ.get("BENCH_ROTATIONS", "100"))
ALL_PHASES = ("memory", "hop", "wire", "transaction", "rotation", "abuse", "failover")
PHASES = set(os.environ.get("BENCH_PHASES", ",".join(ALL_PHASES)).split(","))
CLIENTS = [1, 16, 64]
TXN_REPEAT = int(os.environ.get("BENCH_TXN_REPEAT", "3"))


def median(values):
    """The middle value (the mean of the two middle ones for an even count)."""
    v = sorted(values)
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2
POOL_SIZE = 16
AS_ROOT = os.getuid() == 0
PGBIN = sorted(
    (os.path.join("/usr/lib/postgresql", v, "bin") for v in os.listdir("/usr/lib/postgresql")),
    key=lambda p: int(p.split("/")[-2]),
)[-1]


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(cmd, **kw):
    """Runs cmd as the postgres user when we are root (initdb and PgBouncer refuse root)."""
    if AS_ROOT:
        cmd = ["runuser", "-u", "postgres", "--"] + cmd
    return subprocess.run(cmd, check=True, **kw)


def chown_postgres(*paths):
    if AS_ROOT:
        for p in paths:
            shutil.chown(p, "postgres", "postgres")


def wait_for(what, check, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise SystemExit(f"bench: {what} did not come up within {timeout} s")


def port_open(port, host="127.0.0.1"):
    try:
        socket.create_connection((host, port), timeout=0.2).close()
        return True
    except OSError:
        return False


class Bench:
    def __init__(self, work):
        self.w = work
        self.procs = []
        self.pg_port = free_port()
        self.pgb_port = free_port()
        self.moto_port = free_port()
        self.bao_port = free_port()
        self.hook_port = free_port()
        self.secret_pw = {"app": "bench-app-pw", "app_aws": "bench-aws-pw"}

    def path(self, *p):
        return os.path.join(self.w, *p)

    def spawn(self, cmd, log_name, env=None, user_postgres=False, nofile=None):
        if user_postgres and AS_ROOT:
            cmd = ["runuser", "-u", "postgres", "--"] + cmd
        out = open(self.path(log_name), "wb")
        limit = None
        if nofile:
            import resource

            def limit():
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                             preexec_fn=limit)
        self.procs.append(p)
        return p

    def stop_all(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run([f"{PGBIN}/pg_ctl", "-D", self.path("pg"), "-m", "immediate", "stop"],
                       capture_output=True, **({"user": "postgres"} if AS_ROOT else {}))

    # --- components -------------------------------------------------------------------------

    def pki(self):
        def ssl(*args):
            subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=self.w)
        ssl("req", "-x509", "-nodes", "-days", "2", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=bench CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
        ssl("req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
        with open(self.path("ext.cnf"), "w") as f:
            f.write("basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
                    "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-set_serial", "1",
            "-days", "2", "-extfile", "ext.cnf", "-out", "server.crt")
        os.chmod(self.path("ca.crt"), 0o644)

    def postgres(self):
        pg = self.path("pg")
        os.mkdir(pg)
        chown_postgres(pg)
        as_postgres([f"{PGBIN}/initdb", "-D", pg, "-U", "postgres", "--auth=trust", "--no-sync"],
                    capture_output=True)
        for f in ("server.crt", "server.key"):
            shutil.copy(self.path(f), os.path.join(pg, f))
            os.chmod(os.path.join(pg, f), 0o600)
            chown_postgres(os.path.join(pg, f))
        with open(os.path.join(pg, "postgresql.auto.conf"), "w") as f:
            f.write(f"listen_addresses='127.0.0.1'\nport={self.pg_port}\nunix_socket_directories='{self.w}'\n"
                    "ssl=on\nssl_cert_file='server.crt'\nssl_key_file='server.key'\nfsync=off\n"
                    "synchronous_commit=off\nmax_connections=400\n")
        with open(os.path.join(pg, "pg_hba.conf"), "w") as f:
            f.write("local all postgres trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n")
        as_postgres([f"{PGBIN}/pg_ctl", "-D", pg, "-l", os.path.join(pg, "server.log"), "-w", "start"],
                    capture_output=True)
        # Rotations alternate between two roles per target (app, app2): the one not in use gets
        # the new password, so the live pool's new connections keep working meanwhile.
        self.psql("CREATE ROLE app LOGIN PASSWORD 'bench-app-pw'; CREATE ROLE app2 LOGIN; "
                  "CREATE ROLE app_aws LOGIN PASSWORD 'bench-aws-pw'; CREATE ROLE app_aws2 LOGIN; "
                  "CREATE ROLE vaultadmin LOGIN SUPERUSER PASSWORD 'bench-vault-admin';")
        subprocess.run(["pgbench", "-i", "-s", "1", "-q", "-h", self.w, "-p", str(self.pg_port), "-U", "postgres",
                        "postgres"], check=True, capture_output=True)
        self.psql("GRANT SELECT ON pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history "
                  "TO PUBLIC")
        # pgbench's TPC-B-like script (the transaction phase's write rows) updates and inserts.
        self.psql("GRANT UPDATE, INSERT ON pgbench_accounts, pgbench_branches, pgbench_tellers, "
                  "pgbench_history TO app, app2")
        self.psql("VACUUM ANALYZE pgbench_accounts")

    def psql(self, sql):
        r = subprocess.run(["psql", "-qX", "-v", "ON_ERROR_STOP=1", "-h", self.w, "-p", str(self.pg_port),
                            "-U", "postgres", "-d", "postgres", "-c", sql], capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"bench: psql {sql!r}: {r.stderr.strip()}")

    def pgbouncer(self):
        d = self.path("pgbouncer")
        os.mkdir(d)
        with open(os.path.join(d, "userlist.txt"), "w") as f:
            f.write('"app" "bench-app-pw"\n')
        with open(os.path.join(d, "pgbouncer.ini"), "w") as f:
            f.write(f"""[databases]
postgres = host=localhost port={self.pg_port} dbname=postgres
session = host=localhost port={self.pg_port} dbname=postgres pool_mode=session pool_size={max(CLIENTS)}
[pgbouncer]
listen_addr =
listen_port = {self.pgb_port}
unix_socket_dir = {d}
auth_type = scram-sha-256
auth_file = {d}/userlist.txt
pool_mode = transaction
default_pool_size = {POOL_SIZE}
max_client_conn = 400
server_tls_sslmode = verify-full
server_tls_ca_file = {self.path("ca.crt")}
logfile = {d}/pgbouncer.log
pidfile = {d}/pgbouncer.pid
""")
        os.chmod(os.path.join(d, "userlist.txt"), 0o600)
        for p in (d, *(os.path.join(d, f) for f in os.listdir(d))):
            chown_postgres(p)
        self.spawn(["pgbouncer", os.path.join(d, "pgbouncer.ini")], "pgbouncer.out", user_postgres=True)
        wait_for("PgBouncer", lambda: os.path.exists(os.path.join(d, f".s.PGSQL.{self.pgb_port}")))

    def moto(self):
        self.spawn([os.path.join(VENV, "moto_server"), "-H", "127.0.0.1", "-p", str(self.moto_port)], "moto.log")
        wait_for("moto", lambda: port_open(self.moto_port))
        self.aws_env = dict(os.environ, AWS_ENDPOINT_URL=f"http://127.0.0.1:{self.moto_port}",
                            AWS_REGION="us-east-1", AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                            AWS_EC2_METADATA_DISABLED="true")
        import boto3  # in the venv, with moto
        boto3.client("secretsmanager", endpoint_url=self.aws_env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                     aws_access_key_id="bench", aws_secret_access_key="bench").create_secret(
            Name="bench/app_aws", SecretString=json.dumps({"username": "app_aws", "password": "bench-aws-pw"}))

    def bao(self):
        env = dict(os.environ, BAO_DEV_ROOT_TOKEN_ID="bench-root")
        self.spawn([os.path.join(VENV, "openbao-server"), "server", "-dev",
                    f"-dev-listen-address=127.0.0.1:{self.bao_port}"], "bao.log", env=env)
        wait_for("OpenBao", lambda: port_open(self.bao_port))

        def call(method, path, body):
            req = urllib.request.Request(f"http://127.0.0.1:{self.bao_port}/v1/{path}", method=method,
                                         data=json.dumps(body).encode(), headers={"X-Vault-Token": "bench-root"})
            for _ in range(50):
                try:
                    return urllib.request.urlopen(req, timeout=10).read()
                except urllib.error.HTTPError as e:
                    if e.code != 503:
                        raise SystemExit(f"bench: OpenBao {path}: {e.code} {e.read()!r}")
                time.sleep(0.1)
        call("POST", "sys/mounts/database", {"type": "database"})
        call("POST", "database/config/pg", {
            "plugin_name": "postgresql-database-plugin", "allowed_roles": "*",
            "connection_url": f"postgresql://{{{{username}}}}:{{{{password}}}}@localhost:{self.pg_port}/postgres"
                              f"?sslmode=verify-full&sslrootcert={self.path('ca.crt')}",
            "username": "vaultadmin", "password": "bench-vault-admin"})
        call("POST", "database/roles/dyn", {
            "db_name": "pg", "default_ttl": "1h", "max_ttl": "2h",
            "creation_statements": ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' "
                                    "VALID UNTIL '{{expiration}}';"]})
        with open(self.path("bao-token"), "w") as f:
            f.write("bench-root")
        os.chmod(self.path("bao-token"), 0o600)

    # --- the daemon -------------------------------------------------------------------------

    def write_secret(self, name, user):
        p = self.path(f"{name}.json")
        with open(p, "w") as f:
            json.dump({"username": user, "password": self.secret_pw[user]}, f)
        os.chmod(p, 0o600)
        return p

    def config(self, name, targets, api_extra="", webhook_rate="1000.0"):
        url = f"postgresql://localhost:{self.pg_port}/postgres?sslmode=verify-full&sslrootcert={self.path('ca.crt')}"
        pool = f"pool = {{ max_size = {POOL_SIZE} }}"
        sources = {
            "one": f'{{ kind = "file", path = "{self.write_secret("one", "app")}" }}',
            "aws": f'{{ kind = "aws", secret_id = "bench/app_aws", region = "us-east-1", '
                   f'endpoint_url = "http://127.0.0.1:{self.moto_port}" }}',
            "vault": f'{{ kind = "vault", address = "http://127.0.0.1:{self.bao_port}", engine = "database", '
                     f'role = "dyn", auth = {{ method = "token", token_file = "{self.path("bao-token")}" }} }}',
        }
        key = self.path("hook.key")
        with open(key, "w") as f:
            f.write("bench-webhook-key-0123456789abcdef")
        os.chmod(key, 0o600)
        text = f'[api]\nsocket = "{self.path(name + ".sock")}"\nadmin_uids = [{os.getuid()}]\n{api_extra}\n'
        wire_dir = self.path(name + "-pg")
        os.makedirs(wire_dir, exist_ok=True)
        text += f'[postgres]\nsocket_dir = "{wire_dir}"\nsocket_mode = "0666"\n\n'
        text += f'[webhook]\nlisten = "127.0.0.1:{self.hook_port}"\nhmac_key_files = ["{key}"]\n'
        text += f"rate_limit_per_second = {webhook_rate}\nrate_limit_burst = 1000\n\n"
        for t in targets:
            text += (f'[[target]]\nname = "{t}"\nurl = "{url}"\nmin_rotation_interval = "0s"\n{pool}\n'
                     f"source = {sources[t]}\n\n")
        # Transaction mode: every client shares POOL_SIZE server connections (as PgBouncer's
        # "postgres" database does); its own secret file, rotated under load.
        text += (f'[[target]]\nname = "txn"\nurl = "{url}"\npool_mode = "transaction"\n'
                 f'min_rotation_interval = "0s"\n'
                 f'pool = {{ max_size = {POOL_SIZE}, min_idle = 0 }}\n'
                 f'source = {{ kind = "file", path = "{self.write_secret("txn", "app")}" }}\n\n')
        # The same with server_reset = "always": the cost of a reset after every transaction.
        text += (f'[[target]]\nname = "txn_always"\nurl = "{url}"\npool_mode = "transaction"\n'
                 f'server_reset = "always"\n'
                 f'pool = {{ max_size = {POOL_SIZE}, min_idle = 0 }}\n'
                 f'source = {{ kind = "file", path = "{self.write_secret("txn_always", "app")}" }}\n\n')
        # Session mode needs a server connection per client: sized to the most clients.
        text += (f'[[target]]\nname = "wire"\nurl = "{url}"\npool = {{ max_size = {max(CLIENTS)}, min_idle = 0 }}\n'
                 f"source = {sources['one']}\n\n")
        p = self.path(name + ".toml")
        with open(p, "w") as f:
            f.write(text)
        return p

    def start_daemon(self, name, targets, nofile=None, **settings):
        """Starts the daemon (with the unit's descriptor limit when `nofile` is given); returns
        (process, seconds to READY=1, configuration file)."""
        config = self.config(name, targets, **settings)
        notify = self.path(name + ".notify")
        if os.path.exists(notify):
            os.remove(notify)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(notify)
        sock.settimeout(30)
        # The allocator setting the unit ships (systemd/credswap.service).
        env = dict(self.aws_env, NOTIFY_SOCKET=notify, RUST_LOG="warn",
                   GLIBC_TUNABLES="glibc.malloc.mmap_threshold=131072")
        t0 = time.monotonic()
        p = self.spawn([DAEMON, "run", "--config", config], name + ".log", env=env, nofile=nofile)
        while True:
            msg = sock.recv(4096).decode()
            if "READY=1" in msg.split("\n"):
                ready = time.monotonic() - t0
                break
        sock.close()
        return p, ready, config

    def stop_daemon(self, p):
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)

    # --- the load generator and pgbench ---------------------------------------------------------

    def bench(self, *args, env=None):
        out = subprocess.run([BENCH, *map(str, args)], check=True, capture_output=True, text=True,
                             env=env or self.aws_env)
        return json.loads(out.stdout)

    def pgbench(self, clients, via_pgbouncer):
        env = dict(os.environ, PGPASSWORD="bench-app-pw")
        if via_pgbouncer:
            host, port = self.path("pgbouncer"), self.pgb_port
        else:
            host, port = "localhost", self.pg_port
            env.update(PGSSLMODE="verify-full", PGSSLROOTCERT=self.path("ca.crt"))
        out = subprocess.run(["pgbench", "-n", "-S", "-c", str(clients), "-j", str(min(clients, 2)),
                              "-T", str(SECONDS), "-h", host, "-p", str(port), "-U", "app", "postgres"],
                             check=True, capture_output=True, text=True, env=env).stdout
        tps = float(re.search(r"tps = ([\d.]+) \(without initial connection time\)", out).group(1))
        lat = float(re.search(r"latency average = ([\d.]+) ms", out).group(1))
        failed = int(re.search(r"number of failed transactions: (\d+)", out).group(1))
        return {"throughput_per_s": round(tps), "latency_avg_us": round(lat * 1000, 1), "failed": failed}


    def pgbench_wire(self, clients, mode, via, latency_log=None, script="-S"):
        """pgbench -M mode straight to PostgreSQL (via "direct"), through PgBouncer
        ("pgbouncer") or through credswap's front end ("credswap"); `script` is pgbench's
        -S (select-only) or -N (TPC-B-like without the branch and teller updates)."""
        env = dict(os.environ, PGPASSWORD="bench-app-pw")
        if via == "direct":
            host, port, db = "localhost", self.pg_port, "postgres"
            env.update(PGSSLMODE="verify-full", PGSSLROOTCERT=self.path("ca.crt"))
        elif via == "pgbouncer":
            host, port = self.path("pgbouncer"), self.pgb_port
            db = "postgres" if mode == "simple" else "session"
        elif via == "pgbouncer_txn":
            host, port, db = self.path("pgbouncer"), self.pgb_port, "postgres"
        elif via == "credswap_txn":
            host, port, db = self.path("main-pg"), 5432, "txn"
        elif via == "credswap_txn_always":
            host, port, db = self.path("main-pg"), 5432, "txn_always"
        else:
            host, port, db = self.path("main-pg"), 5432, "wire"
        cmd = ["pgbench", "-n", script, "-M", mode, "-c", str(clients), "-j", str(min(clients, 2)),
               "-T", str(SECONDS), "-h", host, "-p", str(port), "-U", "app", db]
        if latency_log:
            cmd[1:1] = ["-l", "--log-prefix", latency_log]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env,
                             cwd=self.w).stdout
        tps = float(re.search(r"tps = ([\d.]+) \(without initial connection time\)", out).group(1))
        failed = int(re.search(r"number of failed transactions: (\d+)", out).group(1))
        return {"throughput_per_s": round(tps), "failed": failed}


def latency_percentiles(prefix):
    """p50/p99 (us) from pgbench's per-transaction log files (`-l`): the third field."""
    values = []
    for name in os.listdir(os.path.dirname(prefix)):
        if name.startswith(os.path.basename(prefix)):
            with open(os.path.join(os.path.dirname(prefix), name)) as f:
                values += [int(line.split()[2]) for line in f if line.strip()]
    values.sort()
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]
    return {"p50": pick(0.50), "p99": pick(0.99), "n": len(values)}


def wire(b, daemon_pid):
    pgbouncer_pid = int(open(b.path("pgbouncer", "pgbouncer.pid")).read())
    rows = []
    for clients in CLIENTS:
        for mode in ("simple", "prepared"):
            row = {"clients": clients, "mode": mode}
            for via, pid in (("direct", None), ("pgbouncer", pgbouncer_pid), ("credswap", daemon_pid)):
                log_prefix = b.path(f"lat-{via}-{mode}") if clients == 1 else None
                cpu = cpu_seconds(pid) if pid else 0
                r = b.pgbench_wire(clients, mode, via, log_prefix)
                if pid:
                    r["cpu_us_per_transaction"] = round(
                        (cpu_seconds(pid) - cpu) / (r["throughput_per_s"] * SECONDS) * 1e6, 1)
                if log_prefix:
                    r["latency_us"] = latency_percentiles(log_prefix)
                row[via] = r
                log(f"{clients:>2} clients -M {mode:<8} {via:<9} {r['throughput_per_s']:>8.0f}/s "
                    f"cpu {r.get('cpu_us_per_transaction', '-')} us")
            for via in ("pgbouncer", "credswap"):
                row[f"{via}_over_direct"] = round(
                    row[via]["throughput_per_s"] / row["direct"]["throughput_per_s"], 3)
                if clients == 1:
                    row[f"{via}_added_latency_us"] = {
                        k: row[via]["latency_us"][k] - row["direct"]["latency_us"][k] for k in ("p50", "p99")}
            rows.append(row)
    return rows


# Transaction mode's rows: pgbench script, query mode, and the poolers measured beside direct.
# -S reads (in server_reset = "auto" a plain read leaves nothing behind: no reset); -N writes
# (UPDATE and INSERT: every transaction is reset). "always" resets after every transaction.
# PgBouncer 1.18 has no prepared statements in transaction mode.
TXN_ROWS = [
    ("-S", "simple", ("pgbouncer_txn", "credswap_txn", "credswap_txn_always")),
    ("-S", "extended", ("pgbouncer_txn", "credswap_txn", "credswap_txn_always")),
    ("-S", "prepared", ("credswap_txn", "credswap_txn_always")),
    ("-N", "simple", ("pgbouncer_txn", "credswap_txn")),
    ("-N", "prepared", ("credswap_txn",)),
]


def transaction(b, daemon_pid):
    """Transaction mode: 16 and 64 pgbench clients on 16 server connections, straight to
    PostgreSQL, through PgBouncer's transaction pool and through credswap's (TXN_ROWS); then
    the time from a rotation's trigger to the old generation drained while 64 clients run
    -M prepared.

    Each row is run TXN_REPEAT times, the poolers' order reversed every other time, and each
    figure is the median over the repeats (a ratio is taken against the direct run of its own
    repeat): on this shared two-core machine a single 5 s run moved by up to 10 % from one
    session to the next."""
    pgbouncer_pid = int(open(b.path("pgbouncer", "pgbouncer.pid")).read())
    pids = {"pgbouncer_txn": pgbouncer_pid, "credswap_txn": daemon_pid,
            "credswap_txn_always": daemon_pid}
    rows = []
    for clients in (16, 64):
        for script, mode, vias in TXN_ROWS:
            poolers = [(via, pids[via]) for via in vias]
            runs = []
            for repeat in range(TXN_REPEAT):
                order = poolers if repeat % 2 == 0 else poolers[::-1]
                run = {}
                for via, pid in [("direct", None), *order]:
                    cpu = cpu_seconds(pid) if pid else 0
                    r = b.pgbench_wire(clients, mode, via, script=script)
                    if pid:
                        r["cpu_us_per_transaction"] = round(
                            (cpu_seconds(pid) - cpu) / (r["throughput_per_s"] * SECONDS) * 1e6, 1)
                    run[via] = r
                    log(f"transaction mode {clients:>2} clients {script} -M {mode:<8} {via:<19} "
                        f"{r['throughput_per_s']:>8.0f}/s cpu {r.get('cpu_us_per_transaction', '-')} us")
                runs.append(run)
            row = {"clients": clients, "script": script, "mode": mode, "repeats": runs}
            row["direct"] = {"throughput_per_s": median([r["direct"]["throughput_per_s"] for r in runs])}
            for via, _ in poolers:
                row[via] = {k: median([r[via][k] for r in runs])
                            for k in ("throughput_per_s", "cpu_us_per_transaction", "failed")}
                row[f"{via}_over_direct"] = round(median(
                    [r[via]["throughput_per_s"] / r["direct"]["throughput_per_s"] for r in runs]), 3)
            rows.append(row)
    # Rotations under 64 clients of -M prepared through the transaction pool.
    env = dict(os.environ)
    load_seconds = 20
    load = subprocess.Popen(
        ["pgbench", "-n", "-S", "-M", "prepared", "-c", "64", "-j", "2", "-T", str(load_seconds),
         "-h", b.path("main-pg"), "-p", "5432", "-U", "app", "txn"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=b.w)
    time.sleep(1)
    admin = ["--pg-admin", f"host={b.w} port={b.pg_port} user=postgres dbname=postgres"]
    r = b.bench("rotate", "--socket", b.path("main.sock"), "--target", "txn", "--clients", 0,
                "--rotations", min(ROTATIONS, 40), "--interval", "100ms",
                "--store", f"file:{b.path('txn.json')}", "--role", "app2", "--role", "app", *admin)
    out, err = load.communicate(timeout=load_seconds + 60)
    if load.returncode != 0:
        raise SystemExit(f"bench: pgbench under rotations failed:\n{out}\n{err}")
    failed = int(re.search(r"number of failed transactions: (\d+)", out).group(1))
    processed = int(re.search(r"number of transactions actually processed: (\d+)", out).group(1))
    rotation = {**r["rotations"], "load": {"transactions": processed, "failed": failed,
                                           "aborted_clients": out.count("aborted") + err.count("aborted")}}
    log(f"transaction mode under rotations: {json.dumps(r['rotations']['trigger_to_drained_ms'])}, "
        f"{processed} transactions, {failed} failed")
    return {"rows": rows, "rotation_under_64_clients": rotation}


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])


# --- the phases ---------------------------------------------------------------------------------

def memory_and_startup(b):
    """Start-up to READY=1 (five starts), RSS idle with two targets and under 64 clients."""
    startups = []
    for _ in range(5):
        p, ready, _ = b.start_daemon("two", ["one", "aws"])
        startups.append(ready * 1000)
        b.stop_daemon(p)
    p, _, _ = b.start_daemon("two", ["one", "aws"])
    time.sleep(2)  # settle: the idle figure is what a quiet daemon holds, not a start-up peak
    idle = rss_kib(p.pid)
    import threading
    samples = []
    done = threading.Event()

    def sample():
        while not done.wait(0.1):
            samples.append(rss_kib(p.pid))
    t = threading.Thread(target=sample)
    t.start()
    r = b.bench("api", "--socket", b.path("two.sock"), "--target", "one", "--clients", 64,
                "--duration", f"{SECONDS}s", "--warmup", "1s", "--query", "mix")
    done.set()
    t.join()
    out = {"startup_to_ready_ms": {"runs": [round(s, 1) for s in startups],
                                   "median": round(sorted(startups)[2], 1), "max": round(max(startups), 1)},
           "rss_idle_two_targets_kib": idle, "rss_64_clients_max_kib": max(samples),
           "rss_hwm_kib": rss_kib(p.pid, "VmHWM"), "load_64_clients": r["load"]}
    b.stop_daemon(p)
    return out


def cpu_seconds(pid):
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def hop(b, config, daemon_pid):
    """Each hop's own CPU per request is recorded too (daemon for api, PgBouncer for pgbench
    through it): on a machine where client, hop and server share the cores, that is what the
    hop takes from the others."""
    pgbouncer_pid = int(open(b.path("pgbouncer", "pgbouncer.pid")).read())
    out = []
    for clients in CLIENTS:
        row = {"clients": clients}
        for query in ("select1", "lookup"):
            for mode, where in (("direct", ["--config", config]), ("api", ["--socket", b.path("main.sock")])):
                cpu = cpu_seconds(daemon_pid)
                r = b.bench(mode, *where, "--target", "one", "--clients", clients, "--duration", f"{SECONDS}s",
                            "--warmup", "1s", "--query", query)
                row[f"{mode}_{query}"] = r["load"]
                if mode == "api":  # warm-up requests ran at about the measured rate
                    served = r["load"]["throughput_per_s"] * (SECONDS + 1)
                    r["load"]["daemon_cpu_us_per_request"] = round((cpu_seconds(daemon_pid) - cpu) / served * 1e6, 1)
                log(f"{clients:>2} clients {query:<7} {mode:<6} {r['load']['throughput_per_s']:>8.0f}/s "
                    f"p50 {r['load']['latency_us']['p50']:>7.1f} us  failed {r['load']['failed']}")
        for name, via in (("pgbench_direct", False), ("pgbench_pgbouncer", True)):
            cpu = cpu_seconds(pgbouncer_pid)
            row[name] = b.pgbench(clients, via)
            if via:
                served = row[name]["throughput_per_s"] * SECONDS
                row[name]["pgbouncer_cpu_us_per_request"] = round((cpu_seconds(pgbouncer_pid) - cpu) / served * 1e6, 1)
            log(f"{clients:>2} clients pgbench {name:<17} {row[name]['throughput_per_s']:>8.0f}/s")
        for q in ("select1", "lookup"):
            row[f"api_over_direct_{q}"] = round(
                row[f"api_{q}"]["throughput_per_s"] / row[f"direct_{q}"]["throughput_per_s"], 3)
        row["pgbouncer_over_direct"] = round(
            row["pgbench_pgbouncer"]["throughput_per_s"] / row["pgbench_direct"]["throughput_per_s"], 3)
        out.append(row)
    return out


def rotations(b, under_load):
    hook = ["--webhook", f"127.0.0.1:{b.hook_port}", "--webhook-key-file", b.path("hook.key")]
    admin = ["--pg-admin", f"host={b.w} port={b.pg_port} user=postgres dbname=postgres"]
    out = {}
    for source, target, extra in (
        ("file", "one", ["--store", f"file:{b.path('one.json')}", "--role", "app2", "--role", "app", *admin]),
        ("aws", "aws", ["--store", "aws:bench/app_aws", "--role", "app_aws2", "--role", "app_aws", *admin]),
        ("vault_dynamic", "vault", ["--store", "none"]),
    ):
        r = b.bench("rotate", "--socket", b.path("main.sock"), "--target", target, "--clients", 0,
                    "--rotations", ROTATIONS, "--interval", "50ms", *hook, *extra)
        out[source] = r["rotations"]
        log(f"rotation {source}: {json.dumps(r['rotations']['trigger_to_swapped_ms'])}")
    if under_load:
        r = b.bench("rotate", "--socket", b.path("main.sock"), "--target", "one", "--clients", 64,
                    "--query", "mix", "--rotations", ROTATIONS, "--interval", "250ms", *hook,
                    "--store", f"file:{b.path('one.json')}", "--role", "app2", "--role", "app", *admin)
        out["file_under_64_clients"] = {**r["rotations"], "load": r["load"]}
        log(f"under load: {r['load']['requests']} requests, {r['load']['failed']} failed")
    return out


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal"))

    def version(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"
    return {
        "cpu": cpu, "cpus": os.cpu_count(), "memory_gib": round(mem / 2**20, 1), "kernel": platform.release(),
        "os": version(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "rustc": version(["rustc", "--version"]), "postgres": version([f"{PGBIN}/postgres", "--version"]),
        "pgbouncer": version(["pgbouncer", "--version"]),
        "credswap": version(["git", "-C", ROOT, "describe", "--always", "--dirty"]),
        "note": "client, daemon, PostgreSQL and PgBouncer share these CPUs",
    }


def table(r):
    lines = []
    if "hop" in r:
        lines += hop_table(r)
    if "rotation" in r:
        lines += rotation_table(r)
    if "wire" in r:
        lines += wire_table(r)
    if "failover" in r:
        f = r["failover"]
        lines.append("")
        lines.append(f"failover ({len(f['rounds'])} promotions, {f['writers']} writers): primary stop to first write on the "
                     f"new primary p50 {f['stop_to_first_write_ms_p50']} ms; pg_promote p50 {f['pg_promote_ms_p50']} ms; "
                     f"{f['failed']} writes failed, {f['failed_after_promotion']} of them after the promotion")
        for i, x in enumerate(f["rounds"], 1):
            lines.append(f"  {i}: stop {x['pg_ctl_stop_ms']} ms, promote {x['pg_promote_ms']} ms, first write "
                         f"{x['stop_to_first_write_ms']} ms; {x['writes']} writes, {x['failed']} failed "
                         f"({x['failed_in_flight_at_stop']} in flight at the stop, {x['failed_after_promotion']} after the promotion)")
    if "transaction" in r:
        lines += transaction_table(r)
    if "memory" in r:
        lines += memory_table(r)
    if "abuse" in r:
        lines.append(bench_abuse.table(r["abuse"]))
    return "\n".join(lines)


def hop_table(r):
    lines = ["", "hop cost (throughput, req/s; ratio = through the hop / direct)",
             f"{'clients':>7} | {'direct S1':>9} {'api S1':>8} {'ratio':>5} | {'direct lk':>9} {'api lk':>8} "
             f"{'ratio':>5} | {'pgbench':>8} {'pgbouncer':>9} {'ratio':>5}"]
    for h in r["hop"]:
        lines.append(
            f"{h['clients']:>7} | {h['direct_select1']['throughput_per_s']:>9.0f} {h['api_select1']['throughput_per_s']:>8.0f} "
            f"{h['api_over_direct_select1']:>5.2f} | {h['direct_lookup']['throughput_per_s']:>9.0f} "
            f"{h['api_lookup']['throughput_per_s']:>8.0f} {h['api_over_direct_lookup']:>5.2f} | "
            f"{h['pgbench_direct']['throughput_per_s']:>8.0f} {h['pgbench_pgbouncer']['throughput_per_s']:>9.0f} "
            f"{h['pgbouncer_over_direct']:>5.2f}")
    lines.append("hop CPU per request (us): " + ", ".join(
        f"{h['clients']} clients: credswap {h['api_select1']['daemon_cpu_us_per_request']} (SELECT 1) / "
        f"{h['api_lookup']['daemon_cpu_us_per_request']} (lookup), PgBouncer "
        f"{h['pgbench_pgbouncer']['pgbouncer_cpu_us_per_request']}" for h in r["hop"]))
    a = r["added_latency_1_client_us"]
    lines += ["", f"added latency at 1 client (api - direct): SELECT 1 p50 {a['select1']['p50']} us, "
                  f"p99 {a['select1']['p99']} us; lookup p50 {a['lookup']['p50']} us, p99 {a['lookup']['p99']} us"]
    return lines


def rotation_table(r):
    lines = ["", "rotation (ms)      n   swapped p50   p99 |  drained p50   p99 | failures"]
    for name, x in r["rotation"].items():
        s, d = x["trigger_to_swapped_ms"] or {}, x["trigger_to_drained_ms"] or {}
        lines.append(f"{name:<22} {x['swapped']:>3} {s.get('p50', '-'):>9} {s.get('p99', '-'):>6} | "
                     f"{d.get('p50', '-'):>9} {d.get('p99', '-'):>6} | {len(x['failures'])}")
    ul = r["rotation"].get("file_under_64_clients")
    if ul:
        lines.append(f"under 64-client load: {ul['load']['requests']} requests, {ul['load']['failed']} failed "
                     f"{ul['load']['errors'] or ''}, {ul['swapped']} rotations swapped")
    return lines


def wire_table(r):
    lines = ["", "PostgreSQL wire (pgbench -S; tps, ratio to direct, pooler CPU us per transaction)",
              f"{'clients':>7} {'mode':<8} | {'direct':>7} | {'pgbouncer':>9} {'ratio':>5} {'cpu':>5} | "
              f"{'credswap':>8} {'ratio':>5} {'cpu':>5}"]
    for w in r.get("wire", []):
        lines.append(
            f"{w['clients']:>7} {w['mode']:<8} | {w['direct']['throughput_per_s']:>7} | "
            f"{w['pgbouncer']['throughput_per_s']:>9} {w['pgbouncer_over_direct']:>5.2f} "
            f"{w['pgbouncer']['cpu_us_per_transaction']:>5} | {w['credswap']['throughput_per_s']:>8} "
            f"{w['credswap_over_direct']:>5.2f} {w['credswap']['cpu_us_per_transaction']:>5}")
    for w in r.get("wire", []):
        if w["clients"] == 1:
            lines.append(f"added latency at 1 client, -M {w['mode']}: PgBouncer p50 "
                         f"{w['pgbouncer_added_latency_us']['p50']} / p99 {w['pgbouncer_added_latency_us']['p99']} us; "
                         f"credswap p50 {w['credswap_added_latency_us']['p50']} / p99 "
                         f"{w['credswap_added_latency_us']['p99']} us")
    return lines


def transaction_table(r):
    t = r["transaction"]
    lines = ["", "transaction mode, 16 server connections (pgbench; tps, ratio to direct, pooler CPU us/tx;"
                 " -S reads, -N writes; 'always' = server_reset \"always\")",
             f"{'clients':>7} {'script':<6} {'mode':<8} | {'direct':>7} | {'pgbouncer':>9} {'ratio':>5} {'cpu':>5} | "
             f"{'credswap':>8} {'ratio':>5} {'cpu':>5} | {'always':>7} {'ratio':>5} {'cpu':>5}"]

    def cols(w, via, width):
        c = w.get(via)
        if not c:
            return f"{'-':>{width}} {'-':>5} {'-':>5}"
        return (f"{c['throughput_per_s']:>{width}} {w[via + '_over_direct']:>5.2f} "
                f"{c['cpu_us_per_transaction']:>5}")
    for w in t["rows"]:
        lines.append(f"{w['clients']:>7} {w.get('script', '-S'):<6} {w['mode']:<8} | "
                     f"{w['direct']['throughput_per_s']:>7} | {cols(w, 'pgbouncer_txn', 9)} | "
                     f"{cols(w, 'credswap_txn', 8)} | {cols(w, 'credswap_txn_always', 7)}")
    u = t["rotation_under_64_clients"]
    s, d = u["trigger_to_swapped_ms"] or {}, u["trigger_to_drained_ms"] or {}
    lines.append(f"rotation under 64 clients (-M prepared): {u['swapped']} swapped; trigger to swapped p50 "
                 f"{s.get('p50', '-')} / p99 {s.get('p99', '-')} ms; to old generation drained p50 "
                 f"{d.get('p50', '-')} / p99 {d.get('p99', '-')} ms; {u['load']['transactions']} transactions, "
                 f"{u['load']['failed']} failed, {u['load']['aborted_clients']} aborted")
    return lines


def memory_table(r):
    m = r["memory"]
    return ["", f"start-up to READY=1: median {m['startup_to_ready_ms']['median']} ms "
                  f"(max {m['startup_to_ready_ms']['max']} of 5)",
              f"RSS idle, two targets: {m['rss_idle_two_targets_kib'] / 1024:.1f} MiB; "
              f"under 64 clients: {m['rss_64_clients_max_kib'] / 1024:.1f} MiB (peak sample)"]


def main():
    unknown = PHASES - set(ALL_PHASES)
    if unknown:
        sys.exit(f"BENCH_PHASES: unknown phase(s) {', '.join(sorted(unknown))}; choose from {', '.join(ALL_PHASES)}")
    started = time.monotonic()
    work = tempfile.mkdtemp(prefix="credswap-bench.")
    os.chmod(work, 0o755)
    chown_postgres(work)  # PostgreSQL puts its socket there
    b = Bench(work)
    try:
        log(f"work dir {work}")
        b.pki()
        b.postgres()
        b.pgbouncer()
        b.moto()
        b.bao()
        results = {"machine": machine(), "method": {
            "seconds_per_run": SECONDS, "warmup_s": 1, "pool_max_size": POOL_SIZE, "rotations": ROTATIONS,
            "profile": "release", "pgbench": "-S -n -M simple, -j min(clients,2)"}}
        if "memory" in PHASES:
            log("memory and start-up")
            results["memory"] = memory_and_startup(b)
        if PHASES & {"hop", "wire", "transaction", "rotation"}:
            p, _, config = b.start_daemon("main", ["one", "aws", "vault"])
            if "hop" in PHASES:
                log("hop cost")
                results["hop"] = hop(b, config, p.pid)
                one = results["hop"][0]
                results["added_latency_1_client_us"] = {q: {
                    k: round(one[f"api_{q}"]["latency_us"][k] - one[f"direct_{q}"]["latency_us"][k], 1)
                    for k in ("p50", "p99")} for q in ("select1", "lookup")}
            if "wire" in PHASES:
                log("PostgreSQL front end vs PgBouncer (pgbench)")
                results["wire"] = wire(b, p.pid)
            if "transaction" in PHASES:
                log("transaction mode vs PgBouncer (pgbench)")
                results["transaction"] = transaction(b, p.pid)
            if "rotation" in PHASES:
                log("rotations")
                results["rotation"] = rotations(b, under_load=True)
            b.stop_daemon(p)
        if "abuse" in PHASES:
            log("the front door under abuse")
            results["abuse"] = bench_abuse.run(b)
        if "failover" in PHASES:
            log("failover under 64 writers")
            results["failover"] = bench_failover.run(b, sys.modules[__name__])
        results["wall_s"] = round(time.monotonic() - started, 1)
    finally:
        b.stop_all()
    os.makedirs(os.path.join(ROOT, "target", "bench"), exist_ok=True)
    with open(os.path.join(ROOT, "target", "bench", "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(table(results))
    print(f"\nwall {results['wall_s']} s; results in target/bench/results.json")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
