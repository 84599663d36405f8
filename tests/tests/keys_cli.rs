//! The key files through the `efm` command line: `efm generate-key` (the cluster key) and
//! `efm encrypt` (the password key) create them 0600, never replace one, and refuse a key file
//! that others can read or that is a symbolic link, saying what to run. The binary is the one
//! built beside this test (`cargo xtask test` builds it; `cargo build -p efm-agent --bins` alone
//! does too).

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use efm_agent::secret;

fn efm() -> Command {
    let exe = std::env::current_exe().expect("test executable path");
    let p = exe.parent().and_then(Path::parent).expect("target dir").join("efm");
    assert!(
        p.exists(),
        "{} is missing: build it with `cargo build -p efm-agent --bins` (cargo xtask test does)",
        p.display()
    );
    Command::new(p)
}

/// A fresh directory, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("efm-keys-cli-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn refused(out: &Output, what: &str) -> String {
    assert!(!out.status.success(), "{what} succeeded but must be refused:\nstdout: {}", text(&out.stdout));
    text(&out.stderr)
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn generate(dir: &Path, output: &Path) -> Output {
    efm().args(["--config-dir"]).arg(dir).args(["generate-key", "acctg", "--output"]).arg(output).output().unwrap()
}

fn encrypt(dir: &Path, key_file: &Path, password: &str) -> Output {
    efm()
        .args(["--config-dir"])
        .arg(dir)
        .args(["encrypt", "acctg", "--from-env", "--key-file"])
        .arg(key_file)
        .env("EFMPASS", password)
        .output()
        .unwrap()
}

#[test]
fn generate_key_creates_a_private_key_once() {
    let d = Dir::new("gen");
    let key = d.0.join("acctg.key");
    let out = generate(&d.0, &key);
    ok(&out, "efm generate-key");
    assert_eq!(text(&out.stdout).trim(), key.display().to_string());
    assert_eq!(mode(&key), 0o600);
    let first = fs::read_to_string(&key).unwrap();
    assert!(
        first.len() == 33 && first.ends_with('\n') && first[..32].bytes().all(|b| b.is_ascii_hexdigit()),
        "{first:?}"
    );
    efm_agent::heartbeat::load_cluster_key(&key).expect("the agent reads the key it made");

    // Never replaced, also not a key others can read.
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let err = refused(&generate(&d.0, &key), "a second efm generate-key");
    assert!(err.contains(&key.display().to_string()) && err.contains("already exists"), "{err}");
    assert_eq!(fs::read_to_string(&key).unwrap(), first);
    // And the agent refuses that one, with the chmod to run.
    let e = efm_agent::heartbeat::load_cluster_key(&key).unwrap_err().to_string();
    assert!(e.contains(&format!("run `chmod 600 {}`", key.display())), "{e}");

    // A missing directory is named.
    let nowhere = d.0.join("no-such-dir").join("acctg.key");
    let err = refused(&generate(&d.0, &nowhere), "efm generate-key into a missing directory");
    assert!(err.contains(&nowhere.display().to_string()) && err.contains("directory does not exist"), "{err}");
    // No temporary file was left anywhere.
    let names: Vec<_> = fs::read_dir(&d.0).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["acctg.key"]);
}

#[test]
fn encrypt_creates_the_password_key_and_refuses_unsafe_ones() {
    let d = Dir::new("enc");
    let key = d.0.join("efm.key");
    let out = encrypt(&d.0, &key, "s3cret pw");
    ok(&out, "efm encrypt");
    assert!(text(&out.stderr).contains("created the encryption key"), "{}", text(&out.stderr));
    assert_eq!(mode(&key), 0o600);
    let printed = text(&out.stdout);
    let value = printed.trim();
    assert!(!value.contains('=') && !value.contains('\n'), "--from-env prints the bare value, as EFM 3.3: {printed:?}");
    let k = secret::Key::load(&key).unwrap();
    assert_eq!(secret::decrypt(&k, "acctg", value).unwrap(), "s3cret pw");

    // The second run reuses the key.
    let out = encrypt(&d.0, &key, "other");
    ok(&out, "efm encrypt again");
    assert!(!text(&out.stderr).contains("created the encryption key"));
    let value = text(&out.stdout).trim().to_owned();
    assert_eq!(text(&out.stdout), format!("{value}\n"), "only the value and a newline");
    assert_eq!(secret::decrypt(&k, "acctg", &value).unwrap(), "other");

    // Readable by the group: refused, nothing printed, the key kept.
    let before = fs::read(&key).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).unwrap();
    let out = encrypt(&d.0, &key, "x");
    let err = refused(&out, "efm encrypt with a group-readable key");
    assert!(err.contains("0640") && err.contains(&format!("run `chmod 600 {}`", key.display())), "{err}");
    assert!(out.stdout.is_empty());
    assert_eq!(fs::read(&key).unwrap(), before);
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();

    // A symbolic link, even to a good key: refused, and not replaced.
    let link = d.0.join("link.key");
    std::os::unix::fs::symlink(&key, &link).unwrap();
    let err = refused(&encrypt(&d.0, &link, "x"), "efm encrypt through a symlink");
    assert!(err.contains("symbolic link") && err.contains(&link.display().to_string()), "{err}");
    assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
}
