//! `thinsnap status`: which driver this store uses and why (the same
//! choice every command makes), then the driver's own report, as
//! `docker info` prints its "Storage Driver" section.

use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use super::GlobalArgs;
use crate::backend::{self, StoreConfig};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Report {
    driver: String,
    reason: String,
    warnings: Vec<String>,
    status: Vec<(String, String)>,
    /// The driver's numbers (devicemapper: bytes and counts, not text).
    #[serde(skip_serializing_if = "Option::is_none")]
    raw: Option<serde_json::Value>,
}

pub fn run(global: &GlobalArgs, args: &StatusArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    if let Some(p) = super::store::served(global)? {
        let report = Report {
            driver: p.driver.clone(),
            reason: super::store::served_note(&p),
            warnings: Vec::new(),
            status: p.status.clone(),
            raw: args.json.then(|| p.raw.clone()),
        };
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", render(&report));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (driver, choice) = backend::open_with_choice(&StoreConfig {
        root: global.root.clone(),
        driver: global.driver.clone(),
        storage_opts: global.storage_opts.clone(),
    })?;
    let report = Report {
        driver: choice.driver.clone(),
        reason: choice.reason.clone(),
        warnings: choice.warnings(),
        status: driver.status()?,
        raw: if args.json {
            Some(driver.status_json()?)
        } else {
            None
        },
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(ExitCode::SUCCESS)
}

fn render(r: &Report) -> String {
    let mut out = format!("Storage Driver: {}\n Chosen: {}\n", r.driver, r.reason);
    for (k, v) in &r.status {
        out.push_str(&format!(" {k}: {v}\n"));
    }
    for w in &r.warnings {
        out.push_str(&format!("WARNING: {w}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_docker_info() {
        let r = Report {
            driver: "overlay2".into(),
            reason: "auto: overlay is in the kernel".into(),
            warnings: vec!["layers stored by vfs are not visible to overlay2".into()],
            status: vec![("Backing Filesystem".into(), "xfs".into())],
            raw: None,
        };
        assert_eq!(
            render(&r),
            "Storage Driver: overlay2\n Chosen: auto: overlay is in the kernel\n Backing Filesystem: xfs\nWARNING: layers stored by vfs are not visible to overlay2\n"
        );
    }
}
