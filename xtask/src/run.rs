//! Running commands: print each command line before running it, time steps, and turn failures into
//! errors that say what failed.

use std::{
    env,
    ffi::OsStr,
    fmt::Write as _,
    fs,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// The workspace root (xtask's manifest directory is `<root>/xtask`).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map_or(manifest.clone(), PathBuf::from)
}

/// A nested cargo: the one that runs us (`CARGO`), else `cargo` from `PATH`.
pub fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Quote one word for display the way a POSIX shell would need it.
fn quote(word: &OsStr) -> String {
    let s = word.to_string_lossy();
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:+,@%^".contains(c)) {
        return s.into_owned();
    }
    if s.chars().any(char::is_control) {
        let mut out = String::from("$'");
        for c in s.chars() {
            match c {
                '\'' => out.push_str("\\'"),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => {
                    let _ = write!(out, "\\x{:02x}", u32::from(c));
                }
                c => out.push(c),
            }
        }
        out.push('\'');
        return out;
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The command line of `cmd` as it could be typed into a shell (variables it sets, program, args).
pub fn command_line(cmd: &Command) -> String {
    let mut words = Vec::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            words.push(format!("{}={}", key.to_string_lossy(), quote(value)));
        }
    }
    words.push(quote(cmd.get_program()));
    words.extend(cmd.get_args().map(quote));
    words.join(" ")
}

fn announce(cmd: &Command) {
    let dir = cmd.get_current_dir().map(|d| format!("  (in {})", d.display())).unwrap_or_default();
    println!("$ {}{dir}", command_line(cmd));
}

/// Print and run `cmd`, inheriting stdio; an error if it cannot start or exits unsuccessfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    announce(cmd);
    let line = command_line(cmd);
    let status = cmd.status().with_context(|| {
        format!("could not start `{line}`: is `{}` installed and on PATH?", cmd.get_program().to_string_lossy())
    })?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Run `cmd` quietly (a probe, not printed) and return its stdout; an error if it cannot start or
/// exits unsuccessfully (its stderr is included).
pub fn output(cmd: &mut Command) -> Result<String> {
    let line = command_line(cmd);
    let out = cmd.stdin(Stdio::null()).output().with_context(|| {
        format!("could not start `{line}`: is `{}` installed and on PATH?", cmd.get_program().to_string_lossy())
    })?;
    if !out.status.success() {
        bail!("`{line}` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{line}` printed non-UTF-8 output"))
}

pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let whole = d.as_secs();
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

/// Run one named step, printing a header before and its outcome and elapsed time after.
pub fn step<T>(name: &str, f: impl FnOnce() -> Result<T>) -> (Result<T>, Duration) {
    println!("==> {name}");
    let start = Instant::now();
    let result = f();
    let elapsed = start.elapsed();
    match &result {
        Ok(_) => println!("<== {name}: ok ({})", format_duration(elapsed)),
        Err(_) => println!("<== {name}: FAILED ({})", format_duration(elapsed)),
    }
    (result, elapsed)
}

/// The effective user id, from `/proc/self/status` (no libc dependency).
pub fn euid() -> Result<u32> {
    let status = fs::read_to_string("/proc/self/status")
        .context("reading /proc/self/status to find the effective user id (is /proc mounted?)")?;
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:")).context("/proc/self/status has no Uid: line")?;
    // Uid: real effective saved filesystem
    line.split_whitespace()
        .nth(1)
        .context("/proc/self/status Uid: line has no effective uid")?
        .parse()
        .context("parsing the effective uid in /proc/self/status")
}

pub fn is_root() -> Result<bool> {
    Ok(euid()? == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_like_a_shell() {
        assert_eq!(quote(OsStr::new("cargo")), "cargo");
        assert_eq!(quote(OsStr::new("llvm-22")), "llvm-22");
        assert_eq!(quote(OsStr::new("a b")), "'a b'");
        assert_eq!(quote(OsStr::new("it's")), r"'it'\''s'");
        assert_eq!(quote(OsStr::new("")), "''");
        assert_eq!(quote(OsStr::new("-Ca\u{1f}-Cb")), r"$'-Ca\x1f-Cb'");
    }

    #[test]
    fn command_line_shows_env_and_args() {
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive").env_remove("X").args(["install", "-y"]);
        assert_eq!(command_line(&cmd), "DEBIAN_FRONTEND=noninteractive apt-get install -y");
    }

    #[test]
    fn durations() {
        assert_eq!(format_duration(Duration::from_millis(1234)), "1.2s");
        assert_eq!(format_duration(Duration::from_secs(125)), "2m05s");
    }

    #[test]
    fn euid_is_readable() {
        euid().unwrap();
    }
}
