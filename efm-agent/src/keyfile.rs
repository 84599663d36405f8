//! Key files: the cluster key (`cluster.key.file`: the heartbeat and Raft frame MACs) and the
//! password key (`<config-dir>/efm.key`: `db.password.encrypted`), read and created by the same
//! rules.
//!
//! * Reading ([`read`]) opens with `O_NOFOLLOW | O_NONBLOCK`: a symbolic link is refused (an
//!   attacker who can plant one in the directory must not redirect us to a file of their
//!   choosing), and so is anything that is not a regular file (a FIFO planted at the path cannot
//!   hang us; `fstat` on the open descriptor decides, so there is no check-then-open race). A
//!   file that group or others may access is refused with the exact `chmod` to run. At most
//!   [`MAX_LEN`] bytes are read.
//! * Creating ([`create`]) is [`crate::files::write_atomic`] with mode 0600 and
//!   [`Existing::Keep`]: readers never see a partial key, an existing key is never replaced, and
//!   when several processes race exactly one key wins (the losers learn it and read it).
//! * Key material is wiped from memory after use: the file's contents, decoded bytes and the text
//!   written are held in [`zeroize::Zeroizing`] buffers. (The cluster key itself then lives as
//!   long as the agent, in the PING sender, the Raft transport and the kernel's `EFM_KEY` map.)
//! * Every error names the file, which key it is, and what to do.
//!
//! The formats stay the callers': the cluster key is 32 hex digits (`heartbeat`), the password
//! key `efm-key-v1:` and 64 hex digits (`secret`).

use std::{
    fmt,
    fs::File,
    io::{self, Read as _},
    os::unix::fs::{FileTypeExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use rustix::fs::{Mode, OFlags};
use zeroize::Zeroizing;

use crate::files::{self, Existing, WriteOptions};

/// Longest key file read (valid ones are 33 and 76 bytes).
pub const MAX_LEN: u64 = 4096;

/// Which key a file holds: names it in messages and says how to make one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// `cluster.key.file`, made by `efm generate-key`.
    Cluster,
    /// `efm.key`, made by `efm encrypt`.
    Password,
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cluster => "cluster key file",
            Self::Password => "key file",
        })
    }
}

impl KeyKind {
    fn missing_hint(self) -> &'static str {
        match self {
            Self::Cluster => "create one with `efm generate-key CLUSTER` and copy it (mode 0600) to every node",
            Self::Password => {
                "run `efm encrypt <cluster>` on this node to create it, or copy it (mode 0600) from the node \
                 where the password was encrypted"
            }
        }
    }
}

/// What is wrong with a key file. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{kind} {} does not exist; {}", path.display(), kind.missing_hint())]
    NotFound { kind: KeyKind, path: PathBuf },

    #[error("cannot {op} {kind} {}: {source}", path.display())]
    Io {
        kind: KeyKind,
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("refusing to use {kind} {}: it is {what}, not a regular file", path.display())]
    NotRegular { kind: KeyKind, path: PathBuf, what: &'static str },

    #[error(
        "refusing to use {kind} {}: its mode is {mode:04o}, which lets group or others access it; run \
         `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Insecure { kind: KeyKind, path: PathBuf, mode: u32 },

    #[error("{kind} {} is not valid: {reason}", path.display())]
    Malformed { kind: KeyKind, path: PathBuf, reason: String },

    #[error("{kind} {} already exists; refusing to overwrite it (remove it first to make a new key)", path.display())]
    Exists { kind: KeyKind, path: PathBuf },

    #[error("cannot get random bytes from the operating system for a new {kind}: {source}")]
    Random { kind: KeyKind, source: getrandom::Error },
}

impl KeyFileError {
    /// A [`KeyFileError::Malformed`] for `path`.
    #[must_use]
    pub fn malformed(kind: KeyKind, path: &Path, reason: impl Into<String>) -> Self {
        Self::Malformed { kind, path: path.to_owned(), reason: reason.into() }
    }
}

/// What a non-regular file is, for the message.
fn describe(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a named pipe"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() || ft.is_block_device() {
        "a device"
    } else {
        "something else"
    }
}

/// Reads the key file at `path` (see the module documentation). The buffer is wiped when
/// dropped.
pub fn read(kind: KeyKind, path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
    let io_err =
        |op: &'static str| move |source: io::Error| KeyFileError::Io { kind, op, path: path.to_owned(), source };
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Err(KeyFileError::NotFound { kind, path: path.to_owned() }),
        // O_NOFOLLOW on a symbolic link.
        Err(rustix::io::Errno::LOOP) => {
            return Err(KeyFileError::NotRegular { kind, path: path.to_owned(), what: "a symbolic link" })
        }
        Err(e) => return Err(io_err("open")(e.into())),
    };
    let file = File::from(fd);
    let meta = file.metadata().map_err(io_err("stat"))?;
    if !meta.file_type().is_file() {
        return Err(KeyFileError::NotRegular { kind, path: path.to_owned(), what: describe(meta.file_type()) });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Insecure { kind, path: path.to_owned(), mode });
    }
    // One allocation large enough for any valid file, so no copy of the key is left behind by
    // a reallocation.
    let mut buf = Zeroizing::new(Vec::with_capacity(128));
    (&file).take(MAX_LEN + 1).read_to_end(&mut buf).map_err(io_err("read"))?;
    if buf.len() as u64 > MAX_LEN {
        return Err(KeyFileError::malformed(kind, path, format!("it is longer than {MAX_LEN} bytes")));
    }
    Ok(buf)
}

/// Creates the key file at `path` holding `contents`, mode 0600 (see the module
/// documentation). `Ok(false)`: a file already existed (possibly just created by a concurrent
/// caller) and was left as it is. The directory must exist.
pub fn create(kind: KeyKind, path: &Path, contents: &[u8]) -> Result<bool, KeyFileError> {
    match files::write_atomic(path, contents, WriteOptions::private().existing(Existing::Keep)) {
        Ok(()) => {
            tracing::info!(path = %path.display(), what = %kind, "created a new key file");
            Ok(true)
        }
        Err(e) if e.already_exists() => Ok(false),
        Err(e) if e.no_directory() => Err(KeyFileError::Io {
            kind,
            op: "create (its directory does not exist)",
            path: path.to_owned(),
            source: e.source,
        }),
        Err(e) => Err(KeyFileError::Io { kind, op: e.op, path: path.to_owned(), source: e.source }),
    }
}

/// `N` random bytes for a new key, wiped when dropped.
pub fn random_key<const N: usize>(kind: KeyKind) -> Result<Zeroizing<[u8; N]>, KeyFileError> {
    let mut key = Zeroizing::new([0u8; N]);
    getrandom::getrandom(key.as_mut_slice()).map_err(|source| KeyFileError::Random { kind, source })?;
    Ok(key)
}

/// Lowercase hex of `bytes` appended to `out` (sized by the caller so it does not reallocate).
pub fn hex_into(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
}

/// Exactly `2 × N` hex digits (either case) decoded, wiped when dropped. The error says what is
/// wrong without repeating the text.
pub fn decode_hex<const N: usize>(text: &str) -> Result<Zeroizing<[u8; N]>, String> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return Err(format!("the key is {} hex digits; expected {}", digits.len(), 2 * N));
    }
    let value = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = Zeroizing::new([0u8; N]);
    for (i, o) in out.iter_mut().enumerate() {
        let (Some(hi), Some(lo)) = (value(digits[2 * i]), value(digits[2 * i + 1])) else {
            let pos = if value(digits[2 * i]).is_none() { 2 * i } else { 2 * i + 1 };
            return Err(format!("the key is not hex: character {} is not a hex digit", pos + 1));
        };
        *o = (hi << 4) | lo;
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
