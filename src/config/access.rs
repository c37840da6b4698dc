//! Who may use a target: uids, gids, user and group names, the latter resolved when the
//! configuration is loaded (from /etc/passwd and /etc/group, no libc calls).

use std::collections::BTreeSet;
use std::path::Path;

/// The resolved allow-lists of one target.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Access {
    pub uids: BTreeSet<u32>,
    pub gids: BTreeSet<u32>,
}

/// Which clients of a target may share server connections: the uid is the wall (a server
/// connection, the prepared statements on it and whatever session state a client could leave
/// there go only to clients of the same uid), unless the operator declared several uids one
/// trust domain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustDomains {
    groups: Vec<Vec<u32>>,
}

impl TrustDomains {
    /// Groups already checked: each of at least two uids, no uid in two.
    pub fn new(groups: Vec<Vec<u32>>) -> TrustDomains {
        TrustDomains { groups }
    }

    pub fn groups(&self) -> &[Vec<u32>] {
        &self.groups
    }

    /// The domain of `uid`: the smallest uid of its group, or itself. (A group's smallest uid
    /// is in that group, so no uid outside it has the same domain.)
    pub fn domain(&self, uid: u32) -> u32 {
        self.groups
            .iter()
            .find(|g| g.contains(&uid))
            .and_then(|g| g.iter().min().copied())
            .unwrap_or(uid)
    }
}

/// What a peer is: from `SO_PEERCRED`, plus its supplementary groups (read by `listen::peer`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    pub groups: Vec<u32>,
}

impl Access {
    /// Which rule lets `peer` in, if any.
    pub fn allows(&self, peer: &Peer) -> Option<String> {
        if self.uids.contains(&peer.uid) {
            return Some(format!("uid {}", peer.uid));
        }
        std::iter::once(peer.gid)
            .chain(peer.groups.iter().copied())
            .find(|g| self.gids.contains(g))
            .map(|g| format!("gid {g}"))
    }
}

/// Looks a name up in a `name:x:id:...` file.
fn lookup(file: &Path, name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then(|| f.nth(1)?.parse().ok())?
    })
}

/// The uid of a user name.
pub fn user_id(name: &str) -> Option<u32> {
    lookup(Path::new("/etc/passwd"), name)
}

/// The gid of a group name.
pub fn group_id(name: &str) -> Option<u32> {
    lookup(Path::new("/etc/group"), name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_resolves() {
        assert_eq!(user_id("root"), Some(0));
        assert_eq!(group_id("root"), Some(0));
        assert_eq!(user_id("no-such-user-credswap"), None);
    }

    #[test]
    fn rules() {
        let a = Access {
            uids: [1001].into(),
            gids: [2000].into(),
        };
        let peer = |uid, gid, groups: Vec<u32>| Peer {
            uid,
            gid,
            pid: None,
            groups,
        };
        assert_eq!(a.allows(&peer(1001, 5, vec![])), Some("uid 1001".into()));
        assert_eq!(a.allows(&peer(7, 2000, vec![])), Some("gid 2000".into()));
        assert_eq!(
            a.allows(&peer(7, 5, vec![9, 2000])),
            Some("gid 2000".into())
        );
        assert_eq!(a.allows(&peer(7, 5, vec![9])), None);
    }
}
