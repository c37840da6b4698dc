//! Protocol-level prepared statements in transaction mode. A client's named statement is mapped
//! to a credswap statement keyed by its text and parameter types (shared by every client that
//! prepares the same thing), named `credswap_<id>` on the servers. Each server connection
//! remembers which statements it has prepared, at most `max_prepared_statements`, closing the
//! least recently used; a statement missing on the connection a client lands on is prepared
//! there first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::{BufMut, Bytes, BytesMut};

use super::params::Values;
use super::scan::{self, Scan};
use crate::postgres::wire;

/// A statement as the servers know it.
#[derive(Debug)]
pub struct Statement {
    pub id: u64,
    /// The `Parse` message with credswap's name.
    pub parse: Bytes,
    /// What its text does to the session.
    pub scan: Scan,
}

impl Statement {
    /// Its name on the servers, read from its `Parse` (a `Bind` for it is made at every
    /// execution, so the name is not formatted each time).
    pub fn name(&self) -> &[u8] {
        let named = &self.parse[5..];
        let end = named.iter().position(|b| *b == 0).unwrap_or(named.len());
        &named[..end]
    }

    /// What it does, read with the `standard_conforming_strings` of the session it runs in
    /// (scanned with it on when first seen).
    pub fn scan_for(&self, values: &Values) -> Scan {
        scan_in(self.scan, &self.parse, values)
    }
}

/// The statement text of a `Parse` message (what follows its name).
pub fn parse_text(parse: &[u8]) -> &[u8] {
    let mut fields = parse.get(5..).unwrap_or_default().splitn(3, |b| *b == 0);
    fields.next();
    fields.next().unwrap_or_default()
}

/// What the text of `parse` does in a session with `values`: `scanned`, read with
/// `standard_conforming_strings` on when the text was first seen, unless the session has it off.
pub fn scan_in(scanned: Scan, parse: &[u8], values: &Values) -> Scan {
    if values.standard_strings() {
        scanned
    } else {
        scan::scan_with(parse_text(parse), false)
    }
}

/// A statement's name on the servers: its number and a keyed hash of it, so that no client
/// can name another's statement on a connection before it exists there (the key is made
/// from the operating system's randomness at start). What is on a connection already a client
/// of that connection can list (`pg_prepared_statements`): the reset's check
/// (docs/postgres.md) is what catches a statement dropped or replaced there.
fn name(id: u64) -> String {
    use std::hash::BuildHasher;
    static KEY: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    let mac = KEY.get_or_init(Default::default).hash_one(id);
    format!("credswap_{id}_{mac:016x}")
}

/// Every live statement, by text and parameter types; an entry lives while a client maps a
/// name to it.
#[derive(Default)]
pub struct Statements {
    by_text: Mutex<HashMap<Bytes, Weak<Statement>>>,
    next_id: AtomicU64,
    sweep_at: AtomicU64,
}

impl Statements {
    /// The statement for a `Parse` body after its name (text, then parameter types).
    pub fn get(&self, body: &[u8]) -> Arc<Statement> {
        let mut map = self.by_text.lock().expect("never poisoned");
        if let Some(s) = map.get(body).and_then(Weak::upgrade) {
            return s;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let text = body.split(|b| *b == 0).next().unwrap_or_default();
        let statement = Arc::new(Statement {
            id,
            parse: parse_message(&name(id), body),
            scan: scan::scan(text),
        });
        // Entries of statements no client maps any more are swept when the map has doubled.
        if map.len() as u64 >= self.sweep_at.load(Ordering::Relaxed).max(1024) {
            map.retain(|_, s| s.strong_count() > 0);
            self.sweep_at.store(2 * map.len() as u64, Ordering::Relaxed);
        }
        map.insert(Bytes::copy_from_slice(body), Arc::downgrade(&statement));
        statement
    }
}

/// A `Parse` message naming `name`, with `body` (text and parameter types) after it.
fn parse_message(name: &str, body: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(6 + name.len() + body.len());
    wire::message(&mut buf, b'P', |b| {
        b.put_slice(name.as_bytes());
        b.put_u8(0);
        b.put_slice(body);
    });
    buf.freeze()
}

/// A `Close` of a statement by its server name.
pub fn close_message(buf: &mut BytesMut, id: u64) {
    let name = name(id);
    wire::message(buf, b'C', |b| {
        b.put_u8(b'S');
        b.put_slice(name.as_bytes());
        b.put_u8(0);
    });
}

/// The statements one server connection has prepared, least recently used first out.
#[derive(Debug, Default)]
pub struct Prepared {
    used: HashMap<u64, u64>,
    clock: u64,
}

impl Prepared {
    /// Whether `id` is prepared here (and marks it used).
    pub fn touch(&mut self, id: u64) -> bool {
        self.clock += 1;
        match self.used.get_mut(&id) {
            Some(t) => {
                *t = self.clock;
                true
            }
            None => false,
        }
    }

    /// Records `id` as prepared; returns the statement to close first when `max` are prepared.
    pub fn insert(&mut self, id: u64, max: usize) -> Option<u64> {
        self.clock += 1;
        let evict = if self.used.len() >= max {
            let oldest = self.used.iter().min_by_key(|(_, t)| **t).map(|(id, _)| *id);
            if let Some(old) = oldest {
                self.used.remove(&old);
            }
            oldest
        } else {
            None
        };
        self.used.insert(id, self.clock);
        evict
    }

    pub fn remove(&mut self, id: u64) {
        self.used.remove(&id);
    }

    /// Nothing is prepared any more (`DEALLOCATE ALL`).
    pub fn clear(&mut self) {
        self.used.clear();
    }

    /// How many are prepared.
    pub fn len(&self) -> usize {
        self.used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_shared_by_text_and_types() {
        let all = Statements::default();
        let a = all.get(b"SELECT $1\0\0\x01\0\0\0\x17");
        let b = all.get(b"SELECT $1\0\0\x01\0\0\0\x17");
        let c = all.get(b"SELECT $1\0\0\x01\0\0\0\x19");
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id, "other parameter types");
        assert_eq!(&a.parse[..1], b"P");
        assert_eq!(a.name(), name(a.id).as_bytes());
        assert!(
            a.name()
                .starts_with(format!("credswap_{}_", a.id).as_bytes())
                && a.name().len() > 24,
            "a number and a keyed hash"
        );
        assert_eq!(name(a.id), name(a.id), "the same name every time");
        assert!(a.parse.ends_with(b"SELECT $1\0\0\x01\0\0\0\x17"));
        assert_eq!(parse_text(&a.parse), b"SELECT $1");
        let id = a.id;
        drop((a, b));
        assert_ne!(
            all.get(b"SELECT $1\0\0\x01\0\0\0\x17").id,
            id,
            "forgotten once unused"
        );
    }

    #[test]
    fn least_recently_used_is_closed_first() {
        let mut p = Prepared::default();
        assert_eq!(p.insert(1, 2), None);
        assert_eq!(p.insert(2, 2), None);
        assert!(p.touch(1));
        assert_eq!(p.insert(3, 2), Some(2));
        assert!(!p.touch(2));
        assert_eq!(p.used.len(), 2);
    }
}
