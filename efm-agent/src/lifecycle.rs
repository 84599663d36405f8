//! Process plumbing: the per-cluster lock, the pid file, and systemd readiness notification.

use std::{
    fs,
    io::{self, Read as _, Seek as _, Write as _},
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("another efm-agent for cluster {cluster} is already running (pid {pid}, lock {path}); stop it first")]
    AlreadyRunning { cluster: String, pid: String, path: PathBuf },
    #[error("lock file {path}: {source}")]
    Lock { path: PathBuf, source: io::Error },
    #[error("pid file {path}: {source}")]
    Pid { path: PathBuf, source: io::Error },
}

/// An exclusive `flock` on `<lock_dir>/<cluster>.lock`, holding our pid; released when dropped or
/// when the process dies (the kernel drops the lock with the descriptor).
#[derive(Debug)]
pub struct ClusterLock {
    file: fs::File,
    path: PathBuf,
}

impl ClusterLock {
    pub fn acquire(lock_dir: &Path, cluster: &str) -> Result<Self, LifecycleError> {
        let path = lock_dir.join(format!("{cluster}.lock"));
        let err = |source| LifecycleError::Lock { path: path.clone(), source };
        fs::create_dir_all(lock_dir).map_err(err)?;
        let mut file =
            fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(err)?;
        if let Err(e) = rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            if e == rustix::io::Errno::WOULDBLOCK {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(LifecycleError::AlreadyRunning {
                    cluster: cluster.to_owned(),
                    pid: if pid.is_empty() { "unknown".into() } else { pid.to_owned() },
                    path,
                });
            }
            return Err(err(e.into()));
        }
        file.set_len(0).map_err(err)?;
        file.rewind().map_err(err)?;
        writeln!(file, "{}", std::process::id()).and_then(|()| file.sync_all()).map_err(err)?;
        Ok(Self { file, path })
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ClusterLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
    }
}

/// `<run_dir>/<cluster>.pid`, removed when dropped.
#[derive(Debug)]
pub struct PidFile(PathBuf);

impl PidFile {
    pub fn create(run_dir: &Path, cluster: &str) -> Result<Self, LifecycleError> {
        let path = run_dir.join(format!("{cluster}.pid"));
        fs::create_dir_all(run_dir)
            .and_then(|()| fs::write(&path, format!("{}\n", std::process::id())))
            .map_err(|source| LifecycleError::Pid { path: path.clone(), source })?;
        Ok(Self(path))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Sends a state line to systemd (`sd_notify`): `READY=1`, `STATUS=...`, `STOPPING=1`. A no-op
/// when not started by systemd (`NOTIFY_SOCKET` unset).
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let Ok(sock) = UnixDatagram::unbound() else { return };
    let bytes = path.as_encoded_bytes();
    let res = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt as _;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
    } else {
        sock.send_to(state.as_bytes(), Path::new(&path))
    };
    if let Err(e) = res {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_with_the_holder_pid() {
        let dir = std::env::temp_dir().join(format!("efm-lock-{}", std::process::id()));
        let first = ClusterLock::acquire(&dir, "acctg").unwrap();
        let err = ClusterLock::acquire(&dir, "acctg").unwrap_err().to_string();
        assert!(err.contains("already running") && err.contains(&std::process::id().to_string()), "{err}");
        let other = ClusterLock::acquire(&dir, "sales").expect("another cluster is independent");
        drop((first, other));
        ClusterLock::acquire(&dir, "acctg").expect("released on drop");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn notify_reaches_the_socket() {
        let dir = std::env::temp_dir().join(format!("efm-notify-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        // SAFETY (test): single-threaded use of the environment within this test binary's
        // thread; no other test reads NOTIFY_SOCKET.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
        notify("READY=1");
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let _ = fs::remove_dir_all(&dir);
    }
}
