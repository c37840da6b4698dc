"""Profiles the PostgreSQL front end's hot path: the release daemon under callgrind (instruction
counts: repeatable whatever else the machine runs) while pgbench -S -M simple runs through its
socket. Uses dev/bench.py's setup (a TLS PostgreSQL with pgbench's tables, the bench
configuration). Run after `cargo build --release --locked --bins`:

    .venv/bin/python dev/profile_wire.py [CLIENTS] [SECONDS]
                                         [wire|txn|txn-extended|txn-always|txn-writes|api]
                                                            default 16, 20 s, wire

`txn` profiles transaction mode (the bench's "txn" target, 16 server connections), with
pgbench -M simple, or -M extended for `txn-extended`; `txn-always` the "txn_always" target
(server_reset = "always": a reset after every transaction); `txn-writes` pgbench -N (writes:
a reset after every transaction under "auto" too). `api` profiles the HTTP API instead:
credswap-bench's `SELECT 1` requests on the API socket.

A warm-up run first opens the server connections (kept between clients afterwards), then
collection starts: the profile is the steady state. Prints pgbench's transaction count, the
daemon's instructions per transaction and callgrind_annotate's top functions; the raw profile is
left in target/profile/callgrind.out.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def main():
    clients = int(sys.argv[1]) if len(sys.argv) > 1 else 16
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    mode = sys.argv[3] if len(sys.argv) > 3 else "wire"
    out_dir = os.path.join(bench.ROOT, "target", "profile")
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, "callgrind.out")
    work = tempfile.mkdtemp(prefix="credswap-profile.")
    os.chmod(work, 0o755)
    bench.chown_postgres(work)
    b = bench.Bench(work)
    try:
        b.pki()
        b.postgres()
        config = b.config("main", ["one"])
        env = dict(os.environ, RUST_LOG="warn", GLIBC_TUNABLES="glibc.malloc.mmap_threshold=131072")
        daemon = b.spawn(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                          bench.DAEMON, "run",
                          "--config", config], "daemon.log", env=env)
        pg_env = dict(os.environ, PGPASSWORD="unused")
        bench.wait_for("the daemon under callgrind", lambda: subprocess.run(
            ["psql", "-X", "-h", b.path("main-pg"), "-U", "app", "-d", "wire", "-c", "SELECT 1"],
            capture_output=True, env=pg_env).returncode == 0, timeout=120)
        def pgbench(duration):
            if mode == "api":
                return subprocess.run([bench.BENCH, "api", "--socket", b.path("main.sock"), "--target", "one",
                                       "--clients", str(clients), "--duration", f"{duration}s", "--warmup", "0s",
                                       "--query", "select1"], capture_output=True, text=True, check=True).stdout
            query_mode = "extended" if mode == "txn-extended" else "simple"
            db = {"txn-always": "txn_always"}.get(mode, "txn" if mode.startswith("txn") else "wire")
            script = "-N" if mode == "txn-writes" else "-S"
            return subprocess.run(["pgbench", "-n", script, "-M", query_mode, "-c", str(clients), "-j", "2", "-T",
                                   str(duration), "-h", b.path("main-pg"), "-U", "app", db],
                                  capture_output=True, text=True, env=pg_env, check=True).stdout
        # A warm-up run opens (and leaves behind, kept) the server connections; collection then
        # starts, so the profile is the steady state: forwarding, not logins.
        pgbench(5)
        subprocess.run(["callgrind_control", "--instr=on", str(daemon.pid)], check=True, capture_output=True)
        run = pgbench(seconds)
        if mode == "api":
            load = json.loads(run)["load"]
            transactions = load["requests"]
            if load.get("failed"):
                print("failed requests:", load.get("errors"))
        else:
            transactions = int(re.search(r"number of transactions actually processed: (\d+)", run).group(1))
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=120)
        annotate = subprocess.run(["callgrind_annotate", "--inclusive=no", out], capture_output=True,
                                  text=True).stdout
        total = int(re.search(r"([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", annotate).group(1).replace(",", ""))
        print(f"{mode}, {clients} clients, {seconds} s under callgrind: {transactions} transactions; "
              f"{total / max(transactions, 1):,.0f} daemon instructions per transaction")
        print("\n".join(annotate.splitlines()[:60]))
    finally:
        b.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
