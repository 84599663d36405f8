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

use std::io;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use zeroize::{Zeroize as _, Zeroizing};

pub use crate::keyfile::KeyFileError;
use crate::keyfile::{self, KeyKind};

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
/// Longest password line read from the terminal.
const PASSWORD_MAX: usize = 4096;
/// Domain separation for the associated data; the cluster name follows it.
const AAD_CONTEXT: &[u8] = b"efm1\0db.password.encrypted\0cluster\0";

/// Everything that can go wrong with keys, encrypted values, and password input.
///
/// No variant ever carries the password, the key, or the encrypted value itself.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The key file: missing, not a regular file, readable by others, malformed, or an I/O error
    /// (see [`crate::keyfile`]).
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),

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

/// Zero a string's allocation and leave it empty. Use on passwords once they are no longer needed.
pub fn wipe_string(s: &mut String) {
    s.zeroize();
}

// ---------------------------------------------------------------------------------------------
// Hex
// ---------------------------------------------------------------------------------------------

fn hex_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    keyfile::hex_into(&mut out, bytes);
    out
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
    Ok(bytes.chunks_exact(2).map(|p| (hex_digit(p[0]).unwrap_or(0) << 4) | hex_digit(p[1]).unwrap_or(0)).collect())
}

// ---------------------------------------------------------------------------------------------
// Key file
// ---------------------------------------------------------------------------------------------

/// The 256-bit key from a key file, with the path it came from (for messages).
///
/// Zeroed on drop; deliberately not `Clone`, and its `Debug` output shows only the path.
pub struct Key {
    bytes: Zeroizing<[u8; KEY_LEN]>,
    path: PathBuf,
    created: bool,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("path", &self.path).field("created", &self.created).finish_non_exhaustive()
    }
}

impl Key {
    /// Read the key file at `path`. It must exist, be a regular file (not a symlink), and not
    /// be accessible by group or others (see [`crate::keyfile::read`]).
    pub fn load(path: &Path) -> Result<Key, SecretError> {
        let contents = keyfile::read(KeyKind::Password, path)?;
        let bytes =
            parse_key_file(&contents).map_err(|reason| KeyFileError::malformed(KeyKind::Password, path, reason))?;
        Ok(Key { bytes, path: path.to_owned(), created: false })
    }

    /// Read the key file at `path`, creating it with a fresh random key if it does not exist.
    ///
    /// Creation is race-safe ([`crate::keyfile::create`]): readers never see a partial key, and
    /// when several processes race, exactly one key wins and every caller returns it. The
    /// containing directory must already exist.
    pub fn load_or_create(path: &Path) -> Result<Key, SecretError> {
        match Key::load(path) {
            Err(SecretError::KeyFile(KeyFileError::NotFound { .. })) => {}
            other => return other,
        }
        let bytes = keyfile::random_key::<KEY_LEN>(KeyKind::Password)?;
        // Built in one allocation of the right size, so no stray copy of the key is left behind.
        let mut text = Zeroizing::new(String::with_capacity(KEY_PREFIX.len() + KEY_LEN * 2 + 1));
        text.push_str(KEY_PREFIX);
        keyfile::hex_into(&mut text, bytes.as_slice());
        text.push('\n');
        if keyfile::create(KeyKind::Password, path, text.as_bytes())? {
            Ok(Key { bytes, path: path.to_owned(), created: true })
        } else {
            // Another process created it first: use theirs.
            Key::load(path)
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
        ChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(self.bytes.as_slice()))
    }
}

/// Parse key file contents; the error is the reason (the caller adds the path).
fn parse_key_file(contents: &[u8]) -> Result<Zeroizing<[u8; KEY_LEN]>, String> {
    let text = std::str::from_utf8(contents).map_err(|_| "it is not text".to_owned())?;
    let line = text.strip_suffix('\n').unwrap_or(text);
    let line = line.strip_suffix('\r').unwrap_or(line);
    let Some(hex) = line.strip_prefix(KEY_PREFIX) else {
        return Err(format!("it does not start with \"{KEY_PREFIX}\""));
    };
    keyfile::decode_hex::<KEY_LEN>(hex)
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
        let is_version =
            version.len() > 3 && version.starts_with("efm") && version[3..].bytes().all(|c| c.is_ascii_digit());
        if is_version {
            return Err(SecretError::UnsupportedVersion { cluster: cluster.to_owned(), version: version.to_owned() });
        }
        return Err(malformed(format!("it does not start with \"{VALUE_PREFIX}:\"")));
    }
    let fields: Vec<&str> = rest.split(':').collect();
    let (nonce_hex, ct_hex) = match fields.as_slice() {
        [nonce, ct] => (*nonce, *ct),
        [_] => {
            return Err(malformed(format!("the ciphertext is missing (expected {VALUE_PREFIX}:<nonce>:<ciphertext>)")))
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
    let nonce = hex_decode(nonce_hex).map_err(|r| malformed(format!("the nonce (second field) is not hex: {r}")))?;
    if nonce.len() != NONCE_LEN {
        return Err(malformed(format!("the nonce (second field) is {} bytes; expected {NONCE_LEN}", nonce.len())));
    }
    if ct_hex.is_empty() {
        return Err(malformed("the ciphertext (third field) is empty".into()));
    }
    let ciphertext =
        hex_decode(ct_hex).map_err(|r| malformed(format!("the ciphertext (third field) is not hex: {r}")))?;
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
        .map_err(|_| SecretError::WrongClusterOrKey { cluster: cluster.to_owned(), key_path: key.path.clone() })?;
    String::from_utf8(plaintext).map_err(|e| {
        e.into_bytes().zeroize();
        SecretError::NotUtf8
    })
}

mod password;
pub use password::{password_from_env, read_password_twice};

#[cfg(test)]
mod tests;
