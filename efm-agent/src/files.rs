//! Writing a file atomically: readers see the old contents or the new ones, never a part, and
//! after a crash the file is one or the other.
//!
//! [`write_atomic`] is the one way efm writes such files (the key files, the configuration files
//! of `efm upgrade-conf`, a demoted primary's `standby.signal` / `postgresql.auto.conf` /
//! `recovery.conf`, the vote record, the Raft membership file): a temporary file in the same
//! directory (`O_CREAT | O_EXCL | O_NOFOLLOW`, a random name, so a planted file or symlink is
//! never written through), its exact mode (the umask is not applied), its owner, the contents,
//! `fsync`, then `rename` over the target ([`Existing::Replace`]) or a hard link that fails if
//! the target exists ([`Existing::Keep`], never clobbers: the loser of a creation race learns
//! it), and `fsync` of the directory so the new name is durable. On any error the temporary file
//! is removed.

use std::{
    fmt::Write as _,
    fs::{self, File},
    io::{self, Write as _},
    path::{Path, PathBuf},
};

use rustix::fs::{Gid, Mode, OFlags, Uid};

/// What [`write_atomic`] does when the target already exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existing {
    /// Replace it (`rename`).
    Replace,
    /// Leave it and fail with [`io::ErrorKind::AlreadyExists`] (a hard link, which fails if the
    /// name exists; no window in which two writers both believe they created it).
    Keep,
}

/// How [`write_atomic`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteOptions {
    /// The file's permission bits, set exactly (the umask does not apply).
    pub mode: u32,
    /// `(uid, gid)` to give the file before it appears under its name; `None` keeps the
    /// process's (changing the owner needs root or `CAP_CHOWN`).
    pub owner: Option<(u32, u32)>,
    pub existing: Existing,
}

impl WriteOptions {
    /// Mode 0600, the process's owner, replacing an existing file.
    #[must_use]
    pub const fn private() -> Self {
        Self { mode: 0o600, owner: None, existing: Existing::Replace }
    }

    #[must_use]
    pub const fn mode(self, mode: u32) -> Self {
        Self { mode, ..self }
    }

    #[must_use]
    pub const fn owner(self, owner: Option<(u32, u32)>) -> Self {
        Self { owner, ..self }
    }

    #[must_use]
    pub const fn existing(self, existing: Existing) -> Self {
        Self { existing, ..self }
    }
}

/// A failed [`write_atomic`]: the target path, the step, and the operating system's error.
#[derive(Debug, thiserror::Error)]
#[error("{}: cannot {op}: {source}", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    pub op: &'static str,
    #[source]
    pub source: io::Error,
}

impl WriteError {
    /// The target existed and [`Existing::Keep`] was asked for.
    #[must_use]
    pub fn already_exists(&self) -> bool {
        self.source.kind() == io::ErrorKind::AlreadyExists
    }

    /// The directory the file should go into does not exist.
    #[must_use]
    pub fn no_directory(&self) -> bool {
        self.source.kind() == io::ErrorKind::NotFound
    }
}

/// For callers that return `io::Result`: the kind is kept, the message names the path and step.
impl From<WriteError> for io::Error {
    fn from(e: WriteError) -> Self {
        io::Error::new(e.source.kind(), e)
    }
}

/// Removes the temporary file unless disarmed.
struct TempName<'a> {
    path: &'a Path,
    armed: bool,
}

impl Drop for TempName<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(self.path);
        }
    }
}

/// `path`'s directory (`.` for a bare name) and file name.
fn split(path: &Path) -> Option<(&Path, &std::ffi::OsStr)> {
    let name = path.file_name()?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Some((dir, name))
}

/// Writes `contents` to `path` atomically (see the module documentation).
pub fn write_atomic(path: &Path, contents: &[u8], opts: WriteOptions) -> Result<(), WriteError> {
    let fail = |op: &'static str| move |source: io::Error| WriteError { path: path.to_owned(), op, source };
    let (dir, name) = split(path)
        .ok_or_else(|| fail("write it")(io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name")))?;
    let mut suffix = [0u8; 8];
    getrandom::getrandom(&mut suffix).map_err(|e| fail("draw a temporary name")(io::Error::other(e)))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(suffix.iter().fold(String::from(".tmp-"), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }));
    let tmp_path = dir.join(tmp_name);
    let mode = Mode::from_raw_mode(opts.mode & 0o7777);
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::open(&tmp_path, flags, mode).map_err(|e| {
        let e = io::Error::from(e);
        if e.kind() == io::ErrorKind::NotFound {
            fail("create it (its directory does not exist)")(e)
        } else {
            fail("create a temporary file beside it")(e)
        }
    })?;
    let mut tmp = TempName { path: &tmp_path, armed: true };
    let mut file = File::from(fd);
    // The umask may have removed bits: set the exact mode.
    rustix::fs::fchmod(&file, mode).map_err(|e| fail("set the mode of the temporary file")(e.into()))?;
    if let Some((uid, gid)) = opts.owner {
        rustix::fs::fchown(&file, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
            .map_err(|e| fail("change the owner of the temporary file")(e.into()))?;
    }
    file.write_all(contents).map_err(fail("write the temporary file"))?;
    file.sync_all().map_err(fail("fsync the temporary file"))?;
    drop(file);
    match opts.existing {
        Existing::Replace => {
            fs::rename(&tmp_path, path).map_err(fail("rename the temporary file into place"))?;
            tmp.armed = false;
        }
        Existing::Keep => {
            fs::hard_link(&tmp_path, path).map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    fail("create it (it already exists)")(e)
                } else {
                    fail("link the temporary file into place")(e)
                }
            })?;
            // `tmp` removes the temporary name; the file lives on under `path`.
        }
    }
    drop(tmp);
    File::open(dir).and_then(|d| d.sync_all()).map_err(fail("fsync its directory"))
}

/// A fresh directory for a unit test, removed on drop (shared by the tests of the modules that
/// write files).
#[cfg(test)]
pub(crate) mod test_dir {
    use std::{
        fs,
        path::PathBuf,
        sync::atomic::{AtomicU32, Ordering},
    };

    pub(crate) struct TestDir(pub PathBuf);

    impl TestDir {
        /// `<temp>/efm-<tag>-<pid>-<n>`, empty.
        pub(crate) fn new(tag: &str) -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "efm-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            Self(p)
        }

        /// The names in the directory, sorted.
        pub(crate) fn names(&self) -> Vec<String> {
            let mut v: Vec<String> =
                fs::read_dir(&self.0).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
            v.sort();
            v
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_dir::TestDir as Dir;
    use super::*;
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    #[test]
    fn writes_contents_with_the_exact_mode_and_leaves_no_temporary_file() {
        let d = Dir::new("files");
        let p = d.0.join("a.conf");
        for mode in [0o600, 0o640, 0o644, 0o400] {
            write_atomic(&p, b"x = 1\n", WriteOptions::private().mode(mode)).unwrap();
            assert_eq!(fs::read(&p).unwrap(), b"x = 1\n");
            assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o7777, mode);
        }
        assert_eq!(d.names(), ["a.conf"]);
    }

    #[test]
    fn replace_swaps_the_file_instead_of_writing_into_it() {
        let d = Dir::new("files");
        let p = d.0.join("f");
        write_atomic(&p, b"old", WriteOptions::private()).unwrap();
        // A second name for the old inode: an in-place write would change it too.
        let old = d.0.join("old-link");
        fs::hard_link(&p, &old).unwrap();
        write_atomic(&p, b"new", WriteOptions::private()).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert_eq!(fs::read(&old).unwrap(), b"old");
        assert_eq!(d.names(), ["f", "old-link"]);
    }

    #[test]
    fn keep_never_clobbers() {
        let d = Dir::new("files");
        let p = d.0.join("key");
        write_atomic(&p, b"first", WriteOptions::private().existing(Existing::Keep)).unwrap();
        let e = write_atomic(&p, b"second", WriteOptions::private().existing(Existing::Keep)).unwrap_err();
        assert!(e.already_exists(), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains(&p.display().to_string()) && msg.contains("already exists"), "{msg}");
        assert_eq!(fs::read(&p).unwrap(), b"first");
        assert_eq!(d.names(), ["key"]);
    }

    #[test]
    fn a_symlink_at_the_target_is_replaced_not_followed() {
        let d = Dir::new("files");
        let victim = d.0.join("victim");
        fs::write(&victim, b"precious").unwrap();
        let p = d.0.join("link");
        std::os::unix::fs::symlink(&victim, &p).unwrap();
        write_atomic(&p, b"new", WriteOptions::private()).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert!(fs::symlink_metadata(&p).unwrap().file_type().is_file());
        assert_eq!(fs::read(&p).unwrap(), b"new");
        // Keep refuses a dangling symlink too (its name exists).
        let dangling = d.0.join("dangling");
        std::os::unix::fs::symlink(d.0.join("nowhere"), &dangling).unwrap();
        let e = write_atomic(&dangling, b"x", WriteOptions::private().existing(Existing::Keep)).unwrap_err();
        assert!(e.already_exists(), "{e:?}");
        assert!(!d.0.join("nowhere").exists());
    }

    #[test]
    fn errors_name_the_path_and_the_step() {
        let d = Dir::new("files");
        let p = d.0.join("no-such-dir").join("f");
        let e = write_atomic(&p, b"x", WriteOptions::private()).unwrap_err();
        assert!(e.no_directory(), "{e:?}");
        let msg = e.to_string();
        assert!(msg.starts_with(&p.display().to_string()) && msg.contains("directory does not exist"), "{msg}");
        let e = write_atomic(Path::new("/"), b"x", WriteOptions::private()).unwrap_err();
        assert!(e.to_string().contains("no file name"), "{e}");
    }

    #[test]
    fn owner_is_set_before_the_file_appears() {
        let d = Dir::new("files");
        let p = d.0.join("owned");
        let (uid, gid) = if rustix::process::geteuid().is_root() {
            (65_534, 65_534)
        } else {
            (rustix::process::getuid().as_raw(), rustix::process::getgid().as_raw())
        };
        write_atomic(&p, b"x", WriteOptions::private().owner(Some((uid, gid)))).unwrap();
        let m = fs::metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), (uid, gid));
    }

    #[test]
    fn concurrent_writers_use_distinct_temporary_files() {
        let d = Dir::new("files");
        let p = std::sync::Arc::new(d.0.join("shared"));
        let handles: Vec<_> = (0..8u8)
            .map(|i| {
                let p = std::sync::Arc::clone(&p);
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        write_atomic(&p, &[i; 64], WriteOptions::private()).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let got = fs::read(&*p).unwrap();
        assert_eq!(got.len(), 64);
        assert!(got.iter().all(|b| *b == got[0]), "a torn file: {got:?}");
        assert_eq!(d.names(), ["shared"]);
    }
}
