//! What a statement's text may do to the session beyond its transaction. The answer that
//! keeps clients apart is [`Scan::changes`], and it fails closed: a statement counts as leaving
//! nothing behind only when it is one of a few kinds that cannot (reads, transaction control,
//! `SET LOCAL`, a reported parameter that follows its client) and calls no function but a few
//! built-ins known to touch no session state. Anything else, anything [`lexer`] cannot read,
//! any other function call (quoted, qualified, or inside a `DO` block's text), counts as a
//! change, and the connection is reset before another client uses it. What a statement
//! reaches without naming it (a trigger, a view, a column default, a user-defined operator)
//! is out of any text's sight: docs/postgres.md says what that leaves, and
//! `server_reset = "always"` resets after every transaction instead.
//!
//! The rest is for the client's own sake, not isolation: what pins a client to its
//! connection (state it expects to keep: `LISTEN`, temporary tables, ...), which statements
//! drop the connection's prepared statements, and which may produce a `ParameterStatus` that
//! is the client's doing.

mod lexer;
#[cfg(test)]
mod tests;

use self::lexer::{Lexer, Name, Token};
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
    /// It may leave session state behind (or the scan cannot tell): the connection is reset
    /// before it serves another client.
    pub changes: bool,
    /// `DEALLOCATE` or `DISCARD` in any form: the connection's prepared statements may no
    /// longer be what credswap recorded.
    pub forgets_statements: bool,
    /// `DEALLOCATE ALL` or `DISCARD ALL`: none are left.
    pub forgets_all: bool,
    /// `SET`, `RESET`, `DISCARD` or `set_config`: a `ParameterStatus` that follows is the
    /// client's doing.
    pub sets_params: bool,
}

/// Scans a statement text (one or more statements) as the server reads it with
/// `standard_conforming_strings` on.
pub fn scan(sql: &[u8]) -> Scan {
    scan_with(sql, true)
}

/// [`scan`] for a session whose `standard_conforming_strings` is `standard`.
pub fn scan_with(sql: &[u8], standard: bool) -> Scan {
    if standard && plain_read(sql) {
        return Scan::default();
    }
    let mut out = Scan::default();
    let mut lexer = Lexer::new(sql, standard);
    let mut statement = Statement::default();
    loop {
        let token = lexer.next_token();
        match token {
            Token::End | Token::Semicolon => {
                statement.finish(&mut out);
                if token == Token::End {
                    return out;
                }
                statement = Statement::default();
            }
            Token::Broken => {
                out.changes = true;
                return out;
            }
            token => statement.push(token, &mut out),
        }
    }
}

/// Words of statements that leave nothing behind (the statement's first word).
const HARMLESS_STARTS: [&[u8]; 17] = [
    b"select",
    b"values",
    b"table",
    b"with",
    b"show",
    b"begin",
    b"start",
    b"commit",
    b"end",
    b"rollback",
    b"abort",
    b"savepoint",
    b"release",
    b"fetch",
    b"move",
    b"lock",
    b"declare",
];

/// Reserved and column-name keywords a `(` follows as syntax: none of them can name a
/// function unquoted and unqualified. (Keywords that can, such as `like`, `join`, `over` or
/// `filter`, are in [`Statement::call`] only where their place says they are syntax.)
const SYNTAX_BEFORE_PAREN: [&[u8]; 46] = [
    b"in",
    b"exists",
    b"any",
    b"some",
    b"all",
    b"values",
    b"array",
    b"row",
    b"cast",
    b"coalesce",
    b"nullif",
    b"greatest",
    b"least",
    b"extract",
    b"overlay",
    b"position",
    b"substring",
    b"trim",
    b"group",
    b"on",
    b"using",
    b"as",
    b"and",
    b"or",
    b"not",
    b"when",
    b"then",
    b"else",
    b"case",
    b"select",
    b"from",
    b"where",
    b"lateral",
    b"having",
    b"limit",
    b"offset",
    b"distinct",
    b"between",
    b"union",
    b"intersect",
    b"except",
    b"numeric",
    b"decimal",
    b"varchar",
    b"char",
    b"grouping",
];

/// Built-in functions that read or compute and touch no session state. Found through the
/// session's `search_path`, which puts `pg_catalog` first unless it is named later on
/// purpose (docs/postgres.md).
const HARMLESS_CALLS: [&[u8]; 58] = [
    b"count",
    b"sum",
    b"avg",
    b"min",
    b"max",
    b"now",
    b"lower",
    b"upper",
    b"length",
    b"char_length",
    b"abs",
    b"round",
    b"floor",
    b"ceil",
    b"ceiling",
    b"concat",
    b"concat_ws",
    b"left",
    b"right",
    b"replace",
    b"split_part",
    b"array_agg",
    b"string_agg",
    b"json_agg",
    b"jsonb_agg",
    b"json_build_object",
    b"jsonb_build_object",
    b"json_build_array",
    b"jsonb_build_array",
    b"to_char",
    b"to_date",
    b"to_timestamp",
    b"to_number",
    b"date_trunc",
    b"date_part",
    b"age",
    b"md5",
    b"btrim",
    b"ltrim",
    b"rtrim",
    b"lpad",
    b"rpad",
    b"array_length",
    b"unnest",
    b"cardinality",
    b"bool_and",
    b"bool_or",
    b"row_number",
    b"rank",
    b"dense_rank",
    b"lag",
    b"lead",
    b"first_value",
    b"last_value",
    b"generate_series",
    b"format",
    b"current_setting",
    b"array_position",
];

const ADVISORY_LOCKS: [&[u8]; 4] = [
    b"pg_advisory_lock",
    b"pg_advisory_lock_shared",
    b"pg_try_advisory_lock",
    b"pg_try_advisory_lock_shared",
];

/// One statement's tokens as the rules need them: its first four, and the last three.
#[derive(Default)]
struct Statement<'a> {
    start: [Option<Token<'a>>; 4],
    count: usize,
    last: [Option<Token<'a>>; 3],
}

fn name(t: Option<Token<'_>>) -> Option<Name<'_>> {
    match t {
        Some(Token::Name(n)) => Some(n),
        _ => None,
    }
}

fn keyword(t: Option<Token<'_>>, word: &[u8]) -> bool {
    name(t).is_some_and(|n| n.keyword(word))
}

impl<'a> Statement<'a> {
    fn push(&mut self, token: Token<'a>, out: &mut Scan) {
        if token == Token::Open {
            self.call(out);
        }
        if let Token::Name(n) = token {
            self.word(n, out);
        }
        if self.count < self.start.len() {
            self.start[self.count] = Some(token);
        }
        self.count += 1;
        self.last = [self.last[1], self.last[2], Some(token)];
    }

    /// The token before this `(` may name a function.
    fn call(&mut self, out: &mut Scan) {
        let Some(function) = name(self.last[2]) else {
            return;
        };
        let qualified = self.last[1] == Some(Token::Dot);
        if function.is(b"set_config") {
            out.sets_params = true;
        }
        if ADVISORY_LOCKS.iter().any(|w| function.is(w)) {
            out.pin.get_or_insert(Pin::AdvisoryLock);
        }
        let harmless = if qualified {
            name(self.last[0]).is_some_and(|schema| schema.is(b"pg_catalog"))
                && HARMLESS_CALLS.iter().any(|w| function.is(w))
        } else {
            SYNTAX_BEFORE_PAREN.iter().any(|w| function.keyword(w))
                || HARMLESS_CALLS.iter().any(|w| function.is(w))
                // `count(*) OVER (...)`, `FILTER (WHERE ...)`: after a call's `)`.
                || ((function.keyword(b"over") || function.keyword(b"filter"))
                    && self.last[1] == Some(Token::Close))
                // `ORDER BY (...)`, `PARTITION BY (...)`
                || (function.keyword(b"by")
                    && name(self.last[1]).is_some_and(|n| {
                        n.keyword(b"order") || n.keyword(b"group") || n.keyword(b"partition")
                    }))
        };
        if !harmless {
            out.changes = true;
        }
    }

    /// Rules on a name anywhere in a statement.
    fn word(&mut self, n: Name<'a>, out: &mut Scan) {
        let prev = self.last[2];
        if n.is(b"pg_temp") || n.starts_with(b"pg_temp_") {
            out.pin.get_or_insert(Pin::TemporaryTable);
        }
        if n.keyword(b"temp") || n.keyword(b"temporary") {
            if [&b"into"[..], b"create", b"local", b"global", b"replace"]
                .iter()
                .any(|p| keyword(prev, p))
            {
                out.pin.get_or_insert(Pin::TemporaryTable);
            }
        } else if n.keyword(b"hold") && keyword(prev, b"with") {
            out.pin.get_or_insert(Pin::WithHoldCursor);
            out.changes = true;
        } else if n.keyword(b"into")
            || n.keyword(b"insert")
            || n.keyword(b"delete")
            || n.keyword(b"merge")
            || (n.keyword(b"update") && !keyword(prev, b"for") && !keyword(prev, b"key"))
        {
            // SELECT INTO makes a table; a data-modifying WITH runs triggers and defaults.
            out.changes = true;
        }
    }

    /// Rules on the statement as a whole, at its end.
    fn finish(&self, out: &mut Scan) {
        let Some(first) = self.start[0] else {
            return;
        };
        let at = |i: usize| self.start.get(i).copied().flatten();
        let Some(first) = name(Some(first)).filter(|n| n.kind == lexer::NameKind::Bare) else {
            out.changes = true;
            return;
        };
        if first.keyword(b"set") || first.keyword(b"reset") {
            out.sets_params = true;
            self.set_or_reset(first.keyword(b"set"), out);
            return;
        }
        if first.keyword(b"discard") || first.keyword(b"deallocate") {
            out.changes = true;
            out.forgets_statements = true;
            out.sets_params |= first.keyword(b"discard");
            let all = if keyword(at(1), b"prepare") {
                at(2)
            } else {
                at(1)
            };
            if keyword(all, b"all") && self.count <= 3 {
                out.forgets_all = true;
            }
            return;
        }
        if first.keyword(b"prepare") {
            out.pin.get_or_insert(Pin::Prepare);
        } else if first.keyword(b"listen") {
            out.pin.get_or_insert(Pin::Listen);
        }
        if !HARMLESS_STARTS.iter().any(|w| first.keyword(w)) {
            out.changes = true;
        }
    }

    /// `SET` and `RESET`: what lasts the transaction, what follows the client, what does not.
    fn set_or_reset(&self, set: bool, out: &mut Scan) {
        let at = |i: usize| self.start.get(i).copied().flatten();
        let mut i = 1;
        if set && (keyword(at(1), b"local") || keyword(at(1), b"session")) {
            if keyword(at(1), b"local") {
                return;
            }
            i = 2;
        }
        if set && i == 1 && (keyword(at(1), b"transaction") || keyword(at(1), b"constraints")) {
            return;
        }
        if keyword(at(i), b"role") || keyword(at(i), b"authorization") {
            if set {
                out.pin.get_or_insert(Pin::SessionAuthorization);
            }
            out.changes = true;
            return;
        }
        // A reported parameter follows its client, unless it is the first part of a dotted
        // custom name (`timezone.x`).
        let follows = match name(at(i)) {
            Some(n) if n.keyword(b"time") => keyword(at(i + 1), b"zone"),
            Some(n) => {
                n.kind != lexer::NameKind::Escaped
                    && is_tracked(n.text)
                    && at(i + 1) != Some(Token::Dot)
            }
            None => false,
        };
        if !follows {
            out.changes = true;
        }
    }
}

/// Letter pairs of the words that matter inside a read (`into`, `insert`, `update`,
/// `delete`, `merge`, `temp`, `hold`): `to`, `rt`, `pd`, `et`, `rg`, `mp`, `ld`, in either
/// case ([`LETTER`]). By row (first letter), a bit for each second letter.
const PAIRS: [u32; 32] = {
    let mut rows = [0u32; 32];
    let pairs: [&[u8; 2]; 7] = [b"to", b"rt", b"pd", b"et", b"rg", b"mp", b"ld"];
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

/// The quick answer for the commonest statement, a plain read: it starts with `SELECT` and
/// has no `(` (so it calls nothing), no `;` but a last one (so it is one statement), no
/// comment, and none of the letter pairs of [`PAIRS`] (so none of the words that matter in a read). Such a text
/// leaves nothing behind whatever its literals and comments hold; anything else goes through
/// the lexer. pgbench's `SELECT abalance FROM pgbench_accounts WHERE aid = ...` is one.
fn plain_read(sql: &[u8]) -> bool {
    let start = sql
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(sql.len());
    let rest = &sql[start..];
    if rest.len() < 7
        || !rest[..6].eq_ignore_ascii_case(b"select")
        || !rest[6].is_ascii_whitespace()
    {
        return false;
    }
    let end = rest
        .iter()
        .rposition(|c| !c.is_ascii_whitespace() && *c != b';')
        .map_or(0, |i| i + 1);
    let text = &rest[..end];
    if memchr::memchr2(b'(', b';', text).is_some() {
        return false;
    }
    // A comment goes to the lexer, which tells an unterminated one.
    let mut from = 0;
    while let Some(i) = memchr::memchr2(b'-', b'/', &text[from..]) {
        let at = from + i;
        if matches!(
            (text[at], text.get(at + 1)),
            (b'-', Some(b'-')) | (b'/', Some(b'*'))
        ) {
            return false;
        }
        from = at + 1;
    }
    let mut prev = 0u8;
    for &c in text {
        let x = LETTER[c as usize];
        if PAIRS[(prev & 31) as usize] & (1 << (x & 31)) != 0 {
            return false;
        }
        prev = x;
    }
    // The trailing `;`s: at most one statement after the text, and it is empty.
    true
}
