//! Which clients may be given the same server connection. The peer's uid is credswap's
//! security boundary, so it is a wall here too: a server connection, the prepared statements
//! on it, and whatever session state a client could leave there are lent only among clients
//! of one trust domain (a uid, or a group of uids the operator declared with a target's
//! `trust_domains`) that asked with the same login parameters. This holds by construction,
//! whatever SQL a client sends; the reset between clients (transaction mode) and `DISCARD ALL`
//! (session mode) keep clients of one domain apart as well.

/// The login parameters a connection was opened with (the client's, minus those credswap
/// tracks or owns; sorted).
pub type Params = Vec<(String, String)>;

/// The key a server connection is kept and lent under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lane {
    /// The trust domain: the smallest uid of the peer's declared group, or the peer's uid.
    pub domain: u32,
    pub params: Params,
}
