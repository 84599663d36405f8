//! The admin socket: how the `efm` command talks to the local agent.
//!
//! A Unix stream socket `<run_dir>/<cluster>.sock`, mode 0660, owner root and group `efm` (when
//! that group exists; root-only otherwise). One request per connection: a JSON object on one
//! line, answered by one JSON line. The request is an [`AdminCommand`] (the `command` tag and
//! its typed fields) plus the protocol version:
//!
//! ```text
//! → {"version":2,"command":"cluster-status"}
//! → {"version":2,"command":"promote","switchover":true,"quiet":false,"force":false,"sourcenode":"10.0.1.9"}
//! → {"version":2,"command":"set-priority","address":"10.0.1.9","priority":1}
//! ← {"ok":true,"result":{...}}
//! ← {"ok":false,"error":"unknown command \"frobnicate\"; known: cluster-status, node-status, ..."}
//! ```
//! Malformed, oversized, wrong-version or unknown requests get an error answer; they never stop
//! the agent. The version is checked before anything else, so an `efm` of another release gets
//! "protocol version N is not supported" rather than a complaint about a field.

use std::{
    io::{self, BufRead as _, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};

/// 2 since requests are typed ([`AdminCommand`]); version 1 sent `command` and `args` words.
pub const PROTOCOL_VERSION: u32 = 2;
/// Longest request line accepted.
pub const MAX_REQUEST: usize = 64 * 1024;

/// Every request the agent answers, as `efm` sends it. Node addresses stay the operator's words
/// (`IP` or `IP:PORT`): the agent resolves them against the cluster's nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case", deny_unknown_fields)]
pub enum AdminCommand {
    ClusterStatus,
    NodeStatus,
    /// `efm promote [-switchover [-sourcenode ADDRESS] [-quiet]] [-force]`.
    Promote {
        #[serde(default)]
        switchover: bool,
        #[serde(default)]
        quiet: bool,
        #[serde(default)]
        force: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sourcenode: Option<String>,
    },
    Resume,
    SetPriority {
        address: String,
        priority: u32,
    },
    AllowNode {
        address: String,
    },
    DisallowNode {
        address: String,
    },
    StopCluster,
    /// `efm reset-members` (EFM 5): failed members stop counting for the quorum.
    ResetMembers,
    /// `efm rejoin [--force]`: rewind this former primary and make it a standby of the primary.
    Rejoin {
        #[serde(default)]
        force: bool,
    },
}

impl AdminCommand {
    /// Every command name, as on the wire and on `efm`'s command line.
    pub const NAMES: &'static [&'static str] = &[
        "cluster-status",
        "node-status",
        "promote",
        "resume",
        "set-priority",
        "allow-node",
        "disallow-node",
        "stop-cluster",
        "reset-members",
        "rejoin",
    ];

    /// The command's name, as on the wire and on `efm`'s command line.
    #[must_use]
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::ClusterStatus => "cluster-status",
            Self::NodeStatus => "node-status",
            Self::Promote { .. } => "promote",
            Self::Resume => "resume",
            Self::SetPriority { .. } => "set-priority",
            Self::AllowNode { .. } => "allow-node",
            Self::DisallowNode { .. } => "disallow-node",
            Self::StopCluster => "stop-cluster",
            Self::ResetMembers => "reset-members",
            Self::Rejoin { .. } => "rejoin",
        }
    }
}

impl std::fmt::Display for AdminCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One request: the protocol version and the command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub version: u32,
    pub command: AdminCommand,
}

impl Request {
    /// A request of this release's protocol.
    #[must_use]
    pub fn new(command: AdminCommand) -> Self {
        Self { version: PROTOCOL_VERSION, command }
    }

    /// The JSON line (without the newline).
    pub fn to_json(&self) -> serde_json::Result<String> {
        #[derive(Serialize)]
        struct Wire<'a> {
            version: u32,
            #[serde(flatten)]
            command: &'a AdminCommand,
        }
        serde_json::to_string(&Wire { version: self.version, command: &self.command })
    }
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
    #[error(
        "cannot reach the efm agent of cluster {cluster} at {path}: {source} (is efm-agent running for this cluster?)"
    )]
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

/// Parses one request line, or says what is wrong with it: not JSON, another protocol version
/// (checked first), an unknown command (named, with the known ones), or a field that is missing,
/// unknown or of the wrong type for the command.
pub fn parse_request(line: &str) -> Result<Request, String> {
    let mut v: serde_json::Value = serde_json::from_str(line.trim()).map_err(|e| format!("malformed request: {e}"))?;
    let Some(obj) = v.as_object_mut() else {
        return Err("malformed request: not a JSON object".into());
    };
    let version = match obj.remove("version") {
        None => return Err("malformed request: no \"version\"".into()),
        Some(n) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("malformed request: version {n} is not a number"))?,
    };
    if version != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {version} is not supported (this agent speaks {PROTOCOL_VERSION}); use the efm command of the same release"
        ));
    }
    let name = match obj.get("command") {
        None => return Err("malformed request: no \"command\"".into()),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => return Err(format!("malformed request: command {other} is not a string")),
    };
    if !AdminCommand::NAMES.contains(&name.as_str()) {
        return Err(format!("unknown command {name:?}; known: {}", AdminCommand::NAMES.join(", ")));
    }
    let fields: Vec<String> = obj.keys().filter(|k| *k != "command").map(|k| format!("`{k}`")).collect();
    let command = AdminCommand::deserialize(v).map_err(|e| format!("malformed {name} request: {e}"))?;
    // serde checks the fields of the commands that have some; these have none.
    let unit = matches!(
        command,
        AdminCommand::ClusterStatus
            | AdminCommand::NodeStatus
            | AdminCommand::Resume
            | AdminCommand::StopCluster
            | AdminCommand::ResetMembers
    );
    if unit && !fields.is_empty() {
        return Err(format!("malformed {name} request: unknown field {}, {name} takes none", fields.join(", ")));
    }
    Ok(Request { version, command })
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
    match crate::users::group_gid("efm") {
        Ok(Some(gid)) => std::os::unix::fs::chown(path, Some(0), Some(gid)).map_err(err)?,
        Ok(None) => {
            tracing::warn!(socket = %path.display(), "group efm does not exist: the admin socket is usable by root only");
        }
        Err(e) => {
            tracing::warn!(socket = %path.display(), error = %e, "cannot look up group efm: the admin socket is usable by root only");
        }
    }
    Ok(listener)
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
            let mut out = serde_json::to_string(&resp)
                .unwrap_or_else(|e| format!(r#"{{"ok":false,"error":"cannot encode the answer: {e}"}}"#));
            out.push('\n');
            let _ = wr.write_all(out.as_bytes()).await;
        });
    }
}

/// Sends one request and waits for the answer (blocking; for the `efm` command).
pub fn request(run_dir: &Path, cluster: &str, req: &Request, timeout: Duration) -> Result<Response, AdminError> {
    let path = socket_path(run_dir, cluster);
    let io_err = |source| AdminError::Io { path: path.clone(), source };
    let mut s = UnixStream::connect(&path).map_err(|source| AdminError::Connect {
        cluster: cluster.to_owned(),
        path: path.clone(),
        source,
    })?;
    s.set_read_timeout(Some(timeout)).map_err(io_err)?;
    s.set_write_timeout(Some(timeout)).map_err(io_err)?;
    let mut line = req.to_json().map_err(|e| io_err(io::Error::other(e)))?;
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
            parse_request(r#"{"version":2,"command":"cluster-status"}"#).unwrap(),
            Request::new(AdminCommand::ClusterStatus)
        );
        assert_eq!(
            parse_request(r#"{"command":"set-priority","address":"10.0.1.9","priority":1,"version":2}"#)
                .unwrap()
                .command,
            AdminCommand::SetPriority { address: "10.0.1.9".into(), priority: 1 }
        );
        assert_eq!(
            parse_request(r#"{"version":2,"command":"promote","switchover":true}"#).unwrap().command,
            AdminCommand::Promote { switchover: true, quiet: false, force: false, sourcenode: None }
        );
        assert!(parse_request("not json").unwrap_err().starts_with("malformed request"));
        assert!(parse_request("[2]").unwrap_err().contains("not a JSON object"));
        assert!(parse_request(r#"{"version":9,"command":"x"}"#).unwrap_err().contains("version 9"));
        let v1 = parse_request(r#"{"version":1,"command":"promote","args":["switchover"]}"#).unwrap_err();
        assert!(v1.contains("protocol version 1 is not supported (this agent speaks 2)"), "{v1}");
        let unknown = parse_request(r#"{"version":2,"command":"frobnicate"}"#).unwrap_err();
        assert!(
            unknown.starts_with("unknown command \"frobnicate\"; known: cluster-status, node-status, promote"),
            "{unknown}"
        );
        let extra = parse_request(r#"{"version":2,"command":"resume","evil":1}"#).unwrap_err();
        assert!(extra.starts_with("malformed resume request") && extra.contains("evil"), "{extra}");
        let extra = parse_request(r#"{"version":2,"command":"promote","switchover":true,"evil":1}"#).unwrap_err();
        assert!(extra.starts_with("malformed promote request") && extra.contains("evil"), "{extra}");
        let missing = parse_request(r#"{"version":2,"command":"allow-node"}"#).unwrap_err();
        assert!(missing.contains("malformed allow-node request") && missing.contains("address"), "{missing}");
        let typed =
            parse_request(r#"{"version":2,"command":"set-priority","address":"a","priority":"high"}"#).unwrap_err();
        assert!(typed.contains("malformed set-priority request"), "{typed}");
        assert!(parse_request(r#"{"version":2}"#).unwrap_err().contains("command"));
        assert!(parse_request(r#"{"command":"resume"}"#).unwrap_err().contains("version"));
    }

    #[test]
    fn every_command_round_trips_and_is_named() {
        let all = [
            AdminCommand::ClusterStatus,
            AdminCommand::NodeStatus,
            AdminCommand::Promote {
                switchover: true,
                quiet: true,
                force: false,
                sourcenode: Some("198.18.0.9".into()),
            },
            AdminCommand::Resume,
            AdminCommand::SetPriority { address: "198.18.0.2:7800".into(), priority: 0 },
            AdminCommand::AllowNode { address: "198.18.0.3".into() },
            AdminCommand::DisallowNode { address: "198.18.0.3".into() },
            AdminCommand::StopCluster,
            AdminCommand::ResetMembers,
            AdminCommand::Rejoin { force: true },
        ];
        assert_eq!(all.iter().map(AdminCommand::as_str).collect::<Vec<_>>(), AdminCommand::NAMES);
        for c in all {
            let line = Request::new(c.clone()).to_json().unwrap();
            assert!(line.starts_with(&format!(r#"{{"version":2,"command":"{c}""#)), "{line}");
            assert_eq!(parse_request(&line).unwrap().command, c, "{line}");
        }
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
            match req.command {
                AdminCommand::AllowNode { address } => Response::ok(serde_json::json!({ "address": address })),
                other => Response::err(format!("not here: {other}")),
            }
        }));
        let t = Duration::from_secs(5);
        let dir2 = dir.clone();
        let answers = std::thread::spawn(move || {
            let ok =
                request(&dir2, "acctg", &Request::new(AdminCommand::AllowNode { address: "x".into() }), t).unwrap();
            let mut raw = UnixStream::connect(socket_path(&dir2, "acctg")).unwrap();
            raw.write_all(b"{\"version\":2,\"command\":\"nope\"}\n").unwrap();
            let mut unknown = String::new();
            io::BufReader::new(raw).read_line(&mut unknown).unwrap();
            let mut raw = UnixStream::connect(socket_path(&dir2, "acctg")).unwrap();
            raw.write_all(&vec![b'x'; MAX_REQUEST + 10]).unwrap();
            raw.write_all(b"\n").unwrap();
            let mut line = String::new();
            io::BufReader::new(raw).read_line(&mut line).unwrap();
            let missing = request(&dir2, "other", &Request::new(AdminCommand::Resume), t);
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
        assert_eq!(ok.result, Some(serde_json::json!({ "address": "x" })));
        let unknown: Response = serde_json::from_str(&unknown).unwrap();
        assert!(
            unknown.error.as_deref().is_some_and(|e| e.starts_with("unknown command \"nope\"; known: ")),
            "{unknown:?}"
        );
        assert!(huge.contains("longer than"), "{huge}");
        assert!(missing.contains("is efm-agent running"), "{missing}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
