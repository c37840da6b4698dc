"""psycopg 3's own test suite through credswap's PostgreSQL front end (run by dev/psycopg-suite).

Runs the suite of a psycopg checkout three times against one TLS PostgreSQL cluster: straight
to the server (TLS verify-full, the role `app`), through credswap in session mode, and through
credswap in transaction mode (both on the Unix socket, no password). Each run writes a JUnit
report; the script then lists every test that passed straight to the server and did not pass
through credswap, so each can be explained (docs/postgres.md) or fixed.

    dev/psycopg-suite PSYCOPG_CHECKOUT [TAG] [-- PYTEST_ARGS...]

TAG (default: the psycopg version in .venv) picks the tests of that release from the checkout's
git history; psycopg of the same version is installed in target/psycopg-suite/venv.
"""
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the same throwaway cluster and daemon set-up)

ROOT = bench.ROOT
OUT = os.path.join(ROOT, "target", "psycopg-suite")


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def venv(version):
    path = os.path.join(OUT, f"venv-{version}")
    python = os.path.join(path, "bin", "python")
    if not os.path.exists(python):
        run([sys.executable, "-m", "venv", path])
        run([python, "-m", "pip", "install", "-q", f"psycopg[binary]=={version}", "pytest",
             "pytest-randomly", "anyio", "pproxy"])
    return python


def tests_of(checkout, tag, into):
    archive = subprocess.run(["git", "-C", checkout, "archive", tag, "tests", "pyproject.toml"], check=True,
                             capture_output=True).stdout
    run(["tar", "-x", "-C", into], input=archive)
    return os.path.join(into, "tests")


def outcomes(report):
    """test id -> passed | failed | skipped, from a JUnit report."""
    result = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        if kinds & {"failure", "error"}:
            result[name] = "failed"
        elif "skipped" in kinds:
            result[name] = "skipped"
        else:
            result[name] = "passed"
    return result


def main():
    args = sys.argv[1:]
    extra = []
    if "--" in args:
        extra = args[args.index("--") + 1:]
        args = args[:args.index("--")]
    if not args:
        sys.exit(__doc__)
    checkout = args[0]
    tag = args[1] if len(args) > 1 else subprocess.run(
        [os.path.join(bench.VENV, "python"), "-c", "import psycopg; print(psycopg.__version__)"],
        check=True, capture_output=True, text=True).stdout.strip()
    os.makedirs(OUT, exist_ok=True)
    python = venv(tag)
    work = tempfile.mkdtemp(prefix="credswap-psycopg.")
    os.chmod(work, 0o755)
    bench.chown_postgres(work)
    b = bench.Bench(work)
    summary = {"psycopg": tag}
    try:
        b.pki()
        b.postgres()
        b.aws_env = dict(os.environ)  # no AWS store here
        # The suite creates tables, types and functions in the database it is given.
        b.psql("GRANT CREATE ON SCHEMA public TO app, app2")
        tests = tests_of(checkout, tag, work)
        p, _, _ = b.start_daemon("main", [])
        dsns = {
            "direct": f"host=localhost port={b.pg_port} dbname=postgres user=app password=bench-app-pw "
                      f"sslmode=verify-full sslrootcert={b.path('ca.crt')}",
            "session": f"host={b.path('main-pg')} dbname=wire user=app",
            "transaction": f"host={b.path('main-pg')} dbname=txn user=app",
        }
        results = {}
        for name, dsn in dsns.items():
            report = os.path.join(OUT, f"{name}.xml")
            env = dict(os.environ, PSYCOPG_TEST_DSN=dsn)
            env.pop("PGPASSWORD", None)
            bench.log(f"psycopg {tag} suite: {name}")
            done = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:randomly",
                                   "-m", "not mypy", f"--junitxml={report}", *extra, tests],
                                  cwd=work, env=env, capture_output=True, text=True, timeout=1200)
            with open(os.path.join(OUT, f"{name}.log"), "w") as f:
                f.write(done.stdout + done.stderr)
            results[name] = outcomes(report)
            counts = {k: sum(1 for v in results[name].values() if v == k)
                      for k in ("passed", "failed", "skipped")}
            summary[name] = counts
            bench.log(f"  {counts}")
        b.stop_daemon(p)
        for name in ("session", "transaction"):
            lost = sorted(t for t, v in results["direct"].items()
                          if v == "passed" and results[name].get(t) != "passed")
            summary[f"{name}_differs"] = lost
            print(f"\n{name} mode: {len(lost)} tests pass straight to the server and not through credswap")
            for t in lost:
                print(f"  {t}")
    finally:
        b.stop_all()
    with open(os.path.join(OUT, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"\nreports, logs and summary.json in {OUT}")


if __name__ == "__main__":
    main()
