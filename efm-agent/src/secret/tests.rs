use super::password::{password_from_env_value, read_twice_with};
use super::*;
use std::ffi::OsString;
use std::fs::{self, OpenOptions, Permissions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::sync::{Arc, Barrier};

use crate::files::test_dir::TestDir as TempDir;

impl TempDir {
    fn key_path(&self) -> PathBuf {
        self.0.join("efm.key")
    }
}

fn test_key(dir: &TempDir) -> Key {
    Key::load_or_create(&dir.key_path()).unwrap()
}

#[test]
fn round_trip() {
    let dir = TempDir::new("secret-test");
    let key = test_key(&dir);
    for pw in ["s3cret", "1safepassword", "with spaces = and # and : and \\", "ü€😀", "x"] {
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
    let dir = TempDir::new("secret-test");
    let key = test_key(&dir);
    let enc = encrypt(&key, "acctg", "pw").unwrap();
    let err = decrypt(&key, "sales", &enc).unwrap_err();
    assert!(matches!(err, SecretError::WrongClusterOrKey { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("db.password.encrypted was not encrypted for cluster \"sales\""), "{msg}");
    assert!(msg.contains(&dir.key_path().display().to_string()), "{msg}");
    assert!(msg.contains("another cluster"), "{msg}");
    assert!(msg.contains("efm encrypt sales"), "{msg}");
}

#[test]
fn wrong_key_is_an_auth_error() {
    let (d1, d2) = (TempDir::new("secret-test"), TempDir::new("secret-test"));
    let (k1, k2) = (test_key(&d1), test_key(&d2));
    let enc = encrypt(&k1, "acctg", "pw").unwrap();
    let err = decrypt(&k2, "acctg", &enc).unwrap_err();
    assert!(matches!(err, SecretError::WrongClusterOrKey { .. }), "{err:?}");
    assert!(err.to_string().contains(&d2.key_path().display().to_string()));
}

#[test]
fn tampering_is_detected() {
    let dir = TempDir::new("secret-test");
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
    let dir = TempDir::new("secret-test");
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
        (format!("efm1:zz{}:{ct}", &nonce[2..]), "nonce (second field) is not hex: character 1"),
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
    assert!(matches!(err, SecretError::UnsupportedVersion { ref version, .. } if version == "efm2"), "{err:?}");
    assert!(err.to_string().contains("format efm2"));

    assert!(matches!(encrypt(&key, "", "pw"), Err(SecretError::EmptyCluster)));
    assert!(matches!(decrypt(&key, "", &good), Err(SecretError::EmptyCluster)));
}

#[test]
fn legacy_efm_value_asks_to_re_encrypt() {
    let dir = TempDir::new("secret-test");
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
    let dir = TempDir::new("secret-test");
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
    assert_eq!(*k1.bytes, *k2.bytes);
    let k3 = Key::load(&path).unwrap();
    assert_eq!(*k1.bytes, *k3.bytes);
    // No temporary files left behind.
    let names: Vec<_> = fs::read_dir(&dir.0).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![OsString::from("efm.key")]);
    // Debug output does not contain the key.
    let dbg = format!("{k1:?}");
    assert!(!dbg.contains(&hex_encode(k1.bytes.as_slice())) && dbg.contains("efm.key"));
}

#[test]
fn key_file_readable_by_others_is_refused_with_chmod_hint() {
    let dir = TempDir::new("secret-test");
    let path = dir.key_path();
    drop(Key::load_or_create(&path).unwrap());
    for mode in [0o644, 0o640, 0o604, 0o660] {
        fs::set_permissions(&path, Permissions::from_mode(mode)).unwrap();
        for err in [Key::load_or_create(&path).unwrap_err(), Key::load(&path).unwrap_err()] {
            assert!(matches!(err, SecretError::KeyFile(KeyFileError::Insecure { .. })), "{err:?}");
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
    let dir = TempDir::new("secret-test");
    let target = dir.0.join("real.key");
    drop(Key::load_or_create(&target).unwrap());
    let link = dir.0.join("link.key");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let err = Key::load_or_create(&link).unwrap_err();
    assert!(matches!(err, SecretError::KeyFile(KeyFileError::NotRegular { what: "a symbolic link", .. })), "{err:?}");

    let sub = dir.0.join("adir");
    fs::create_dir(&sub).unwrap();
    let err = Key::load_or_create(&sub).unwrap_err();
    assert!(matches!(err, SecretError::KeyFile(KeyFileError::NotRegular { what: "a directory", .. })), "{err:?}");
    assert!(err.to_string().contains(&sub.display().to_string()));

    let err = Key::load(&dir.0.join("missing.key")).unwrap_err();
    assert!(matches!(err, SecretError::KeyFile(KeyFileError::NotFound { .. })), "{err:?}");

    let err = Key::load_or_create(&dir.0.join("no-such-dir/efm.key")).unwrap_err();
    assert!(matches!(err, SecretError::KeyFile(KeyFileError::Io { .. })), "{err:?}");
    assert!(err.to_string().contains("directory does not exist"), "{err}");
}

#[test]
fn malformed_key_file_is_refused() {
    let dir = TempDir::new("secret-test");
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
        assert!(matches!(err, SecretError::KeyFile(KeyFileError::Malformed { .. })), "{contents:?}: {err:?}");
        let msg = err.to_string();
        assert!(msg.contains(want) && msg.contains(&path.display().to_string()), "{msg}");
    }
    // Without the trailing newline, and with CRLF, it is accepted.
    for contents in [valid.clone(), format!("{valid}\r\n")] {
        fs::write(&path, contents).unwrap();
        assert_eq!(*Key::load(&path).unwrap().bytes, [0xab; 32]);
    }
}

#[test]
fn concurrent_creation_yields_one_key() {
    for _ in 0..20 {
        let dir = TempDir::new("secret-test");
        let path = Arc::new(dir.key_path());
        let threads = 8;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (path, barrier) = (Arc::clone(&path), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    let key = Key::load_or_create(&path).unwrap();
                    (*key.bytes, key.was_created())
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(results.iter().all(|(k, _)| *k == results[0].0));
        assert_eq!(results.iter().filter(|(_, created)| *created).count(), 1);
        assert_eq!(*Key::load(&path).unwrap().bytes, results[0].0);
        let names: Vec<_> = fs::read_dir(&dir.0).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![OsString::from("efm.key")]);
    }
}

#[test]
fn password_twice_logic() {
    fn feed(lines: &[&str]) -> impl FnMut(&str) -> Result<Vec<u8>, SecretError> {
        let mut lines: Vec<Vec<u8>> = lines.iter().rev().map(|l| l.as_bytes().to_vec()).collect();
        move |_prompt| lines.pop().ok_or(SecretError::EmptyPassword)
    }
    assert_eq!(read_twice_with("Password: ", feed(&["pw", "pw"])).unwrap(), "pw");
    assert!(matches!(read_twice_with("p", feed(&["pw", "pW"])), Err(SecretError::PasswordMismatch)));
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
    assert!(matches!(password_from_env_value(Some(OsString::new())), Err(SecretError::EnvEmpty)));
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
}

#[test]
fn hex_helpers() {
    assert_eq!(hex_encode(&[0, 0xab, 0x10]), "00ab10");
    assert_eq!(hex_decode("00AB10").unwrap(), [0, 0xab, 0x10]);
    assert!(hex_decode("0").is_err());
    assert!(hex_decode("0g").unwrap_err().contains("character 2"));
}
