//! The command lines of `efm-agent` and `efm`, in the library so that man pages and shell
//! completions are generated from the same definitions the binaries parse with
//! (`efm generate-docs DIR`, which `cargo xtask install` runs).
//!
//! Every command's `--help` says what it does and ends with an example.

use std::{
    fmt::Write as _,
    fs, io,
    path::{Path, PathBuf},
};

use clap::{CommandFactory as _, Parser, Subcommand};
use clap_complete::Shell;

use crate::admin::AdminCommand;

/// Default directory of the clusters' configuration files.
pub const CONFIG_DIR: &str = "/etc/efm";
/// Default directory of the admin sockets and pid files.
pub const RUN_DIR: &str = "/run/efm";
/// Default root of the pinned BPF state.
pub const BPFFS_DIR: &str = "/sys/fs/bpf/efm";

const AGENT_AFTER_HELP: &str = "\
Example:
  sudo efm-agent --cluster acctg
  systemctl enable --now efm-agent@acctg     # the same, as a service";

const AGENT_AFTER_LONG_HELP: &str = "\
Example:
  sudo efm-agent --cluster acctg
  systemctl enable --now efm-agent@acctg     # the same, as a service

Files:
  /etc/efm/<cluster>.properties, <cluster>.nodes   configuration (templates in /usr/share/efm)
  /etc/efm/<cluster>.key                          cluster key (efm generate-key)
  /run/efm/<cluster>.sock, <cluster>.pid          admin socket, pid file
  /var/lock/efm/<cluster>.lock                    lock (lock.dir)
  /var/log/efm/<cluster>.log                      log when not run by systemd (log.dir)
  /sys/fs/bpf/efm/<cluster>/                      pinned XDP maps and links

Logging:
Under systemd the agent logs to the journal (journalctl -u efm-agent@<cluster>); otherwise to
<log.dir>/<cluster>.log (file.log.enabled) and to stderr when it is a terminal; to syslog as well
when syslog.enabled=true. efm.loglevel sets the level (TRACE, DEBUG, INFO, WARN, ERROR or
FINEST..SEVERE); the EFM_LOG environment variable, a tracing filter such as `debug` or
`info,efm_agent::detector=trace`, overrides it.";

/// Runs the efm agent for one cluster on this node: attaches the XDP data plane, sends and times
/// heartbeats, watches the local database, and answers `efm` commands on its admin socket.
///
/// Needs root (or `CAP_BPF`, `CAP_NET_ADMIN` and `CAP_SYS_ADMIN`). Stops in order on SIGTERM/SIGINT.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "efm-agent",
    version,
    after_help = AGENT_AFTER_HELP,
    after_long_help = AGENT_AFTER_LONG_HELP
)]
pub struct AgentArgs {
    /// Cluster name: reads <config-dir>/<cluster>.properties and <cluster>.nodes.
    #[arg(long)]
    pub cluster: String,
    /// Directory of the cluster's configuration files.
    #[arg(long, default_value = CONFIG_DIR)]
    pub config_dir: PathBuf,
    /// Directory of the admin socket and pid file.
    #[arg(long, default_value = RUN_DIR)]
    pub run_dir: PathBuf,
    /// Root of the pinned BPF state (the cluster's pins go to <bpffs-dir>/<cluster>).
    #[arg(long, default_value = BPFFS_DIR)]
    pub bpffs_dir: PathBuf,
    /// Directory of the coordination log (`<state-dir>/<cluster>.raft.redb`).
    #[arg(long, default_value = "/var/lib/efm")]
    pub state_dir: PathBuf,
}

/// Administer an efm cluster.
///
/// Status commands ask the local agent over its admin socket (/run/efm/<cluster>.sock, usable by
/// root and the `efm` group); configuration commands work on the files in --config-dir.
#[derive(Parser, Debug)]
#[command(name = "efm", version, after_help = "Example:\n  efm cluster-status acctg")]
pub struct Cli {
    /// Directory of the clusters' configuration files.
    #[arg(long, global = true, default_value = CONFIG_DIR)]
    pub config_dir: PathBuf,
    /// Directory of the agents' admin sockets.
    #[arg(long, global = true, default_value = RUN_DIR)]
    pub run_dir: PathBuf,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Show the cluster's status as EFM does; the exit code is 0 only when the cluster is healthy.
    #[command(after_help = "Example:\n  efm cluster-status acctg")]
    ClusterStatus {
        /// Cluster name (the agent's admin socket is <run-dir>/<cluster>.sock).
        cluster: String,
    },
    /// The cluster's status as JSON (EFM 5 field names plus efm's heartbeat fields).
    #[command(after_help = "Example:\n  efm cluster-status-json acctg | jq .nodes")]
    ClusterStatusJson {
        /// Cluster name (the agent's admin socket is <run-dir>/<cluster>.sock).
        cluster: String,
    },
    /// This node's status as JSON.
    #[command(after_help = "Example:\n  efm node-status-json acctg")]
    NodeStatusJson {
        /// Cluster name (the agent's admin socket is <run-dir>/<cluster>.sock).
        cluster: String,
    },
    /// Promote a standby now (the most up-to-date one; auto.failover is ignored). Without an
    /// up-to-date standby it asks first (and refuses without a terminal unless --force).
    /// With -switchover the primary stops cleanly, the standby takes over and the old primary
    /// rejoins as its standby. EFM's single-dash spellings (-switchover, -sourcenode, -quiet) work.
    #[command(
        after_help = "Example:\n  efm promote acctg -switchover\n  efm promote acctg -switchover -sourcenode 10.0.1.9 -quiet"
    )]
    Promote {
        /// Cluster name (the agent's admin socket is <run-dir>/<cluster>.sock).
        cluster: String,
        /// Reconfigure the old primary as a standby of the new one after a clean stop.
        #[arg(long)]
        switchover: bool,
        /// With -switchover: the standby whose replication settings the old primary copies.
        #[arg(long, value_name = "ADDRESS", requires = "switchover")]
        sourcenode: Option<String>,
        /// With -switchover: send no notifications about it.
        #[arg(long, requires = "switchover")]
        quiet: bool,
        /// Promote even if the standby is behind the primary (no question asked).
        #[arg(long)]
        force: bool,
    },
    /// Resume monitoring the local database after a failure or a restart (the node leaves the
    /// idle state only if its database is the primary or a standby of the current primary).
    #[command(after_help = "Example:\n  efm resume acctg")]
    Resume {
        /// Cluster name (the agent's admin socket is <run-dir>/<cluster>.sock).
        cluster: String,
    },
    /// Set a database node's failover priority (1 = first choice, 0 = never promote).
    #[command(after_help = "Example:\n  efm set-priority acctg 10.0.1.9 1")]
    SetPriority {
        /// Cluster name (the agent's admin socket is <run-dir>/<cluster>.sock).
        cluster: String,
        /// The node: IP, or IP:PORT when several agents share the IP.
        address: String,
        /// 0 = never promote; otherwise lower is preferred.
        priority: u32,
    },
    /// Add a node to the cluster's allowed node host list so that its agent may join.
    #[command(after_help = "Example:\n  efm allow-node acctg 10.0.1.10")]
    AllowNode {
        /// Cluster name (the agent's admin socket is <run-dir>/<cluster>.sock).
        cluster: String,
        /// The node: IP, or IP:PORT.
        address: String,
    },
    /// Remove a node from the allowed node host list: it stops counting in the cluster and
    /// cannot rejoin until allowed again.
    #[command(after_help = "Example:\n  efm disallow-node acctg 10.0.1.10")]
    DisallowNode {
        /// Cluster name (the agent's admin socket is <run-dir>/<cluster>.sock).
        cluster: String,
        /// The node: IP, or IP:PORT.
        address: String,
    },
    /// EFM 2.0's name for allow-node (deprecated): allow a node to join, and with PRIORITY also
    /// set its failover priority (set-priority).
    #[command(
        after_help = "Example:\n  efm add-node acctg 10.0.1.9:7800 1   # the same as: efm allow-node acctg 10.0.1.9:7800 && efm set-priority acctg 10.0.1.9:7800 1"
    )]
    AddNode {
        /// Cluster name (the agent's admin socket is <run-dir>/<cluster>.sock).
        cluster: String,
        /// The node: IP, or IP:PORT.
        address: String,
        /// Failover priority, as `efm set-priority` takes it (1 = first choice, 0 = never promote).
        priority: Option<u32>,
    },
    /// EFM 2.0's name for disallow-node (deprecated): remove a node from the allowed node host list.
    #[command(
        after_help = "Example:\n  efm remove-node acctg 10.0.1.9:7800   # the same as: efm disallow-node acctg 10.0.1.9:7800"
    )]
    RemoveNode {
        /// Cluster name (the agent's admin socket is <run-dir>/<cluster>.sock).
        cluster: String,
        /// The node: IP, or IP:PORT.
        address: String,
    },
    /// Stop every agent of the cluster. The databases keep running as they are, without
    /// failover protection, until the agents are started again.
    #[command(after_help = "Example:\n  efm stop-cluster acctg")]
    StopCluster {
        /// Cluster name (the agent's admin socket is <run-dir>/<cluster>.sock).
        cluster: String,
    },
    /// Stop counting failed members for the quorum (EFM 5): every member whose agent is not
    /// heard is removed from the cluster's voters. They stay allowed and join again when their
    /// agents start or reach the cluster again.
    #[command(after_help = "Example:\n  efm reset-members acctg")]
    ResetMembers {
        /// Cluster name (the agent's admin socket is <run-dir>/<cluster>.sock).
        cluster: String,
    },
    /// Make this node, a former primary replaced by a failover, a standby of the current primary:
    /// its database is stopped, rewound with `pg_rewind` from the primary (needs `wal_log_hints` or
    /// data checksums), configured as a standby and started. Refused when the WAL the rewind would
    /// discard holds commits (they may have been acknowledged and exist nowhere else) unless
    /// --force.
    #[command(
        after_help = "Example:\n  efm rejoin acctg\n  efm rejoin acctg --force   # after saving what the refusal named"
    )]
    Rejoin {
        /// Cluster name (the agent's admin socket is <run-dir>/<cluster>.sock).
        cluster: String,
        /// Rewind even when the discarded WAL holds commits.
        #[arg(long)]
        force: bool,
    },
    /// Check the configuration files and print the effective configuration and every problem.
    #[command(after_help = "Example:\n  efm prop-check acctg")]
    PropCheck {
        /// Cluster name: checks <config-dir>/<cluster>.properties and <cluster>.nodes.
        cluster: String,
    },
    /// Convert an EFM 2.x-5.x configuration into efm's, reporting every change. EFM 3.3's
    /// spelling `-source DIR` works too.
    #[command(
        after_help = "Example:\n  efm upgrade-conf acctg --source /etc/edb/efm-4.7\n  efm upgrade-conf acctg -source /etc/efm-2.0"
    )]
    UpgradeConf {
        /// Cluster name: reads <source>/<cluster>.properties, writes <config-dir>/<cluster>.properties.
        cluster: String,
        /// Directory holding the EFM <cluster>.properties and <cluster>.nodes.
        #[arg(long)]
        source: PathBuf,
        /// Overwrite existing files in --config-dir.
        #[arg(long)]
        force: bool,
    },
    /// Encrypt the database password for `db.password.encrypted` (asks twice, or reads EFMPASS).
    /// With --from-env only the bare encrypted value is printed (as EFM 3.3 does), for scripts.
    #[command(after_help = "Example:\n  efm encrypt acctg\n  EFMPASS=secret efm encrypt acctg --from-env")]
    Encrypt {
        /// Cluster name: the encrypted password decrypts only for this cluster.
        cluster: String,
        /// Read the password from the EFMPASS environment variable and print only the value.
        #[arg(long)]
        from_env: bool,
        /// The encryption key file, created root-only on first use (default: <config-dir>/efm.key,
        /// where the agent looks for it). Copy it to every node with the properties file.
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// Create the cluster key file that authenticates heartbeats; copy it to every node.
    #[command(after_help = "Example:\n  efm generate-key acctg   # writes /etc/efm/acctg.key")]
    GenerateKey {
        /// Cluster name: the key goes to <config-dir>/<cluster>.key unless --output is given.
        cluster: String,
        /// Where to write the key (default: <config-dir>/<cluster>.key).
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Write the man pages and shell completions of efm and efm-agent into DIR (used by
    /// `cargo xtask install`): DIR/man1, DIR/man8, DIR/completions/{bash,zsh,fish}.
    #[command(hide = true, after_help = "Example:\n  efm generate-docs target/docs")]
    GenerateDocs {
        /// Output directory (created if missing).
        dir: PathBuf,
    },
}

impl Cmd {
    /// The request this command sends to the local agent, and the cluster whose agent it asks;
    /// `None` for the commands that work on files. (`efm promote` may send a second request with
    /// `force` after the operator confirmed.)
    #[must_use]
    pub fn admin_request(&self) -> Option<(&str, AdminCommand)> {
        Some(match self {
            Self::ClusterStatus { cluster } | Self::ClusterStatusJson { cluster } => {
                (cluster, AdminCommand::ClusterStatus)
            }
            Self::NodeStatusJson { cluster } => (cluster, AdminCommand::NodeStatus),
            Self::Promote { cluster, switchover, sourcenode, quiet, force } => (
                cluster,
                AdminCommand::Promote {
                    switchover: *switchover,
                    quiet: *quiet,
                    force: *force,
                    sourcenode: sourcenode.clone(),
                },
            ),
            Self::Resume { cluster } => (cluster, AdminCommand::Resume),
            Self::SetPriority { cluster, address, priority } => {
                (cluster, AdminCommand::SetPriority { address: address.clone(), priority: *priority })
            }
            // add-node sends allow-node, then set-priority when a priority is given (see `efm`).
            Self::AllowNode { cluster, address } | Self::AddNode { cluster, address, .. } => {
                (cluster, AdminCommand::AllowNode { address: address.clone() })
            }
            Self::DisallowNode { cluster, address } | Self::RemoveNode { cluster, address } => {
                (cluster, AdminCommand::DisallowNode { address: address.clone() })
            }
            Self::StopCluster { cluster } => (cluster, AdminCommand::StopCluster),
            Self::ResetMembers { cluster } => (cluster, AdminCommand::ResetMembers),
            Self::Rejoin { cluster, force } => (cluster, AdminCommand::Rejoin { force: *force }),
            Self::PropCheck { .. }
            | Self::UpgradeConf { .. }
            | Self::Encrypt { .. }
            | Self::GenerateKey { .. }
            | Self::GenerateDocs { .. } => return None,
        })
    }
}

/// EFM's single-dash option spellings (`-switchover`, `-sourcenode`, `-quiet`, `-force` of
/// `promote`; `-source` of `upgrade-conf`, EFM 3.3) turned into ours, so that `efm` accepts both.
pub fn efm_args<I: IntoIterator<Item = std::ffi::OsString>>(args: I) -> Vec<std::ffi::OsString> {
    args.into_iter()
        .map(|a| match a.to_str() {
            Some(s @ ("-switchover" | "-sourcenode" | "-quiet" | "-force" | "-source")) => format!("-{s}").into(),
            _ => a,
        })
        .collect()
}

/// The deprecation notice `efm add-node` / `remove-node` print (EFM 3 renamed them).
#[must_use]
pub fn deprecated_node_command(old: &str, cluster: &str, address: &str, priority: Option<u32>) -> String {
    let new = if old == "add-node" { "allow-node" } else { "disallow-node" };
    let mut then = format!("efm {new} {cluster} {address}");
    if let Some(p) = priority {
        use std::fmt::Write as _;
        let _ = write!(then, " and efm set-priority {cluster} {address} {p}");
    }
    format!("efm: `{old}` is EFM 2.0's name, deprecated since EFM 3.0; running {then} (use {new} from now on)")
}

/// The shells completions are generated for, with the file name each expects.
pub const SHELLS: &[(Shell, &str)] = &[(Shell::Bash, "bash"), (Shell::Zsh, "zsh"), (Shell::Fish, "fish")];

/// The completion file name `shell` loads for `bin`.
#[must_use]
pub fn completion_file_name(shell: Shell, bin: &str) -> String {
    match shell {
        Shell::Zsh => format!("_{bin}"),
        Shell::Fish => format!("{bin}.fish"),
        _ => bin.to_owned(),
    }
}

const SEE_ALSO_AGENT: &str = ".SH \"SEE ALSO\"\n\\fBefm\\fR(1), \\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1), \
                              \\fBsystemd.exec\\fR(5)\n";
const SEE_ALSO_EFM: &str = ".SH \"SEE ALSO\"\n\\fBefm\\-agent\\fR(8)\n";

/// Writes every man page and completion file into `dir` (see [`Cmd::GenerateDocs`]) and returns
/// the files written, relative to `dir`.
pub fn generate_docs(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let man1 = dir.join("man1");
    let man8 = dir.join("man8");
    fs::create_dir_all(&man1)?;
    fs::create_dir_all(&man8)?;

    // efm-agent(8): a daemon, section 8.
    let agent = AgentArgs::command();
    let page = render_man(agent.clone(), "8", SEE_ALSO_AGENT)?;
    fs::write(man8.join("efm-agent.8"), page)?;
    written.push(PathBuf::from("man8/efm-agent.8"));

    // efm(1) and one page per subcommand (efm-cluster-status(1), ...), as git does.
    let mut efm = Cli::command().disable_help_subcommand(true);
    efm.build();
    let subs: Vec<clap::Command> = efm.get_subcommands().filter(|s| !s.is_hide_set()).cloned().collect();
    fs::write(man1.join("efm.1"), render_man(efm.clone(), "1", SEE_ALSO_EFM)?)?;
    written.push(PathBuf::from("man1/efm.1"));
    for sub in subs {
        let name = sub.get_display_name().unwrap_or_else(|| sub.get_name()).to_owned();
        fs::write(man1.join(format!("{name}.1")), render_man(sub, "1", SEE_ALSO_EFM)?)?;
        written.push(PathBuf::from(format!("man1/{name}.1")));
    }

    for &(shell, shell_dir) in SHELLS {
        let out = dir.join("completions").join(shell_dir);
        fs::create_dir_all(&out)?;
        for (mut cmd, bin) in [(AgentArgs::command(), "efm-agent"), (without_hidden(&Cli::command(), "efm"), "efm")] {
            let file = completion_file_name(shell, bin);
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd, bin, &mut buf);
            fs::write(out.join(&file), buf)?;
            written.push(PathBuf::from(format!("completions/{shell_dir}/{file}")));
        }
    }
    Ok(written)
}

/// `cmd` (named `name`) without its hidden subcommands, which `clap_complete` would complete.
fn without_hidden(cmd: &clap::Command, name: &'static str) -> clap::Command {
    let mut out = clap::Command::new(name)
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(cmd.is_subcommand_required_set());
    if let Some(a) = cmd.get_about() {
        out = out.about(a.clone());
    }
    out.args(cmd.get_arguments().cloned()).subcommands(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
}

/// A man page: `clap_mangen`'s sections, the examples (clap's after-help) as EXAMPLES rather than
/// EXTRA, then `see_also`.
fn render_man(cmd: clap::Command, section: &str, see_also: &str) -> io::Result<Vec<u8>> {
    let extra = cmd.get_after_long_help().or_else(|| cmd.get_after_help()).map(ToString::to_string);
    let cmd = cmd.after_help(None::<&str>).after_long_help(None::<&str>);
    let man =
        clap_mangen::Man::new(cmd).section(section).manual("efm").source(concat!("efm ", env!("CARGO_PKG_VERSION")));
    let mut out = Vec::new();
    man.render(&mut out)?;
    if let Some(extra) = extra {
        out.extend_from_slice(roff_sections(&extra).as_bytes());
    }
    out.extend_from_slice(see_also.as_bytes());
    Ok(out)
}

/// Turns an after-help text ("Example:\n  cmd\n\nFiles:\n  ...") into roff sections: each
/// unindented "Title:" line starts a section, indented lines are kept verbatim (`.nf`), other
/// lines are filled text.
fn roff_sections(text: &str) -> String {
    let mut out = String::new();
    let mut verbatim = false;
    for line in text.lines() {
        if let Some(title) = line.strip_suffix(':').filter(|t| !t.starts_with(' ') && !t.is_empty()) {
            if verbatim {
                out.push_str(".fi\n");
                verbatim = false;
            }
            let title = match title {
                "Example" => "EXAMPLES",
                other => &other.to_uppercase(),
            };
            let _ = writeln!(out, ".SH {title}");
        } else if line.starts_with("  ") {
            if !verbatim {
                out.push_str(".nf\n");
                verbatim = true;
            }
            out.push_str(&roff_escape(line));
            out.push('\n');
        } else if line.trim().is_empty() {
            if verbatim {
                out.push_str(".fi\n");
                verbatim = false;
            }
            out.push_str(".PP\n");
        } else {
            if verbatim {
                out.push_str(".fi\n");
                verbatim = false;
            }
            out.push_str(&roff_escape(line));
            out.push('\n');
        }
    }
    if verbatim {
        out.push_str(".fi\n");
    }
    out
}

fn roff_escape(line: &str) -> String {
    let escaped = line.replace('\\', "\\e").replace('-', "\\-");
    // A line starting with . or ' would be a roff request.
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_admin_command_has_its_efm_command() {
        let parse =
            |words: &[&str]| Cli::try_parse_from(std::iter::once("efm").chain(words.iter().copied())).unwrap().cmd;
        let sent: Vec<&str> = [
            &["cluster-status", "acctg"][..],
            &["node-status-json", "acctg"],
            &["promote", "acctg", "--switchover", "--sourcenode", "198.18.0.9", "--quiet"],
            &["resume", "acctg"],
            &["set-priority", "acctg", "198.18.0.2", "1"],
            &["allow-node", "acctg", "198.18.0.3"],
            &["disallow-node", "acctg", "198.18.0.3"],
            &["stop-cluster", "acctg"],
            &["reset-members", "acctg"],
            &["rejoin", "acctg", "--force"],
        ]
        .iter()
        .map(|w| parse(w).admin_request().unwrap().1.as_str())
        .collect();
        assert_eq!(sent, AdminCommand::NAMES);
        let cmd = parse(&["promote", "acctg", "--switchover", "--sourcenode", "198.18.0.9", "--quiet"]);
        let (cluster, promote) = cmd.admin_request().unwrap();
        assert_eq!(cluster, "acctg");
        assert_eq!(
            promote,
            AdminCommand::Promote {
                switchover: true,
                quiet: true,
                force: false,
                sourcenode: Some("198.18.0.9".into())
            }
        );
        assert_eq!(
            parse(&["set-priority", "acctg", "198.18.0.2", "0"]).admin_request().unwrap().1,
            AdminCommand::SetPriority { address: "198.18.0.2".into(), priority: 0 }
        );
        assert!(parse(&["prop-check", "acctg"]).admin_request().is_none());
    }

    #[test]
    fn efm_spellings_and_20_commands() {
        let parse = |words: &[&str]| {
            let args = efm_args(std::iter::once("efm").chain(words.iter().copied()).map(std::ffi::OsString::from));
            Cli::try_parse_from(args).unwrap().cmd
        };
        match parse(&["upgrade-conf", "acctg", "-source", "/etc/efm-2.0"]) {
            Cmd::UpgradeConf { cluster, source, force } => {
                assert_eq!((cluster.as_str(), source.as_path(), force), ("acctg", Path::new("/etc/efm-2.0"), false));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse(&["upgrade-conf", "acctg", "--source", "/x"]), Cmd::UpgradeConf { .. }));
        assert!(matches!(
            parse(&["promote", "acctg", "-switchover", "-quiet"]),
            Cmd::Promote { switchover: true, quiet: true, .. }
        ));
        let add = parse(&["add-node", "acctg", "10.0.1.9:7800", "1"]);
        assert!(matches!(&add, Cmd::AddNode { priority: Some(1), .. }), "{add:?}");
        assert_eq!(add.admin_request().unwrap().1, AdminCommand::AllowNode { address: "10.0.1.9:7800".into() });
        assert!(matches!(parse(&["add-node", "acctg", "10.0.1.9"]), Cmd::AddNode { priority: None, .. }));
        assert_eq!(
            parse(&["remove-node", "acctg", "10.0.1.9"]).admin_request().unwrap().1,
            AdminCommand::DisallowNode { address: "10.0.1.9".into() }
        );
        let n = deprecated_node_command("add-node", "acctg", "10.0.1.9:7800", Some(1));
        assert!(
            n.contains("deprecated")
                && n.contains("efm allow-node acctg 10.0.1.9:7800 and efm set-priority acctg 10.0.1.9:7800 1"),
            "{n}"
        );
        assert!(deprecated_node_command("remove-node", "acctg", "10.0.1.9", None).contains("use disallow-node"));
    }

    #[test]
    fn definitions_are_consistent() {
        AgentArgs::command().debug_assert();
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_has_an_about_and_an_example() {
        for cmd in std::iter::once(AgentArgs::command())
            .chain(std::iter::once(Cli::command()))
            .chain(Cli::command().get_subcommands().cloned().collect::<Vec<_>>())
        {
            let name = cmd.get_name().to_owned();
            assert!(cmd.get_about().is_some(), "{name} has no description");
            let after = cmd.get_after_help().map(ToString::to_string).unwrap_or_default();
            assert!(after.starts_with("Example:\n  "), "{name}'s --help has no example: {after:?}");
            for arg in cmd.get_arguments() {
                if ["help", "version"].contains(&arg.get_id().as_str()) {
                    continue;
                }
                assert!(arg.get_help().is_some(), "{name}: argument {} is undocumented", arg.get_id());
            }
        }
    }

    #[test]
    fn agent_arguments_keep_their_defaults() {
        let a = AgentArgs::try_parse_from(["efm-agent", "--cluster", "acctg"]).unwrap();
        assert_eq!(a.cluster, "acctg");
        assert_eq!(a.config_dir, Path::new("/etc/efm"));
        assert_eq!(a.run_dir, Path::new("/run/efm"));
        assert_eq!(a.bpffs_dir, Path::new("/sys/fs/bpf/efm"));
        assert!(AgentArgs::try_parse_from(["efm-agent"]).is_err(), "--cluster is required");
    }

    #[test]
    fn generate_docs_writes_pages_and_completions() {
        let dir = std::env::temp_dir().join(format!("efm-docs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let written = generate_docs(&dir).unwrap();
        for f in [
            "man8/efm-agent.8",
            "man1/efm.1",
            "man1/efm-cluster-status.1",
            "man1/efm-generate-key.1",
            "completions/bash/efm",
            "completions/bash/efm-agent",
            "completions/zsh/_efm",
            "completions/fish/efm.fish",
        ] {
            assert!(written.contains(&PathBuf::from(f)), "{f} not in {written:?}");
            assert!(dir.join(f).metadata().unwrap().len() > 0, "{f} is empty");
        }
        assert!(!written.iter().any(|p| p.to_string_lossy().contains("generate-docs")), "hidden command documented");
        let agent = fs::read_to_string(dir.join("man8/efm-agent.8")).unwrap();
        assert!(agent.starts_with(".ie") || agent.contains(".TH efm\\-agent 8"), "{}", &agent[..200.min(agent.len())]);
        assert!(
            agent.contains(".SH EXAMPLES") && agent.contains(".SH FILES") && agent.contains("\\-\\-cluster"),
            "{agent}"
        );
        assert!(!agent.contains(".SH EXTRA"), "{agent}");
        let bash = fs::read_to_string(dir.join("completions/bash/efm")).unwrap();
        assert!(bash.contains("cluster-status") && !bash.contains("generate-docs"), "hidden command completed");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn roff_sections_keep_examples_verbatim() {
        let r = roff_sections("Example:\n  efm x -y\n\nFiles:\n  /etc/efm  config\nplain text.");
        assert_eq!(
            r,
            ".SH EXAMPLES\n.nf\n  efm x \\-y\n.fi\n.PP\n.SH FILES\n.nf\n  /etc/efm  config\n.fi\nplain text.\n"
        );
    }
}
