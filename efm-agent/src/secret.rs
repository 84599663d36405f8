//! Encrypting the database password for `db.password.encrypted`.
//!
//! `efm encrypt <cluster>` reads the database password (twice from the terminal, or from
//! `EFMPASS` with `--from-env`) and prints a single-line value to paste into the cluster's
//! properties file. The agent decrypts it at startup.
//!
//! Unlike EDB Failover Manager, whose encrypted value is an unauthenticated hex string, ours is
//! ChaCha20-Poly1305 (authenticated encryption) under a random per-host key kept in a key file
//! (default [`DEFAULT_KEY_PATH`]), with the cluster name bound in as associated data. A value
//! that was altered, copied from another cluster's properties file, or encrypted with another
//! key file is rejected instead of decrypting to garbage.
//!
//! Value format: `efm1:<nonce, 24 hex digits>:<ciphertext and 16-byte tag, hex>`. Hex keeps it
//! free of characters that mean something in a properties file (`=`, `#`, `!`, `\`, spaces).
//!
//! Key file format: one line, `efm-key-v1:<64 hex digits>`, mode 0600. It is created on first
//! use and never rewritten. Every node of a cluster that shares a properties file (or a copy of
//! one) needs the same key file.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{compiler_fence, Ordering};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};

/// Where the key file lives unless configured otherwise.
pub const DEFAULT_KEY_PATH: &str = "/etc/efm/efm.key";

/// The property the encrypted value is stored under (used in messages).
pub const PROPERTY: &str = "db.password.encrypted";

/// Environment variable read by `efm encrypt --from-env`.
pub const PASSWORD_ENV: &str = "EFMPASS";

/// Prefix of every value produced by [`encrypt`].
const VALUE_PREFIX: &str = "efm1";
/// First line prefix of the key file.
const KEY_PREFIX: &str = "efm-key-v1:";
const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Longest key file we are willing to read (a valid one is 76 bytes).
const KEY_FILE_MAX: u64 = 4096;
/// Longest password line read from the terminal.
const PASSWORD_MAX: usize = 4096;
/// Domain separation for the associated data; the cluster name follows it.
const AAD_CONTEXT: &[u8] = b"efm1\0db.password.encrypted\0cluster\0";

/// Everything that can go wrong with keys, encrypted values, and password input.
///
/// No variant ever carries the password, the key, or the encrypted value itself.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "key file {} does not exist; run `efm encrypt <cluster>` on this node to create it, or \
         copy it (mode 0600) from the node where the password was encrypted",
        path.display()
    )]
    KeyNotFound { path: PathBuf },

    #[error("cannot {op} key file {}: {err}", path.display())]
    KeyIo {
        op: &'static str,
        path: PathBuf,
        #[source]
        err: io::Error,
    },

    #[error("refusing to use key file {}: it is {kind}, not a regular file", path.display())]
    KeyNotRegular { path: PathBuf, kind: &'static str },

    #[error(
        "refusing to use key file {}: its mode is {mode:04o}, which lets group or others access \
         it; run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    KeyInsecure { path: PathBuf, mode: u32 },

    #[error("key file {} is not a valid efm key file: {reason}", path.display())]
    KeyMalformed { path: PathBuf, reason: String },

    #[error("cannot get random bytes from the operating system: {0}")]
    Random(getrandom::Error),

    #[error("the cluster name is empty")]
    EmptyCluster,

    #[error(
        "{PROPERTY} is malformed: {reason}; run `efm encrypt {cluster}` and paste the whole value \
         it prints"
    )]
    Malformed { cluster: String, reason: String },

    #[error(
        "{PROPERTY} looks like a value encrypted by EDB Failover Manager, which this efm cannot \
         decrypt; run `efm encrypt {cluster}` and replace it with the value it prints"
    )]
    LegacyEfm { cluster: String },

    #[error(
        "{PROPERTY} uses format {version}, but this efm only reads {VALUE_PREFIX} (was it written \
         by a newer efm?); run `efm encrypt {cluster}` with this version"
    )]
    UnsupportedVersion { cluster: String, version: String },

    #[error(
        "{PROPERTY} was not encrypted for cluster \"{cluster}\" with the key in {} (was it \
         copied from another cluster's properties file, encrypted with a different key file, or \
         edited?); run `efm encrypt {cluster}` on this node, or copy the key file from \
         the node where it was encrypted",
        key_path.display()
    )]
    WrongClusterOrKey { cluster: String, key_path: PathBuf },

    #[error("{PROPERTY} decrypted to something that is not UTF-8 text")]
    NotUtf8,

    #[error(
        "cannot read the password from the terminal ({err}); set {PASSWORD_ENV} and use \
         --from-env instead"
    )]
    Tty {
        #[source]
        err: io::Error,
    },

    #[error("no password entered")]
    EmptyPassword,

    #[error("the password is longer than {PASSWORD_MAX} bytes")]
    PasswordTooLong,

    #[error("the password is not valid UTF-8")]
    PasswordNotUtf8,

    #[error("the two passwords do not match")]
    PasswordMismatch,

    #[error("{PASSWORD_ENV} is not set; export {PASSWORD_ENV}=<password> before using --from-env")]
    EnvUnset,

    #[error("{PASSWORD_ENV} is set but empty")]
    EnvEmpty,

    #[error("{PASSWORD_ENV} is not valid UTF-8")]
    EnvNotUtf8,
}

// ---------------------------------------------------------------------------------------------
// Wiping
// ---------------------------------------------------------------------------------------------

/// Overwrite a buffer with zeros in a way the optimiser will not remove.
fn wipe(buf: &mut [u8]) {
    for b in buf.iter_mut() {
        // SAFETY: `b` is a valid, aligned, exclusive reference to a byte.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
    compiler_fence(Ordering::SeqCst);
}

/// Zero a vector's whole allocation (including spare capacity), then empty it.
fn wipe_vec(v: &mut Vec<u8>) {
    let cap = v.capacity();
    let ptr = v.as_mut_ptr();
    for i in 0..cap {
        // SAFETY: `ptr..ptr+cap` is the vector's allocation; writing a `u8` into spare capacity
        // is allowed (it stays logically uninitialised; we clear the length below).
        unsafe { ptr.add(i).write_volatile(0) };
    }
    compiler_fence(Ordering::SeqCst);
    v.clear();
}

/// Zero a string's allocation and leave it empty. Use on passwords once they are no longer needed.
pub fn wipe_string(s: &mut String) {
    let mut bytes = std::mem::take(s).into_bytes();
    wipe_vec(&mut bytes);
}

// ---------------------------------------------------------------------------------------------
// Hex
// ---------------------------------------------------------------------------------------------

fn hex_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    hex_encode_into(&mut out, bytes);
    out
}

fn hex_encode_into(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decode hex (either case). The error names the problem, never the text.
fn hex_decode(s: &str) -> Result<Vec<u8>, String> {
    let bytes = s.as_bytes();
    if let Some(pos) = bytes.iter().position(|&c| hex_digit(c).is_none()) {
        return Err(format!("character {} is not a hex digit", pos + 1));
    }
    if bytes.len() & 1 != 0 {
        return Err(format!("it has an odd number of hex digits ({})", bytes.len()));
    }
    Ok(bytes
        .chunks_exact(2)
        .map(|p| (hex_digit(p[0]).unwrap_or(0) << 4) | hex_digit(p[1]).unwrap_or(0))
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Key file
// ---------------------------------------------------------------------------------------------

/// The 256-bit key from a key file, with the path it came from (for messages).
///
/// Zeroed on drop; deliberately not `Clone`, and its `Debug` output shows only the path.
pub struct Key {
    bytes: [u8; KEY_LEN],
    path: PathBuf,
    created: bool,
}

impl Drop for Key {
    fn drop(&mut self) {
        wipe(&mut self.bytes);
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("path", &self.path)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// Read the key file at `path`. It must exist, be a regular file (not a symlink), and not
    /// be accessible by group or others.
    pub fn load(path: &Path) -> Result<Key, SecretError> {
        let file = match OpenOptions::new()
            .read(true)
            // O_NONBLOCK: a FIFO planted at the path must not hang us; fstat rejects it below.
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SecretError::KeyNotFound { path: path.to_owned() })
            }
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(SecretError::KeyNotRegular {
                    path: path.to_owned(),
                    kind: "a symbolic link",
                })
            }
            Err(err) => return Err(SecretError::KeyIo { op: "open", path: path.to_owned(), err }),
        };
        let meta = file.metadata().map_err(|err| SecretError::KeyIo {
            op: "stat",
            path: path.to_owned(),
            err,
        })?;
        let ft = meta.file_type();
        if !ft.is_file() {
            let kind = if ft.is_dir() {
                "a directory"
            } else if ft.is_fifo() {
                "a named pipe"
            } else if ft.is_socket() {
                "a socket"
            } else if ft.is_char_device() || ft.is_block_device() {
                "a device"
            } else {
                "not a regular file"
            };
            return Err(SecretError::KeyNotRegular { path: path.to_owned(), kind });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(SecretError::KeyInsecure { path: path.to_owned(), mode });
        }
        let mut buf = Vec::with_capacity(128);
        let read = (&file).take(KEY_FILE_MAX + 1).read_to_end(&mut buf);
        let parsed = match read {
            Ok(_) => parse_key_file(&buf),
            Err(err) => Err(SecretError::KeyIo { op: "read", path: path.to_owned(), err }),
        };
        wipe_vec(&mut buf);
        let bytes = parsed.map_err(|e| match e {
            SecretError::KeyMalformed { reason, .. } => {
                SecretError::KeyMalformed { path: path.to_owned(), reason }
            }
            other => other,
        })?;
        Ok(Key { bytes, path: path.to_owned(), created: false })
    }

    /// Read the key file at `path`, creating it with a fresh random key if it does not exist.
    ///
    /// Creation is race-safe: the key is written and fsynced to a private temporary file in the
    /// same directory, which is then hard-linked into place (failing if the name exists). So
    /// readers never see a partial key, and when several processes race, exactly one key wins
    /// and every caller returns it. The containing directory must already exist.
    pub fn load_or_create(path: &Path) -> Result<Key, SecretError> {
        match Key::load(path) {
            Err(SecretError::KeyNotFound { .. }) => {}
            other => return other,
        }
        match create_key_file(path)? {
            Some(key) => Ok(key),
            None => Key::load(path),
        }
    }

    /// The key file this key was read from (or written to).
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether [`Key::load_or_create`] created the key file just now.
    #[must_use]
    pub fn was_created(&self) -> bool {
        self.created
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(&self.bytes))
    }
}

/// Parse key file contents. The path in a `KeyMalformed` error is filled in by the caller.
fn parse_key_file(contents: &[u8]) -> Result<[u8; KEY_LEN], SecretError> {
    let bad = |reason: &str| SecretError::KeyMalformed {
        path: PathBuf::new(),
        reason: reason.to_owned(),
    };
    if contents.len() as u64 > KEY_FILE_MAX {
        return Err(bad("it is far too long"));
    }
    let text = std::str::from_utf8(contents).map_err(|_| bad("it is not text"))?;
    let line = text.strip_suffix('\n').unwrap_or(text);
    let line = line.strip_suffix('\r').unwrap_or(line);
    let Some(hex) = line.strip_prefix(KEY_PREFIX) else {
        return Err(bad(&format!("it does not start with \"{KEY_PREFIX}\"")));
    };
    if hex.len() != KEY_LEN * 2 {
        return Err(bad(&format!("the key is {} hex digits; expected {}", hex.len(), KEY_LEN * 2)));
    }
    let mut decoded = hex_decode(hex).map_err(|r| bad(&format!("the key is not hex: {r}")))?;
    let mut key = [0u8; KEY_LEN];
    key.copy_from_slice(&decoded);
    wipe_vec(&mut decoded);
    Ok(key)
}

/// Removes a temporary file when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Write a new key to `path`. `Ok(None)` means another process created it first.
fn create_key_file(path: &Path) -> Result<Option<Key>, SecretError> {
    let io_err = |op: &'static str, p: &Path| {
        let p = p.to_owned();
        move |err| SecretError::KeyIo { op, path: p, err }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map_or_else(|| OsString::from("efm.key"), ToOwned::to_owned);

    let mut key = Key { bytes: [0; KEY_LEN], path: path.to_owned(), created: true };
    getrandom::getrandom(&mut key.bytes).map_err(SecretError::Random)?;
    let mut suffix = [0u8; 8];
    getrandom::getrandom(&mut suffix).map_err(SecretError::Random)?;
    let mut tmp_name = OsString::from(".");
    tmp_name.push(&name);
    tmp_name.push(format!(".tmp-{}", hex_encode(&suffix)));
    let tmp_path = dir.join(tmp_name);

    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp_path)
        .map_err(|err| {
            if err.kind() == io::ErrorKind::NotFound {
                SecretError::KeyIo {
                    op: "create (its directory does not exist)",
                    path: path.to_owned(),
                    err,
                }
            } else {
                SecretError::KeyIo { op: "create", path: tmp_path.clone(), err }
            }
        })?;
    let tmp = TempFile(tmp_path);
    // The umask can only remove bits from 0600, but make the mode exact anyway.
    file.set_permissions(Permissions::from_mode(0o600))
        .map_err(io_err("set the mode of", &tmp.0))?;
    // Built in one allocation of the right size, so no stray copy of the key is left behind.
    let mut text = String::with_capacity(KEY_PREFIX.len() + KEY_LEN * 2 + 1);
    text.push_str(KEY_PREFIX);
    hex_encode_into(&mut text, &key.bytes);
    text.push('\n');
    let written = file.write_all(text.as_bytes());
    wipe_string(&mut text);
    written.map_err(io_err("write", &tmp.0))?;
    file.sync_all().map_err(io_err("fsync", &tmp.0))?;
    drop(file);

    match fs::hard_link(&tmp.0, path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(None),
        Err(err) => return Err(SecretError::KeyIo { op: "install", path: path.to_owned(), err }),
    }
    drop(tmp);
    // Make the new directory entry durable. The key is already in place, so only warn.
    if let Err(e) = File::open(&dir).and_then(|d| d.sync_all()) {
        let dir = dir.display();
        tracing::warn!(%dir, error = %e, "could not fsync the key file's directory");
    }
    tracing::info!(path = %path.display(), "created a new key file");
    Ok(Some(key))
}

// ---------------------------------------------------------------------------------------------
// Encrypt / decrypt
// ---------------------------------------------------------------------------------------------

fn aad(cluster: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_CONTEXT.len() + cluster.len());
    aad.extend_from_slice(AAD_CONTEXT);
    aad.extend_from_slice(cluster.as_bytes());
    aad
}

/// Encrypt `plaintext` (the database password) for `cluster` under `key`.
///
/// Returns one line, `efm1:<nonce hex>:<ciphertext+tag hex>`, for `db.password.encrypted`. Each
/// call uses a fresh random nonce, so the same password encrypts differently every time.
pub fn encrypt(key: &Key, cluster: &str, plaintext: &str) -> Result<String, SecretError> {
    if cluster.is_empty() {
        return Err(SecretError::EmptyCluster);
    }
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::getrandom(&mut nonce).map_err(SecretError::Random)?;
    let aad = aad(cluster);
    let ciphertext = key
        .cipher()
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext.as_bytes(), aad: &aad })
        // Only fails for messages near 256 GiB.
        .expect("ChaCha20-Poly1305 encryption of a password cannot fail");
    Ok(format!("{VALUE_PREFIX}:{}:{}", hex_encode(&nonce), hex_encode(&ciphertext)))
}

/// Does this look like EDB Failover Manager's own encrypted value (a bare hex string)?
fn looks_like_legacy(text: &str) -> bool {
    text.len() >= 16 && text.bytes().all(|c| c.is_ascii_hexdigit())
}

/// Decrypt a `db.password.encrypted` value written by [`encrypt`] for `cluster`.
///
/// Surrounding whitespace is ignored. The caller should [`wipe_string`] the result when done.
pub fn decrypt(key: &Key, cluster: &str, text: &str) -> Result<String, SecretError> {
    if cluster.is_empty() {
        return Err(SecretError::EmptyCluster);
    }
    let malformed = |reason: String| SecretError::Malformed { cluster: cluster.to_owned(), reason };
    let text = text.trim();
    if text.is_empty() {
        return Err(malformed("it is empty".into()));
    }
    let Some((version, rest)) = text.split_once(':') else {
        if looks_like_legacy(text) {
            return Err(SecretError::LegacyEfm { cluster: cluster.to_owned() });
        }
        return Err(malformed(format!(
            "it does not start with \"{VALUE_PREFIX}:\" (if you pasted the password itself, \
             encrypt it first)"
        )));
    };
    if version != VALUE_PREFIX {
        let is_version = version.len() > 3
            && version.starts_with("efm")
            && version[3..].bytes().all(|c| c.is_ascii_digit());
        if is_version {
            return Err(SecretError::UnsupportedVersion {
                cluster: cluster.to_owned(),
                version: version.to_owned(),
            });
        }
        return Err(malformed(format!("it does not start with \"{VALUE_PREFIX}:\"")));
    }
    let fields: Vec<&str> = rest.split(':').collect();
    let (nonce_hex, ct_hex) = match fields.as_slice() {
        [nonce, ct] => (*nonce, *ct),
        [_] => {
            return Err(malformed(format!(
                "the ciphertext is missing (expected {VALUE_PREFIX}:<nonce>:<ciphertext>)"
            )))
        }
        more => {
            return Err(malformed(format!(
            "it has {} fields separated by ':' (expected 3: {VALUE_PREFIX}:<nonce>:<ciphertext>)",
            more.len() + 1
        )))
        }
    };
    if nonce_hex.is_empty() {
        return Err(malformed("the nonce (second field) is empty".into()));
    }
    let nonce = hex_decode(nonce_hex)
        .map_err(|r| malformed(format!("the nonce (second field) is not hex: {r}")))?;
    if nonce.len() != NONCE_LEN {
        return Err(malformed(format!(
            "the nonce (second field) is {} bytes; expected {NONCE_LEN}",
            nonce.len()
        )));
    }
    if ct_hex.is_empty() {
        return Err(malformed("the ciphertext (third field) is empty".into()));
    }
    let ciphertext = hex_decode(ct_hex)
        .map_err(|r| malformed(format!("the ciphertext (third field) is not hex: {r}")))?;
    if ciphertext.len() < TAG_LEN {
        return Err(malformed(format!(
            "the ciphertext (third field) is {} bytes, shorter than the {TAG_LEN}-byte \
             authentication tag",
            ciphertext.len()
        )));
    }
    let aad = aad(cluster);
    let plaintext = key
        .cipher()
        .decrypt(Nonce::from_slice(&nonce), Payload { msg: &ciphertext, aad: &aad })
        .map_err(|_| SecretError::WrongClusterOrKey {
            cluster: cluster.to_owned(),
            key_path: key.path.clone(),
        })?;
    String::from_utf8(plaintext).map_err(|e| {
        let mut bytes = e.into_bytes();
        wipe_vec(&mut bytes);
        SecretError::NotUtf8
    })
}

// ---------------------------------------------------------------------------------------------
// Password input
// ---------------------------------------------------------------------------------------------

/// Turns terminal echo off for its lifetime; restores the saved settings on drop.
struct EchoOff<'a> {
    tty: &'a File,
    saved: libc::termios,
}

impl<'a> EchoOff<'a> {
    fn new(tty: &'a File) -> io::Result<Self> {
        let fd = tty.as_raw_fd();
        let mut saved = std::mem::MaybeUninit::<libc::termios>::uninit();
        // SAFETY: `fd` is an open descriptor; `saved` is a valid out-pointer.
        if unsafe { libc::tcgetattr(fd, saved.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: tcgetattr succeeded, so it filled in the struct.
        let saved = unsafe { saved.assume_init() };
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        // Still echo the newline, so the next prompt starts on its own line.
        quiet.c_lflag |= libc::ECHONL;
        // SAFETY: `fd` is open; `quiet` is a fully initialised termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &raw const quiet) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(EchoOff { tty, saved })
    }
}

impl Drop for EchoOff<'_> {
    fn drop(&mut self) {
        // SAFETY: the descriptor outlives `self` (borrow); `saved` came from tcgetattr.
        unsafe { libc::tcsetattr(self.tty.as_raw_fd(), libc::TCSANOW, &raw const self.saved) };
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
    wipe(&mut byte);
    match result {
        Ok(()) => {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            Ok(line)
        }
        Err(e) => {
            wipe_vec(&mut line);
            Err(e)
        }
    }
}

/// Ask for a password twice (via `read_line(prompt)`) and return it if both entries match.
fn read_twice_with(
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
            wipe_vec(&mut first);
            return Err(e);
        }
    };
    let same = first == second;
    wipe_vec(&mut second);
    if !same {
        wipe_vec(&mut first);
        return Err(SecretError::PasswordMismatch);
    }
    String::from_utf8(first).map_err(|e| {
        let mut bytes = e.into_bytes();
        wipe_vec(&mut bytes);
        SecretError::PasswordNotUtf8
    })
}

/// Prompt for the password on `/dev/tty` with echo off, twice; fail if the entries differ or
/// are empty. The terminal settings are restored on every path.
///
/// The caller should [`wipe_string`] the result when done.
pub fn read_password_twice(prompt: &str) -> Result<String, SecretError> {
    let tty = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/tty")
        .map_err(|err| SecretError::Tty { err })?;
    let _echo = EchoOff::new(&tty).map_err(|err| SecretError::Tty { err })?;
    read_twice_with(prompt, |p| {
        let mut out = &tty;
        out.write_all(p.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|err| SecretError::Tty { err })?;
        read_tty_line(&tty)
    })
}

/// The password from the `EFMPASS` environment variable (for `efm encrypt --from-env`).
pub fn password_from_env() -> Result<String, SecretError> {
    password_from_env_value(std::env::var_os(PASSWORD_ENV))
}

fn password_from_env_value(value: Option<OsString>) -> Result<String, SecretError> {
    let value = value.ok_or(SecretError::EnvUnset)?;
    if value.is_empty() {
        return Err(SecretError::EnvEmpty);
    }
    value.into_string().map_err(|v| {
        let mut bytes = std::os::unix::ffi::OsStringExt::into_vec(v);
        wipe_vec(&mut bytes);
        SecretError::EnvNotUtf8
    })
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::sync::{Arc, Barrier};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let mut r = [0u8; 4];
            getrandom::getrandom(&mut r).unwrap();
            let p = std::env::temp_dir().join(format!(
                "efm-secret-test-{}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed),
                hex_encode(&r)
            ));
            fs::create_dir(&p).unwrap();
            TempDir(p)
        }
        fn key_path(&self) -> PathBuf {
            self.0.join("efm.key")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn test_key(dir: &TempDir) -> Key {
        Key::load_or_create(&dir.key_path()).unwrap()
    }

    #[test]
    fn round_trip() {
        let dir = TempDir::new();
        let key = test_key(&dir);
        for pw in ["s3cret", "1safepassword", "with spaces = and # and : and \\", "ü€😀", "x"]
        {
            let enc = encrypt(&key, "acctg", pw).unwrap();
            assert!(enc.starts_with("efm1:"));
            assert!(!enc.contains(['=', '#', '!', ' ', '\n', '\\']), "{enc}");
            assert_eq!(decrypt(&key, "acctg", &enc).unwrap(), pw);
            // Surrounding whitespace (as a properties parser might leave) is fine.
            assert_eq!(decrypt(&key, "acctg", &format!("  {enc}\n")).unwrap(), pw);
        }
        // Fresh nonce every time.
        assert_ne!(encrypt(&key, "acctg", "pw").unwrap(), encrypt(&key, "acctg", "pw").unwrap());
        // A key loaded again from the file decrypts too.
        let enc = encrypt(&key, "acctg", "pw").unwrap();
        let again = Key::load(&dir.key_path()).unwrap();
        assert_eq!(decrypt(&again, "acctg", &enc).unwrap(), "pw");
    }

    #[test]
    fn wrong_cluster_is_an_auth_error_naming_the_cluster() {
        let dir = TempDir::new();
        let key = test_key(&dir);
        let enc = encrypt(&key, "acctg", "pw").unwrap();
        let err = decrypt(&key, "sales", &enc).unwrap_err();
        assert!(matches!(err, SecretError::WrongClusterOrKey { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("db.password.encrypted was not encrypted for cluster \"sales\""),
            "{msg}"
        );
        assert!(msg.contains(&dir.key_path().display().to_string()), "{msg}");
        assert!(msg.contains("another cluster"), "{msg}");
        assert!(msg.contains("efm encrypt sales"), "{msg}");
    }

    #[test]
    fn wrong_key_is_an_auth_error() {
        let (d1, d2) = (TempDir::new(), TempDir::new());
        let (k1, k2) = (test_key(&d1), test_key(&d2));
        let enc = encrypt(&k1, "acctg", "pw").unwrap();
        let err = decrypt(&k2, "acctg", &enc).unwrap_err();
        assert!(matches!(err, SecretError::WrongClusterOrKey { .. }), "{err:?}");
        assert!(err.to_string().contains(&d2.key_path().display().to_string()));
    }

    #[test]
    fn tampering_is_detected() {
        let dir = TempDir::new();
        let key = test_key(&dir);
        let enc = encrypt(&key, "acctg", "password").unwrap();
        let nonce_start = "efm1:".len();
        let ct_start = enc.rfind(':').unwrap() + 1;
        // Flip one hex digit in the nonce, the ciphertext body, and the tag.
        for pos in [nonce_start, nonce_start + 23, ct_start, ct_start + 5, enc.len() - 1] {
            let mut bytes = enc.clone().into_bytes();
            bytes[pos] = if bytes[pos] == b'0' { b'1' } else { b'0' };
            let tampered = String::from_utf8(bytes).unwrap();
            let err = decrypt(&key, "acctg", &tampered).unwrap_err();
            assert!(matches!(err, SecretError::WrongClusterOrKey { .. }), "pos {pos}: {err:?}");
        }
        // Truncated ciphertext (still at least a tag long).
        let err = decrypt(&key, "acctg", &enc[..enc.len() - 2]).unwrap_err();
        assert!(matches!(err, SecretError::WrongClusterOrKey { .. }), "{err:?}");
    }

    #[test]
    fn malformed_values() {
        let dir = TempDir::new();
        let key = test_key(&dir);
        let good = encrypt(&key, "acctg", "pw").unwrap();
        let nonce = good.split(':').nth(1).unwrap();
        let ct = good.split(':').nth(2).unwrap();
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "it is empty"),
            ("   ".into(), "it is empty"),
            ("hunter2".into(), "does not start with \"efm1:\""),
            ("foo:bar:baz".into(), "does not start with \"efm1:\""),
            ("efm1:".into(), "ciphertext is missing"),
            (format!("efm1:{nonce}"), "ciphertext is missing"),
            (format!("efm1:{nonce}:{ct}:00"), "4 fields"),
            (format!("efm1::{ct}"), "nonce (second field) is empty"),
            (
                format!("efm1:zz{}:{ct}", &nonce[2..]),
                "nonce (second field) is not hex: character 1",
            ),
            (format!("efm1:{}:{ct}", &nonce[1..]), "odd number of hex digits"),
            (format!("efm1:{}:{ct}", &nonce[2..]), "nonce (second field) is 11 bytes; expected 12"),
            (format!("efm1:{nonce}:"), "ciphertext (third field) is empty"),
            (format!("efm1:{nonce}:{ct}g"), "ciphertext (third field) is not hex"),
            (format!("efm1:{nonce}:{}", &ct[1..]), "odd number of hex digits"),
            (format!("efm1:{nonce}:{}", &ct[..30]), "shorter than the 16-byte authentication tag"),
        ];
        for (text, want) in cases {
            let err = decrypt(&key, "acctg", &text).unwrap_err();
            assert!(matches!(err, SecretError::Malformed { .. }), "{text:?}: {err:?}");
            let msg = err.to_string();
            assert!(msg.contains(want), "{text:?}: {msg}");
            assert!(msg.starts_with("db.password.encrypted is malformed"), "{msg}");
            assert!(msg.contains("efm encrypt acctg"), "{msg}");
        }
        // The password itself must never appear in a message.
        let msg = decrypt(&key, "acctg", "hunter2").unwrap_err().to_string();
        assert!(!msg.contains("hunter2"));

        let err = decrypt(&key, "acctg", &good.replacen("efm1", "efm2", 1)).unwrap_err();
        assert!(
            matches!(err, SecretError::UnsupportedVersion { ref version, .. } if version == "efm2"),
            "{err:?}"
        );
        assert!(err.to_string().contains("format efm2"));

        assert!(matches!(encrypt(&key, "", "pw"), Err(SecretError::EmptyCluster)));
        assert!(matches!(decrypt(&key, "", &good), Err(SecretError::EmptyCluster)));
    }

    #[test]
    fn legacy_efm_value_asks_to_re_encrypt() {
        let dir = TempDir::new();
        let key = test_key(&dir);
        for legacy in [
            "835fb18954f198e94fd3d6f4b070350b",
            "516b36fb8031da17cfbc010f7d09359c",
            "7C801B32A05C0C5CB2AD4FFBDA5E8F9A",
            " e003fea651a8b4a80fb248a22b36f334e003fea651a8b4a80fb248a22b36f334 ",
        ] {
            let err = decrypt(&key, "acctg", legacy).unwrap_err();
            assert!(matches!(err, SecretError::LegacyEfm { .. }), "{legacy}: {err:?}");
            let msg = err.to_string();
            assert!(msg.contains("EDB Failover Manager"), "{msg}");
            assert!(msg.contains("run `efm encrypt acctg`"), "{msg}");
        }
    }

    #[test]
    fn key_file_is_created_0600_and_reused() {
        let dir = TempDir::new();
        let path = dir.key_path();
        let k1 = Key::load_or_create(&path).unwrap();
        assert!(k1.was_created());
        assert_eq!(k1.path(), path);
        let meta = fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        let contents = fs::read_to_string(&path).unwrap();
        assert!(contents.starts_with(KEY_PREFIX) && contents.ends_with('\n'));
        assert_eq!(contents.len(), KEY_PREFIX.len() + 64 + 1);

        let k2 = Key::load_or_create(&path).unwrap();
        assert!(!k2.was_created());
        assert_eq!(k1.bytes, k2.bytes);
        let k3 = Key::load(&path).unwrap();
        assert_eq!(k1.bytes, k3.bytes);
        // No temporary files left behind.
        let names: Vec<_> = fs::read_dir(&dir.0).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![OsString::from("efm.key")]);
        // Debug output does not contain the key.
        let dbg = format!("{k1:?}");
        assert!(!dbg.contains(&hex_encode(&k1.bytes)) && dbg.contains("efm.key"));
    }

    #[test]
    fn key_file_readable_by_others_is_refused_with_chmod_hint() {
        let dir = TempDir::new();
        let path = dir.key_path();
        drop(Key::load_or_create(&path).unwrap());
        for mode in [0o644, 0o640, 0o604, 0o660] {
            fs::set_permissions(&path, Permissions::from_mode(mode)).unwrap();
            for err in [Key::load_or_create(&path).unwrap_err(), Key::load(&path).unwrap_err()] {
                assert!(matches!(err, SecretError::KeyInsecure { .. }), "{err:?}");
                let msg = err.to_string();
                assert!(msg.contains(&path.display().to_string()), "{msg}");
                assert!(msg.contains(&format!("{mode:04o}")), "{msg}");
                assert!(msg.contains(&format!("chmod 600 {}", path.display())), "{msg}");
            }
        }
        // The file was not replaced.
        fs::set_permissions(&path, Permissions::from_mode(0o600)).unwrap();
        assert!(!Key::load_or_create(&path).unwrap().was_created());
    }

    #[test]
    fn key_path_that_is_not_a_regular_file_is_refused() {
        let dir = TempDir::new();
        let target = dir.0.join("real.key");
        drop(Key::load_or_create(&target).unwrap());
        let link = dir.0.join("link.key");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = Key::load_or_create(&link).unwrap_err();
        assert!(
            matches!(err, SecretError::KeyNotRegular { kind: "a symbolic link", .. }),
            "{err:?}"
        );

        let sub = dir.0.join("adir");
        fs::create_dir(&sub).unwrap();
        let err = Key::load_or_create(&sub).unwrap_err();
        assert!(matches!(err, SecretError::KeyNotRegular { kind: "a directory", .. }), "{err:?}");
        assert!(err.to_string().contains(&sub.display().to_string()));

        let err = Key::load(&dir.0.join("missing.key")).unwrap_err();
        assert!(matches!(err, SecretError::KeyNotFound { .. }), "{err:?}");

        let err = Key::load_or_create(&dir.0.join("no-such-dir/efm.key")).unwrap_err();
        assert!(matches!(err, SecretError::KeyIo { .. }), "{err:?}");
        assert!(err.to_string().contains("directory does not exist"), "{err}");
    }

    #[test]
    fn malformed_key_file_is_refused() {
        let dir = TempDir::new();
        let path = dir.key_path();
        let valid = format!("{KEY_PREFIX}{}", "ab".repeat(32));
        for (contents, want) in [
            (String::new(), "does not start with"),
            ("0123456789abcdef".into(), "does not start with"),
            (format!("{KEY_PREFIX}abcd\n"), "64"),
            (format!("{KEY_PREFIX}{}\n", "zz".repeat(32)), "not hex"),
            (format!("{valid}\nextra\n"), "hex digits"),
        ] {
            let _ = fs::remove_file(&path);
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .unwrap()
                .write_all(contents.as_bytes())
                .unwrap();
            let err = Key::load_or_create(&path).unwrap_err();
            assert!(matches!(err, SecretError::KeyMalformed { .. }), "{contents:?}: {err:?}");
            let msg = err.to_string();
            assert!(msg.contains(want) && msg.contains(&path.display().to_string()), "{msg}");
        }
        // Without the trailing newline, and with CRLF, it is accepted.
        for contents in [valid.clone(), format!("{valid}\r\n")] {
            fs::write(&path, contents).unwrap();
            assert_eq!(Key::load(&path).unwrap().bytes, [0xab; 32]);
        }
    }

    #[test]
    fn concurrent_creation_yields_one_key() {
        for _ in 0..20 {
            let dir = TempDir::new();
            let path = Arc::new(dir.key_path());
            let threads = 8;
            let barrier = Arc::new(Barrier::new(threads));
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let (path, barrier) = (Arc::clone(&path), Arc::clone(&barrier));
                    std::thread::spawn(move || {
                        barrier.wait();
                        let key = Key::load_or_create(&path).unwrap();
                        (key.bytes, key.was_created())
                    })
                })
                .collect();
            let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            assert!(results.iter().all(|(k, _)| *k == results[0].0));
            assert_eq!(results.iter().filter(|(_, created)| *created).count(), 1);
            assert_eq!(Key::load(&path).unwrap().bytes, results[0].0);
            let names: Vec<_> =
                fs::read_dir(&dir.0).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(names, vec![OsString::from("efm.key")]);
        }
    }

    #[test]
    fn password_twice_logic() {
        fn feed(lines: &[&str]) -> impl FnMut(&str) -> Result<Vec<u8>, SecretError> {
            let mut lines: Vec<Vec<u8>> =
                lines.iter().rev().map(|l| l.as_bytes().to_vec()).collect();
            move |_prompt| lines.pop().ok_or(SecretError::EmptyPassword)
        }
        assert_eq!(read_twice_with("Password: ", feed(&["pw", "pw"])).unwrap(), "pw");
        assert!(matches!(
            read_twice_with("p", feed(&["pw", "pW"])),
            Err(SecretError::PasswordMismatch)
        ));
        assert!(matches!(read_twice_with("p", feed(&["", ""])), Err(SecretError::EmptyPassword)));
        assert!(matches!(read_twice_with("p", feed(&["pw"])), Err(SecretError::EmptyPassword)));
        let mut prompts = Vec::new();
        let _ = read_twice_with("First: ", |p| {
            prompts.push(p.to_owned());
            Ok(b"x".to_vec())
        });
        assert_eq!(prompts, ["First: ", "Enter it again to confirm: "]);
        let bad_utf8 = |_: &str| Ok(vec![0xff, 0xfe]);
        assert!(matches!(read_twice_with("p", bad_utf8), Err(SecretError::PasswordNotUtf8)));
    }

    #[test]
    fn password_from_env_values() {
        assert!(matches!(password_from_env_value(None), Err(SecretError::EnvUnset)));
        assert!(matches!(
            password_from_env_value(Some(OsString::new())),
            Err(SecretError::EnvEmpty)
        ));
        assert_eq!(password_from_env_value(Some("1safepassword".into())).unwrap(), "1safepassword");
        let bad = std::os::unix::ffi::OsStringExt::from_vec(vec![b'a', 0xff]);
        assert!(matches!(password_from_env_value(Some(bad)), Err(SecretError::EnvNotUtf8)));
        assert!(SecretError::EnvUnset.to_string().contains("export EFMPASS="));
    }

    #[test]
    fn wiping() {
        let mut s = String::from("hunter2");
        wipe_string(&mut s);
        assert!(s.is_empty());
        let mut v = b"secret".to_vec();
        wipe_vec(&mut v);
        assert!(v.is_empty());
        // SAFETY (test): the allocation is still owned by `v`; check its bytes were zeroed.
        let cap = v.capacity();
        let zeroed = (0..cap).all(|i| unsafe { *v.as_ptr().add(i) } == 0);
        assert!(zeroed);
    }

    #[test]
    fn hex_helpers() {
        assert_eq!(hex_encode(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(hex_decode("00AB10").unwrap(), [0, 0xab, 0x10]);
        assert!(hex_decode("0").is_err());
        assert!(hex_decode("0g").unwrap_err().contains("character 2"));
    }
}
