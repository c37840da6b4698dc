// node-pg against credswap's PostgreSQL front end: a Pool on the Unix socket with no password.
// Run by tests/drivers.rs with PGHOST (the socket directory) and PGDATABASE (the target).
// Prints one line per check; exits non-zero with the reason on the first failure.
'use strict';
const assert = require('node:assert/strict');
const { pipeline } = require('node:stream/promises');
const { Readable, Writable } = require('node:stream');
const { Pool, Client } = require('pg');
const { from: copyFrom, to: copyTo } = require('pg-copy-streams');

const config = { host: process.env.PGHOST, database: process.env.PGDATABASE, user: 'node' };

async function main() {
  const pool = new Pool({ ...config, max: 4 });
  pool.on('error', () => {});

  const { rows } = await pool.query('SELECT $1::int + 1 AS n, current_user AS u', [41]);
  assert.equal(rows[0].n, 42);
  console.log('query ok, user', rows[0].u);

  // Named prepared statement, executed twice.
  for (const x of [1, 2]) {
    const r = await pool.query({ name: 'twice', text: 'SELECT $1::int * 2 AS d', values: [x] });
    assert.equal(r.rows[0].d, x * 2);
  }
  console.log('prepared ok');

  const c = await pool.connect();
  try {
    await c.query('CREATE TEMP TABLE t (id int PRIMARY KEY, v text)');
    await c.query('BEGIN');
    await c.query("INSERT INTO t VALUES (1, 'a')");
    await assert.rejects(c.query("INSERT INTO t VALUES (1, 'b')"), (e) => e.code === '23505');
    await assert.rejects(c.query('SELECT 1'), (e) => e.code === '25P02');
    await c.query('ROLLBACK');
    assert.equal((await c.query('SELECT count(*)::int AS n FROM t')).rows[0].n, 0);
    console.log('error inside a transaction ok');

    // COPY in and out.
    const lines = Array.from({ length: 1000 }, (_, i) => `${i}\tv${i}\n`);
    await pipeline(Readable.from(lines), c.query(copyFrom('COPY t FROM STDIN')));
    let out = '';
    await pipeline(
      c.query(copyTo('COPY t TO STDOUT')),
      new Writable({ write(chunk, _e, done) { out += chunk; done(); } }),
    );
    assert.equal(out.split('\n').filter(Boolean).length, 1000);
    console.log('copy in and out ok');

    // A 100 MB value both ways.
    const big = 'x'.repeat(100 * 1024 * 1024);
    const len = await c.query('SELECT length($1::text) AS n', [big]);
    assert.equal(len.rows[0].n, big.length);
    const back = await c.query('SELECT repeat($1, $2) AS v', ['x', big.length]);
    assert.equal(back.rows[0].v, big);
    console.log('100 MB value ok');
  } finally {
    c.release();
  }

  // LISTEN/NOTIFY between two sessions.
  const listener = new Client(config);
  await listener.connect();
  await listener.query('LISTEN credswap_test');
  const got = new Promise((resolve) => listener.once('notification', resolve));
  await pool.query("NOTIFY credswap_test, 'hello'");
  const n = await Promise.race([got, new Promise((_, no) => setTimeout(() => no(new Error('no notification in 10 s')), 10000))]);
  assert.equal(n.payload, 'hello');
  await listener.end();
  console.log('listen/notify ok');

  // Cancel a running statement (node-pg sends the CancelRequest to the same socket).
  const sleeper = new Client(config);
  await sleeper.connect();
  const started = Date.now();
  const running = sleeper.query('SELECT pg_sleep(30)');
  await new Promise((r) => setTimeout(r, 300));
  const canceller = new Client(config);
  // Client#cancel sends a CancelRequest with the session's BackendKeyData (credswap's own).
  canceller.cancel(sleeper, sleeper.activeQuery || sleeper._activeQuery);
  await assert.rejects(running, (e) => e.code === '57014');
  assert.ok(Date.now() - started < 10000, 'the cancel arrived');
  await sleeper.end();
  console.log('cancel ok');

  await pool.end();
}

main().then(() => console.log('all ok'), (e) => { console.error('FAILED:', e); process.exit(1); });
