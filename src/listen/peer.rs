//! Who is on the other end of a Unix socket connection: `SO_PEERCRED` (uid, gid, pid), read
//! once at accept, plus the peer's supplementary groups.
//!
//! Linux has `SO_PEERGROUPS` for the groups, but no safe binding of it exists in the crates we
//! use (rustix, socket2) and the crate forbids `unsafe`; so the groups come from
//! `/proc/PID/status`, read on a blocking thread so the accept path never blocks the runtime.
//! Under the unit's `ProtectProc=invisible` another user's `/proc` entry is hidden: then only
//! the primary gid from `SO_PEERCRED` is known, and `allow_groups` matches on it alone
//! (docs/security.md).

use tokio::net::UnixStream;

use crate::config::access::Peer;

/// The peer of an accepted connection; `None` if the kernel would not say.
pub async fn of(stream: &UnixStream) -> Option<Peer> {
    let cred = stream.peer_cred().ok()?;
    let pid = cred.pid();
    let groups = match pid {
        Some(pid) => tokio::task::spawn_blocking(move || process_groups(pid))
            .await
            .unwrap_or_default(),
        None => Vec::new(),
    };
    Some(Peer {
        uid: cred.uid(),
        gid: cred.gid(),
        pid,
        groups,
    })
}

/// Supplementary groups of a process, from `/proc/PID/status` (blocking; empty if hidden).
fn process_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_our_own_credentials() {
        let (a, _b) = UnixStream::pair().expect("socketpair");
        let peer = of(&a).await.expect("SO_PEERCRED on a socketpair");
        assert_eq!(peer.uid, rustix::process::getuid().as_raw());
        assert_eq!(peer.gid, rustix::process::getgid().as_raw());
        assert_eq!(peer.pid, Some(std::process::id() as i32));
        let ours: Vec<u32> = std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("Groups:"))
            .unwrap()
            .split_whitespace()
            .map(|g| g.parse().unwrap())
            .collect();
        assert_eq!(peer.groups, ours);
    }
}
