//! A listening socket file: bound with its mode and group set before it appears (bind at a
//! temporary name, chmod/chown, rename), a stale file from a crash replaced, a live daemon
//! refused, and the file removed when the guard drops. Every Unix-socket front end binds here.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// What to bind: the path, its mode and group, and the configuration key that names the path
/// (so an error says which setting to change).
#[derive(Clone, Debug)]
pub struct SocketSpec {
    pub path: PathBuf,
    pub mode: u32,
    pub gid: Option<u32>,
    pub key: &'static str,
}

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error(
        "another credswap is already listening on {0}; stop it first (systemctl stop credswap)"
    )]
    AlreadyRunning(PathBuf),
    #[error("{0} exists and is not a socket; remove it or choose another {1}")]
    NotASocket(PathBuf, &'static str),
    #[error(
        "cannot give the socket {path} to group {gid} ({section}.socket_group): the daemon is not a member of that group; fix: add it to the service with `systemctl edit credswap` and `[Service]` `SupplementaryGroups=<the group>` (docs/operations.md), or choose a group the daemon runs as"
    )]
    GroupNotJoined {
        path: PathBuf,
        gid: u32,
        section: &'static str,
    },
    #[error("cannot create the socket {path} ({key}): {source}")]
    Io {
        path: PathBuf,
        key: &'static str,
        source: io::Error,
    },
}

/// Removes the socket file when dropped.
#[derive(Debug)]
pub struct SocketGuard(PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl SocketGuard {
    /// The socket file's path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

fn io_err<'a>(path: &'a Path, key: &'static str) -> impl FnOnce(io::Error) -> SocketError + 'a {
    move |source| SocketError::Io {
        path: path.to_path_buf(),
        key,
        source,
    }
}

/// Binds the socket as specified. Blocking file-system calls: run it at start-up, before the
/// runtime serves anything, or on a blocking thread.
pub fn bind(spec: &SocketSpec) -> Result<(UnixListener, SocketGuard), SocketError> {
    let path = &spec.path;
    let key = spec.key;
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(SocketError::NotASocket(path.clone(), key));
            }
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => return Err(SocketError::AlreadyRunning(path.clone())),
                // Nobody answers: a crash left it behind.
                Err(_) => std::fs::remove_file(path).map_err(io_err(path, key))?,
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path, key)(e)),
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent, key))?;
    }
    let staging = path.with_file_name(format!(
        ".{}.{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("credswap.sock"),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&staging);
    let listener = UnixListener::bind(&staging).map_err(io_err(&staging, key))?;
    let ready = (|| {
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(spec.mode))
            .map_err(io_err(path, key))?;
        if let Some(gid) = spec.gid {
            // Without CAP_CHOWN (the unit grants none) a process may only give a file to a
            // group it is a member of.
            std::os::unix::fs::chown(&staging, None, Some(gid)).map_err(|e| {
                if e.kind() == io::ErrorKind::PermissionDenied {
                    SocketError::GroupNotJoined {
                        path: path.clone(),
                        gid,
                        section: key.split('.').next().unwrap_or(key),
                    }
                } else {
                    io_err(path, key)(e)
                }
            })?;
        }
        std::fs::rename(&staging, path).map_err(io_err(path, key))
    })();
    if let Err(e) = ready {
        let _ = std::fs::remove_file(&staging);
        return Err(e);
    }
    Ok((listener, SocketGuard(path.clone())))
}
