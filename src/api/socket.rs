//! The API socket file: bound with its mode and group set before it appears (bind at a
//! temporary name, chmod/chown, rename), a stale file from a crash replaced, a live daemon
//! refused, and the file removed when the guard drops.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

use crate::config::Api;

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error(
        "another credswap is already listening on {0}; stop it first (systemctl stop credswap)"
    )]
    AlreadyRunning(PathBuf),
    #[error("{0} exists and is not a socket; remove it or choose another api.socket")]
    NotASocket(PathBuf),
    #[error("cannot create the API socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Removes the socket file when dropped.
#[derive(Debug)]
pub struct SocketGuard(PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SocketError + '_ {
    move |source| SocketError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Binds the API socket as configured.
pub fn bind(api: &Api) -> Result<(UnixListener, SocketGuard), SocketError> {
    let path = &api.socket;
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(SocketError::NotASocket(path.clone()));
            }
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => return Err(SocketError::AlreadyRunning(path.clone())),
                // Nobody answers: a crash left it behind.
                Err(_) => std::fs::remove_file(path).map_err(io_err(path))?,
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path)(e)),
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let staging = path.with_file_name(format!(
        ".{}.{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("credswap.sock"),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&staging);
    let listener = UnixListener::bind(&staging).map_err(io_err(&staging))?;
    let ready = (|| {
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(api.socket_mode))?;
        if let Some(gid) = api.socket_gid {
            std::os::unix::fs::chown(&staging, None, Some(gid))?;
        }
        std::fs::rename(&staging, path)
    })();
    if let Err(e) = ready {
        let _ = std::fs::remove_file(&staging);
        return Err(io_err(path)(e));
    }
    Ok((listener, SocketGuard(path.clone())))
}
