//! `thinsnap pool …`: the thin pool of a devicemapper store, for storage
//! admins: `status`, `usage`, `check` (monitoring plugin / Prometheus),
//! `extend` and `autoextend`.
//!
//! Every subcommand opens an existing store only: on a root without one
//! it says so instead of creating a pool.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::{GlobalArgs, store};
use crate::backend::devmapper::admin::{
    self, CheckState, PoolHealth, SizeChange, SortKey, Thresholds, UsageReport,
};
use crate::backend::devmapper::{DevmapperDriver, directlvm, status};
use crate::units::human_size;

type CliResult = Result<ExitCode, Box<dyn std::error::Error>>;

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Every `docker info` field plus used/total percentages, pool mode,
    /// low-water mark and warnings.
    Status(StatusArgs),
    /// Space per thin device: mapped, exclusive (freed by removing it) and
    /// shared bytes, with totals that add up to the pool's used data.
    Usage(UsageArgs),
    /// One monitoring-plugin line; exit 0 ok, 1 warning, 2 critical, 3 unknown.
    Check(CheckArgs),
    /// Grow the pool online: `--data +SIZE` and/or `--metadata +SIZE`
    /// (or a new total without `+`); never shrinks.
    Extend(ExtendArgs),
    /// Grow the pool when data or metadata use reaches the threshold (LVM
    /// pools: by their lvm profile, as dmeventd does); `--watch` repeats.
    Autoextend(AutoextendArgs),
}

impl PoolCommand {
    /// Does the command print JSON (no progress bars then)?
    pub fn json(&self) -> bool {
        match self {
            PoolCommand::Status(a) => a.json,
            PoolCommand::Usage(a) => a.json,
            PoolCommand::Check(a) => a.prometheus,
            PoolCommand::Extend(a) => a.json,
            PoolCommand::Autoextend(a) => a.json,
        }
    }
}

#[derive(Debug, Args)]
pub struct ThresholdArgs {
    /// Warning level, percent of data or metadata space used.
    #[arg(long, default_value_t = 80)]
    pub warn: u8,
    /// Critical level, percent used.
    #[arg(long, default_value_t = 90)]
    pub crit: u8,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub thresholds: ThresholdArgs,
}

#[derive(Debug, Args)]
pub struct UsageArgs {
    #[arg(long)]
    pub json: bool,
    /// Sort rows by exclusive or mapped bytes (largest first).
    #[arg(long, default_value = "exclusive")]
    pub sort: SortKey,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub thresholds: ThresholdArgs,
    /// Print Prometheus text metrics instead of the plugin line.
    #[arg(long)]
    pub prometheus: bool,
}

#[derive(Debug, Args)]
pub struct ExtendArgs {
    /// Data space: +SIZE to grow by, SIZE for the new total (e.g. +10G).
    #[arg(long, allow_hyphen_values = true)]
    pub data: Option<SizeChange>,
    /// Metadata space: +SIZE or SIZE.
    #[arg(long, allow_hyphen_values = true)]
    pub metadata: Option<SizeChange>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AutoextendArgs {
    /// Percent used at which a non-LVM pool grows [default: 80; for a
    /// direct-lvm pool its recorded dm.thinp_autoextend_threshold].
    #[arg(long)]
    pub threshold: Option<u64>,
    /// Percent of its size a non-LVM pool grows by (LVM pools: their profile).
    #[arg(long, default_value_t = 20)]
    pub percent: u64,
    /// Check every SECONDS instead of once.
    #[arg(long, value_name = "SECONDS")]
    pub watch: Option<u64>,
    #[arg(long)]
    pub json: bool,
}

pub fn run(global: &GlobalArgs, cmd: &PoolCommand) -> CliResult {
    match cmd {
        PoolCommand::Status(a) => show_status(global, a),
        PoolCommand::Usage(a) => usage(global, a),
        PoolCommand::Check(a) => check(global, a),
        PoolCommand::Extend(a) => extend(global, a),
        PoolCommand::Autoextend(a) => autoextend(global, a),
    }
}

/// Opens the devicemapper store under `--root`; refuses to create one.
/// Opens the store for a pool command. Refused while `thinsnap serve`
/// holds it (a second DeviceSet would race the service's transactions);
/// `status` and `check` read the service's published health instead.
fn open(global: &GlobalArgs) -> Result<DevmapperDriver, Box<dyn std::error::Error>> {
    store::refuse_while_served(
        global,
        "; `thinsnap pool status`, `pool check` and `thinsnap snapshots usage` work meanwhile",
    )?;
    if !matches!(global.driver.as_str(), "auto" | "devicemapper") {
        return Err(format!(
            "pool commands work on a devicemapper store, not on --driver {}",
            global.driver
        )
        .into());
    }
    let base = global.root.join("devicemapper/metadata/base");
    if !base.exists() {
        return Err(format!(
            "no devicemapper store under {} ({} is missing): create it with `thinsnap --root {} --driver devicemapper init`",
            global.root.display(),
            base.display(),
            global.root.display()
        )
        .into());
    }
    Ok(DevmapperDriver::open(&global.root, &global.storage_opts)?)
}

fn thresholds(a: &ThresholdArgs) -> Result<Thresholds, Box<dyn std::error::Error>> {
    Ok(Thresholds::new(a.warn, a.crit)?)
}

/// The pool's health: live, or (while a service holds the store) as the
/// service published it at most a few seconds ago, with a note saying so.
fn health(
    global: &GlobalArgs,
    t: Thresholds,
) -> Result<(PoolHealth, Option<String>), Box<dyn std::error::Error>> {
    if let Some(p) = store::served(global)? {
        if p.driver != "devicemapper" {
            return Err(format!(
                "pool commands work on a devicemapper store; thinsnap serve (pid {}) serves {} here",
                p.pid, p.driver
            )
            .into());
        }
        let mut h: PoolHealth = serde_json::from_value(p.raw.clone()).map_err(|e| {
            format!(
                "the status thinsnap serve (pid {}) published has no pool health ({e}); is it an older thinsnap? restart it",
                p.pid
            )
        })?;
        h.rewarn(t);
        return Ok((h, Some(store::served_note(&p))));
    }
    let driver = open(global)?;
    Ok((PoolHealth::read(driver.device_set(), t)?, None))
}

fn show_status(global: &GlobalArgs, args: &StatusArgs) -> CliResult {
    let t = thresholds(&args.thresholds)?;
    let (h, note) = health(global, t)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&h)?);
    } else {
        if let Some(n) = note {
            println!("{n}");
        }
        print!("{}", render_status(&h, &status::lines(&h.status)));
    }
    Ok(ExitCode::SUCCESS)
}

fn render_status(h: &PoolHealth, docker_lines: &[(String, String)]) -> String {
    let s = &h.status;
    let mut out = String::new();
    for (k, v) in docker_lines {
        out.push_str(&format!(" {k}: {v}\n"));
    }
    out.push_str(&format!(
        " Backing: {}{}\n",
        h.backing,
        h.lvm_volume
            .as_ref()
            .map(|v| format!(" ({v})"))
            .unwrap_or_default()
    ));
    out.push_str(&format!(
        " Data Space Used Percent: {:.1}%\n Metadata Space Used Percent: {:.1}%\n",
        h.data_used_percent, h.metadata_used_percent
    ));
    out.push_str(&format!(
        " Needs Check: {}\n Low Water Mark: {} blocks ({}), {}\n",
        s.needs_check,
        h.low_water_mark_blocks,
        human_size(h.low_water_mark_blocks * s.pool_blocksize),
        if h.below_low_water_mark {
            "free space is below it"
        } else {
            "free space is above it"
        }
    ));
    out.push_str(&format!(
        " New Layers Refused: {}\n",
        if h.new_layers_refused {
            "yes (free space below dm.min_free_space)"
        } else {
            "no"
        }
    ));
    for w in &h.warnings {
        out.push_str(&format!("WARNING: {w}\n"));
    }
    out
}

fn usage(global: &GlobalArgs, args: &UsageArgs) -> CliResult {
    let driver = open(global)?;
    let r = admin::usage::read(driver.device_set(), args.sort)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", render_usage(&r));
    }
    Ok(ExitCode::SUCCESS)
}

/// The usage table; ids are shown in full (admins paste them).
pub fn render_usage(r: &UsageReport) -> String {
    let width = r.rows.iter().map(|x| x.id.len()).max().unwrap_or(2).max(2);
    let pwidth = r
        .rows
        .iter()
        .map(|x| x.parent.as_deref().unwrap_or("-").len())
        .max()
        .unwrap_or(6)
        .max(6);
    let mut out = format!(
        "{:>6}  {:<width$}  {:<14}  {:<pwidth$}  {:>10}  {:>10}  {:>10}\n",
        "THINID", "ID", "KIND", "PARENT", "MAPPED", "EXCLUSIVE", "SHARED"
    );
    for row in &r.rows {
        out.push_str(&format!(
            "{:>6}  {:<width$}  {:<14}  {:<pwidth$}  {:>10}  {:>10}  {:>10}\n",
            row.device_id,
            row.id,
            row.kind.as_str(),
            row.parent.as_deref().unwrap_or("-"),
            human_size(row.mapped_bytes),
            human_size(row.exclusive_bytes),
            human_size(row.shared_bytes)
        ));
    }
    let t = &r.totals;
    out.push_str(&format!(
        "TOTAL {} devices in pool {}: exclusive {} + shared by several devices {} = pool data used {} ({} bytes)\n",
        t.devices,
        r.pool,
        human_size(t.exclusive_bytes),
        human_size(t.shared_bytes),
        human_size(t.pool_used_bytes),
        t.pool_used_bytes
    ));
    out
}

fn check(global: &GlobalArgs, args: &CheckArgs) -> CliResult {
    let t = thresholds(&args.thresholds)?;
    // Any failure to look is UNKNOWN (3), the plugin convention.
    let h = match health(global, t) {
        Ok((h, _)) => h,
        Err(e) => {
            let msg = e.to_string().replace('\n', " ");
            if args.prometheus {
                eprintln!("thinsnap: {msg}");
                println!(
                    "# HELP thinsnap_pool_up 1 when the pool could be read.\n# TYPE thinsnap_pool_up gauge\nthinsnap_pool_up 0"
                );
            } else {
                println!("THINPOOL UNKNOWN - {msg}");
            }
            return Ok(ExitCode::from(CheckState::Unknown.code()));
        }
    };
    let (state, line) = h.check_line(t);
    if args.prometheus {
        print!(
            "# HELP thinsnap_pool_up 1 when the pool could be read.\n# TYPE thinsnap_pool_up gauge\nthinsnap_pool_up 1\n{}",
            h.prometheus(t)
        );
    } else {
        println!("{line}");
    }
    Ok(ExitCode::from(state.code()))
}

fn extend(global: &GlobalArgs, args: &ExtendArgs) -> CliResult {
    let driver = open(global)?;
    let r = admin::extend::extend(driver.device_set(), args.data, args.metadata)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("extended {}", r.summary());
    }
    Ok(ExitCode::SUCCESS)
}

fn autoextend(global: &GlobalArgs, args: &AutoextendArgs) -> CliResult {
    let driver = open(global)?;
    let set = driver.device_set();
    let recorded = directlvm::load_config(set.home())?.map(|c| c.effective());
    let threshold = args
        .threshold
        .or(recorded.as_ref().map(|c| c.autoextend_threshold))
        .unwrap_or(directlvm::DEFAULT_AUTOEXTEND_THRESHOLD);
    if threshold == 0 || threshold > 100 {
        return Err(format!("--threshold {threshold}: use 1..=100 (100 disables)").into());
    }
    loop {
        let out = admin::extend::autoextend(set, threshold, args.percent)?;
        if args.json {
            println!("{}", serde_json::to_string(&out)?);
        } else {
            match &out.extended {
                Some(r) => println!("extended {}", r.summary()),
                None if args.watch.is_none() => println!(
                    "pool {}: data {:.1}% and metadata {:.1}% used, threshold {}%: nothing to do",
                    set.pool().name,
                    out.data_used_percent,
                    out.metadata_used_percent,
                    out.threshold
                ),
                None => {}
            }
        }
        let Some(secs) = args.watch else {
            return Ok(ExitCode::SUCCESS);
        };
        std::thread::sleep(Duration::from_secs(secs.max(1)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::devmapper::admin::usage::{DeviceKind, UsageRow, UsageTotals};

    #[test]
    fn usage_table_lists_rows_and_a_total_line() {
        let r = UsageReport {
            pool: "p".into(),
            block_size: 65536,
            rows: vec![UsageRow {
                device_id: 7,
                id: "c1".into(),
                kind: DeviceKind::Container,
                parent: Some("c1-init".into()),
                mapped_bytes: 70_000_000,
                exclusive_bytes: 67_108_864,
                shared_bytes: 2_891_136,
            }],
            totals: UsageTotals {
                devices: 1,
                mapped_bytes: 70_000_000,
                exclusive_bytes: 67_108_864,
                shared_bytes: 0,
                pool_used_bytes: 67_108_864,
            },
        };
        let text = render_usage(&r);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].trim_start().starts_with("THINID  ID"));
        assert!(lines[1].contains("c1  container"), "{}", lines[1]);
        assert!(lines[1].contains("67.11MB"), "{}", lines[1]);
        assert!(lines[2].starts_with("TOTAL 1 devices in pool p: exclusive 67.11MB + shared by several devices 0B = pool data used 67.11MB (67108864 bytes)"), "{}", lines[2]);
    }
}
