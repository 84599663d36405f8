//! `efm`: the administration command, with EFM's command names. Status commands ask the local
//! agent over its admin socket; configuration commands work on the files directly.

use std::{io::Write as _, path::Path, process::ExitCode, time::Duration};

use clap::Parser as _;
use efm_agent::{
    admin::{self, AdminCommand, Request},
    cli::{self, Cli, Cmd},
    config, heartbeat, secret,
    status::{self, ClusterStatus},
};

fn main() -> ExitCode {
    // EFM spells some options with one dash (`-switchover`, `-source`); accept both.
    let cli = Cli::parse_from(cli::efm_args(std::env::args_os()));
    match run(&cli) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("efm: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn ask(cli: &Cli, cluster: &str, command: AdminCommand) -> Result<serde_json::Value, String> {
    ask_with(cli, cluster, command, Duration::from_mins(1))
}

fn ask_with(cli: &Cli, cluster: &str, command: AdminCommand, timeout: Duration) -> Result<serde_json::Value, String> {
    let req = Request::new(command);
    let resp = admin::request(&cli.run_dir, cluster, &req, timeout).map_err(|e| e.to_string())?;
    if resp.ok {
        resp.result.ok_or_else(|| "the agent answered without a result".to_owned())
    } else {
        Err(resp.error.unwrap_or_else(|| "the agent refused the request".to_owned()))
    }
}

fn cluster_status(cli: &Cli, cluster: &str) -> Result<ClusterStatus, String> {
    serde_json::from_value(ask(cli, cluster, AdminCommand::ClusterStatus)?)
        .map_err(|e| format!("unreadable cluster status: {e}"))
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn run(cli: &Cli) -> Result<ExitCode, String> {
    match &cli.cmd {
        Cmd::ClusterStatus { cluster } => {
            let st = cluster_status(cli, cluster)?;
            print!("{}", status::render_text(&st));
            Ok(exit(status::exit_code(&st)))
        }
        Cmd::ClusterStatusJson { cluster } => {
            let st = cluster_status(cli, cluster)?;
            println!("{}", st.to_json());
            Ok(exit(status::exit_code(&st)))
        }
        Cmd::NodeStatusJson { cluster } => {
            let v = ask(cli, cluster, AdminCommand::NodeStatus)?;
            println!("{}", serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Promote { .. } => {
            let Some((cluster, mut command)) = cli.cmd.admin_request() else {
                return Err("promote: no admin request".into());
            };
            eprintln!("efm: promote command sent to the local agent; waiting for the new primary");
            let mut v = ask_with(cli, cluster, command.clone(), Duration::from_secs(100))?;
            if let Some(q) = v.get("confirm").and_then(|q| q.as_str()) {
                if !confirm(q)? {
                    return Err("promotion cancelled; nothing was changed".into());
                }
                if let AdminCommand::Promote { force, .. } = &mut command {
                    *force = true;
                }
                v = ask_with(cli, cluster, command, Duration::from_secs(100))?;
            }
            print_message(&v);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Resume { .. }
        | Cmd::SetPriority { .. }
        | Cmd::AllowNode { .. }
        | Cmd::DisallowNode { .. }
        | Cmd::StopCluster { .. }
        | Cmd::ResetMembers { .. }
        | Cmd::Rejoin { .. } => {
            let Some((cluster, command)) = cli.cmd.admin_request() else { return Err("no admin request".into()) };
            let v = ask_with(cli, cluster, command, Duration::from_mins(1))?;
            print_message(&v);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::AddNode { cluster, address, priority } => {
            legacy_node_command(cli, "add-node", cluster, address, *priority)
        }
        Cmd::RemoveNode { cluster, address } => legacy_node_command(cli, "remove-node", cluster, address, None),
        Cmd::PropCheck { cluster } => {
            let report = config::check::prop_check(&cli.config_dir, cluster);
            print!("{}", report.render());
            Ok(exit(report.exit_code()))
        }
        Cmd::UpgradeConf { cluster, source, force } => upgrade(cli, cluster, source, *force),
        Cmd::Encrypt { cluster, from_env, key_file } => {
            let key_file = key_file.clone().unwrap_or_else(|| cli.config_dir.join("efm.key"));
            let key = secret::Key::load_or_create(&key_file).map_err(|e| e.to_string())?;
            if key.was_created() {
                eprintln!("efm: created the encryption key {}", key_file.display());
            }
            let mut pw =
                if *from_env { secret::password_from_env() } else { secret::read_password_twice("database password") }
                    .map_err(|e| e.to_string())?;
            let enc = secret::encrypt(&key, cluster, &pw).map_err(|e| e.to_string());
            secret::wipe_string(&mut pw);
            let enc = enc?;
            if *from_env {
                // EFM 3.3 prints the bare value with --from-env, for scripts.
                println!("{enc}");
            } else {
                println!("{}={enc}", secret::PROPERTY);
                eprintln!(
                    "efm: put this line in {} (it decrypts only for cluster {cluster} with {})",
                    cli.config_dir.join(format!("{cluster}.properties")).display(),
                    key_file.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::GenerateKey { cluster, output } => {
            let path = output.clone().unwrap_or_else(|| cli.config_dir.join(format!("{cluster}.key")));
            heartbeat::generate_cluster_key(&path).map_err(|e| e.to_string())?;
            println!("{}", path.display());
            eprintln!("efm: copy {} to every node of cluster {cluster} (mode 0600)", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::GenerateDocs { dir } => {
            for f in
                cli::generate_docs(dir).map_err(|e| format!("writing the documentation into {}: {e}", dir.display()))?
            {
                println!("{}", dir.join(f).display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// EFM 2.0's `add-node` (allow-node, then set-priority with a priority) and `remove-node`
/// (disallow-node), with the deprecation notice on stderr.
fn legacy_node_command(
    cli: &Cli,
    name: &str,
    cluster: &str,
    address: &str,
    priority: Option<u32>,
) -> Result<ExitCode, String> {
    eprintln!("{}", cli::deprecated_node_command(name, cluster, address, priority));
    let first = if name == "add-node" {
        AdminCommand::AllowNode { address: address.to_owned() }
    } else {
        AdminCommand::DisallowNode { address: address.to_owned() }
    };
    print_message(&ask(cli, cluster, first)?);
    if let Some(priority) = priority {
        print_message(&ask(cli, cluster, AdminCommand::SetPriority { address: address.to_owned(), priority })?);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_message(v: &serde_json::Value) {
    match v.get("message").and_then(|m| m.as_str()) {
        Some(m) => println!("{m}"),
        None => println!("{v}"),
    }
}

/// Asks the operator `question` on the terminal; without a terminal the answer is no.
fn confirm(question: &str) -> Result<bool, String> {
    use std::io::{BufRead as _, IsTerminal as _};
    if !std::io::stdin().is_terminal() {
        return Err(format!("{question}.\nRefusing without a terminal to confirm; add --force to promote anyway"));
    }
    eprint!("{question}.\nPromote anyway? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(|e| format!("reading the answer: {e}"))?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

fn upgrade(cli: &Cli, cluster: &str, source: &Path, force: bool) -> Result<ExitCode, String> {
    let result = config::upgrade::upgrade(source, cluster).map_err(|e| e.to_string())?;
    result.write_to(&cli.config_dir, cluster, force).map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{}", result.render_changes());
    let _ = writeln!(out, "wrote {}", cli.config_dir.join(format!("{cluster}.properties")).display());
    Ok(ExitCode::SUCCESS)
}
