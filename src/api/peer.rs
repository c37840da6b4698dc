//! Who is on the other end of a Unix socket connection: `SO_PEERCRED` (uid, gid, pid) through
//! tokio, plus the peer's supplementary groups.

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::net::UnixStream;

use super::stream::ApiListener;
use crate::config::access::{process_groups, Peer};

/// Connection info axum hands to every request of a connection.
#[derive(Clone, Debug)]
pub struct PeerInfo(pub Option<Peer>);

impl PeerInfo {
    /// The peer of an accepted connection (none if the kernel would not say).
    pub fn of(stream: &UnixStream) -> PeerInfo {
        PeerInfo(stream.peer_cred().ok().map(|c| {
            let pid = c.pid();
            Peer {
                uid: c.uid(),
                gid: c.gid(),
                pid,
                groups: pid.map(process_groups).unwrap_or_default(),
            }
        }))
    }
}

impl Connected<IncomingStream<'_, ApiListener>> for PeerInfo {
    fn connect_info(stream: IncomingStream<'_, ApiListener>) -> Self {
        stream.remote_addr().clone()
    }
}
