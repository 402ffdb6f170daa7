//! `thinsnap doctor`: what this host can do and which driver to use.

use std::process::ExitCode;

use clap::Args;

use serde::Serialize;

use super::GlobalArgs;
use crate::backend::{self, Choice};
use crate::probe::HostReport;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The report plus the driver this store would be opened with.
#[derive(Serialize)]
struct WithChoice<'a> {
    #[serde(flatten)]
    report: &'a HostReport,
    choice: Option<Choice>,
    choice_error: Option<String>,
}

pub fn run(global: &GlobalArgs, args: &DoctorArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let report = HostReport::probe(&global.root);
    let choice = backend::choose_from(&global.driver, &report);
    if args.json {
        let out = WithChoice {
            report: &report,
            choice: choice.as_ref().ok().cloned(),
            choice_error: choice.as_ref().err().map(|e| e.to_string()),
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", render(&report));
        print!("{}", render_choice(&choice));
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
    line(
        "aufs:",
        if f.aufs {
            "yes".into()
        } else {
            "no (aufs stores open, but layers with parents cannot be mounted)".into()
        },
    );
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

/// What `--driver` (default `auto`) resolves to for this store, with the
/// same warnings `status` prints.
pub fn render_choice(choice: &crate::snapshot::Result<Choice>) -> String {
    match choice {
        Ok(c) => {
            let mut out = format!(
                "{:<28} {} ({})\n",
                "Driver for this store:", c.driver, c.reason
            );
            for w in c.warnings() {
                out.push_str(&format!("{:<28} {w}\n", "WARNING:"));
            }
            out
        }
        Err(e) => format!("{:<28} NONE ({e})\n", "Driver for this store:"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_lines() {
        let c = Choice {
            driver: "vfs".into(),
            reason: "chosen with --driver".into(),
            hidden: vec!["overlay2".into()],
        };
        let text = render_choice(&Ok(c));
        assert!(
            text.starts_with(&format!(
                "{:<28} vfs (chosen with --driver)\n",
                "Driver for this store:"
            )),
            "{text}"
        );
        assert!(
            text.contains("WARNING:")
                && text.contains("layers stored by overlay2 are not visible to vfs"),
            "{text}"
        );
    }
}
