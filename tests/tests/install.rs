//! Installation and packaging: `cargo xtask install --destdir` into a temporary root (every file,
//! owner and mode checked), `systemd-analyze verify` on the installed unit, `cargo xtask package`
//! checked with `dpkg-deb --info` and `--contents`, and the INSTALLED agent started under the installed
//! layout against a real database server in a network namespace, logging to its file and to syslog,
//! reaching READY (the installed `efm` gets its node status) and stopping cleanly on SIGTERM.
//!
//! The debug binaries `cargo xtask test` has just built are installed (`--binaries`): a release
//! build would add minutes to every test run, and the installation does not depend on the
//! profile. Needs root; run single-threaded.

use std::{
    collections::BTreeMap,
    fs,
    net::UdpSocket,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use efm_tests::{bed::Bed, pg, require_root, PinDir};

const CLUSTER: &str = "acctg";

/// The directory of the binaries built next to this test.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent().and_then(Path::parent).expect("target dir").to_owned()
}

fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(p.exists(), "{} is missing: `cargo xtask test` builds it (cargo build --workspace --tests)", p.display());
    p
}

fn check(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn xtask(args: &[&str]) -> Output {
    let out = Command::new(bin("xtask")).args(args).output().expect("run xtask");
    check(&out, &format!("xtask {}", args.join(" ")));
    out
}

/// Every path under `root` (relative, `/`-prefixed) with (is dir, mode, uid, gid).
fn tree(root: &Path) -> BTreeMap<String, (bool, u32, u32, u32)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (bool, u32, u32, u32)>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = format!("/{}", p.strip_prefix(root).unwrap().display());
            out.insert(rel, (m.is_dir(), m.mode() & 0o7777, m.uid(), m.gid()));
            if m.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

const MAN1: &[&str] = &[
    "efm.1",
    "efm-cluster-status.1",
    "efm-cluster-status-json.1",
    "efm-node-status-json.1",
    "efm-promote.1",
    "efm-resume.1",
    "efm-set-priority.1",
    "efm-allow-node.1",
    "efm-disallow-node.1",
    "efm-add-node.1",
    "efm-remove-node.1",
    "efm-stop-cluster.1",
    "efm-reset-members.1",
    "efm-rejoin.1",
    "efm-prop-check.1",
    "efm-upgrade-conf.1",
    "efm-encrypt.1",
    "efm-generate-key.1",
];

/// Files (path, mode) `install --prefix /usr` must produce, besides directories.
fn expected_files(zsh: &str, man_suffix: &str) -> Vec<(String, u32)> {
    let mut f: Vec<(String, u32)> = vec![
        ("/usr/sbin/efm-agent".into(), 0o755),
        ("/usr/bin/efm".into(), 0o755),
        ("/usr/lib/systemd/system/efm-agent@.service".into(), 0o644),
        ("/usr/lib/tmpfiles.d/efm.conf".into(), 0o644),
        ("/usr/lib/sysusers.d/efm.conf".into(), 0o644),
        ("/usr/share/efm/efm.properties.in".into(), 0o644),
        ("/usr/share/efm/efm.nodes.in".into(), 0o644),
        (format!("/usr/share/man/man8/efm-agent.8{man_suffix}"), 0o644),
        ("/usr/share/bash-completion/completions/efm".into(), 0o644),
        ("/usr/share/bash-completion/completions/efm-agent".into(), 0o644),
        (format!("/usr/share/zsh/{zsh}/_efm"), 0o644),
        (format!("/usr/share/zsh/{zsh}/_efm-agent"), 0o644),
        ("/usr/share/fish/vendor_completions.d/efm.fish".into(), 0o644),
        ("/usr/share/fish/vendor_completions.d/efm-agent.fish".into(), 0o644),
        ("/etc/logrotate.d/efm".into(), 0o644),
    ];
    f.extend(MAN1.iter().map(|m| (format!("/usr/share/man/man1/{m}{man_suffix}"), 0o644)));
    f
}

/// Directories with a mode other than 0755.
const PRIVATE_DIRS: &[&str] = &["/etc/efm", "/var/log/efm"];

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, step by step")]
fn installed_tree_package_and_agent_work_as_documented() {
    require_root();
    pg::require_postgres();
    let root = pg::TempDir::new("install");
    let dest = root.path().join("dest");
    let t0 = Instant::now();
    xtask(&[
        "install",
        "--binaries",
        bin_dir().to_str().unwrap(),
        "--destdir",
        dest.to_str().unwrap(),
        "--prefix",
        "/usr",
    ]);
    eprintln!("xtask install: {:.1}s", t0.elapsed().as_secs_f64());

    // Every file and directory, its owner and mode; nothing else.
    let got = tree(&dest);
    let files = expected_files("site-functions", "");
    let mut want_dirs: Vec<String> = Vec::new();
    for f in files
        .iter()
        .map(|(f, _)| f.as_str())
        .chain(PRIVATE_DIRS.iter().map(|d| format!("{d}/x")).collect::<Vec<_>>().iter().map(String::as_str))
    {
        let mut p = Path::new(f).parent();
        while let Some(d) = p.filter(|d| *d != Path::new("/")) {
            want_dirs.push(d.display().to_string());
            p = d.parent();
        }
    }
    want_dirs.sort();
    want_dirs.dedup();
    for (path, mode) in &files {
        let (is_dir, m, uid, gid) =
            got.get(path).copied().unwrap_or_else(|| panic!("{path} not installed; tree: {got:#?}"));
        assert!(!is_dir, "{path} is a directory");
        assert_eq!((m, uid, gid), (*mode, 0, 0), "{path}: mode/uid/gid");
        assert!(fs::metadata(dest.join(&path[1..])).unwrap().len() > 0, "{path} is empty");
    }
    for d in &want_dirs {
        let (is_dir, m, uid, gid) = got.get(d).copied().unwrap_or_else(|| panic!("directory {d} missing"));
        let mode = if PRIVATE_DIRS.contains(&d.as_str()) { 0o750 } else { 0o755 };
        assert!(is_dir, "{d} is not a directory");
        assert_eq!((m, uid, gid), (mode, 0, 0), "{d}: mode/uid/gid (group efm is postinst's job with --destdir)");
    }
    let extra: Vec<&String> =
        got.keys().filter(|k| !files.iter().any(|(f, _)| f == *k) && !want_dirs.contains(k)).collect();
    assert!(extra.is_empty(), "unexpected paths installed: {extra:?}");
    assert_eq!(
        fs::metadata(dest.join("usr/sbin/efm-agent")).unwrap().len(),
        fs::metadata(bin("efm-agent")).unwrap().len(),
        "the installed agent is the built one"
    );
    assert!(fs::read_dir(dest.join("etc/efm")).unwrap().next().is_none(), "no configuration is installed in /etc/efm");

    // The unit: the documented ExecStart, no option that would hide the host's bpffs.
    let unit = fs::read_to_string(dest.join("usr/lib/systemd/system/efm-agent@.service")).unwrap();
    let settings: Vec<&str> = unit.lines().filter(|l| !l.starts_with('#') && l.contains('=')).collect();
    for want in ["Type=notify", "ExecStart=/usr/sbin/efm-agent --cluster %i", "Restart=on-failure", "KillMode=process"]
    {
        assert!(settings.contains(&want), "unit lacks {want}");
    }
    for forbidden in
        ["ProtectSystem", "ProtectKernelTunables", "PrivateTmp", "PrivateDevices", "ProtectHome", "PrivateNetwork"]
    {
        assert!(
            !settings.iter().any(|l| l.starts_with(forbidden)),
            "unit sets {forbidden}: it would hide /sys/fs/bpf or the database's files"
        );
    }
    let caps = settings.iter().find(|l| l.starts_with("CapabilityBoundingSet=")).expect("a capability bounding set");
    for cap in [
        "CAP_BPF",
        "CAP_NET_ADMIN",
        "CAP_NET_RAW",
        "CAP_SYS_ADMIN",
        "CAP_PERFMON",
        "CAP_SETUID",
        "CAP_SETGID",
        "CAP_CHOWN",
        "CAP_KILL",
    ] {
        assert!(caps.split(['=', ' ']).any(|c| c == cap), "{cap} missing from {caps}");
    }
    let tmpfiles = fs::read_to_string(dest.join("usr/lib/tmpfiles.d/efm.conf")).unwrap();
    assert!(
        tmpfiles
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["d", "/run/efm", "0750", "root", "efm", "-"]),
        "{tmpfiles}"
    );

    // systemd-analyze verify: directives, dependencies, and that Documentation= names installed
    // man pages. It insists that ExecStart's binary exists on this host, so the copy it checks
    // names the installed binary inside the temporary root.
    let verify_dir = root.path().join("verify");
    fs::create_dir_all(&verify_dir).unwrap();
    let unit_path = verify_dir.join(format!("efm-agent@{CLUSTER}.service"));
    let installed_exec = format!("ExecStart={}/usr/sbin/efm-agent ", dest.display());
    fs::write(&unit_path, unit.replace("ExecStart=/usr/sbin/efm-agent ", &installed_exec)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit_path)
        .env("MANPATH", dest.join("usr/share/man"))
        .output()
        .expect("systemd-analyze is missing: `cargo xtask setup` installs the systemd package");
    check(&out, "systemd-analyze verify");
    let complaints = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(complaints.trim().is_empty(), "systemd-analyze verify complained:\n{complaints}");

    // The Debian package holds the same tree (Debian flavour: stripped, man pages gzipped, zsh's
    // vendor-completions), root-owned, with conffiles and maintainer scripts.
    let t0 = Instant::now();
    let pkg_out = root.path().join("debian");
    xtask(&["package", "--binaries", bin_dir().to_str().unwrap(), "--out", pkg_out.to_str().unwrap()]);
    eprintln!("xtask package: {:.1}s", t0.elapsed().as_secs_f64());
    let arch = String::from_utf8(Command::new("dpkg").arg("--print-architecture").output().unwrap().stdout).unwrap();
    let deb = pkg_out.join(format!("efm_{}_{}.deb", env!("CARGO_PKG_VERSION"), arch.trim()));
    let info = Command::new("dpkg-deb").arg("--info").arg(&deb).output().unwrap();
    check(&info, "dpkg-deb --info");
    let info = String::from_utf8_lossy(&info.stdout);
    for want in ["Package: efm", "Depends: libc6 (>= 2.", "libssl3", "conffiles", "postinst", "prerm", "postrm"] {
        assert!(info.contains(want), "dpkg-deb --info lacks {want:?}:\n{info}");
    }
    let conffiles = Command::new("dpkg-deb").args(["--info"]).arg(&deb).arg("conffiles").output().unwrap();
    check(&conffiles, "dpkg-deb --info conffiles");
    assert_eq!(String::from_utf8_lossy(&conffiles.stdout), "/etc/logrotate.d/efm\n");
    let contents = Command::new("dpkg-deb").arg("--contents").arg(&deb).output().unwrap();
    check(&contents, "dpkg-deb --contents");
    let contents = String::from_utf8_lossy(&contents.stdout);
    // "-rwxr-xr-x root/root  12345 2024-01-01 00:00 ./usr/sbin/efm-agent"
    let listed: BTreeMap<String, (String, String)> = contents
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = f.get(5)?.trim_start_matches('.').trim_end_matches('/').to_owned();
            Some((path, ((*f.first()?).to_owned(), (*f.get(1)?).to_owned())))
        })
        .collect();
    let mut deb_files = expected_files("vendor-completions", ".gz");
    deb_files.push(("/usr/share/doc/efm/copyright".into(), 0o644));
    for (path, mode) in &deb_files {
        let (perm, owner) = listed.get(path).unwrap_or_else(|| panic!("{path} not in the package:\n{contents}"));
        let want = if *mode == 0o755 { "-rwxr-xr-x" } else { "-rw-r--r--" };
        assert_eq!((perm.as_str(), owner.as_str()), (want, "root/root"), "{path}");
    }
    for d in PRIVATE_DIRS {
        assert_eq!(listed.get(*d).map(|(p, o)| (p.as_str(), o.as_str())), Some(("drwxr-x---", "root/root")), "{d}");
    }
    let pkg_extra: Vec<&String> = listed
        .iter()
        .filter(|(k, (perm, _))| !perm.starts_with('d') && !deb_files.iter().any(|(f, _)| f == *k))
        .map(|(k, _)| k)
        .collect();
    assert!(pkg_extra.is_empty(), "unexpected files in the package: {pkg_extra:?}");

    // The installed agent, under the installed layout, against a real PostgreSQL.
    let bed = Bed::new(1);
    let ns = bed.nodes[0].ns.name.clone();
    let primary = pg::PgNode::primary_with(pg::PgOptions::new(5432, "198.18.0.1").netns(&ns));
    let conf_dir = dest.join("etc/efm");
    let run_dir = dest.join("run/efm");
    let log_dir = dest.join("var/log/efm");
    let key = conf_dir.join(format!("{CLUSTER}.key"));
    efm_agent::heartbeat::generate_cluster_key(&key).unwrap();
    let props = format!(
        "db.user=postgres\n\
         db.port=5432\n\
         db.database=postgres\n\
         db.service.owner=postgres\n\
         db.data.dir={data}\n\
         bind.address=198.18.0.1:7800\n\
         lock.dir={lock}\n\
         log.dir={log}\n\
         efm.loglevel=FINE\n\
         syslog.enabled=true\n\
         syslog.host=198.18.0.1\n\
         syslog.port=5514\n\
         syslog.protocol=UDP\n\
         syslog.facility=LOCAL1\n\
         heartbeat.interval=100ms\n\
         node.timeout=1s\n\
         local.period=1\n\
         local.timeout=5\n\
         local.timeout.final=2\n\
         cluster.key.file={key}\n",
        data = primary.data.display(),
        lock = dest.join("run/lock/efm").display(),
        log = log_dir.display(),
        key = key.display(),
    );
    fs::write(conf_dir.join(format!("{CLUSTER}.properties")), props).unwrap();
    fs::write(conf_dir.join(format!("{CLUSTER}.nodes")), "198.18.0.1:7800\n").unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();

    // A syslog server inside the namespace.
    let syslog = bed.nodes[0].ns.run(|| UdpSocket::bind("198.18.0.1:5514").expect("bind the syslog listener"));
    syslog.set_read_timeout(Some(Duration::from_millis(200))).unwrap();

    let pins = PinDir::new("inst");
    let stderr_path = root.path().join("agent.stderr");
    let t0 = Instant::now();
    // nsenter --net only: the agent must see the host's /sys/fs/bpf (ip netns exec would give it a
    // private /sys, and its pins would die with it).
    let mut agent = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{ns}"))
        .arg(dest.join("usr/sbin/efm-agent"))
        .args(["--cluster", CLUSTER, "--config-dir"])
        .arg(&conf_dir)
        .arg("--run-dir")
        .arg(&run_dir)
        .arg("--bpffs-dir")
        .arg(&pins.0)
        .arg("--state-dir")
        .arg(conf_dir.join("state"))
        .env_remove("EFM_LOG")
        .env_remove("INVOCATION_ID")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::null())
        .stderr(fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("spawn the installed efm-agent");
    let efm = |args: &[&str]| {
        Command::new(dest.join("usr/bin/efm"))
            .args(args)
            .arg("--config-dir")
            .arg(&conf_dir)
            .arg("--run-dir")
            .arg(&run_dir)
            .output()
            .expect("run the installed efm")
    };
    let status = loop {
        let out = efm(&["node-status-json", CLUSTER]);
        if out.status.success() {
            break serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("node-status-json prints JSON");
        }
        if let Ok(Some(st)) = agent.try_wait() {
            panic!("the installed agent exited ({st}): {}", fs::read_to_string(&stderr_path).unwrap_or_default());
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the installed agent did not answer within 30 s: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr),
            fs::read_to_string(&stderr_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("installed agent ready after {} ms: {status}", t0.elapsed().as_millis());
    assert_eq!(status["address"], "198.18.0.1:7800", "{status:#}");
    assert!(run_dir.join(format!("{CLUSTER}.sock")).exists() && run_dir.join(format!("{CLUSTER}.pid")).exists());
    assert!(pins.0.join(CLUSTER).is_dir(), "pins under the host's bpffs");

    // Its log: the file in log.dir (not run by systemd) and syslog.
    let log_file = log_dir.join(format!("{CLUSTER}.log"));
    let until = Instant::now() + Duration::from_secs(10);
    while !fs::read_to_string(&log_file).unwrap_or_default().contains("efm-agent started") {
        assert!(Instant::now() < until, "no 'efm-agent started' in {}", log_file.display());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(fs::metadata(&log_file).unwrap().mode() & 0o777, 0o640, "log file mode");
    let mut buf = [0u8; 4096];
    let until = Instant::now() + Duration::from_secs(10);
    let started = loop {
        if let Ok(n) = syslog.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if msg.contains("efm-agent started") {
                break msg;
            }
        }
        assert!(Instant::now() < until, "no 'efm-agent started' message reached syslog");
    };
    // LOCAL1 (17) * 8 + informational (6) = 142, RFC 5424 version 1.
    assert!(started.starts_with("<142>1 "), "{started}");
    assert!(started.contains(" efm-agent@acctg "), "APP-NAME: {started}");

    // SIGTERM: an orderly stop removes the socket, the pid file and the pins.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(i32::try_from(agent.id()).unwrap(), libc::SIGTERM) };
    let until = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(st) = agent.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > until {
            let _ = agent.kill();
            panic!("the installed agent did not stop within 15 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "exit status {exit}: {}", fs::read_to_string(&stderr_path).unwrap_or_default());
    assert!(!run_dir.join(format!("{CLUSTER}.sock")).exists(), "admin socket removed");
    assert!(!run_dir.join(format!("{CLUSTER}.pid")).exists(), "pid file removed");
    // A primary leaves XDP attached when its agent stops (its clients lose it when the lease
    // runs out, as if the agent had died); the PinDir guard removes the pins afterwards.
    assert!(pins.0.join(CLUSTER).exists(), "a primary's pins outlive an orderly stop");
    assert!(fs::read_to_string(&log_file).unwrap().contains("efm-agent stopping"));
    drop(primary);
}
