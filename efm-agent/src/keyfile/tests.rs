use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::sync::{Arc, Barrier};

use super::*;
use crate::files::test_dir::TestDir as Dir;

const KINDS: [KeyKind; 2] = [KeyKind::Cluster, KeyKind::Password];

#[test]
fn created_0600_and_read_back() {
    for kind in KINDS {
        let d = Dir::new("keyfile");
        let p = d.0.join("k");
        assert!(create(kind, &p, b"secret\n").unwrap());
        let meta = fs::symlink_metadata(&p).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        assert_eq!(read(kind, &p).unwrap().as_slice(), b"secret\n");
        assert_eq!(d.names(), ["k"], "no temporary file left");
    }
}

#[test]
fn an_existing_key_is_never_replaced() {
    for kind in KINDS {
        let d = Dir::new("keyfile");
        let p = d.0.join("k");
        assert!(create(kind, &p, b"first").unwrap());
        assert!(!create(kind, &p, b"second").unwrap());
        assert_eq!(read(kind, &p).unwrap().as_slice(), b"first");
        // Not even a group-readable one (create does not judge the file, read does).
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(!create(kind, &p, b"third").unwrap());
        assert_eq!(fs::read(&p).unwrap(), b"first");
    }
}

#[test]
fn missing_file_says_how_to_make_one() {
    let d = Dir::new("keyfile");
    let p = d.0.join("missing.key");
    let e = read(KeyKind::Cluster, &p).unwrap_err();
    assert!(matches!(e, KeyFileError::NotFound { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("cluster key file {} does not exist", p.display()))
            && msg.contains("efm generate-key"),
        "{msg}"
    );
    let msg = read(KeyKind::Password, &p).unwrap_err().to_string();
    assert!(
        msg.starts_with(&format!("key file {} does not exist", p.display())) && msg.contains("efm encrypt"),
        "{msg}"
    );
}

#[test]
fn group_or_other_access_is_refused_with_the_chmod_to_run() {
    for kind in KINDS {
        let d = Dir::new("keyfile");
        let p = d.0.join("k");
        create(kind, &p, b"x").unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660, 0o610, 0o601, 0o620] {
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            let e = read(kind, &p).unwrap_err();
            assert!(matches!(e, KeyFileError::Insecure { mode: m, .. } if m == mode), "{e:?}");
            let msg = e.to_string();
            assert!(msg.contains(&format!("{mode:04o}")), "{msg}");
            assert!(msg.contains(&format!("run `chmod 600 {}`", p.display())), "{msg}");
        }
        for mode in [0o600, 0o400] {
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(read(kind, &p).unwrap().as_slice(), b"x");
        }
    }
}

#[test]
fn symlinks_and_other_non_files_are_refused() {
    let d = Dir::new("keyfile");
    let real = d.0.join("real");
    create(KeyKind::Cluster, &real, b"x").unwrap();
    let link = d.0.join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    // Even a link to a good key file: whoever can plant the link chooses the file.
    let e = read(KeyKind::Cluster, &link).unwrap_err();
    assert!(matches!(e, KeyFileError::NotRegular { what: "a symbolic link", .. }), "{e:?}");
    assert!(e.to_string().contains(&link.display().to_string()));
    // Creating through a symlink does not write into its target either.
    assert!(!create(KeyKind::Cluster, &link, b"y").unwrap());
    assert_eq!(fs::read(&real).unwrap(), b"x");

    let e = read(KeyKind::Password, &d.0).unwrap_err();
    assert!(matches!(e, KeyFileError::NotRegular { what: "a directory", .. }), "{e:?}");

    // A FIFO must not hang the reader (O_NONBLOCK), and is refused.
    let fifo = d.0.join("fifo");
    rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o600), 0)
        .unwrap();
    let e = read(KeyKind::Password, &fifo).unwrap_err();
    assert!(matches!(e, KeyFileError::NotRegular { what: "a named pipe", .. }), "{e:?}");
}

#[test]
fn oversized_file_is_refused() {
    let d = Dir::new("keyfile");
    let p = d.0.join("big");
    create(KeyKind::Cluster, &p, &vec![b'a'; usize::try_from(MAX_LEN).unwrap() + 1]).unwrap();
    let e = read(KeyKind::Cluster, &p).unwrap_err();
    assert!(matches!(e, KeyFileError::Malformed { .. }), "{e:?}");
    assert!(e.to_string().contains("longer than 4096 bytes"), "{e}");
}

#[test]
fn missing_directory_is_named() {
    let d = Dir::new("keyfile");
    let p = d.0.join("no-such-dir/k");
    let e = create(KeyKind::Password, &p, b"x").unwrap_err();
    assert!(matches!(e, KeyFileError::Io { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("directory does not exist") && msg.contains(&p.display().to_string()), "{msg}");
}

#[test]
fn racing_creators_agree_on_one_key() {
    for _ in 0..10 {
        let d = Dir::new("keyfile");
        let p = Arc::new(d.0.join("k"));
        let barrier = Arc::new(Barrier::new(8));
        let handles: Vec<_> = (0..8u8)
            .map(|i| {
                let (p, barrier) = (Arc::clone(&p), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    create(KeyKind::Cluster, &p, &[i; 16]).unwrap()
                })
            })
            .collect();
        let created = handles.into_iter().map(|h| h.join().unwrap()).filter(|c| *c).count();
        assert_eq!(created, 1);
        let got = read(KeyKind::Cluster, &p).unwrap();
        assert!(got.len() == 16 && got.iter().all(|b| *b == got[0]));
        assert_eq!(d.names(), ["k"]);
    }
}

#[test]
fn hex_round_trip_and_errors() {
    let key = random_key::<16>(KeyKind::Cluster).unwrap();
    assert_ne!(*key, [0u8; 16], "128 random bits are not all zero");
    let mut text = String::new();
    hex_into(&mut text, key.as_slice());
    assert_eq!(text.len(), 32);
    assert_eq!(*decode_hex::<16>(&text).unwrap(), *key);
    assert_eq!(*decode_hex::<2>("aB0f").unwrap(), [0xab, 0x0f]);
    assert_eq!(decode_hex::<2>("abc").unwrap_err(), "the key is 3 hex digits; expected 4");
    assert_eq!(decode_hex::<2>("ab0g").unwrap_err(), "the key is not hex: character 4 is not a hex digit");
    assert_eq!(decode_hex::<2>("x b0").unwrap_err(), "the key is not hex: character 1 is not a hex digit");
    assert!(decode_hex::<2>("éa").is_err());
}
