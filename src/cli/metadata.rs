//! `thinsnap metadata show`: prints a devicemapper store's Docker metadata
//! files exactly as they are on disk. Read-only, and it needs no
//! device-mapper, so it works on any host (and on a copied store).

use std::fs;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::GlobalArgs;

#[derive(Debug, Subcommand)]
pub enum MetadataCommand {
    /// Print every file under <root>/devicemapper/metadata.
    Show(ShowArgs),
}

#[derive(Debug, Args)]
pub struct ShowArgs {}

pub fn run(
    global: &GlobalArgs,
    cmd: &MetadataCommand,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let MetadataCommand::Show(_) = cmd;
    let dir = global.root.join("devicemapper").join("metadata");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    // Docker's three well-known files first, then the devices by name.
    names.sort_by_key(|n| {
        let rank = match n.as_str() {
            "base" => 0,
            "deviceset-metadata" => 1,
            "transaction-metadata" => 2,
            _ => 3,
        };
        (rank, n.clone())
    });
    for n in names {
        let p = dir.join(&n);
        match fs::read(&p) {
            Ok(bytes) => println!("{}: {}", p.display(), String::from_utf8_lossy(&bytes)),
            Err(e) => println!("{}: unreadable: {e}", p.display()),
        }
    }
    Ok(ExitCode::SUCCESS)
}
