//! Layer commands: `diff`, `apply`, `changes`, `inspect`, `rm`.

use std::collections::BTreeMap;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use super::GlobalArgs;
use super::store;
use crate::snapshot::{ChangeKind, CreateOpts, LayerId, SnapshotError};
use crate::units::human_size;

#[derive(Debug, Args)]
pub struct DiffArgs {
    pub id: LayerId,
    /// Compare with this layer instead of the recorded parent.
    #[arg(long)]
    pub parent: Option<LayerId>,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The layer to fill; created on --parent when it does not exist.
    pub id: LayerId,
    #[arg(long)]
    pub parent: Option<LayerId>,
}

#[derive(Debug, Args)]
pub struct ChangesArgs {
    pub id: LayerId,
    #[arg(long)]
    pub parent: Option<LayerId>,
    /// Print Docker's JSON (`[{"Path": "/etc", "Kind": 0}]`, 0 = changed,
    /// 1 = added, 2 = deleted).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    pub id: LayerId,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    pub id: LayerId,
}

pub fn diff(global: &GlobalArgs, args: &DiffArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let stdout = io::stdout();
    if stdout.is_terminal() {
        return Err(SnapshotError::invalid(
            "refusing to write a tar to a terminal: redirect stdout (`> layer.tar`)",
        )
        .into());
    }
    let driver = store::open(global)?;
    let mut out = BufWriter::new(stdout.lock());
    driver.diff(&args.id, args.parent.as_ref(), &mut out)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub fn apply(
    global: &GlobalArgs,
    args: &ApplyArgs,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let driver = store::open(global)?;
    if !driver.exists(&args.id) {
        driver.create(&args.id, args.parent.as_ref(), &CreateOpts::default())?;
    }
    let mut input = io::BufReader::new(io::stdin().lock());
    let n = driver.apply_diff(&args.id, args.parent.as_ref(), &mut input)?;
    println!("{n}");
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct JsonChange {
    #[serde(rename = "Path")]
    path: String,
    #[serde(rename = "Kind")]
    kind: u8,
}

pub fn changes(
    global: &GlobalArgs,
    args: &ChangesArgs,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let driver = store::open(global)?;
    let changes = driver.changes(&args.id, args.parent.as_ref())?;
    if args.json {
        let list: Vec<_> = changes
            .iter()
            .map(|c| JsonChange {
                path: c.path.display().to_string(),
                kind: match c.kind {
                    ChangeKind::Modify => 0,
                    ChangeKind::Add => 1,
                    ChangeKind::Delete => 2,
                },
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        let mut out = BufWriter::new(io::stdout().lock());
        for c in &changes {
            writeln!(out, "{} {}", c.kind.letter(), c.path.display())?;
        }
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct Inspect {
    id: String,
    driver: String,
    parent: Option<String>,
    incomplete: bool,
    mount_count: u32,
    size_bytes: u64,
    inodes: u64,
    metadata: BTreeMap<String, String>,
}

pub fn inspect(
    global: &GlobalArgs,
    args: &InspectArgs,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let driver = store::open(global)?;
    let info = driver
        .list()?
        .into_iter()
        .find(|l| l.id == args.id)
        .ok_or_else(|| SnapshotError::not_found(&args.id))?;
    let usage = driver.usage(&args.id)?;
    let report = Inspect {
        id: info.id.to_string(),
        driver: driver.name().to_string(),
        parent: info.parent.map(|p| p.to_string()),
        incomplete: info.incomplete,
        mount_count: info.mount_count,
        size_bytes: usage.bytes.0,
        inodes: usage.inodes,
        metadata: driver.metadata(&args.id)?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let line = |k: &str, v: String| println!("{k:<14} {v}");
    line("ID:", report.id.clone());
    line("Driver:", report.driver.clone());
    line(
        "Parent:",
        report.parent.clone().unwrap_or_else(|| "-".into()),
    );
    line(
        "State:",
        if report.incomplete {
            "INCOMPLETE (an apply was interrupted or refused; remove the layer)".into()
        } else {
            "complete".into()
        },
    );
    line("Mounts:", report.mount_count.to_string());
    line(
        "Size:",
        format!(
            "{} ({} inodes)",
            human_size(report.size_bytes),
            report.inodes
        ),
    );
    for (k, v) in &report.metadata {
        line(&format!("{k}:"), v.clone());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn rm(global: &GlobalArgs, args: &RmArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let driver = store::open(global)?;
    driver.remove(&args.id)?;
    Ok(ExitCode::SUCCESS)
}
