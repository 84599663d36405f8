//! Server control as `db.service.owner`: `pg_ctl` (through `runuser` or `sudo.user.command`) or
//! `systemctl`, bounded by a timeout, output captured into the errors.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use super::ControlError;
use crate::scripts::{run_argv, RunOptions, ScriptOutcome};
use crate::users::{self, lookup_user, UserIds};

/// Server control as `db.service.owner`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbControl {
    /// `db.service.owner`: the OS user owning the data directory and running `pg_ctl`.
    pub owner: String,
    /// `db.service.name`: when set, `systemctl` controls the server instead of `pg_ctl`.
    pub service_name: Option<String>,
    /// `db.bin`: the directory containing `pg_ctl`.
    pub bin: Option<PathBuf>,
    /// `db.data.dir`.
    pub data_dir: PathBuf,
    /// `db.config.dir`: the directory with `postgresql.conf` when it is not the data directory
    /// (Debian's `/etc/postgresql/<v>/<cluster>`); given to `pg_ctl -D`.
    pub config_dir: Option<PathBuf>,
    /// `db.recovery.conf.dir`: where `recovery.conf` goes before Postgres 12 (default: the
    /// data directory).
    pub recovery_conf_dir: Option<PathBuf>,
    /// `pg_ctl -l` for start and restart. When unset, the server's startup output is captured
    /// until `pg_ctl` returns (configure `logging_collector`, syslog or the journal).
    pub log_file: Option<PathBuf>,
    /// `sudo.command` (for `systemctl` when the agent is not root).
    pub sudo_command: String,
    /// `sudo.user.command` (`%u` = owner), for `pg_ctl` when the agent is neither root nor
    /// the owner.
    pub sudo_user_command: String,
    /// Bound on each server command (also `pg_ctl -t`) and on the wait for streaming.
    pub timeout: Duration,
}

impl DbControl {
    /// `pg_ctl` control of `data_dir` as `owner`, `pg_ctl` from `PATH`, 60 s timeout.
    #[must_use]
    pub fn new(owner: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            owner: owner.into(),
            service_name: None,
            bin: None,
            data_dir: data_dir.into(),
            config_dir: None,
            recovery_conf_dir: None,
            log_file: None,
            sudo_command: "sudo".into(),
            sudo_user_command: "sudo -u %u".into(),
            timeout: Duration::from_mins(1),
        }
    }

    /// From the cluster configuration (`db.service.owner`, `db.service.name`, `db.bin`,
    /// `db.data.dir`, `db.config.dir`, `db.recovery.conf.dir`, `sudo.command`,
    /// `sudo.user.command`). The timeout is `restart.connection.timeout` when longer than
    /// 60 s, else 60 s.
    pub fn from_config(c: &crate::config::Config) -> Result<Self, ControlError> {
        let owner = c.db_service_owner.clone().ok_or_else(|| {
            ControlError::Config("db.service.owner is not set (needed to control the database)".into())
        })?;
        let data_dir = c
            .db_data_dir
            .clone()
            .or_else(|| c.db_recovery_conf_dir.clone())
            .ok_or_else(|| ControlError::Config("db.data.dir is not set".into()))?;
        let mut d = Self::new(owner, data_dir);
        d.service_name.clone_from(&c.db_service_name);
        d.bin.clone_from(&c.db_bin);
        d.config_dir.clone_from(&c.db_config_dir);
        d.recovery_conf_dir.clone_from(&c.db_recovery_conf_dir);
        if !c.sudo_command.is_empty() {
            d.sudo_command.clone_from(&c.sudo_command);
        }
        if !c.sudo_user_command.is_empty() {
            d.sudo_user_command.clone_from(&c.sudo_user_command);
        }
        d.timeout = d.timeout.max(c.restart_connection_timeout);
        Ok(d)
    }

    fn pg_ctl(&self) -> String {
        self.bin.as_ref().map_or_else(|| "pg_ctl".to_owned(), |b| b.join("pg_ctl").display().to_string())
    }

    fn pg_ctl_dir(&self) -> &Path {
        self.config_dir.as_deref().unwrap_or(&self.data_dir)
    }

    /// The prefix running a command as the owner: nothing when the agent is the owner,
    /// `runuser -u <owner> --` when it is root, `sudo.user.command` otherwise.
    pub(super) fn owner_prefix(&self) -> Result<Vec<String>, ControlError> {
        let owner = lookup_user(&self.owner)
            .map_err(|m| ControlError::Config(format!("db.service.owner {:?}: {m}", self.owner)))?;
        let euid = users::euid();
        if owner.uid == euid {
            return Ok(Vec::new());
        }
        if euid == 0 {
            return Ok(vec![
                find_tool("runuser", &["/usr/sbin", "/sbin", "/usr/bin", "/bin"]),
                "-u".into(),
                self.owner.clone(),
                "--".into(),
            ]);
        }
        let words: Vec<String> =
            self.sudo_user_command.split_whitespace().map(|w| w.replace("%u", &self.owner)).collect();
        Ok(words)
    }

    fn root_prefix(&self) -> Vec<String> {
        if users::is_root() {
            Vec::new()
        } else {
            self.sudo_command.split_whitespace().map(str::to_owned).collect()
        }
    }

    pub(super) fn systemctl(&self, args: &[&str]) -> Vec<String> {
        let mut v = self.root_prefix();
        v.push(find_tool("systemctl", &["/usr/bin", "/bin", "/usr/sbin"]));
        v.extend(args.iter().map(|s| (*s).to_owned()));
        v
    }

    pub(super) fn pg_ctl_argv(&self, verb: &str) -> Result<Vec<String>, ControlError> {
        let mut v = self.owner_prefix()?;
        v.push(self.pg_ctl());
        v.push("-D".into());
        v.push(self.pg_ctl_dir().display().to_string());
        if verb != "status" {
            v.push("-w".into());
            v.push("-t".into());
            v.push(self.timeout.as_secs().max(1).to_string());
        }
        if verb == "stop" || verb == "restart" {
            v.extend(["-m".into(), "fast".into()]);
        }
        if verb == "start" || verb == "restart" {
            if let Some(l) = &self.log_file {
                v.push("-l".into());
                v.push(l.display().to_string());
            }
        }
        v.push(verb.into());
        Ok(v)
    }

    pub(super) async fn run(&self, what: &str, argv: Vec<String>) -> Result<ScriptOutcome, ControlError> {
        let command = argv.join(" ");
        let opts = RunOptions {
            timeout: self.timeout + Duration::from_secs(10),
            run_as: None,
            output_cap: 16 * 1024,
            kill_grace: Duration::from_secs(2),
            what: what.to_owned(),
        };
        tracing::info!(what, command = %command, "database control");
        run_argv(&argv, &opts).await.map_err(|source| ControlError::Run {
            what: what.to_owned(),
            command,
            source: Box::new(source),
        })
    }

    async fn run_ok(&self, what: &str, argv: Vec<String>) -> Result<(), ControlError> {
        let command = argv.join(" ");
        let o = self.run(what, argv).await?;
        if o.success() {
            Ok(())
        } else {
            Err(command_failed(what, command, &o))
        }
    }

    /// Starts the server (`pg_ctl -w start` or `systemctl start`); nothing when it runs.
    pub async fn start(&self) -> Result<(), ControlError> {
        if let Some(s) = &self.service_name {
            return self.run_ok("starting the database", self.systemctl(&["start", s])).await;
        }
        if self.is_running().await? {
            return Ok(());
        }
        self.run_ok("starting the database", self.pg_ctl_argv("start")?).await
    }

    /// Stops the server (`pg_ctl -w -m fast stop` or `systemctl stop`); nothing when it is
    /// not running.
    pub async fn stop(&self) -> Result<(), ControlError> {
        if let Some(s) = &self.service_name {
            return self.run_ok("stopping the database", self.systemctl(&["stop", s])).await;
        }
        let argv = self.pg_ctl_argv("stop")?;
        let command = argv.join(" ");
        let o = self.run("stopping the database", argv).await?;
        if o.success() || !self.is_running().await.unwrap_or(true) {
            Ok(())
        } else {
            Err(command_failed("stopping the database", command, &o))
        }
    }

    /// Restarts the server (`pg_ctl -w -m fast restart` or `systemctl restart`).
    pub async fn restart(&self) -> Result<(), ControlError> {
        if let Some(s) = &self.service_name {
            return self.run_ok("restarting the database", self.systemctl(&["restart", s])).await;
        }
        self.run_ok("restarting the database", self.pg_ctl_argv("restart")?).await
    }

    /// Whether the server runs (`pg_ctl status`: 0 running, 3 not running; or
    /// `systemctl is-active`).
    pub async fn is_running(&self) -> Result<bool, ControlError> {
        if let Some(s) = &self.service_name {
            let o = self.run("checking the database service", self.systemctl(&["is-active", "--quiet", s])).await?;
            return Ok(o.success());
        }
        let argv = self.pg_ctl_argv("status")?;
        let command = argv.join(" ");
        let o = self.run("checking the database", argv).await?;
        match o.exit {
            Some(0) => Ok(true),
            Some(3) => Ok(false),
            _ => Err(command_failed("checking the database", command, &o)),
        }
    }

    /// The owner's ids.
    pub(super) fn owner_ids(&self) -> Result<UserIds, ControlError> {
        lookup_user(&self.owner).map_err(|m| ControlError::Config(format!("db.service.owner {:?}: {m}", self.owner)))
    }
}

/// Stops the server (see [`DbControl::stop`]).
pub async fn stop(control: &DbControl) -> Result<(), ControlError> {
    control.stop().await
}

/// Whether the server runs (see [`DbControl::is_running`]).
pub async fn is_running(control: &DbControl) -> Result<bool, ControlError> {
    control.is_running().await
}

fn find_tool(name: &str, dirs: &[&str]) -> String {
    dirs.iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .map_or_else(|| name.to_owned(), |p| p.display().to_string())
}

fn command_failed(what: &str, command: String, o: &ScriptOutcome) -> ControlError {
    let mut output = o.stdout.trim().to_owned();
    let err = o.stderr.trim();
    if !err.is_empty() {
        if !output.is_empty() {
            output.push_str(" | ");
        }
        output.push_str(err);
    }
    ControlError::Command {
        what: what.to_owned(),
        command,
        status: if o.timed_out {
            format!("did not finish within {}s", o.duration.as_secs())
        } else {
            format!("failed ({})", o.status_text())
        },
        output: output.replace('\n', " | "),
    }
}
