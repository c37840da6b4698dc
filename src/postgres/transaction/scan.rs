//! What a statement's text does to the session beyond its transaction, found by a small SQL
//! tokenizer (comments, string literals, dollar quotes and quoted identifiers skipped): what
//! pins a client to its server connection, a session-level `SET` of a parameter credswap does
//! not track (reset before the connection serves anyone else), and statements that drop the
//! connection's prepared statements. Text inside function bodies run by the statement is out of
//! sight; docs/postgres.md says so.

use super::params::is_tracked;

/// Why a client stays on its server connection for the rest of its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pin {
    /// SQL-level `PREPARE` (protocol-level statements are tracked instead).
    Prepare,
    Listen,
    AdvisoryLock,
    TemporaryTable,
    WithHoldCursor,
    SessionAuthorization,
}

impl Pin {
    /// The label in metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Pin::Prepare => "prepare",
            Pin::Listen => "listen",
            Pin::AdvisoryLock => "advisory_lock",
            Pin::TemporaryTable => "temporary_table",
            Pin::WithHoldCursor => "with_hold_cursor",
            Pin::SessionAuthorization => "session_authorization",
        }
    }
}

/// What a statement text does beyond its transaction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    pub pin: Option<Pin>,
    /// A session-level `SET` (or `set_config`) of a parameter that does not follow the client:
    /// the connection is reset (`RESET ALL`) before it serves another client.
    pub needs_reset: bool,
    /// `DISCARD ALL` or `DEALLOCATE`: some or all of the connection's prepared statements are
    /// gone, so it no longer holds what credswap recorded; it is closed when given back.
    pub forgets_statements: bool,
    /// `SET`, `RESET`, `DISCARD` or `set_config`: a `ParameterStatus` that follows may be the
    /// client's doing. One that comes without any is the server's (a configuration reload).
    pub sets_params: bool,
}

/// Scans a statement text (one or more statements). Every simple query passes through here,
/// so it keeps only what its rules look at (a statement's first three tokens, the previous
/// token, the first word) and allocates nothing.
pub fn scan(sql: &[u8]) -> Scan {
    if !might_matter(sql) {
        return Scan::default();
    }
    let mut out = Scan::default();
    // The statement's first three tokens (literals, operators and numbers as empty words),
    // how many it has had, and the one before the current.
    let mut start: [&[u8]; 3] = [&[]; 3];
    let mut count = 0usize;
    let mut prev: &[u8] = &[];
    let mut lexer = Lexer { sql, at: 0 };
    loop {
        let word = match lexer.next() {
            Token::Word(w) => {
                word_rules(w, (count > 0).then_some(prev), start[0], &mut out);
                w
            }
            Token::Other => &[][..],
            token @ (Token::End | Token::Semicolon) => {
                if (1..3).contains(&count) {
                    statement_start(&start[..count], &mut out);
                }
                if matches!(token, Token::End) {
                    return out;
                }
                (start, count, prev) = ([&[][..]; 3], 0, &[][..]);
                continue;
            }
        };
        if count < 3 {
            start[count] = word;
        }
        count += 1;
        if count == 3 {
            statement_start(&start, &mut out);
        }
        prev = word;
    }
}

/// Letter pairs at least one of which is in every word a rule looks for: `et` (set, reset,
/// set_config), `sc` (discard), `pr` (prepare), `st` (listen), `ll` (deallocate), `mp` (temp,
/// temporary), `ld` (hold), `dv` (the advisory locks), in either case ([`LETTER`]). A rule's
/// word cannot be there without one; a pair found elsewhere (`first_name`) only costs the full
/// scan. By row (first letter), a bit for each second letter.
const PAIRS: [u32; 32] = {
    let mut rows = [0u32; 32];
    let pairs: [&[u8; 2]; 8] = [b"et", b"sc", b"pr", b"st", b"ll", b"mp", b"ld", b"dv"];
    let mut i = 0;
    while i < pairs.len() {
        let (a, b) = (pairs[i][0] & 31, pairs[i][1] & 31);
        rows[a as usize] |= 1 << b;
        i += 1;
    }
    rows
};

/// A letter's place in the alphabet (1 to 26, either case); 0 for any other byte.
static LETTER: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        if (c as u8).is_ascii_alphabetic() {
            t[c] = (c as u8 | 0x20) & 31;
        }
        c += 1;
    }
    t
};

/// Whether the text has any of [`PAIRS`]. Without one no rule can apply, and the tokenizer
/// is skipped: pgbench's `SELECT abalance FROM pgbench_accounts WHERE aid = ...` has none.
/// The scan of that statement took 1,432 instructions in `dev/profile_wire.py 16 15 txn`
/// before, and 640 with this check.
fn might_matter(sql: &[u8]) -> bool {
    let mut prev = 0u8;
    for &c in sql {
        let x = LETTER[c as usize];
        if PAIRS[(prev & 31) as usize] & (1 << (x & 31)) != 0 {
            return true;
        }
        prev = x;
    }
    false
}

/// Rules on a word anywhere in a statement (`prev`: the token before it, if any; `first`: the
/// statement's first). Words are told apart by length first: most match none.
fn word_rules(w: &[u8], prev: Option<&[u8]>, first: &[u8], out: &mut Scan) {
    match w.len() {
        16 | 20 | 23 | 27
            if eq(w, b"pg_advisory_lock")
                || eq(w, b"pg_advisory_lock_shared")
                || eq(w, b"pg_try_advisory_lock")
                || eq(w, b"pg_try_advisory_lock_shared") =>
        {
            out.pin.get_or_insert(Pin::AdvisoryLock);
        }
        10 if eq(w, b"set_config") => {
            out.needs_reset = true;
            out.sets_params = true;
        }
        4 | 9 => {
            let Some(prev) = prev else {
                return;
            };
            if (eq(w, b"temp") || eq(w, b"temporary"))
                && [&b"into"[..], b"create", b"local", b"global"]
                    .iter()
                    .any(|p| eq(prev, p))
            {
                out.pin.get_or_insert(Pin::TemporaryTable);
            }
            if eq(w, b"hold") && eq(prev, b"with") && eq(first, b"declare") {
                out.pin.get_or_insert(Pin::WithHoldCursor);
            }
        }
        _ => {}
    }
}

/// Rules on a statement's first words (up to three).
fn statement_start(w: &[&[u8]], out: &mut Scan) {
    let at = |i: usize| w.get(i).copied().unwrap_or_default();
    let first = at(0);
    out.sets_params |= eq(first, b"set") || eq(first, b"reset") || eq(first, b"discard");
    if eq(first, b"prepare") {
        out.pin.get_or_insert(Pin::Prepare);
    } else if eq(first, b"listen") {
        out.pin.get_or_insert(Pin::Listen);
    } else if eq(first, b"discard") && eq(at(1), b"all") || eq(first, b"deallocate") {
        out.forgets_statements = true;
    } else if eq(first, b"set") {
        let (second, name) = if eq(at(1), b"session") {
            (at(2), at(2))
        } else {
            (at(1), at(1))
        };
        if eq(second, b"authorization") || eq(second, b"role") {
            out.pin.get_or_insert(Pin::SessionAuthorization);
        } else if eq(second, b"local") || eq(second, b"transaction") || eq(second, b"constraints") {
            // Lasts the transaction only.
        } else if eq(second, b"characteristics") || !is_tracked(name) {
            out.needs_reset = true;
        }
    }
}

fn eq(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

enum Token<'a> {
    /// A keyword or unquoted identifier.
    Word(&'a [u8]),
    /// A literal, quoted identifier, number or operator.
    Other,
    Semicolon,
    End,
}

/// Bytes that go on a word (letters, digits, `_`, `$`, and the bytes of multibyte
/// characters) or a number (letters, digits, `_`, `.`): one table lookup a byte.
const WORD: u8 = 1;
const NUMBER: u8 = 2;
static CLASS: [u8; 256] = {
    let mut class = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        let alnum = b.is_ascii_alphanumeric() || b == b'_';
        if alnum || b == b'$' || b >= 0x80 {
            class[c] |= WORD;
        }
        if alnum || b == b'.' {
            class[c] |= NUMBER;
        }
        c += 1;
    }
    class
};

struct Lexer<'a> {
    sql: &'a [u8],
    at: usize,
}

impl<'a> Lexer<'a> {
    fn peek(&self, n: usize) -> u8 {
        self.sql.get(self.at + n).copied().unwrap_or(0)
    }

    fn next(&mut self) -> Token<'a> {
        loop {
            let c = self.peek(0);
            if self.at >= self.sql.len() {
                return Token::End;
            }
            match c {
                b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => self.at += 1,
                b'-' if self.peek(1) == b'-' => {
                    while self.at < self.sql.len() && self.peek(0) != b'\n' {
                        self.at += 1;
                    }
                }
                b'/' if self.peek(1) == b'*' => self.block_comment(),
                b';' => {
                    self.at += 1;
                    return Token::Semicolon;
                }
                b'\'' => {
                    let escapes = self.at > 0 && matches!(self.sql[self.at - 1], b'e' | b'E');
                    self.quoted(b'\'', escapes);
                    return Token::Other;
                }
                b'"' => {
                    self.quoted(b'"', false);
                    return Token::Other;
                }
                b'$' if self.dollar_quote() => return Token::Other,
                c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                    let start = self.at;
                    self.at += self.run(WORD);
                    // `E'...'`: the word is the literal's prefix.
                    if self.peek(0) == b'\'' && self.at - start == 1 {
                        continue;
                    }
                    return Token::Word(&self.sql[start..self.at]);
                }
                // A number is one token, however many digits.
                c if c.is_ascii_digit() => {
                    self.at += self.run(NUMBER);
                    return Token::Other;
                }
                _ => {
                    self.at += 1;
                    return Token::Other;
                }
            }
        }
    }

    /// How many bytes from here on are of `class` ([`CLASS`]).
    fn run(&self, class: u8) -> usize {
        let mut n = 0;
        for &c in &self.sql[self.at..] {
            if CLASS[c as usize] & class == 0 {
                break;
            }
            n += 1;
        }
        n
    }

    fn block_comment(&mut self) {
        let mut depth = 0usize;
        while self.at < self.sql.len() {
            if self.peek(0) == b'/' && self.peek(1) == b'*' {
                depth += 1;
                self.at += 2;
            } else if self.peek(0) == b'*' && self.peek(1) == b'/' {
                depth -= 1;
                self.at += 2;
                if depth == 0 {
                    return;
                }
            } else {
                self.at += 1;
            }
        }
    }

    fn quoted(&mut self, quote: u8, escapes: bool) {
        self.at += 1;
        while self.at < self.sql.len() {
            let c = self.peek(0);
            if (escapes && c == b'\\') || (c == quote && self.peek(1) == quote) {
                self.at += 2;
            } else if c == quote {
                self.at += 1;
                return;
            } else {
                self.at += 1;
            }
        }
    }

    /// `$tag$ ... $tag$`; false (nothing consumed) when the `$` starts no dollar quote.
    fn dollar_quote(&mut self) -> bool {
        let rest = &self.sql[self.at + 1..];
        let Some(len) = rest.iter().position(|c| *c == b'$') else {
            return false;
        };
        let tag = &rest[..len];
        if !tag.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
            || tag.first().is_some_and(u8::is_ascii_digit)
        {
            return false;
        }
        let delimiter = &self.sql[self.at..self.at + len + 2];
        let body = self.at + len + 2;
        match self.sql[body..]
            .windows(delimiter.len())
            .position(|w| w == delimiter)
        {
            Some(end) => self.at = body + end + delimiter.len(),
            None => self.at = self.sql.len(),
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(sql: &str) -> Option<Pin> {
        scan(sql.as_bytes()).pin
    }

    #[test]
    fn what_pins() {
        assert_eq!(pin("PREPARE q AS SELECT 1"), Some(Pin::Prepare));
        assert_eq!(pin("select 1; listen jobs"), Some(Pin::Listen));
        assert_eq!(pin("SELECT pg_advisory_lock(42)"), Some(Pin::AdvisoryLock));
        assert_eq!(
            pin("SELECT pg_try_advisory_lock_shared(1)"),
            Some(Pin::AdvisoryLock)
        );
        assert_eq!(
            pin("SELECT pg_advisory_xact_lock(42)"),
            None,
            "transaction-level"
        );
        assert_eq!(
            pin("CREATE TEMP TABLE t (x int)"),
            Some(Pin::TemporaryTable)
        );
        assert_eq!(
            pin("create local temporary table t (x int)"),
            Some(Pin::TemporaryTable)
        );
        assert_eq!(pin("SELECT 1 INTO TEMP t"), Some(Pin::TemporaryTable));
        assert_eq!(
            pin("DECLARE c CURSOR WITH HOLD FOR SELECT 1"),
            Some(Pin::WithHoldCursor)
        );
        assert_eq!(pin("DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1"), None);
        assert_eq!(
            pin("SET SESSION AUTHORIZATION bob"),
            Some(Pin::SessionAuthorization)
        );
        assert_eq!(pin("set role bob"), Some(Pin::SessionAuthorization));
        assert_eq!(
            pin("SELECT 12345; PREPARE q AS SELECT 1"),
            Some(Pin::Prepare),
            "a number is one token; the next statement starts afresh"
        );
        assert_eq!(
            pin("select 1.5e3 into temporary t"),
            Some(Pin::TemporaryTable)
        );
        assert_eq!(pin("LISTEN"), Some(Pin::Listen), "one word");
    }

    #[test]
    fn the_quick_check_misses_no_rule_word() {
        for word in [
            "set",
            "RESET",
            "set_config",
            "Discard",
            "PREPARE",
            "listen",
            "deallocate",
            "temp",
            "TEMPORARY",
            "hold",
            "pg_advisory_lock",
            "pg_try_advisory_lock_shared",
        ] {
            assert!(might_matter(word.as_bytes()), "{word}");
        }
        assert!(!might_matter(
            b"SELECT abalance FROM pgbench_accounts WHERE aid = 34021;"
        ));
        assert!(!might_matter(b"INSERT INTO t VALUES (1, 'x')"));
    }

    #[test]
    fn what_does_not_pin() {
        assert_eq!(pin("SELECT 'prepare; listen x' AS a"), None, "in a literal");
        assert_eq!(
            pin("SELECT $$ LISTEN x $$, $f$pg_advisory_lock(1)$f$"),
            None
        );
        assert_eq!(pin("SELECT 1 -- LISTEN x\n"), None);
        assert_eq!(pin("SELECT /* CREATE TEMP TABLE /* nested */ x */ 1"), None);
        assert_eq!(pin("SELECT \"temp\" FROM t"), None);
        assert_eq!(pin("UPDATE t SET temp = 1"), None);
        assert_eq!(pin("SELECT E'it''s \\' listen' "), None);
        assert_eq!(
            pin("SELECT $1::int"),
            None,
            "a parameter is no dollar quote"
        );
    }

    #[test]
    fn settings() {
        assert!(scan(b"SET statement_timeout = 5").needs_reset);
        assert!(scan(b"SELECT 1;SET work_mem = 65536").needs_reset);
        assert!(!scan(b"SELECT abalance FROM pgbench_accounts WHERE aid = 83521;").needs_reset);
        for sql in [
            &b"SET TimeZone = 'UTC'"[..],
            b"reset all",
            b"select 1; RESET DateStyle",
            b"DISCARD ALL",
            b"SELECT set_config('TimeZone', 'UTC', false)",
        ] {
            assert!(scan(sql).sets_params, "{}", String::from_utf8_lossy(sql));
        }
        for sql in [
            &b"SELECT 'SET TimeZone'"[..],
            b"INSERT INTO t VALUES (1)",
            b"-- SET x\nSELECT 1",
        ] {
            assert!(!scan(sql).sets_params, "{}", String::from_utf8_lossy(sql));
        }
        assert!(scan(b"set session work_mem to '64MB'").needs_reset);
        assert!(scan(b"SELECT set_config('app.user', '7', false)").needs_reset);
        assert!(scan(b"SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY").needs_reset);
        assert!(
            !scan(b"SET TimeZone = 'UTC'").needs_reset,
            "reported: it follows"
        );
        assert!(!scan(b"SET application_name = 'x'").needs_reset);
        assert!(!scan(b"SET LOCAL statement_timeout = 5").needs_reset);
        assert!(!scan(b"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE").needs_reset);
        assert!(!scan(b"UPDATE t SET x = 1").needs_reset);
        assert!(scan(b"DISCARD ALL").forgets_statements);
        assert!(scan(b"deallocate all").forgets_statements);
        assert!(scan(b"DEALLOCATE credswap_1").forgets_statements);
        assert!(!scan(b"DISCARD PLANS").forgets_statements);
    }
}
