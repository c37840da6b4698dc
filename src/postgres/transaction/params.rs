//! Session parameters that follow a client from one server connection to the next: those
//! PostgreSQL reports with `ParameterStatus` and a client may set. credswap learns a client's
//! values from its startup packet and from every `ParameterStatus` its transactions produce, and
//! brings each server connection the client lands on to the same values (`SET`) before the
//! client's first message. Every other parameter a client sets with a session-level `SET` lasts
//! until its transaction ends: the connection is reset before it serves anyone else.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};

/// Reported parameters a client may set, as PostgreSQL spells them (matched without case).
pub const TRACKED: [&str; 7] = [
    "application_name",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "standard_conforming_strings",
    "default_transaction_read_only",
];

/// Whether `name` follows the client (a reported parameter it may set).
pub fn is_tracked(name: &[u8]) -> bool {
    tracked_name(name).is_some()
}

/// PostgreSQL's spelling of a tracked parameter.
pub fn tracked_name(name: &[u8]) -> Option<&'static str> {
    TRACKED
        .iter()
        .find(|t| t.as_bytes().eq_ignore_ascii_case(name))
        .copied()
}

/// Values of reported parameters, as a server connection has them or a client should see them:
/// the tracked ones by their place in [`TRACKED`] (compared at every checkout), the others in
/// arrival order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Values {
    /// Shared, so that a connection's values and its login's, copied from one another, are
    /// told equal by address at every checkout before their bytes are compared.
    tracked: [Option<Arc<str>>; 7],
    others: Vec<(String, String)>,
}

impl Values {
    /// From the `ParameterStatus` messages a server sent at login.
    pub fn from_status(status: &[u8]) -> Values {
        let mut values = Values::default();
        let mut rest = status;
        while rest.len() >= 5 {
            let len = u32::from_be_bytes(rest[1..5].try_into().expect("four bytes")) as usize;
            let (frame, next) = rest.split_at((len + 1).min(rest.len()));
            rest = next;
            if frame[0] == b'S' {
                values.update(&frame[5..]);
            }
        }
        values
    }

    /// Applies one `ParameterStatus` body (name and value, each NUL-terminated).
    pub fn update(&mut self, body: &[u8]) {
        let mut fields = body.split(|b| *b == 0);
        let (Some(name), Some(value)) = (fields.next(), fields.next()) else {
            return;
        };
        let (Ok(name), Ok(value)) = (std::str::from_utf8(name), std::str::from_utf8(value)) else {
            return;
        };
        self.set(name, value);
    }

    pub fn set(&mut self, name: &str, value: &str) {
        if let Some(i) = position(name.as_bytes()) {
            if self.tracked[i].as_deref() != Some(value) {
                self.tracked[i] = Some(value.into());
            }
            return;
        }
        match self.others.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) if v == value => {}
            Some((_, v)) => *v = value.to_string(),
            None => self.others.push((name.to_string(), value.to_string())),
        }
    }

    /// Whether the session reads string literals with `standard_conforming_strings` on (the
    /// default, and what it is unless reported off).
    pub fn standard_strings(&self) -> bool {
        self.tracked[STANDARD_STRINGS].as_deref() != Some("off")
    }

    /// The `SET` statements that bring a connection just reset to the `login` values back to
    /// this client's own values (those it set, `owned`), and which parameters they set: sent in
    /// the reset's round trip, so that the client's next transaction, or another client's with
    /// the same values (one application's clients), finds the connection ready.
    pub fn reapply(&self, login: &Values, owned: &Owned) -> (String, Owned) {
        let (sql, applied) = self.sets(login, login, owned);
        (sql.unwrap_or_default(), applied)
    }

    /// After a reset that re-applied `client`'s values (`applied`): the connection has them,
    /// and every other reported value it has now (as RESET ALL left it, reported or unchanged)
    /// is its login's.
    pub fn settle_reset(&mut self, login: &mut Values, client: &Values, applied: Owned) {
        for i in 0..TRACKED.len() {
            if applied.0 & (1 << i) != 0 {
                self.tracked[i].clone_from(&client.tracked[i]);
            } else {
                login.tracked[i].clone_from(&self.tracked[i]);
            }
        }
        if login.others != self.others {
            login.others.clone_from(&self.others);
        }
    }

    /// Tells the client (`ParameterStatus` to `out`) every tracked value it has seen that
    /// differs from the connection's `server` now, and takes the connection's: after a change
    /// that was not the client's to carry (module doc), its next connection has another.
    pub fn tell_differences(&mut self, server: &Values, out: &mut BytesMut) {
        for ((mine, theirs), name) in self.tracked.iter_mut().zip(&server.tracked).zip(TRACKED) {
            if let (Some(a), Some(b)) = (&*mine, theirs) {
                if !Arc::ptr_eq(a, b) && a != b {
                    write_status(out, name, b);
                    *mine = Some(b.clone());
                }
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        match position(name.as_bytes()) {
            Some(i) => self.tracked[i].as_deref(),
            None => self
                .others
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str()),
        }
    }

    /// `ParameterStatus` messages for every value (the client's greeting).
    pub fn write_status(&self, buf: &mut BytesMut) {
        let tracked = TRACKED
            .iter()
            .zip(&self.tracked)
            .filter_map(|(n, v)| Some((*n, v.as_deref()?)));
        let others = self.others.iter().map(|(n, v)| (n.as_str(), v.as_str()));
        for (name, value) in tracked.chain(others) {
            write_status(buf, name, value);
        }
    }

    /// The `SET` statements that bring a server connection (now at `server`, logged in with
    /// `login`) to what this client should see: its own values for the tracked parameters it
    /// set (`owned`), the login's for the others (so nothing another client set shows, and the
    /// generation's `application_name` stays); `None` when they agree already.
    pub fn sync_from(&self, server: &Values, login: &Values, owned: &Owned) -> Option<String> {
        self.sets(server, login, owned).0
    }

    /// [`Values::sync_from`]'s statements, and which parameters they set.
    fn sets(&self, server: &Values, login: &Values, owned: &Owned) -> (Option<String>, Owned) {
        let mut sql: Option<String> = None;
        let mut set = Owned::default();
        for (i, name) in TRACKED.iter().enumerate() {
            let want = if owned.0 & (1 << i) != 0 {
                &self.tracked[i]
            } else {
                &login.tracked[i]
            };
            if let Some(want) = want {
                let same = server.tracked[i]
                    .as_ref()
                    .is_some_and(|has| Arc::ptr_eq(has, want) || has == want);
                if !same {
                    let sql = sql.get_or_insert_with(String::new);
                    sql.push_str(&format!("SET {name} TO {};", literal(want)));
                    set.0 |= 1 << i;
                }
            }
        }
        (sql, set)
    }
}

/// A `ParameterStatus` message.
fn write_status(buf: &mut BytesMut, name: &str, value: &str) {
    let len = 4 + name.len() + 1 + value.len() + 1;
    buf.put_u8(b'S');
    buf.put_u32(len as u32);
    buf.put_slice(name.as_bytes());
    buf.put_u8(0);
    buf.put_slice(value.as_bytes());
    buf.put_u8(0);
}

/// The place of `standard_conforming_strings` in [`TRACKED`].
const STANDARD_STRINGS: usize = 5;

/// The place of a tracked parameter in [`TRACKED`].
fn position(name: &[u8]) -> Option<usize> {
    TRACKED
        .iter()
        .position(|t| t.as_bytes().eq_ignore_ascii_case(name))
}

/// The tracked parameters a client has set (at startup, or with `SET` in a transaction).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owned(u8);

impl Owned {
    /// Marks `name` (if tracked) as the client's.
    pub fn mark(&mut self, name: &[u8]) {
        if let Some(i) = position(name) {
            self.0 |= 1 << i;
        }
    }

    /// `name` (if tracked) is not the client's any more: it takes the connection's value.
    pub fn unmark(&mut self, name: &[u8]) {
        if let Some(i) = position(name) {
            self.0 &= !(1 << i);
        }
    }

    #[cfg(test)]
    pub fn all() -> Owned {
        Owned(u8::MAX)
    }
}

/// A string literal PostgreSQL reads the same whatever `standard_conforming_strings` says.
fn literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 3);
    out.push_str("E'");
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\0' => {}
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_follow_status_and_sync_only_what_differs() {
        let mut server = Values::default();
        server.update(b"TimeZone\0UTC\0");
        server.update(b"application_name\0\0");
        server.update(b"server_version\x0015.1\0");
        let mut buf = BytesMut::new();
        server.write_status(&mut buf);
        assert_eq!(Values::from_status(&buf), server, "round trip");

        let login = server.clone();
        let mut client = server.clone();
        let mut owned = Owned::default();
        assert_eq!(client.sync_from(&server, &login, &Owned::all()), None);
        client.set("application_name", "it's\\me");
        client.set("TimeZone", "Europe/Paris");
        client.set("server_version", "99");
        owned.mark(b"application_name");
        assert_eq!(
            client.sync_from(&server, &login, &owned).as_deref(),
            Some("SET application_name TO E'it''s\\\\me';"),
            "only tracked parameters the client set, quoted"
        );
        // Another client's TimeZone on the connection goes back to the login's.
        let mut other = server.clone();
        other.set("TimeZone", "Asia/Tokyo");
        assert_eq!(
            Values::default()
                .sync_from(&other, &login, &Owned::default())
                .as_deref(),
            Some("SET TimeZone TO E'UTC';")
        );
        assert!(is_tracked(b"timezone") && !is_tracked(b"work_mem"));
    }

    #[test]
    fn a_reset_sets_the_clients_own_values_again_and_learns_the_login_from_the_rest() {
        let mut login = Values::default();
        login.update(b"TimeZone\0UTC\0");
        login.update(b"application_name\0credswap/app/g1\0");
        login.update(b"DateStyle\0ISO, MDY\0");
        let mut client = login.clone();
        client.set("application_name", "pgbench");
        client.set("DateStyle", "ISO, DMY");
        let mut owned = Owned::default();
        owned.mark(b"application_name");
        let (sql, applied) = client.reapply(&login, &owned);
        assert_eq!(
            sql, "SET application_name TO E'pgbench';",
            "only what it owns and differs"
        );
        // The connection after the reset: a reload made DateStyle's default another, and the
        // server reported it; application_name was set again in the same round trip.
        let mut server = login.clone();
        server.set("DateStyle", "German, DMY");
        server.settle_reset(&mut login, &client, applied);
        assert_eq!(server.get("application_name"), Some("pgbench"));
        assert_eq!(login.get("application_name"), Some("credswap/app/g1"));
        assert_eq!(
            login.get("DateStyle"),
            Some("German, DMY"),
            "what it has now is its login's"
        );
        // The next client of the same values needs no SET; another gets the login's.
        assert_eq!(client.sync_from(&server, &login, &owned), None);
        assert_eq!(
            Values::default()
                .sync_from(&server, &login, &Owned::default())
                .as_deref(),
            Some("SET application_name TO E'credswap/app/g1';")
        );
    }
}
