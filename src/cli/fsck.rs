//! `thinsnap fsck [--repair] [--dry-run] [--json]`: checks a devicemapper
//! store against its pool. Exit codes follow fsck(8): 0 clean, 1 problems
//! found and all repaired, 4 problems left, 8 the check itself failed.

use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use super::GlobalArgs;
use crate::backend::devmapper::DmStoreOptions;
use crate::backend::devmapper::fsck::{self, Action, Finding};

type CliResult = Result<ExitCode, Box<dyn std::error::Error>>;

#[derive(Debug, Args)]
pub struct FsckArgs {
    /// Repair what is found (without it, fsck only reports).
    #[arg(long)]
    pub repair: bool,
    /// With --repair: print what would be done, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Report<'a> {
    root: String,
    findings: &'a [Finding],
    actions: &'a [Action],
    remaining: &'a [Finding],
}

pub fn run(global: &GlobalArgs, args: &FsckArgs) -> CliResult {
    match check(global, args) {
        Ok(code) => Ok(code),
        Err(e) => {
            super::report_error(&*e);
            Ok(ExitCode::from(8))
        }
    }
}

fn check(global: &GlobalArgs, args: &FsckArgs) -> CliResult {
    super::store::refuse_while_served(global, "")?;
    if !matches!(global.driver.as_str(), "auto" | "devicemapper") {
        return Err(format!(
            "fsck checks devicemapper stores; {} stores repair themselves when they open (see docs/reliability.md)",
            global.driver
        )
        .into());
    }
    let opts = DmStoreOptions::parse(&global.storage_opts)?;
    let root = global.root.display().to_string();
    if !args.repair || args.dry_run {
        let findings = fsck::analyse(&fsck::inspect(&global.root, &opts)?);
        if args.json {
            let r = Report {
                root,
                findings: &findings,
                actions: &[],
                remaining: &findings,
            };
            println!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            print_findings(&root, &findings, args.repair);
        }
        return Ok(ExitCode::from(if findings.is_empty() { 0 } else { 4 }));
    }
    let (actions, remaining) = fsck::repair(&global.root, &opts)?;
    if args.json {
        let findings: Vec<Finding> = actions.iter().map(|a| a.finding.clone()).collect();
        let r = Report {
            root,
            findings: &findings,
            actions: &actions,
            remaining: &remaining,
        };
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        if actions.is_empty() {
            println!("{root}: clean");
        }
        for a in &actions {
            let mark = if a.done { "repaired" } else { "NOT repaired" };
            println!("{mark}: {} — {}", a.finding.message, a.detail);
        }
        if !remaining.is_empty() {
            println!("still found after repair:");
            for f in &remaining {
                println!("  {}", f.message);
            }
        }
    }
    Ok(ExitCode::from(
        match (actions.is_empty(), remaining.is_empty()) {
            (true, true) => 0,
            (false, true) => 1,
            _ => 4,
        },
    ))
}

fn print_findings(root: &str, findings: &[Finding], dry_run: bool) {
    if findings.is_empty() {
        println!("{root}: clean");
        return;
    }
    for f in findings {
        println!("{}", f.message);
        match &f.held_back {
            Some(why) => println!("  repair held back: {why}"),
            None if dry_run => println!("  would repair: {}", f.repair),
            None => println!("  repair: {}", f.repair),
        }
    }
    if !dry_run {
        println!(
            "{} problem(s); `thinsnap fsck --repair` repairs them (add --dry-run to see the plan)",
            findings.len()
        );
    }
}
