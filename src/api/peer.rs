//! Who is on the other end of a Unix socket connection: `SO_PEERCRED` (uid, gid, pid) through
//! tokio, plus the peer's supplementary groups.

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::net::UnixListener;

use crate::config::access::{process_groups, Peer};

/// Connection info axum hands to every request of a connection.
#[derive(Clone, Debug)]
pub struct PeerInfo(pub Option<Peer>);

impl Connected<IncomingStream<'_, UnixListener>> for PeerInfo {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        PeerInfo(stream.io().peer_cred().ok().map(|c| {
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
