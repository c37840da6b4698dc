"""psycopg 3 against credswap's PostgreSQL front end, on the Unix socket with no password.

Run by tests/drivers.rs with PGHOST (the socket directory) and PGDATABASE (the target). Prints a
line per check; raises (exit 1) on the first failure.
"""
import os
import threading
import time

import psycopg
from psycopg import errors

DSN = f"host={os.environ['PGHOST']} dbname={os.environ['PGDATABASE']} user=psycopg"


def main():
    with psycopg.connect(DSN, autocommit=True) as conn:
        row = conn.execute("SELECT %s::int + 1, current_user", (41,)).fetchone()
        assert row[0] == 42, row
        print("query ok, user", row[1])

        # Automatic server-side preparation (prepare_threshold): the same query five times.
        conn.prepare_threshold = 2
        for i in range(5):
            assert conn.execute("SELECT %s::int * 3", (i,)).fetchone()[0] == i * 3
        print("prepared ok")

        conn.execute("CREATE TEMP TABLE t (id int PRIMARY KEY, v text)")
        try:
            with conn.transaction():
                conn.execute("INSERT INTO t VALUES (1, 'a')")
                conn.execute("INSERT INTO t VALUES (1, 'b')")
            raise AssertionError("the duplicate was accepted")
        except errors.UniqueViolation:
            pass
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 0
        print("error inside a transaction ok")

        with conn.cursor() as cur:
            with cur.copy("COPY t FROM STDIN") as copy:
                for i in range(1000):
                    copy.write_row((i, f"v{i}"))
            out = bytearray()
            with cur.copy("COPY t TO STDOUT") as copy:
                for chunk in copy:
                    out += chunk
        assert out.count(b"\n") == 1000
        print("copy in and out ok")

        big = "x" * (100 * 1024 * 1024)
        assert conn.execute("SELECT length(%s::text)", (big,)).fetchone()[0] == len(big)
        back = conn.execute("SELECT repeat('x', %s)", (len(big),)).fetchone()[0]
        assert back == big
        print("100 MB value ok")

        # LISTEN/NOTIFY between two sessions.
        with psycopg.connect(DSN, autocommit=True) as listener:
            listener.execute("LISTEN credswap_test")
            conn.execute("NOTIFY credswap_test, 'hello'")
            gen = listener.notifies(timeout=10, stop_after=1)
            got = [n.payload for n in gen]
            assert got == ["hello"], got
        print("listen/notify ok")

        # Cancel a running statement from another thread.
        def cancel_soon():
            time.sleep(0.3)
            conn.cancel_safe()

        threading.Thread(target=cancel_soon).start()
        started = time.monotonic()
        try:
            conn.execute("SELECT pg_sleep(30)")
            raise AssertionError("not cancelled")
        except errors.QueryCanceled:
            pass
        assert time.monotonic() - started < 10
        print("cancel ok")
    print("all ok")


if __name__ == "__main__":
    main()
