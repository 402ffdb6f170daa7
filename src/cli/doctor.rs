//! `thinsnap doctor`: what this host can do and which driver to use.

use std::process::ExitCode;

use clap::Args;

use super::GlobalArgs;
use crate::probe::HostReport;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(global: &GlobalArgs, args: &DoctorArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let report = HostReport::probe(&global.root);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(if report.recommendation.driver.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// The human-readable report.
pub fn render(r: &HostReport) -> String {
    let dm = &r.device_mapper;
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<28} {v}\n"));
    line("Kernel:", r.kernel.clone());
    line(
        "/dev/mapper/control:",
        if dm.control_present {
            "present".into()
        } else {
            "MISSING".into()
        },
    );
    line(
        "device-mapper driver:",
        dm.driver_version.clone().unwrap_or_else(|| "-".into()),
    );
    line(
        "dm-thin (thin-pool target):",
        match (&dm.thin_pool_version, dm.thin_pool_module_available) {
            (Some(v), _) => v.clone(),
            (None, true) => "not loaded (module available)".into(),
            (None, false) => "not available".into(),
        },
    );
    if let Some(p) = &dm.problem {
        line("device-mapper problem:", p.clone());
    }
    let f = &r.filesystems;
    line("overlay:", yes_no(f.overlay).into());
    line("aufs:", yes_no(f.aufs).into());
    line("btrfs:", yes_no(f.btrfs).into());
    line(
        "xfs / ext4:",
        format!("{} / {}", yes_no(f.xfs), yes_no(f.ext4)),
    );
    line(
        "zfs:",
        format!("{} (thinsnap has no zfs backend)", yes_no(f.zfs)),
    );
    line("Store root:", r.root.path.display().to_string());
    line(
        "Backing filesystem:",
        format!(
            "{} (probed at {})",
            r.root.backing_filesystem,
            r.root.probed.display()
        ),
    );
    line(
        "Supports d_type:",
        match r.root.d_type {
            Some(b) => yes_no(b).into(),
            None => format!("unknown ({})", r.root.error.as_deref().unwrap_or("-")),
        },
    );
    line("udev running:", yes_no(r.udev_running).into());
    line(
        "Existing stores:",
        if r.existing_stores.is_empty() {
            "none".into()
        } else {
            r.existing_stores.join(", ")
        },
    );
    line(
        "Recommended driver:",
        r.recommendation
            .driver
            .clone()
            .unwrap_or_else(|| "NONE".into()),
    );
    line("Reason:", r.recommendation.reason.clone());
    out
}
