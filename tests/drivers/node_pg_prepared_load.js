// node-pg in transaction mode under rotations (tests/postgres_transaction.rs): a Pool of 4 on
// credswap's socket runs transactions of named prepared statements back to back in 4 loops
// until its stdin closes, then prints one JSON line {committed, failed, errors}. The pool's
// connections live through every rotation: any error at all is a failure.
'use strict';
const { Pool } = require('pg');

const pool = new Pool({ host: process.env.PGHOST, database: process.env.PGDATABASE, user: 'node', max: 4 });
const counts = { committed: 0, failed: 0, errors: [] };
pool.on('error', (e) => { counts.failed += 1; counts.errors.push(`idle client: ${e.message}`); });

let stop = false;
process.stdin.on('data', () => {});
process.stdin.on('end', () => { stop = true; });
process.stdin.resume();

const insert = { name: 'ledger_insert', text: 'INSERT INTO public.ledger VALUES ($1)', values: [3] };
const count = { name: 'ledger_count', text: 'SELECT count(*)::int AS n FROM public.ledger WHERE x = $1', values: [3] };

async function loop() {
  while (!stop) {
    const client = await pool.connect();
    try {
      await client.query('BEGIN');
      const before = (await client.query(count)).rows[0].n;
      await client.query(insert);
      const after = (await client.query(count)).rows[0].n;
      if (after < before + 1) throw new Error(`the insert is not visible in its transaction: ${before} -> ${after}`);
      await client.query('COMMIT');
      counts.committed += 1;
      client.release();
    } catch (e) {
      client.release(true);
      counts.failed += 1;
      if (counts.errors.length < 5) counts.errors.push(`${e.code || ''} ${e.message}`);
    }
  }
}

Promise.all([loop(), loop(), loop(), loop()])
  .then(() => pool.end())
  .then(() => { console.log(JSON.stringify(counts)); process.exit(counts.failed ? 1 : 0); })
  .catch((e) => { console.log(JSON.stringify({ ...counts, fatal: e.message })); process.exit(1); });
