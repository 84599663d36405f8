//! `efm_agent::notify` against real deliveries on loopback: a real SMTP server (Python's
//! aiosmtpd, installed by `cargo xtask setup`, writing a Maildir) and a `script.notification`
//! recording its argv. Also a port where nothing listens and a server that accepts and never
//! answers: `send` returns at once, the mail is given up within `smtp.timeout`, and the script
//! still gets every notification.
//!
//! `cargo test -p efm-tests --test notify`

use std::{
    collections::HashMap,
    fs,
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use efm_agent::{
    config::{self, Config},
    notify::{Event, NodeRole, Notifier, ScriptResult},
};
use efm_tests::pg::TempDir;

/// The Debian interpreter: `python3-aiosmtpd` installs the module for it (a `python3` earlier
/// on `PATH`, e.g. pyenv's, does not see it).
const PYTHON: &str = "/usr/bin/python3";

const BASE: &str = "db.user=efm\ndb.port=5444\ndb.database=appdb\ndb.service.owner=postgres\n\
db.data.dir=/var/lib/pg\nbind.address=127.0.0.1:7800\n";

fn config(extra: &str) -> Config {
    config::from_properties(&format!("{BASE}{extra}\n"), Path::new("/etc/efm/acctg.properties"), "acctg", Vec::new())
        .unwrap_or_else(|e| panic!("{e}"))
        .config
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// aiosmtpd on 127.0.0.1, storing every message in a Maildir; killed on drop (also on panic).
struct SmtpServer {
    child: Child,
    port: u16,
    maildir: PathBuf,
}

impl SmtpServer {
    fn start(dir: &Path) -> Self {
        let check = Command::new(PYTHON).args(["-c", "import aiosmtpd"]).output();
        match check {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!(
                "aiosmtpd is missing for {PYTHON} ({}): run `cargo xtask setup` (installs python3-aiosmtpd)",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => panic!("cannot run {PYTHON}: {e}; run `cargo xtask setup` (installs python3-aiosmtpd)"),
        }
        let maildir = dir.join("maildir");
        let port = free_port();
        let child = Command::new(PYTHON)
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting aiosmtpd: {e}"));
        let server = Self { child, port, maildir };
        let until = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "aiosmtpd did not listen on 127.0.0.1:{port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// Every stored message: (headers, body), headers unfolded, names lower-cased.
    fn messages(&self) -> Vec<(HashMap<String, String>, String)> {
        let Ok(entries) = fs::read_dir(self.maildir.join("new")) else { return Vec::new() };
        let files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
        let mut mails: Vec<_> = files.iter().map(|f| parse_message(&fs::read_to_string(f).unwrap())).collect();
        // In sending order: the Message-ID ends in the sender's running count
        // (`<efm.T.PID.N@host>`). Maildir names do not sort by time (Python writes the
        // microseconds without zero padding), which made this order flaky.
        mails.sort_by_key(|(h, _)| {
            h.get("message-id")
                .and_then(|id| id.split('@').next()?.rsplit('.').next()?.parse::<u64>().ok())
                .unwrap_or(u64::MAX)
        });
        mails
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_message(raw: &str) -> (HashMap<String, String>, String) {
    let raw = raw.replace("\r\n", "\n");
    let (head, body) = raw.split_once("\n\n").unwrap_or((&raw, ""));
    let mut headers: HashMap<String, String> = HashMap::new();
    let mut last: Option<String> = None;
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(k) = &last {
                headers.get_mut(k).unwrap().push_str(line);
            }
        } else if let Some((k, v)) = line.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            headers.insert(k.clone(), v.trim().to_owned());
            last = Some(k);
        }
    }
    let body = match headers.get("content-transfer-encoding").map(|s| s.to_ascii_lowercase()) {
        Some(e) if e == "quoted-printable" => decode_qp(body),
        _ => body.to_owned(),
    };
    (headers, body)
}

fn decode_qp(s: &str) -> String {
    let joined = s.replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            if let Some(b) = joined.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// A `script.notification` appending its arguments (NUL-separated, one record per call).
fn recorder(dir: &Path) -> (PathBuf, PathBuf) {
    let out = dir.join("calls");
    let p = dir.join("record.sh");
    fs::write(
        &p,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\0' \"$a\" >> {0}; done\nprintf '\\036' >> {0}\n",
            out.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    (p, out)
}

fn calls(out: &Path) -> Vec<Vec<String>> {
    fs::read_to_string(out)
        .unwrap_or_default()
        .split('\u{1e}')
        .filter(|c| !c.is_empty())
        .map(|c| c.split('\0').filter(|a| !a.is_empty()).map(str::to_owned).collect())
        .collect()
}

fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_owned()
}

fn fence_error() -> Event {
    Event::FencingScriptError {
        result: ScriptResult {
            script: "/usr/local/bin/fence.sh %p %f".into(),
            exit: "3".into(),
            output: "switch unreachable".into(),
        },
    }
}

#[tokio::test]
async fn mail_and_script_get_notifications_from_the_level_up() {
    let dir = TempDir::new("notify-mail");
    let smtp = SmtpServer::start(dir.path());
    let (script, out) = recorder(dir.path());
    let n = Notifier::start(&config(&format!(
        "notification.level=WARNING\nuser.email=dba@example.com, ops@example.org\nfrom.email=efm@%h\n\
         smtp.server=127.0.0.1\nsmtp.port={}\nsmtp.timeout=10\nscript.notification={} %s %b\n\
         virtual.ip=192.0.2.10\nvirtual.ip.prefix=24",
        smtp.port,
        script.display()
    )));

    let start = Instant::now();
    n.send(Event::StandbyAgentRunning); // INFO: logged only
    n.send(Event::FailoverCompleted { old_primary: Some("127.0.0.2".into()), new_primary: "127.0.0.3".into() });
    n.send(fence_error());
    n.send(Event::DatabaseFailure { role: NodeRole::Primary, node: "127.0.0.2".into() });
    assert!(start.elapsed() < Duration::from_millis(200), "send waited: {:?}", start.elapsed());
    tokio::time::timeout(Duration::from_secs(30), n.flush()).await.expect("delivery took over 30 s");

    let st = n.stats();
    assert_eq!((st.sent, st.filtered, st.dropped), (4, 1, 0), "{st:?}");
    assert_eq!((st.mails_ok, st.mails_failed, st.scripts_ok, st.scripts_failed), (3, 0, 3, 0), "{st:?}");

    let subjects = [
        "Failover has completed on cluster acctg",
        "Fencing script error",
        "Primary database failure for cluster acctg",
    ];
    let mails = smtp.messages();
    assert_eq!(mails.len(), 3, "{mails:?}");
    let from = format!("efm@{}", host_name());
    let header = "EFM node:      127.0.0.1\nCluster name:  acctg\nDatabase name: appdb\nVIP support:   192.0.2.10\n\n";
    for (want, (h, body)) in subjects.iter().zip(&mails) {
        assert_eq!(h.get("subject").map(String::as_str), Some(*want), "{h:?}");
        assert_eq!(h.get("from").map(String::as_str), Some(from.as_str()), "{h:?}");
        assert!(h.get("message-id").is_some_and(|id| id.ends_with(&format!("@{}>", host_name()))), "{h:?}");
        assert!(h.contains_key("date"), "{h:?}");
        let to = h.get("to").unwrap();
        assert!(to.contains("dba@example.com") && to.contains("ops@example.org"), "{to}");
        let rcpt = h.get("x-rcptto").unwrap();
        assert!(rcpt.contains("dba@example.com") && rcpt.contains("ops@example.org"), "{rcpt}");
        assert!(body.replace("\r\n", "\n").starts_with(header), "{body:?}");
    }
    let (_, fence_body) = &mails[1];
    assert!(fence_body.contains("Failover has NOT occurred."), "{fence_body}");
    assert!(fence_body.contains("Exit Value: 3\nResults: switch unreachable"), "{fence_body}");
    assert!(mails.iter().all(|(h, _)| !h["subject"].contains("Standby agent running")));

    let c = calls(&out);
    assert_eq!(c.len(), 3, "{c:?}");
    for (want, call) in subjects.iter().zip(&c) {
        assert_eq!(call.len(), 2, "{call:?}");
        assert_eq!(call[0], *want);
        assert!(call[1].starts_with(header), "{:?}", call[1]);
    }
}

/// Sends one SEVERE notification with mail through `port`; returns how long `send` took and
/// how long until the lanes were done.
async fn deliver_through(port: u16, timeout_s: u32, script: &Path) -> (Notifier, Duration, Duration) {
    let n = Notifier::start(&config(&format!(
        "user.email=dba@example.com\nsmtp.port={port}\nsmtp.timeout={timeout_s}\nscript.notification={}",
        script.display()
    )));
    let start = Instant::now();
    n.send(fence_error());
    let sent = start.elapsed();
    tokio::time::timeout(Duration::from_mins(1), n.flush()).await.expect("flush hung");
    (n, sent, start.elapsed())
}

#[tokio::test]
async fn dead_mail_server_costs_nothing_and_the_script_still_runs() {
    let dir = TempDir::new("notify-dead");
    let (script, out) = recorder(dir.path());
    let port = free_port(); // bound, then closed: nothing listens
    let (n, sent, done) = deliver_through(port, 5, &script).await;
    assert!(sent < Duration::from_millis(100), "send waited {sent:?}");
    assert!(done < Duration::from_secs(5), "gave up after {done:?}");
    let st = n.stats();
    assert_eq!((st.mails_ok, st.mails_failed, st.scripts_ok), (0, 1, 1), "{st:?}");
    assert_eq!(calls(&out).len(), 1);
}

#[tokio::test]
async fn silent_mail_server_is_given_up_within_the_timeout() {
    let dir = TempDir::new("notify-silent");
    let (script, out) = recorder(dir.path());
    // Accepts connections and never says a word (no 220 greeting).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, peer)) = listener.accept().await {
            let _: SocketAddr = peer;
            held.push(s);
        }
    });
    let n = Notifier::start(&config(&format!(
        "user.email=dba@example.com\nsmtp.port={port}\nsmtp.timeout=2\nscript.notification={}",
        script.display()
    )));
    let start = Instant::now();
    n.send(fence_error());
    let sent = start.elapsed();
    assert!(sent < Duration::from_millis(100), "send waited {sent:?}");
    // The script lane does not wait for the stuck mail.
    while calls(&out).is_empty() {
        assert!(start.elapsed() < Duration::from_millis(1800), "the script waited for the mail");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::timeout(Duration::from_secs(30), n.flush()).await.expect("flush hung");
    let done = start.elapsed();
    assert!(done >= Duration::from_millis(1900), "gave up too early: {done:?}");
    assert!(done < Duration::from_secs(5), "gave up after {done:?}");
    let st = n.stats();
    assert_eq!((st.mails_ok, st.mails_failed, st.scripts_ok), (0, 1, 1), "{st:?}");
    holder.abort();
}
