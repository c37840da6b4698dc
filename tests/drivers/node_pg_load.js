// node-pg under rotations (tests/postgres.rs, rotations_under_load): a Pool of 4 on credswap's
// socket runs transactions back to back in 4 loops until its stdin closes, then prints one
// JSON line {committed, ended, failed, errors}. A session ended by a rotation (57P01 at an
// idle point) is dropped by the pool and the transaction retried on a new one: that is what an
// application's pool does, and it is counted as `ended`, not failed. Any other error fails.
'use strict';
const { Pool } = require('pg');

const pool = new Pool({ host: process.env.PGHOST, database: process.env.PGDATABASE, user: 'node', max: 4 });
pool.on('error', () => {}); // an idle client ended by a rotation: the pool drops it

let stop = false;
process.stdin.on('data', () => {});
process.stdin.on('end', () => { stop = true; });
process.stdin.resume();

const listening = new WeakSet();
const counts = { committed: 0, ended: 0, failed: 0, errors: [] };

async function loop() {
  while (!stop) {
    const client = await pool.connect();
    // A checked-out client ended between two queries emits 'error' (node-pg's documented
    // behaviour: listen for it); the next query then fails and the client is discarded.
    if (!listening.has(client)) {
      client.on('error', () => {});
      listening.add(client);
    }
    let began = false;
    try {
      await client.query('BEGIN');
      began = true;
      await client.query('INSERT INTO public.ledger VALUES (2)');
      await client.query('COMMIT');
      counts.committed += 1;
      client.release();
    } catch (e) {
      client.release(true);
      // Before BEGIN was answered the session may have been ended at its idle point: the
      // 57P01 itself, or the closed socket the next write meets.
      const gone = e.code === '57P01' || e.code === 'EPIPE' || e.code === 'ECONNRESET' ||
        /terminated|ended/i.test(e.message);
      if (!began && gone) {
        counts.ended += 1;
      } else {
        counts.failed += 1;
        if (counts.errors.length < 5) counts.errors.push(`${began ? 'in a transaction' : 'at BEGIN'}: ${e.code || ''} ${e.message}`);
      }
    }
  }
}

Promise.all([loop(), loop(), loop(), loop()])
  .then(() => pool.end())
  .then(() => { console.log(JSON.stringify(counts)); process.exit(counts.failed === 0 ? 0 : 1); })
  .catch((e) => { console.log(JSON.stringify({ ...counts, fatal: String(e) })); process.exit(1); });
