//! What every front end shares: binding a socket file safely ([`socket`]), the peer's
//! credentials read once at accept ([`peer`]), streams registered for read readiness only
//! ([`stream`]), the accept loop with connection limits and graceful stop ([`accept`]), and
//! per-peer request rate limits ([`ratelimit`]). The HTTP API, the webhook listener and the
//! PostgreSQL front end sit on top of it as equal neighbours.

pub mod accept;
pub mod peer;
pub mod ratelimit;
pub mod socket;
pub mod stream;

pub use accept::{Accepted, ConnLimits, Gate, Refused, Slot, TcpConn, UnixConn};
pub use socket::{SocketError, SocketGuard, SocketSpec};
pub use stream::ReadInterestStream;
