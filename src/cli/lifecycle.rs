//! Layer lifecycle commands for every backend: `init`, `ls`, `create`,
//! `mount`, `umount`, `cleanup`.
//!
//! Each invocation is its own process. A layer mounted by `thinsnap mount`
//! stays mounted after the process exits; the next process finds it in
//! `/proc/self/mountinfo` and counts it as one reference, so `umount`
//! releases it.

use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use super::{GlobalArgs, store};
use crate::snapshot::{CreateOpts, LayerId};
use crate::units::parse_size;

type CliResult = Result<ExitCode, Box<dyn std::error::Error>>;

#[derive(Debug, Args)]
pub struct InitArgs {
    /// direct-lvm: wipe the signatures (filesystem, partition table, PV
    /// label) on dm.directlvm_device (same as dm.directlvm_device_force=true).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    pub id: LayerId,
    /// Parent layer (default: an empty layer / the base device).
    #[arg(long)]
    pub parent: Option<LayerId>,
    /// Virtual size (devicemapper: at least the parent's; the filesystem is grown).
    #[arg(long)]
    pub size: Option<String>,
    /// Create a writable container layer (Docker's CreateReadWrite).
    #[arg(long)]
    pub rw: bool,
}

#[derive(Debug, Args)]
pub struct MountArgs {
    pub id: LayerId,
    /// SELinux mount label.
    #[arg(long)]
    pub label: Option<String>,
}

#[derive(Debug, Args)]
pub struct UmountArgs {
    pub id: LayerId,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {}

/// Opens (creating on first use) the store and prints where it is.
pub fn init(global: &GlobalArgs, args: &InitArgs) -> CliResult {
    let mut global = global.clone();
    if args.force {
        global
            .storage_opts
            .push("dm.directlvm_device_force=true".into());
    }
    let global = &global;
    let driver = store::open(global)?;
    println!(
        "{} store ready under {}",
        driver.name(),
        global.root.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct LsRow {
    id: String,
    parent: Option<String>,
    mounted: u32,
    incomplete: bool,
}

pub fn ls(global: &GlobalArgs, args: &LsArgs) -> CliResult {
    let rows: Vec<LsRow> = match store::served(global)? {
        Some(p) => {
            if !args.json {
                println!("{}", store::served_note(&p));
            }
            p.layers
                .into_iter()
                .map(|l| LsRow {
                    id: l.id,
                    parent: l.parent,
                    mounted: l.mounted,
                    incomplete: l.incomplete,
                })
                .collect()
        }
        None => store::open(global)?
            .list()?
            .into_iter()
            .map(|l| LsRow {
                id: l.id.to_string(),
                parent: l.parent.map(|p| p.to_string()),
                mounted: l.mount_count,
                incomplete: l.incomplete,
            })
            .collect(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<66} {:<66} {:>7} STATE", "ID", "PARENT", "MOUNTED");
    for r in rows {
        println!(
            "{:<66} {:<66} {:>7} {}",
            r.id,
            r.parent.unwrap_or_else(|| "-".into()),
            r.mounted,
            if r.incomplete { "incomplete" } else { "ok" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn create(global: &GlobalArgs, args: &CreateArgs) -> CliResult {
    let driver = store::open(global)?;
    let mut opts = CreateOpts::default();
    if let Some(s) = &args.size {
        let bytes = parse_size(s)?;
        opts = CreateOpts::with_size(bytes);
    }
    if args.rw {
        driver.create_read_write(&args.id, args.parent.as_ref(), &opts)?;
    } else {
        driver.create(&args.id, args.parent.as_ref(), &opts)?;
    }
    println!("{}", args.id);
    Ok(ExitCode::SUCCESS)
}

pub fn mount(global: &GlobalArgs, args: &MountArgs) -> CliResult {
    let driver = store::open(global)?;
    let path = driver.get(&args.id, args.label.as_deref())?;
    println!("{}", path.display());
    Ok(ExitCode::SUCCESS)
}

pub fn umount(global: &GlobalArgs, args: &UmountArgs) -> CliResult {
    let driver = store::open(global)?;
    driver.put(&args.id)?;
    Ok(ExitCode::SUCCESS)
}

/// Unmounts every layer and releases kernel resources (dm devices, the
/// pool thinsnap created); the store stays on disk.
pub fn cleanup(global: &GlobalArgs, _: &CleanupArgs) -> CliResult {
    let driver = store::open(global)?;
    driver.cleanup()?;
    Ok(ExitCode::SUCCESS)
}
