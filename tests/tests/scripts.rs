//! `efm_agent::scripts` with real processes (run as root): EFM placeholders reach the script's
//! argv, exit codes, timeouts that kill the whole process group, output capture and its cap,
//! running as another user, and missing scripts.
//!
//! `cargo test -p efm-tests --test scripts -- --test-threads=1`

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use efm_agent::scripts::{lookup_user, FailurePolicy, Hook, ScriptError, ScriptRunner, Substitutions};
use efm_tests::{pg::TempDir, require_root};

/// Writes an executable shell script `name` into `dir`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// True once `pid` no longer exists (or is a zombie awaiting its reaper).
fn gone(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn wait_gone(pid: i32, within: Duration) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if gone(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    gone(pid)
}

fn read_pid(p: &Path) -> i32 {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(pid) = fs::read_to_string(p).ok().and_then(|s| s.trim().parse().ok()) {
            return pid;
        }
        assert!(Instant::now() < until, "{} never written", p.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn subst() -> Substitutions {
    Substitutions {
        new_primary: Some("198.18.0.2".into()),
        failed_primary: Some("198.18.0.1".into()),
        host: Some("198.18.0.3".into()),
        node_type: Some("s".into()),
        subject: Some("Failover has completed on cluster acctg".into()),
        body: Some("Node: 198.18.0.2\nDetails: promoted".into()),
    }
}

const RECORD: &str = r#"out="$1"; shift; for a in "$@"; do printf '[%s]\n' "$a"; done > "$out""#;

#[tokio::test]
async fn placeholders_reach_argv() {
    require_root();
    let dir = TempDir::new("scripts");
    let rec = script(dir.path(), "record.sh", RECORD);
    let out = dir.path().join("argv.txt");
    let r = ScriptRunner::new();
    let t = Duration::from_secs(10);

    let o = r
        .run(Hook::Fence, &format!("{}  {} %p\t%f --old=%f 100%% %h", rec.display(), out.display()), &subst(), t, None)
        .await
        .unwrap();
    assert!(o.success(), "{o:?}");
    assert_eq!(fs::read_to_string(&out).unwrap(), "[198.18.0.2]\n[198.18.0.1]\n[--old=198.18.0.1]\n[100%]\n[%h]\n");

    r.run(Hook::PostPromotion, &format!("{} {} %f %p", rec.display(), out.display()), &subst(), t, None).await.unwrap();
    assert_eq!(fs::read_to_string(&out).unwrap(), "[198.18.0.1]\n[198.18.0.2]\n");

    r.run(Hook::LoadBalancerDetach, &format!("{} {} %h %t", rec.display(), out.display()), &subst(), t, None)
        .await
        .unwrap();
    assert_eq!(fs::read_to_string(&out).unwrap(), "[198.18.0.3]\n[s]\n");

    // script.notification gets the subject and the body as two arguments (body with its
    // newline intact: no shell, no word splitting).
    r.run(Hook::Notification, &format!("{} {}", rec.display(), out.display()), &subst(), t, None).await.unwrap();
    assert_eq!(
        fs::read_to_string(&out).unwrap(),
        "[Failover has completed on cluster acctg]\n[Node: 198.18.0.2\nDetails: promoted]\n"
    );

    // Unknown values keep the argument positions.
    r.run(Hook::Fence, &format!("{} {} %p %f", rec.display(), out.display()), &Substitutions::default(), t, None)
        .await
        .unwrap();
    assert_eq!(fs::read_to_string(&out).unwrap(), "[]\n[]\n");
}

#[tokio::test]
async fn exit_codes() {
    require_root();
    let dir = TempDir::new("scripts");
    let fail = script(dir.path(), "fail.sh", "echo fencing failed >&2; exit 7");
    let ok = script(dir.path(), "ok.sh", "exit 0");
    let r = ScriptRunner::new();
    let t = Duration::from_secs(10);

    let o = r.run(Hook::Fence, &format!("{} %p %f", fail.display()), &subst(), t, None).await.unwrap();
    assert_eq!(o.exit, Some(7));
    assert!(!o.success() && !o.timed_out);
    assert_eq!(o.stderr, "fencing failed\n");
    assert_eq!(Hook::Fence.failure_policy(), FailurePolicy::AbortPromotion);
    assert_eq!(o.report(), "Exit Value: 7\nResults: fencing failed");

    let o = r.run(Hook::PostPromotion, &ok.display().to_string(), &subst(), t, None).await.unwrap();
    assert_eq!(o.exit, Some(0));
    assert!(o.success());

    // Killed by a signal: no exit code.
    let sig = script(dir.path(), "sig.sh", "kill -KILL $$");
    let o = r.run(Hook::DbFailure, &sig.display().to_string(), &subst(), t, None).await.unwrap();
    assert_eq!((o.exit, o.signal), (None, Some(9)));
    assert!(!o.success());
}

#[tokio::test]
async fn hanging_script_is_killed_with_its_children() {
    require_root();
    let dir = TempDir::new("scripts");
    let pidfile = dir.path().join("child.pid");
    // Ignores SIGTERM (and so does its child, which inherits the disposition): only the
    // SIGKILL after the grace period ends them.
    let hang = script(
        dir.path(),
        "hang.sh",
        &format!("trap '' TERM\nsleep 100 &\necho $! > {}\nsleep 100", pidfile.display()),
    );
    let r = ScriptRunner::new().with_kill_grace(Duration::from_millis(500));
    let start = Instant::now();
    let o =
        r.run(Hook::CustomMonitor, &hang.display().to_string(), &subst(), Duration::from_secs(1), None).await.unwrap();
    let took = start.elapsed();
    assert!(o.timed_out, "{o:?}");
    assert!(!o.success());
    assert_eq!(o.exit, None);
    assert_eq!(o.signal, Some(libc::SIGKILL));
    assert!(took >= Duration::from_millis(1400) && took < Duration::from_secs(5), "took {took:?}");
    assert!(o.status_text().starts_with("timed out after"), "{}", o.status_text());
    let child = read_pid(&pidfile);
    assert!(wait_gone(child, Duration::from_secs(3)), "child {child} survived");

    // A script that honours SIGTERM ends at the timeout, without waiting for the grace.
    let pidfile2 = dir.path().join("child2.pid");
    let polite = script(dir.path(), "polite.sh", &format!("sleep 100 &\necho $! > {}\nsleep 100", pidfile2.display()));
    let r = ScriptRunner::new().with_kill_grace(Duration::from_secs(10));
    let start = Instant::now();
    let o =
        r.run(Hook::Fence, &polite.display().to_string(), &subst(), Duration::from_millis(500), None).await.unwrap();
    assert!(o.timed_out);
    assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
    let child = read_pid(&pidfile2);
    assert!(wait_gone(child, Duration::from_secs(3)), "child {child} survived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_run_kills_the_script() {
    require_root();
    let dir = TempDir::new("scripts");
    let pidfile = dir.path().join("child.pid");
    let hang = script(dir.path(), "hang.sh", &format!("sleep 100 &\necho $! > {}\nsleep 100", pidfile.display()));
    let cmd = hang.display().to_string();
    let task = tokio::spawn(async move {
        ScriptRunner::new().run(Hook::Resumed, &cmd, &Substitutions::default(), Duration::from_secs(100), None).await
    });
    let child = read_pid(&pidfile);
    task.abort();
    let _ = task.await;
    assert!(wait_gone(child, Duration::from_secs(3)), "child {child} survived");
}

#[tokio::test]
async fn output_is_captured_and_capped() {
    require_root();
    let dir = TempDir::new("scripts");
    let big = script(dir.path(), "big.sh", "head -c 200000 /dev/zero | tr '\\0' a\necho oops >&2\nexit 1");
    let o = ScriptRunner::new()
        .run(Hook::PostPromotion, &big.display().to_string(), &subst(), Duration::from_secs(10), None)
        .await
        .unwrap();
    assert_eq!(o.exit, Some(1));
    assert_eq!(o.stdout.len(), 64 * 1024);
    assert!(o.stdout.bytes().all(|b| b == b'a'));
    assert!(o.stdout_truncated);
    assert_eq!(o.stderr, "oops\n");
    assert!(!o.stderr_truncated);

    let o = ScriptRunner::new()
        .with_output_cap(5)
        .run(Hook::PostPromotion, &big.display().to_string(), &subst(), Duration::from_secs(10), None)
        .await
        .unwrap();
    assert_eq!((o.stdout.as_str(), o.stderr.as_str()), ("aaaaa", "oops\n"));
    assert!(o.report().contains("[output truncated]"));
}

#[tokio::test]
async fn runs_as_the_given_user() {
    require_root();
    let dir = TempDir::new("scripts");
    let who = script(dir.path(), "who.sh", "id -u; id -g; echo \"$HOME\"; echo \"$USER\"; id -G");
    let pg = lookup_user("postgres").expect("the postgres user exists");
    let o = ScriptRunner::new()
        .run(Hook::PrimaryIsolated, &who.display().to_string(), &subst(), Duration::from_secs(10), Some("postgres"))
        .await
        .unwrap();
    assert!(o.success(), "{o:?}");
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines[..4], [pg.uid.to_string().as_str(), pg.gid.to_string().as_str(), pg.home.as_str(), "postgres"]);
    // Exactly the user's groups (getgrouplist), none of the agent's (root's) left over.
    let mut got: Vec<u32> = lines[4].split_whitespace().map(|g| g.parse().unwrap()).collect();
    let mut want = pg.groups.clone();
    got.sort_unstable();
    want.sort_unstable();
    want.dedup();
    assert_eq!(got, want, "supplementary groups of the script");
    assert!(!got.contains(&0), "root's group left over: {got:?}");

    // Without run_as: the agent's user (root).
    let o = ScriptRunner::new()
        .run(Hook::Resumed, &who.display().to_string(), &subst(), Duration::from_secs(10), None)
        .await
        .unwrap();
    assert_eq!(o.stdout.lines().next(), Some("0"));

    let e = ScriptRunner::new()
        .run(Hook::Resumed, &who.display().to_string(), &subst(), Duration::from_secs(10), Some("no-such-user-efm"))
        .await
        .unwrap_err();
    assert!(matches!(e, ScriptError::User { .. }), "{e}");
    assert!(e.to_string().contains("no-such-user-efm"), "{e}");
}

#[tokio::test]
async fn missing_or_unusable_scripts() {
    require_root();
    let dir = TempDir::new("scripts");
    let missing = dir.path().join("nope.sh");
    let e = ScriptRunner::new()
        .run(Hook::Fence, &format!("{} %p %f", missing.display()), &subst(), Duration::from_secs(5), None)
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), format!("script.fence: script {} does not exist", missing.display()));

    let plain = dir.path().join("plain.sh");
    fs::write(&plain, "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(&plain, fs::Permissions::from_mode(0o644)).unwrap();
    let e = ScriptRunner::new()
        .run(Hook::Fence, &plain.display().to_string(), &subst(), Duration::from_secs(5), None)
        .await
        .unwrap_err();
    assert!(matches!(e, ScriptError::NotExecutable { .. }), "{e}");

    let e =
        ScriptRunner::new().run(Hook::Fence, "fence.sh %p", &subst(), Duration::from_secs(5), None).await.unwrap_err();
    assert!(matches!(e, ScriptError::NotAbsolute { .. }), "{e}");
}
