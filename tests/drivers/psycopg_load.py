"""psycopg 3 in transaction mode under rotations (tests/postgres_transaction.rs): one
connection with automatic preparation of every statement (prepare_threshold=0) runs
transactions back to back until its stdin closes, then prints one JSON line {committed, failed,
errors}. The connection lives through every rotation: any error at all is a failure.
"""
import json
import os
import sys
import threading

import psycopg

stop = threading.Event()


def watch_stdin():
    sys.stdin.read()
    stop.set()


def main():
    threading.Thread(target=watch_stdin, daemon=True).start()
    counts = {"committed": 0, "failed": 0, "errors": []}
    dsn = f"host={os.environ['PGHOST']} dbname={os.environ['PGDATABASE']} user=psycopg"
    with psycopg.connect(dsn) as conn:
        conn.prepare_threshold = 0
        while not stop.is_set():
            try:
                with conn.transaction():
                    conn.execute("INSERT INTO public.ledger VALUES (%s)", (4,))
                    conn.execute("SELECT count(*) FROM public.ledger WHERE x = %s", (4,)).fetchone()
                counts["committed"] += 1
            except psycopg.Error as e:
                counts["failed"] += 1
                if len(counts["errors"]) < 5:
                    counts["errors"].append(f"{e.sqlstate} {e}")
                if conn.closed:
                    break
    print(json.dumps(counts))
    sys.exit(1 if counts["failed"] else 0)


if __name__ == "__main__":
    main()
