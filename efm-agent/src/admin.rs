//! The admin socket: how the `efm` command talks to the local agent.
//!
//! A Unix stream socket `<run_dir>/<cluster>.sock`, mode 0660, owner root and group `efm` (when
//! that group exists; root-only otherwise). One request per connection: a JSON object on one
//! line, answered by one JSON line.
//!
//! ```text
//! → {"version":1,"command":"cluster-status","args":[]}
//! ← {"ok":true,"result":{...}}
//! ← {"ok":false,"error":"unknown command \"frobnicate\"; known: cluster-status, node-status"}
//! ```
//! Malformed, oversized, wrong-version or unknown requests get an error answer; they never stop
//! the agent.

use std::{
    ffi::CString,
    io::{self, BufRead as _, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};

pub const PROTOCOL_VERSION: u32 = 1;
/// Longest request line accepted.
pub const MAX_REQUEST: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub version: u32,
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    #[must_use]
    pub fn ok(result: serde_json::Value) -> Self {
        Self { ok: true, result: Some(result), error: None }
    }

    #[must_use]
    pub fn err(msg: impl Into<String>) -> Self {
        Self { ok: false, result: None, error: Some(msg.into()) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot reach the efm agent of cluster {cluster} at {path}: {source} (is efm-agent running for this cluster?)")]
    Connect { cluster: String, path: PathBuf, source: io::Error },
    #[error("talking to the agent at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the agent at {path} sent an unreadable answer: {detail}")]
    Garbled { path: PathBuf, detail: String },
    #[error("admin socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
}

/// The socket path of a cluster.
#[must_use]
pub fn socket_path(run_dir: &Path, cluster: &str) -> PathBuf {
    run_dir.join(format!("{cluster}.sock"))
}

/// Parses one request line, or says what is wrong with it.
pub fn parse_request(line: &str) -> Result<Request, String> {
    let req: Request = serde_json::from_str(line.trim()).map_err(|e| format!("malformed request: {e}"))?;
    if req.version != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {} is not supported (this agent speaks {PROTOCOL_VERSION}); use the efm command of the same release",
            req.version
        ));
    }
    Ok(req)
}

/// Binds the admin socket with its permissions.
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener, AdminError> {
    let err = |source| AdminError::Bind { path: path.to_owned(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    // A socket file left by a crashed agent: we hold the cluster lock, so it is stale.
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    if let Some(gid) = efm_gid() {
        let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| err(io::Error::other(e)))?;
        // SAFETY: chown on a NUL-terminated path; uid 0 (root), gid of group efm.
        if unsafe { libc::chown(c.as_ptr(), 0, gid) } != 0 {
            return Err(err(io::Error::last_os_error()));
        }
    } else {
        tracing::warn!(socket = %path.display(), "group efm does not exist: the admin socket is usable by root only");
    }
    Ok(listener)
}

fn efm_gid() -> Option<libc::gid_t> {
    let name = CString::new("efm").ok()?;
    // SAFETY: getgrnam returns a pointer into static storage or null; we copy the gid at once.
    let gr = unsafe { libc::getgrnam(name.as_ptr()) };
    // SAFETY: non-null pointer from getgrnam.
    (!gr.is_null()).then(|| unsafe { (*gr).gr_gid })
}

/// Serves requests until the task is dropped. `handle` answers one parsed request.
pub async fn serve<F, Fut>(listener: tokio::net::UnixListener, handle: F)
where
    F: Fn(Request) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Response> + Send,
{
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let (rd, mut wr) = stream.into_split();
            let mut reader = tokio::io::BufReader::new(rd).take(MAX_REQUEST as u64 + 1);
            let mut line = String::new();
            let resp = match tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line)).await {
                Err(_) => Response::err("request timed out"),
                Ok(Err(e)) => Response::err(format!("unreadable request: {e}")),
                Ok(Ok(_)) if line.len() > MAX_REQUEST => {
                    Response::err(format!("request longer than {MAX_REQUEST} bytes"))
                }
                Ok(Ok(_)) => match parse_request(&line) {
                    Ok(req) => handle(req).await,
                    Err(msg) => Response::err(msg),
                },
            };
            let mut out = serde_json::to_string(&resp).unwrap_or_else(|e| {
                format!(r#"{{"ok":false,"error":"cannot encode the answer: {e}"}}"#)
            });
            out.push('\n');
            let _ = wr.write_all(out.as_bytes()).await;
        });
    }
}

/// Sends one request and waits for the answer (blocking; for the `efm` command).
pub fn request(run_dir: &Path, cluster: &str, req: &Request, timeout: Duration) -> Result<Response, AdminError> {
    let path = socket_path(run_dir, cluster);
    let io_err = |source| AdminError::Io { path: path.clone(), source };
    let mut s = UnixStream::connect(&path)
        .map_err(|source| AdminError::Connect { cluster: cluster.to_owned(), path: path.clone(), source })?;
    s.set_read_timeout(Some(timeout)).map_err(io_err)?;
    s.set_write_timeout(Some(timeout)).map_err(io_err)?;
    let mut line = serde_json::to_string(req).map_err(|e| io_err(io::Error::other(e)))?;
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(io_err)?;
    let mut answer = String::new();
    io::BufReader::new(s).read_line(&mut answer).map_err(io_err)?;
    serde_json::from_str(&answer).map_err(|e| AdminError::Garbled { path: path.clone(), detail: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_validated() {
        assert_eq!(
            parse_request(r#"{"version":1,"command":"cluster-status"}"#).unwrap(),
            Request { version: 1, command: "cluster-status".into(), args: vec![] }
        );
        assert!(parse_request("not json").unwrap_err().starts_with("malformed request"));
        assert!(parse_request(r#"{"version":9,"command":"x"}"#).unwrap_err().contains("version 9"));
        assert!(parse_request(r#"{"version":1,"command":"x","evil":1}"#).unwrap_err().contains("unknown field"));
        assert!(parse_request(r#"{"version":1}"#).unwrap_err().contains("command"));
    }

    #[test]
    fn server_answers_good_bad_and_huge_requests() {
        let dir = std::env::temp_dir().join(format!("efm-admin-{}", std::process::id()));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let path = socket_path(&dir, "acctg");
        let listener = rt.block_on(async { bind(&path) }).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        rt.spawn(serve(listener, |req: Request| async move {
            if req.command == "echo" {
                Response::ok(serde_json::json!({ "args": req.args }))
            } else {
                Response::err(format!("unknown command {:?}", req.command))
            }
        }));
        let t = Duration::from_secs(5);
        let dir2 = dir.clone();
        let answers = std::thread::spawn(move || {
            let ok = request(&dir2, "acctg", &Request { version: 1, command: "echo".into(), args: vec!["x".into()] }, t).unwrap();
            let unknown = request(&dir2, "acctg", &Request { version: 1, command: "nope".into(), args: vec![] }, t).unwrap();
            let mut raw = UnixStream::connect(socket_path(&dir2, "acctg")).unwrap();
            raw.write_all(&vec![b'x'; MAX_REQUEST + 10]).unwrap();
            raw.write_all(b"\n").unwrap();
            let mut line = String::new();
            io::BufReader::new(raw).read_line(&mut line).unwrap();
            let missing = request(&dir2, "other", &Request { version: 1, command: "echo".into(), args: vec![] }, t);
            (ok, unknown, line, missing.unwrap_err().to_string())
        });
        let (ok, unknown, huge, missing) = rt.block_on(async {
            loop {
                if answers.is_finished() {
                    break answers.join().unwrap();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        assert_eq!(ok.result, Some(serde_json::json!({ "args": ["x"] })));
        assert_eq!(unknown.error.as_deref(), Some("unknown command \"nope\""));
        assert!(huge.contains("longer than"), "{huge}");
        assert!(missing.contains("is efm-agent running"), "{missing}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
