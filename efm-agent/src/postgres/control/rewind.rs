//! Rejoining a failed-over former primary as a standby with `pg_rewind` (`efm rejoin`).
//!
//! After a failover the former primary's WAL may have gone on past the point where the new
//! primary's timeline forked; `pg_rewind` rewinds the data directory to that point from the new
//! primary so that it can stream from it. What the rewind throws away is the former primary's
//! WAL after the fork, so the rule is: **never while it could be the only copy of
//! acknowledged writes**. The WAL to be discarded is read with `pg_waldump` from the fork point
//! (`pg_rewind --dry-run` prints it) on the former primary's timeline: if it holds a
//! transaction commit, that commit may have been acknowledged to a client before the fence
//! (asynchronous replication) and exists nowhere else, so the rejoin is refused, naming the
//! commits and the WAL range, unless forced (after the operator saved what they need). WAL with
//! no commit (checkpoints, aborted or unfinished transactions) is discarded safely.
//!
//! `pg_rewind` needs `wal_log_hints = on` or data checksums on the former primary (checked
//! first with `pg_controldata`, with the fix in the error), the former primary shut down (the
//! agent stops it; one that crashed is recovered by `pg_rewind` itself), and a source user
//! allowed to read the new primary's files (superuser, or `pg_ls_dir`, `pg_stat_file`,
//! `pg_read_binary_file` granted). `pg_rewind` copies the new primary's configuration files;
//! the former primary's own (`postgresql.conf`, `postgresql.auto.conf`, `pg_hba.conf`,
//! `pg_ident.conf`, when in the data directory) are put back afterwards, and then the standby
//! configuration is written ([`super::demote_to_standby`]).

use std::path::{Path, PathBuf};

use super::{ControlError, DbControl};

/// What `pg_controldata` says that matters for a rewind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ControlData {
    /// "Database cluster state".
    pub state: String,
    pub wal_log_hints: bool,
    pub checksums: bool,
}

/// Parses `pg_controldata`'s output.
#[must_use]
pub fn parse_controldata(text: &str) -> ControlData {
    let mut d = ControlData::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else { continue };
        let v = v.trim();
        match k.trim() {
            "Database cluster state" => v.clone_into(&mut d.state),
            "wal_log_hints setting" => d.wal_log_hints = v == "on",
            "Data page checksum version" => d.checksums = v.parse::<u32>().is_ok_and(|n| n > 0),
            _ => {}
        }
    }
    d
}

/// Where the servers diverged, from `pg_rewind --dry-run`'s output; `None` with "no rewind
/// required".
#[must_use]
pub fn parse_divergence(text: &str) -> Option<(String, u32)> {
    // "servers diverged at WAL location 0/3000060 on timeline 1"
    let i = text.find("servers diverged at WAL location ")?;
    let rest = &text[i + "servers diverged at WAL location ".len()..];
    let mut words = rest.split_whitespace();
    let lsn = words.next()?.to_owned();
    let (on, tl) = (words.next()?, words.next()?);
    let tli = words.next()?.trim_end_matches(|c: char| !c.is_ascii_digit());
    (on == "on" && tl == "timeline").then_some(())?;
    Some((lsn, tli.parse().ok()?))
}

/// The transaction commits in `pg_waldump` output: `(lsn, description)`.
#[must_use]
pub fn commits(waldump: &str) -> Vec<(String, String)> {
    waldump
        .lines()
        .filter(|l| l.contains("rmgr: Transaction") && l.contains("COMMIT"))
        .map(|l| {
            let lsn = l.split("lsn: ").nth(1).and_then(|r| r.split(',').next()).unwrap_or("?").trim().to_owned();
            let desc = l.split("desc: ").nth(1).unwrap_or("").chars().take(80).collect();
            (lsn, desc)
        })
        .collect()
}

/// The result of a rejoin.
#[derive(Clone, Debug)]
pub struct RewindOutcome {
    /// Where the former primary's WAL forked from the new primary's (`None`: no rewind was
    /// needed).
    pub diverged_at: Option<(String, u32)>,
    /// Commits in the discarded WAL (only with `force`).
    pub discarded_commits: usize,
}

/// The configuration files `pg_rewind` would overwrite with the source's.
const OWN_FILES: [&str; 4] = ["postgresql.conf", "postgresql.auto.conf", "pg_hba.conf", "pg_ident.conf"];

impl DbControl {
    fn tool(&self, name: &str) -> String {
        self.bin.as_ref().map_or_else(|| name.to_owned(), |b| b.join(name).display().to_string())
    }

    async fn owner_output(&self, what: &str, args: &[String]) -> Result<(bool, String), ControlError> {
        let mut command = self.owner_prefix()?;
        command.extend(args.iter().cloned());
        let o = self.run(what, command).await?;
        Ok((o.success(), format!("{}{}", o.stdout, o.stderr)))
    }

    /// Rewinds the stopped former primary in the data directory from `source` (a libpq
    /// connection string to the new primary, with its password source) — see the module
    /// documentation. Leaves the server stopped; the caller writes the standby configuration
    /// and starts it.
    ///
    /// # Errors
    /// Rewind impossible (`wal_log_hints` and checksums off), the discarded WAL holds commits
    /// and `force` is false, or a tool failed.
    pub async fn rewind(&self, source: &str, force: bool) -> Result<RewindOutcome, ControlError> {
        // A crashed former primary is recovered by pg_rewind in single-user mode, which refuses
        // to run with a standby signal: the signals are set aside meanwhile and always put back
        // (a refused rewind must leave a server that comes up as a standby, never a primary).
        let mut aside = Vec::new();
        for f in ["standby.signal", "recovery.signal"] {
            let (p, q) = (self.data_dir.join(f), self.data_dir.join(format!("{f}.efm-rewind")));
            if p.exists() {
                std::fs::rename(&p, &q).map_err(|e| ControlError::File {
                    path: p.clone(),
                    op: "set aside",
                    message: e.to_string(),
                })?;
                aside.push((q, p));
            }
        }
        let r = self.rewind_inner(source, force).await;
        for (q, p) in aside {
            if let Err(e) = std::fs::rename(&q, &p) {
                tracing::error!(path = %p.display(), error = %e, "putting the standby signal back failed");
            }
        }
        r
    }

    async fn rewind_inner(&self, source: &str, force: bool) -> Result<RewindOutcome, ControlError> {
        let data = self.data_dir.display().to_string();
        let (ok, out) =
            self.owner_output("pg_controldata", &[self.tool("pg_controldata"), "-D".into(), data.clone()]).await?;
        if !ok {
            return Err(ControlError::Config(format!("pg_controldata -D {data} failed: {}", out.trim())));
        }
        let cd = parse_controldata(&out);
        if cd.state == "in production" {
            // Crashed: recover it in single-user mode (what pg_rewind would do), with its output.
            let argv =
                [self.tool("postgres"), "--single".into(), "-F".into(), "-D".into(), data.clone(), "template1".into()];
            let (ok, out) = self.owner_output("crash recovery (postgres --single)", &argv).await?;
            if !ok {
                return Err(ControlError::Config(format!(
                    "crash recovery of {data} before the rewind failed: {}",
                    out.trim()
                )));
            }
        }
        if !cd.wal_log_hints && !cd.checksums {
            return Err(ControlError::Config(format!(
                "{data} can not be rewound: pg_rewind needs wal_log_hints = on or data checksums, and both are off; \
                 set wal_log_hints = on (a restart) on every node for the next failovers, and rebuild this one as a \
                 standby (pg_basebackup) now"
            )));
        }
        let dry = [
            self.tool("pg_rewind"),
            "-D".into(),
            data.clone(),
            format!("--source-server={source}"),
            "--dry-run".into(),
        ];
        let (ok, out) = self.owner_output("pg_rewind --dry-run", &dry).await?;
        if !ok {
            return Err(ControlError::Config(format!("pg_rewind --dry-run failed: {}", out.trim())));
        }
        tracing::info!(output = %out.trim(), "pg_rewind --dry-run");
        let Some((lsn, tli)) = parse_divergence(&out) else {
            if out.contains("no rewind required") {
                tracing::info!(data, "no rewind required: the former primary's WAL ends before the fork");
                return Ok(RewindOutcome { diverged_at: None, discarded_commits: 0 });
            }
            return Err(ControlError::Config(format!(
                "pg_rewind --dry-run did not say where the servers diverged: {}",
                out.trim()
            )));
        };
        let dump = [
            self.tool("pg_waldump"),
            "-p".into(),
            self.data_dir.join("pg_wal").display().to_string(),
            "-t".into(),
            tli.to_string(),
            "-s".into(),
            lsn.clone(),
        ];
        // pg_waldump ends with an error at the end of the WAL: its output is what counts.
        let (_, wal) = self.owner_output("pg_waldump", &dump).await?;
        let found = commits(&wal);
        if !found.is_empty() && !force {
            let list: Vec<String> = found.iter().take(5).map(|(l, d)| format!("{l} {d}")).collect();
            return Err(ControlError::Config(format!(
                "refusing to rewind {data}: its WAL after the fork at {lsn} (timeline {tli}) holds {} commit(s) that may \
                 have been acknowledged and exist nowhere else ({}{}); save what you need (pg_waldump -p {data}/pg_wal \
                 -t {tli} -s {lsn}), then run efm rejoin --force",
                found.len(),
                list.join("; "),
                if found.len() > 5 { "; ..." } else { "" }
            )));
        }
        let saved = self.save_own_files()?;
        let run = [self.tool("pg_rewind"), "-D".into(), data, format!("--source-server={source}")];
        let (ok, out) = self.owner_output("pg_rewind", &run).await?;
        self.restore_own_files(&saved)?;
        if !ok {
            return Err(ControlError::Config(format!("pg_rewind failed: {}", out.trim())));
        }
        tracing::warn!(diverged_at = %lsn, timeline = tli, discarded_commits = found.len(), "former primary rewound");
        Ok(RewindOutcome { diverged_at: Some((lsn, tli)), discarded_commits: found.len() })
    }

    fn save_own_files(&self) -> Result<Vec<(PathBuf, Vec<u8>)>, ControlError> {
        let mut saved = Vec::new();
        for f in OWN_FILES {
            let p = self.data_dir.join(f);
            match std::fs::read(&p) {
                Ok(b) => saved.push((p, b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ControlError::File { path: p, op: "read", message: e.to_string() }),
            }
        }
        Ok(saved)
    }

    fn restore_own_files(&self, saved: &[(PathBuf, Vec<u8>)]) -> Result<(), ControlError> {
        let owner = self.owner_ids()?;
        for (p, b) in saved {
            crate::files::write_atomic(p, b, crate::files::WriteOptions::private().owner(Some((owner.uid, owner.gid))))
                .map_err(|e| ControlError::File { path: p.clone(), op: "restore", message: e.to_string() })?;
        }
        Ok(())
    }
}

/// `pg_rewind` reads the source's timeline from its control file, which a promoted standby
/// updates only at its first checkpoint after the promotion: until then the servers look like
/// the same timeline and `pg_rewind` wrongly finds nothing to rewind. When the control file
/// lags, this runs `CHECKPOINT` on the source (the user needs `pg_checkpoint`, `PostgreSQL` 15+,
/// or superuser).
///
/// # Errors
/// Connecting or the queries failed, or `CHECKPOINT` is not allowed.
pub async fn ensure_source_checkpointed(source: &crate::postgres::DbTarget) -> Result<(), ControlError> {
    let addr = source.addr();
    let client = crate::postgres::connect(source, std::time::Duration::from_secs(10)).await?;
    let q = "SELECT (SELECT timeline_id FROM pg_control_checkpoint()),              ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int";
    let row = client
        .simple_query(q)
        .await
        .map_err(|e| ControlError::Sql { addr: addr.clone(), what: "reading the timelines", message: e.to_string() })?
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((r.get(0).map(str::to_owned), r.get(1).map(str::to_owned)))
            }
            _ => None,
        });
    let Some((Some(in_control), Some(current))) = row else { return Ok(()) };
    if in_control == current {
        return Ok(());
    }
    tracing::info!(%addr, in_control, current, "the new primary's control file lags its timeline: CHECKPOINT before the rewind");
    client.simple_query("CHECKPOINT").await.map_err(|e| ControlError::Sql {
        addr,
        what: "CHECKPOINT (pg_rewind needs the promoted primary's control file on its new timeline; grant pg_checkpoint to db.user, or run CHECKPOINT there)",
        message: e.to_string(),
    })?;
    Ok(())
}

/// A libpq password file for the rewind's source connection, owned by the owner (0600), removed
/// when dropped.
pub struct PassFile(PathBuf);

impl PassFile {
    /// # Errors
    /// Writing the file failed.
    pub fn new(control: &DbControl, host: &str, port: u16, user: &str, password: &str) -> Result<Self, ControlError> {
        let esc = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
        let path = std::env::temp_dir().join(format!("efm-rewind-{}.pgpass", std::process::id()));
        let owner = control.owner_ids()?;
        let line = format!("{}:{port}:*:{}:{}\n", esc(host), esc(user), esc(password));
        crate::files::write_atomic(
            &path,
            line.as_bytes(),
            crate::files::WriteOptions::private().owner(Some((owner.uid, owner.gid))),
        )
        .map_err(|e| ControlError::File { path: path.clone(), op: "write", message: e.to_string() })?;
        Ok(Self(path))
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PassFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controldata_divergence_and_commits_are_read() {
        let cd = parse_controldata(
            "pg_control version number:            1300\nDatabase cluster state:               shut down\n\
             wal_log_hints setting:                on\nData page checksum version:           0\n",
        );
        assert_eq!(cd, ControlData { state: "shut down".into(), wal_log_hints: true, checksums: false });
        assert!(parse_controldata("Data page checksum version:           1\n").checksums);
        let out = "pg_rewind: servers diverged at WAL location 0/3000060 on timeline 1\npg_rewind: rewinding from last common checkpoint at 0/2000060 on timeline 1\n";
        assert_eq!(parse_divergence(out), Some(("0/3000060".into(), 1)));
        assert_eq!(parse_divergence("pg_rewind: no rewind required\n"), None);
        let dump = "rmgr: Heap        len (rec/tot):     54/    54, tx:        735, lsn: 0/030000D8, prev 0/030000A0, desc: INSERT off 2\n\
                    rmgr: Transaction len (rec/tot):     34/    34, tx:        735, lsn: 0/03000110, prev 0/030000D8, desc: COMMIT 2026-12-06 02:00:00.1 UTC\n\
                    rmgr: Transaction len (rec/tot):     34/    34, tx:        736, lsn: 0/03000140, prev 0/03000110, desc: ABORT 2026-12-06 02:00:00.2 UTC\n\
                    rmgr: XLOG        len (rec/tot):    114/   114, tx:          0, lsn: 0/03000168, prev 0/03000140, desc: CHECKPOINT_SHUTDOWN\n\
                    pg_waldump: error: error in WAL record at 0/030001E0: invalid record length\n";
        let c = commits(dump);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].0, "0/03000110");
        assert!(c[0].1.starts_with("COMMIT"));
    }
}
