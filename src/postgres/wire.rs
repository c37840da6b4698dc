//! The PostgreSQL wire protocol, as far as credswap has to speak it itself: the client's startup
//! packet (and its SSL, GSS and cancel requests), the messages credswap sends (authentication
//! ok, parameter status, key data, ready for query, errors), and a frame walker that finds
//! message boundaries in forwarded bytes without copying or allocating.

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Protocol 3.0.
pub const PROTOCOL_3_0: i32 = 196_608;
const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;

/// PostgreSQL's own cap on a startup packet (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_PACKET: usize = 10_000;

/// What a client's first packet asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Startup {
    /// Encryption over TLS: answered `N` (the socket is local; peer identity is the point).
    Ssl,
    /// GSSAPI encryption: answered `N`.
    GssEnc,
    /// Cancel the statement of the session with this key.
    Cancel { pid: i32, secret: i32 },
    /// A session: protocol 3.`minor` and its parameters (`user`, `database`, `options`, ...).
    Session {
        minor: u16,
        params: Vec<(String, String)>,
    },
}

/// A startup packet that cannot be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StartupError {
    #[error("the startup packet's length {0} is out of range (8 to {MAX_STARTUP_PACKET} bytes)")]
    Length(i32),
    #[error("unsupported frontend protocol {major}.{minor}: credswap speaks 3.0")]
    Protocol { major: u16, minor: u16 },
    #[error("malformed startup packet: {0}")]
    Malformed(&'static str),
    #[error("reading the startup packet: {0}")]
    Io(String),
}

/// Reads one startup-phase packet (length-prefixed, no tag).
pub async fn read_startup<R: AsyncRead + Unpin>(r: &mut R) -> Result<Startup, StartupError> {
    let io = |e: std::io::Error| StartupError::Io(e.to_string());
    let len = r.read_i32().await.map_err(io)?;
    if !(8..=MAX_STARTUP_PACKET as i32).contains(&len) {
        return Err(StartupError::Length(len));
    }
    let mut body = vec![0; len as usize - 4];
    r.read_exact(&mut body).await.map_err(io)?;
    parse_startup(&body)
}

/// Parses a startup packet's body (after its length).
pub fn parse_startup(body: &[u8]) -> Result<Startup, StartupError> {
    let code = i32::from_be_bytes(
        body.get(..4)
            .ok_or(StartupError::Malformed("no protocol code"))?
            .try_into()
            .expect("four bytes"),
    );
    let rest = &body[4..];
    match code {
        SSL_REQUEST => Ok(Startup::Ssl),
        GSSENC_REQUEST => Ok(Startup::GssEnc),
        CANCEL_REQUEST => {
            if rest.len() != 8 {
                return Err(StartupError::Malformed(
                    "a cancel request has 8 bytes of key",
                ));
            }
            let pid = i32::from_be_bytes(rest[..4].try_into().expect("four bytes"));
            let secret = i32::from_be_bytes(rest[4..8].try_into().expect("four bytes"));
            Ok(Startup::Cancel { pid, secret })
        }
        version => {
            let (major, minor) = ((version >> 16) as u16, (version & 0xffff) as u16);
            if major != 3 {
                return Err(StartupError::Protocol { major, minor });
            }
            let mut params = Vec::new();
            let mut fields = rest.split(|b| *b == 0);
            loop {
                let key = fields
                    .next()
                    .ok_or(StartupError::Malformed("parameters not terminated"))?;
                if key.is_empty() {
                    break;
                }
                let value = fields
                    .next()
                    .ok_or(StartupError::Malformed("a parameter without a value"))?;
                let text = |b: &[u8]| {
                    std::str::from_utf8(b)
                        .map(str::to_string)
                        .map_err(|_| StartupError::Malformed("a parameter is not UTF-8"))
                };
                params.push((text(key)?, text(value)?));
            }
            Ok(Startup::Session { minor, params })
        }
    }
}

/// Writes one message: `tag`, its length, and the body `body` writes.
pub(crate) fn message(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_i32(0);
    body(buf);
    let len = (buf.len() - at) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn cstr(buf: &mut BytesMut, s: &str) {
    // A NUL inside would end the field early; none of ours has one, a server's text is cut.
    buf.put_slice(s.split('\0').next().unwrap_or_default().as_bytes());
    buf.put_u8(0);
}

/// `AuthenticationOk`.
pub fn authentication_ok(buf: &mut BytesMut) {
    message(buf, b'R', |b| b.put_i32(0));
}

/// `BackendKeyData` with credswap's own key for the session.
pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    message(buf, b'K', |b| {
        b.put_i32(pid);
        b.put_i32(secret);
    });
}

/// `ReadyForQuery` with the transaction status (`I`, `T` or `E`).
pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    message(buf, b'Z', |b| b.put_u8(status));
}

/// `NegotiateProtocolVersion`: the newest minor version credswap speaks (0), and the protocol
/// options (`_pq_.*`) it does not know.
pub fn negotiate_protocol_version(buf: &mut BytesMut, unknown: &[&str]) {
    message(buf, b'v', |b| {
        b.put_i32(PROTOCOL_3_0);
        b.put_i32(unknown.len() as i32);
        for o in unknown {
            cstr(b, o);
        }
    });
}

/// A `FATAL` `ErrorResponse` made by credswap: SQLSTATE and message (never a secret). It ends
/// the session.
pub fn fatal_response(buf: &mut BytesMut, code: &str, text: &str) {
    error_with(buf, "FATAL", code, text);
}

/// An `ERROR` `ErrorResponse` made by credswap for one request (the session goes on).
pub fn error_response(buf: &mut BytesMut, code: &str, text: &str) {
    error_with(buf, "ERROR", code, text);
}

fn error_with(buf: &mut BytesMut, severity: &str, code: &str, text: &str) {
    message(buf, b'E', |b| {
        b.put_u8(b'S');
        cstr(b, severity);
        b.put_u8(b'V');
        cstr(b, severity);
        b.put_u8(b'C');
        cstr(b, code);
        b.put_u8(b'M');
        cstr(b, text);
        b.put_u8(0);
    });
}

/// The SQLSTATE (`C` field) of a whole `ErrorResponse` or `NoticeResponse`.
pub fn sqlstate(message: &[u8]) -> Option<&[u8]> {
    sqlstate_field(message.get(5..)?)
}

/// The SQLSTATE among an `ErrorResponse`'s fields (`None` when the fields given end first:
/// PostgreSQL sends it third, after the severities).
pub fn sqlstate_field(mut fields: &[u8]) -> Option<&[u8]> {
    while let Some((&kind, rest)) = fields.split_first() {
        if kind == 0 {
            return None;
        }
        let end = rest.iter().position(|b| *b == 0)?;
        if kind == b'C' {
            return Some(&rest[..end]);
        }
        fields = &rest[end + 1..];
    }
    None
}

/// The length of the whole message at the start of `buf` (header included), once all of it
/// is there; `max` caps it.
pub fn whole_message(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    let Some(header) = buf.get(..5) else {
        return Ok(None);
    };
    let len = i32::from_be_bytes(header[1..5].try_into().expect("four bytes"));
    if len < 4 {
        return Err(FrameError::BadLength(len));
    }
    let total = len as usize + 1;
    if total > max {
        return Err(FrameError::TooLarge {
            tag: header[0] as char,
            len: total,
            max,
        });
    }
    Ok((buf.len() >= total).then_some(total))
}

/// Why forwarded bytes are not a valid message stream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("a message of {len} bytes (tag {tag:?}) is larger than the limit of {max} bytes")]
    TooLarge { tag: char, len: usize, max: usize },
    #[error("a message with the invalid length {0}")]
    BadLength(i32),
}

/// Follows the message boundaries of one direction of a session across reads of any size. It
/// only looks at each 5-byte header (and the status byte of `ReadyForQuery`), so bodies of any
/// length pass through without being buffered.
#[derive(Debug)]
pub struct Frames {
    max: usize,
    /// Body bytes of the current message still to come.
    remaining: usize,
    /// A header split across reads.
    partial: [u8; 5],
    partial_len: usize,
    /// Waiting for the status byte of a `ReadyForQuery` whose header ended a read.
    want_status: bool,
}

/// What the walker saw in one chunk.
pub trait Seen {
    /// A message with this tag and total body length (its header just ended).
    fn message(&mut self, tag: u8, len: usize);
    /// The transaction status of a `ReadyForQuery`.
    fn ready(&mut self, status: u8);
    /// The start of an `ErrorResponse`'s body: as much of it as this read holds.
    fn error_start(&mut self, _body: &[u8]) {}
}

impl Frames {
    /// `max`: the largest message accepted, header included.
    pub fn new(max: usize) -> Frames {
        Frames {
            max,
            remaining: 0,
            partial: [0; 5],
            partial_len: 0,
            want_status: false,
        }
    }

    /// Whether the stream walked so far ends on a message boundary.
    pub fn at_boundary(&self) -> bool {
        self.remaining == 0 && self.partial_len == 0 && !self.want_status
    }

    /// Walks `chunk`, reporting each message header to `seen`.
    pub fn walk(&mut self, mut chunk: &[u8], seen: &mut impl Seen) -> Result<(), FrameError> {
        while !chunk.is_empty() {
            if self.want_status {
                self.want_status = false;
                seen.ready(chunk[0]);
            }
            if self.remaining > 0 {
                let skip = self.remaining.min(chunk.len());
                self.remaining -= skip;
                chunk = &chunk[skip..];
                continue;
            }
            let need = 5 - self.partial_len;
            let take = need.min(chunk.len());
            self.partial[self.partial_len..self.partial_len + take].copy_from_slice(&chunk[..take]);
            self.partial_len += take;
            chunk = &chunk[take..];
            if self.partial_len < 5 {
                break;
            }
            self.partial_len = 0;
            let tag = self.partial[0];
            let len = i32::from_be_bytes(self.partial[1..5].try_into().expect("four bytes"));
            if len < 4 {
                return Err(FrameError::BadLength(len));
            }
            let len = len as usize;
            if len + 1 > self.max {
                return Err(FrameError::TooLarge {
                    tag: tag as char,
                    len: len + 1,
                    max: self.max,
                });
            }
            seen.message(tag, len);
            self.remaining = len - 4;
            if tag == b'E' {
                seen.error_start(&chunk[..self.remaining.min(chunk.len())]);
            }
            if tag == b'Z' && self.remaining == 1 {
                match chunk.first() {
                    Some(status) => seen.ready(*status),
                    None => self.want_status = true,
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Log(Vec<(u8, usize)>, Vec<u8>);
    impl Seen for Log {
        fn message(&mut self, tag: u8, len: usize) {
            self.0.push((tag, len));
        }
        fn ready(&mut self, status: u8) {
            self.1.push(status);
        }
    }

    fn stream() -> Vec<u8> {
        let mut b = BytesMut::new();
        fatal_response(&mut b, "42601", "syntax");
        message(&mut b, b'D', |b| b.put_slice(&[7; 300]));
        ready_for_query(&mut b, b'T');
        ready_for_query(&mut b, b'I');
        b.to_vec()
    }

    /// The same messages are found however the bytes are cut into reads.
    #[test]
    fn walks_messages_across_any_split() {
        let bytes = stream();
        let mut whole = Log::default();
        Frames::new(1 << 20).walk(&bytes, &mut whole).unwrap();
        assert_eq!(
            whole.0.iter().map(|m| m.0).collect::<Vec<_>>(),
            b"EDZZ".to_vec()
        );
        assert_eq!(whole.1, b"TI".to_vec());
        for size in [1, 2, 3, 5, 6, 7, 64] {
            let mut log = Log::default();
            let mut f = Frames::new(1 << 20);
            for chunk in bytes.chunks(size) {
                f.walk(chunk, &mut log).unwrap();
            }
            assert_eq!(log.0, whole.0, "chunks of {size}");
            assert_eq!(log.1, whole.1, "chunks of {size}");
        }
    }

    #[test]
    fn refuses_oversized_and_malformed_lengths() {
        let mut b = BytesMut::new();
        message(&mut b, b'Q', |b| b.put_slice(&[b'x'; 100]));
        let e = Frames::new(64).walk(&b, &mut Log::default()).unwrap_err();
        assert!(matches!(e, FrameError::TooLarge { tag: 'Q', .. }), "{e}");
        let e = Frames::new(64)
            .walk(&[b'Q', 0, 0, 0, 2], &mut Log::default())
            .unwrap_err();
        assert_eq!(e, FrameError::BadLength(2));
    }

    #[test]
    fn startup_packets() {
        let mut b = BytesMut::new();
        b.put_i32(PROTOCOL_3_0 + 2);
        for s in ["user", "app", "database", "app_rw", ""] {
            b.put_slice(s.as_bytes());
            b.put_u8(0);
        }
        let Startup::Session { minor, params } = parse_startup(&b).unwrap() else {
            panic!("a session");
        };
        assert_eq!(minor, 2);
        assert_eq!(params[1], ("database".into(), "app_rw".into()));
        assert_eq!(
            parse_startup(&SSL_REQUEST.to_be_bytes()).unwrap(),
            Startup::Ssl
        );
        assert_eq!(
            parse_startup(&GSSENC_REQUEST.to_be_bytes()).unwrap(),
            Startup::GssEnc
        );
        let mut c = BytesMut::new();
        c.put_i32(CANCEL_REQUEST);
        c.put_i32(7);
        c.put_i32(-9);
        assert_eq!(
            parse_startup(&c).unwrap(),
            Startup::Cancel { pid: 7, secret: -9 }
        );
        assert!(matches!(
            parse_startup(&(2i32 << 16).to_be_bytes()),
            Err(StartupError::Protocol { major: 2, .. })
        ));
        assert!(parse_startup(&[0, 3, 0, 0, b'u']).is_err());
    }
}
