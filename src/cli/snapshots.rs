//! `thinsnap snapshots ...`: containerd's Snapshots API from the command
//! line, through the socket of a running `thinsnap serve` (the way to read
//! and change a served store while the service owns it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Args, Subcommand};

use super::GlobalArgs;
use crate::service::client::BlockingClient;
use crate::service::config::DEFAULT_SOCKET;
use crate::service::instance;
use crate::service::model::SnapshotInfo;
use crate::snapshot::MountSpec;
use crate::units::Bytes;

#[derive(Debug, Args)]
pub struct SnapshotsArgs {
    /// Service socket [default: the socket of the service holding --root,
    /// else /run/thinsnap/thinsnap.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub command: SnapshotsCommand,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotsCommand {
    /// List snapshots (containerd filters, e.g. kind==committed; several = OR).
    Ls {
        #[arg(long = "filter", short = 'f')]
        filters: Vec<String>,
    },
    /// Show one snapshot.
    Info { key: String },
    /// Space used by snapshots (all when no key is given).
    Usage { keys: Vec<String> },
    /// Create an active snapshot and print its mounts.
    Prepare { key: String, parent: Option<String> },
    /// Create a read-only view and print its mounts.
    View { key: String, parent: Option<String> },
    /// Print the mounts of an active snapshot or view.
    Mounts { key: String },
    /// Commit active snapshot KEY as NAME.
    Commit { name: String, key: String },
    /// Remove snapshots.
    Rm { keys: Vec<String> },
    /// Remove leftovers of interrupted operations.
    Cleanup,
}

fn socket_for(global: &GlobalArgs, args: &SnapshotsArgs) -> PathBuf {
    if let Some(s) = &args.socket {
        return s.clone();
    }
    match instance::running(&global.root) {
        Some(i) if !i.socket.as_os_str().is_empty() => i.socket,
        _ => PathBuf::from(DEFAULT_SOCKET),
    }
}

pub fn run(
    global: &GlobalArgs,
    args: &SnapshotsArgs,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let socket = socket_for(global, args);
    let mut c = BlockingClient::connect(&socket)?;
    let none = BTreeMap::new();
    match &args.command {
        SnapshotsCommand::Ls { filters } => {
            let f: Vec<&str> = filters.iter().map(String::as_str).collect();
            let infos = c.walk(&f)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&infos_json(&infos))?);
            } else {
                print!("{}", render_table(&infos));
            }
        }
        SnapshotsCommand::Info { key } => {
            let info = c.stat(key)?;
            println!("{}", serde_json::to_string_pretty(&info_json(&info))?);
        }
        SnapshotsCommand::Usage { keys } => {
            let keys = if keys.is_empty() {
                c.walk(&[])?.into_iter().map(|i| i.name).collect()
            } else {
                keys.clone()
            };
            let mut rows = Vec::new();
            for k in keys {
                let u = c.usage(&k)?;
                rows.push((k, u));
            }
            if args.json {
                let v: Vec<_> = rows
                    .iter()
                    .map(|(k, u)| serde_json::json!({"key": k, "size": u.size, "inodes": u.inodes}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{:<60} {:>12} {:>10}", "KEY", "SIZE", "INODES");
                for (k, u) in rows {
                    println!(
                        "{:<60} {:>12} {:>10}",
                        k,
                        Bytes(u.size).to_string(),
                        u.inodes
                    );
                }
            }
        }
        SnapshotsCommand::Prepare { key, parent } => {
            print_mounts(&c.prepare(key, parent.as_deref().unwrap_or(""), &none)?)
        }
        SnapshotsCommand::View { key, parent } => {
            print_mounts(&c.view(key, parent.as_deref().unwrap_or(""), &none)?)
        }
        SnapshotsCommand::Mounts { key } => print_mounts(&c.mounts(key)?),
        SnapshotsCommand::Commit { name, key } => c.commit(name, key, &none)?,
        SnapshotsCommand::Rm { keys } => {
            for k in keys {
                c.remove(k)?;
            }
        }
        SnapshotsCommand::Cleanup => c.cleanup()?,
    }
    Ok(ExitCode::SUCCESS)
}

/// One `mount -t TYPE SOURCE TARGET -o OPTIONS` line per mount, as `ctr` prints them.
fn print_mounts(mounts: &[MountSpec]) {
    for m in mounts {
        println!(
            "mount -t {} {} {} -o {}",
            m.kind,
            m.source,
            m.target
                .as_deref()
                .unwrap_or(Path::new("<target>"))
                .display(),
            m.options.join(",")
        );
    }
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn info_json(i: &SnapshotInfo) -> serde_json::Value {
    serde_json::json!({
        "name": i.name,
        "parent": i.parent,
        "kind": i.kind.as_str(),
        "labels": i.labels,
        "created": secs(i.created),
        "updated": secs(i.updated),
    })
}

fn infos_json(infos: &[SnapshotInfo]) -> Vec<serde_json::Value> {
    infos.iter().map(info_json).collect()
}

fn render_table(infos: &[SnapshotInfo]) -> String {
    let mut out = format!("{:<60} {:<60} {}\n", "KEY", "PARENT", "KIND");
    for i in infos {
        out.push_str(&format!(
            "{:<60} {:<60} {}\n",
            i.name,
            i.parent.as_deref().unwrap_or(""),
            i.kind.as_str()
        ));
    }
    out
}
