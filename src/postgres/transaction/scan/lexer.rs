//! PostgreSQL's lexer, as far as the rules in [`super`] need it: where names, literals,
//! comments and statements begin and end, read the way the server's `scan.l` reads them
//! (PostgreSQL 15). Getting this wrong in one direction hides SQL inside what looks like a
//! literal; so every construct the server reads differently from a plain reading is read its
//! way: `E'...'` only as a one-letter prefix, backslashes in plain strings when
//! `standard_conforming_strings` is off, dollar quotes with non-ASCII tags, a number that
//! stops where the server's does (`1set_config(` is a number and a call), nested comments, and
//! comments that start inside an operator. What it cannot read is [`Token::Broken`], which the
//! rules take as "anything may happen".

/// A name as written: unquoted names compare without case (PostgreSQL folds them), quoted
/// ones exactly, and `U&"..."` names (with escapes) never match a rule's word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Name<'a> {
    pub text: &'a [u8],
    pub kind: NameKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameKind {
    /// A keyword or identifier (the only kind a keyword can be).
    Bare,
    Quoted,
    /// `U&"..."`: its spelling is not its name.
    Escaped,
}

impl Name<'_> {
    /// Whether this is the identifier `lower` (a lower-case word).
    pub fn is(&self, lower: &[u8]) -> bool {
        match self.kind {
            NameKind::Bare => self.text.eq_ignore_ascii_case(lower),
            NameKind::Quoted => self.text == lower,
            NameKind::Escaped => false,
        }
    }

    /// Whether this is the keyword `lower` (never quoted).
    pub fn keyword(&self, lower: &[u8]) -> bool {
        self.kind == NameKind::Bare && self.text.eq_ignore_ascii_case(lower)
    }

    /// Whether the name starts with `lower` (compared as [`Name::is`]).
    pub fn starts_with(&self, lower: &[u8]) -> bool {
        match self.kind {
            NameKind::Bare => {
                self.text.len() >= lower.len()
                    && self.text[..lower.len()].eq_ignore_ascii_case(lower)
            }
            NameKind::Quoted => self.text.starts_with(lower),
            NameKind::Escaped => false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token<'a> {
    Name(Name<'a>),
    /// `(`
    Open,
    /// `)`
    Close,
    /// `.` (not part of a number)
    Dot,
    /// A string literal, number, parameter, operator or other punctuation.
    Other,
    Semicolon,
    /// Text the lexer cannot read (an unterminated literal, comment or quoted name).
    Broken,
    End,
}

pub struct Lexer<'a> {
    sql: &'a [u8],
    at: usize,
    /// `standard_conforming_strings`: off, a backslash escapes in every string literal.
    standard: bool,
}

/// `ident_start` and `ident_cont` of `scan.l`: letters, `_`, bytes of multibyte characters,
/// and (after the first) digits and `$`.
fn ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn ident_cont(c: u8) -> bool {
    ident_start(c) || c.is_ascii_digit() || c == b'$'
}

/// Operator characters (`op_chars` of `scan.l`).
fn op_char(c: u8) -> bool {
    matches!(
        c,
        b'~' | b'!'
            | b'@'
            | b'#'
            | b'^'
            | b'&'
            | b'|'
            | b'`'
            | b'?'
            | b'+'
            | b'-'
            | b'*'
            | b'/'
            | b'%'
            | b'<'
            | b'>'
            | b'='
    )
}

impl<'a> Lexer<'a> {
    pub fn new(sql: &'a [u8], standard_conforming_strings: bool) -> Lexer<'a> {
        Lexer {
            sql,
            at: 0,
            standard: standard_conforming_strings,
        }
    }

    fn peek(&self, n: usize) -> u8 {
        self.sql.get(self.at + n).copied().unwrap_or(0)
    }

    fn more(&self) -> bool {
        self.at < self.sql.len()
    }

    pub fn next_token(&mut self) -> Token<'a> {
        loop {
            if !self.more() {
                return Token::End;
            }
            let c = self.peek(0);
            match c {
                b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => self.at += 1,
                b'-' if self.peek(1) == b'-' => self.line_comment(),
                b'/' if self.peek(1) == b'*' => {
                    if !self.block_comment() {
                        return Token::Broken;
                    }
                }
                b';' => {
                    self.at += 1;
                    return Token::Semicolon;
                }
                b'(' => {
                    self.at += 1;
                    return Token::Open;
                }
                b')' => {
                    self.at += 1;
                    return Token::Close;
                }
                b'.' if self.peek(1).is_ascii_digit() => {
                    self.number();
                    return Token::Other;
                }
                b'.' => {
                    // `..` (a range in PL/pgSQL) is one token to the server; two dots do no harm.
                    self.at += 1;
                    return Token::Dot;
                }
                b'\'' => return self.string(!self.standard),
                b'"' => return self.quoted_name(NameKind::Quoted),
                b'$' => return self.dollar(),
                c if c.is_ascii_digit() => {
                    self.number();
                    return Token::Other;
                }
                c if ident_start(c) => return self.word(),
                c if op_char(c) => {
                    // An operator ends where a comment starts inside it (`+--x` is `+`).
                    self.at += 1;
                    while self.more()
                        && op_char(self.peek(0))
                        && !(self.peek(0) == b'-' && self.peek(1) == b'-')
                        && !(self.peek(0) == b'/' && self.peek(1) == b'*')
                    {
                        self.at += 1;
                    }
                    return Token::Other;
                }
                _ => {
                    self.at += 1;
                    return Token::Other;
                }
            }
        }
    }

    /// An identifier or keyword, or the prefix of a literal: `E'`, `B'`, `X'`, `N'` (one
    /// letter, the whole word) and `U&'`, `U&"`.
    fn word(&mut self) -> Token<'a> {
        let start = self.at;
        let first = self.peek(0).to_ascii_lowercase();
        if self.peek(1) == b'\'' && matches!(first, b'e' | b'b' | b'x' | b'n') {
            self.at += 1;
            if matches!(first, b'b' | b'x') {
                // Bit strings end at the first quote (no `''`, no backslash).
                return self.bit_string();
            }
            return self.string(first == b'e' || (first == b'n' && !self.standard));
        }
        if first == b'u' && self.peek(1) == b'&' {
            match self.peek(2) {
                b'\'' => {
                    self.at += 2;
                    return self.string(false);
                }
                b'"' => {
                    self.at += 2;
                    return self.quoted_name(NameKind::Escaped);
                }
                _ => {}
            }
        }
        while self.more() && ident_cont(self.peek(0)) {
            self.at += 1;
        }
        Token::Name(Name {
            text: &self.sql[start..self.at],
            kind: NameKind::Bare,
        })
    }

    /// `'...'` from the quote here; `backslashes`: a backslash escapes the next byte.
    fn string(&mut self, backslashes: bool) -> Token<'a> {
        self.at += 1;
        while self.more() {
            let c = self.peek(0);
            if (backslashes && c == b'\\') || (c == b'\'' && self.peek(1) == b'\'') {
                self.at += 2;
            } else if c == b'\'' {
                self.at += 1;
                return Token::Other;
            } else {
                self.at += 1;
            }
        }
        Token::Broken
    }

    /// `B'...'` or `X'...'` from the quote here.
    fn bit_string(&mut self) -> Token<'a> {
        self.at += 1;
        while self.more() {
            let c = self.peek(0);
            self.at += 1;
            if c == b'\'' {
                return Token::Other;
            }
        }
        Token::Broken
    }

    /// `"..."` from the quote here (`""` is a quote inside).
    fn quoted_name(&mut self, kind: NameKind) -> Token<'a> {
        self.at += 1;
        let start = self.at;
        while self.more() {
            if self.peek(0) == b'"' {
                if self.peek(1) == b'"' {
                    self.at += 2;
                    continue;
                }
                let text = &self.sql[start..self.at];
                self.at += 1;
                if text.is_empty() {
                    return Token::Broken;
                }
                return Token::Name(Name { text, kind });
            }
            self.at += 1;
        }
        Token::Broken
    }

    /// `$1` (a parameter), `$$...$$` or `$tag$...$tag$` (a literal), else a lone `$`.
    fn dollar(&mut self) -> Token<'a> {
        if self.peek(1).is_ascii_digit() {
            self.at += 1;
            while self.more() && self.peek(0).is_ascii_digit() {
                self.at += 1;
            }
            return Token::Other;
        }
        let tag_start = self.at + 1;
        let mut end = tag_start;
        if end < self.sql.len() && ident_start(self.sql[end]) {
            end += 1;
            while end < self.sql.len() && ident_start(self.sql[end])
                || end < self.sql.len() && self.sql[end].is_ascii_digit()
            {
                end += 1;
            }
        }
        if self.sql.get(end) != Some(&b'$') {
            // `$abc` with no closing `$`: the server reads a lone `$` (an error).
            self.at += 1;
            return Token::Other;
        }
        let delimiter = &self.sql[self.at..=end];
        let body = end + 1;
        match self.sql[body..]
            .windows(delimiter.len())
            .position(|w| w == delimiter)
        {
            Some(n) => {
                self.at = body + n + delimiter.len();
                Token::Other
            }
            None => {
                self.at = self.sql.len();
                Token::Broken
            }
        }
    }

    /// A number as PostgreSQL 15 reads one: digits, a fraction, an exponent with digits.
    /// What follows (`1set_config`, `1_000`) is the next token, as it is to the server.
    fn number(&mut self) {
        let digits = |l: &mut Lexer<'_>| {
            while l.more() && l.peek(0).is_ascii_digit() {
                l.at += 1;
            }
        };
        digits(self);
        if self.peek(0) == b'.' && self.peek(1) != b'.' {
            self.at += 1;
            digits(self);
        }
        if matches!(self.peek(0), b'e' | b'E') {
            let sign = usize::from(matches!(self.peek(1), b'+' | b'-'));
            if self.peek(1 + sign).is_ascii_digit() {
                self.at += 1 + sign;
                digits(self);
            }
        }
    }

    fn line_comment(&mut self) {
        while self.more() && !matches!(self.peek(0), b'\n' | b'\r') {
            self.at += 1;
        }
    }

    /// A nested `/* ... */`; false when it does not end.
    fn block_comment(&mut self) -> bool {
        let mut depth = 0usize;
        while self.more() {
            if self.peek(0) == b'/' && self.peek(1) == b'*' {
                depth += 1;
                self.at += 2;
            } else if self.peek(0) == b'*' && self.peek(1) == b'/' {
                depth -= 1;
                self.at += 2;
                if depth == 0 {
                    return true;
                }
            } else {
                self.at += 1;
            }
        }
        false
    }
}
