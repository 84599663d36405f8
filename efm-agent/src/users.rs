//! Users and groups: whom hooks and `pg_ctl` run as (`script.user`, `db.service.owner`), the
//! `efm` group of the admin socket, the agent's home directory.
//!
//! The password and group databases are NSS lookups in the C library (`getpwnam_r`,
//! `getpwuid_r`, `getgrnam_r`, `getgrouplist`), which rustix deliberately does not wrap; `nix`'s
//! `User`, `Group` and `getgrouplist` do, with their buffer growth, so efm has no `unsafe` for
//! them. Everything else of the system interface goes through rustix.

use std::{ffi::CString, path::PathBuf};

use nix::unistd::{self, Group, Uid, User};

/// A user to run as, resolved from the password and group databases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserIds {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (`getgrouplist`: the primary group and every group listing the user).
    pub groups: Vec<u32>,
    pub home: String,
}

/// Looks a user up by name: uid, primary gid, supplementary groups, home directory. The error
/// says what failed (without the name; callers add the property and the name).
pub fn lookup_user(name: &str) -> Result<UserIds, String> {
    let cname = CString::new(name).map_err(|_| "the user name contains a NUL byte".to_owned())?;
    let user = User::from_name(name)
        .map_err(|e| format!("looking the user up: {}", std::io::Error::from(e)))?
        .ok_or_else(|| "no such user".to_owned())?;
    let groups = unistd::getgrouplist(&cname, user.gid)
        .map_err(|e| format!("reading the user's groups: {}", std::io::Error::from(e)))?;
    Ok(UserIds {
        name: name.to_owned(),
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        groups: groups.into_iter().map(nix::unistd::Gid::as_raw).collect(),
        home: user.dir.to_string_lossy().into_owned(),
    })
}

/// The gid of group `name`, `None` when there is no such group.
pub fn group_gid(name: &str) -> std::io::Result<Option<u32>> {
    Ok(Group::from_name(name)?.map(|g| g.gid.as_raw()))
}

/// The home directory of the effective user from the password database.
#[must_use]
pub fn effective_home() -> Option<PathBuf> {
    User::from_uid(Uid::effective()).ok().flatten().map(|u| u.dir).filter(|d| !d.as_os_str().is_empty())
}

/// Whether the agent runs with an effective uid of 0.
#[must_use]
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The effective uid.
#[must_use]
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_found_with_its_groups() {
        let root = lookup_user("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(root.groups.contains(&0), "{root:?}");
        assert_eq!(root.home, "/root");
        assert_eq!(group_gid("root").unwrap(), Some(0));
    }

    #[test]
    fn unknown_names_are_reported() {
        assert_eq!(lookup_user("efm-no-such-user-x").unwrap_err(), "no such user");
        assert!(lookup_user("a\0b").unwrap_err().contains("NUL"));
        assert_eq!(group_gid("efm-no-such-group-x").unwrap(), None);
    }

    #[test]
    fn effective_user_matches_the_process() {
        assert_eq!(is_root(), euid() == 0);
        let home = effective_home().expect("the effective user has a home directory");
        assert_eq!(
            home,
            PathBuf::from(lookup_user(&User::from_uid(Uid::effective()).unwrap().unwrap().name).unwrap().home)
        );
    }
}
