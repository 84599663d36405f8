//! Reading the password to encrypt: from the terminal with echo off (twice), or from `EFMPASS`.
//! Every copy of the password that is dropped is wiped first.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read as _, Write as _};

use rustix::fs::{Mode, OFlags};
use rustix::termios::{self, LocalModes, OptionalActions, Termios};
use zeroize::Zeroize as _;

use super::{SecretError, PASSWORD_ENV, PASSWORD_MAX};

/// Turns terminal echo off for its lifetime; restores the saved settings on drop.
struct EchoOff<'a> {
    tty: &'a File,
    saved: Termios,
}

impl<'a> EchoOff<'a> {
    fn new(tty: &'a File) -> io::Result<Self> {
        let saved = termios::tcgetattr(tty)?;
        let mut quiet = saved.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        // Still echo the newline, so the next prompt starts on its own line.
        quiet.local_modes.insert(LocalModes::ECHONL);
        termios::tcsetattr(tty, OptionalActions::Flush, &quiet)?;
        Ok(EchoOff { tty, saved })
    }
}

impl Drop for EchoOff<'_> {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(self.tty, OptionalActions::Now, &self.saved);
    }
}

/// Read one line from the terminal (echo must already be off). The newline is not included.
fn read_tty_line(mut tty: &File) -> Result<Vec<u8>, SecretError> {
    let mut line = Vec::with_capacity(PASSWORD_MAX + 1);
    let mut byte = [0u8; 1];
    let result = loop {
        match tty.read(&mut byte) {
            Ok(0) => break if line.is_empty() { Err(SecretError::EmptyPassword) } else { Ok(()) },
            Ok(_) if byte[0] == b'\n' => break Ok(()),
            Ok(_) if line.len() >= PASSWORD_MAX => break Err(SecretError::PasswordTooLong),
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => break Err(SecretError::Tty { err }),
        }
    };
    byte.zeroize();
    match result {
        Ok(()) => {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            Ok(line)
        }
        Err(e) => {
            line.zeroize();
            Err(e)
        }
    }
}

/// Ask for a password twice (via `read_line(prompt)`) and return it if both entries match.
pub(super) fn read_twice_with(
    prompt: &str,
    mut read_line: impl FnMut(&str) -> Result<Vec<u8>, SecretError>,
) -> Result<String, SecretError> {
    let mut first = read_line(prompt)?;
    if first.is_empty() {
        return Err(SecretError::EmptyPassword);
    }
    let mut second = match read_line("Enter it again to confirm: ") {
        Ok(s) => s,
        Err(e) => {
            first.zeroize();
            return Err(e);
        }
    };
    let same = first == second;
    second.zeroize();
    if !same {
        first.zeroize();
        return Err(SecretError::PasswordMismatch);
    }
    String::from_utf8(first).map_err(|e| {
        e.into_bytes().zeroize();
        SecretError::PasswordNotUtf8
    })
}

/// Prompt for the password on `/dev/tty` with echo off, twice; fail if the entries differ or
/// are empty. The terminal settings are restored on every path.
///
/// The caller should [`super::wipe_string`] the result when done.
pub fn read_password_twice(prompt: &str) -> Result<String, SecretError> {
    let tty = rustix::fs::open("/dev/tty", OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC, Mode::empty())
        .map(File::from)
        .map_err(|e| SecretError::Tty { err: e.into() })?;
    let _echo = EchoOff::new(&tty).map_err(|err| SecretError::Tty { err })?;
    read_twice_with(prompt, |p| {
        let mut out = &tty;
        out.write_all(p.as_bytes()).and_then(|()| out.flush()).map_err(|err| SecretError::Tty { err })?;
        read_tty_line(&tty)
    })
}

/// The password from the `EFMPASS` environment variable (for `efm encrypt --from-env`).
pub fn password_from_env() -> Result<String, SecretError> {
    password_from_env_value(std::env::var_os(PASSWORD_ENV))
}

pub(super) fn password_from_env_value(value: Option<OsString>) -> Result<String, SecretError> {
    let value = value.ok_or(SecretError::EnvUnset)?;
    if value.is_empty() {
        return Err(SecretError::EnvEmpty);
    }
    value.into_string().map_err(|v| {
        std::os::unix::ffi::OsStringExt::into_vec(v).zeroize();
        SecretError::EnvNotUtf8
    })
}
