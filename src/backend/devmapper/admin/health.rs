//! How full and how healthy the pool is: `pool status` (every `docker info`
//! field plus percentages, mode, low-water mark, warnings), `pool check`
//! (one monitoring-plugin line, exit 0/1/2) and Prometheus text metrics.
//! Everything past `PoolHealth::read` is pure, so the rules are unit tested.

use serde::{Deserialize, Serialize};

use super::super::deviceset::{DeviceSet, PoolSource};
use super::super::error::DevmapperError;
use super::super::status::{self, StatusReport};
use super::lvm_volume;
use crate::units::human_size;

/// Percent thresholds for warnings and `check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub warn: u8,
    pub crit: u8,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { warn: 80, crit: 90 }
    }
}

impl Thresholds {
    /// Refuses thresholds outside 1..=100 or a warning above the critical level.
    pub fn new(warn: u8, crit: u8) -> Result<Thresholds, String> {
        if warn == 0 || crit == 0 || warn > 100 || crit > 100 {
            return Err(format!(
                "thresholds are percentages from 1 to 100 (got --warn {warn} --crit {crit})"
            ));
        }
        if warn > crit {
            return Err(format!(
                "--warn {warn} is above --crit {crit}: the warning level must not exceed the critical one"
            ));
        }
        Ok(Thresholds { warn, crit })
    }
}

/// Monitoring-plugin states; the discriminant is the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CheckState {
    Ok = 0,
    Warning = 1,
    Critical = 2,
    Unknown = 3,
}

impl CheckState {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckState::Ok => "OK",
            CheckState::Warning => "WARNING",
            CheckState::Critical => "CRITICAL",
            CheckState::Unknown => "UNKNOWN",
        }
    }

    pub fn code(self) -> u8 {
        self as u8
    }
}

/// The pool's figures: `docker info`'s and what an admin watches.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolHealth {
    #[serde(flatten)]
    pub status: StatusReport,
    /// Where the pool lives: `loopback`, `block devices`, `lvm`, `external`.
    pub backing: String,
    /// `vg/lv` when the pool is an LVM thin pool.
    pub lvm_volume: Option<String>,
    pub data_used_percent: f64,
    pub metadata_used_percent: f64,
    /// The pool table's low-water mark, in data blocks (the kernel raises
    /// an event when free blocks drop below it).
    pub low_water_mark_blocks: u64,
    pub data_free_blocks: u64,
    pub below_low_water_mark: bool,
    /// New layers are refused (dm.min_free_space) below this many free bytes.
    pub min_free_bytes: u64,
    pub new_layers_refused: bool,
    pub warnings: Vec<String>,
}

fn percent(used: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        used as f64 * 100.0 / total as f64
    }
}

impl PoolHealth {
    /// Reads the live pool.
    pub fn read(set: &DeviceSet, t: Thresholds) -> Result<PoolHealth, DevmapperError> {
        let report = status::report(set)?;
        let table = set.pool().table(set.control())?;
        let lvm = lvm_volume(set)?;
        let backing = match (set.source(), &lvm) {
            (_, Some(_)) => "lvm",
            (PoolSource::Loopback { .. }, None) => "loopback",
            (PoolSource::Devices { .. }, None) => "block devices",
            (PoolSource::External, None) => "external",
        };
        Ok(PoolHealth::from_report(
            report,
            backing,
            lvm.map(|(vg, lv)| format!("{vg}/{lv}")),
            table.low_water_mark,
            set.options().min_free_space_percent,
            t,
        ))
    }

    /// The derived figures and warnings from a status report.
    pub fn from_report(
        status: StatusReport,
        backing: &str,
        lvm_volume: Option<String>,
        low_water_mark_blocks: u64,
        min_free_space_percent: u32,
        t: Thresholds,
    ) -> PoolHealth {
        let bs = status.pool_blocksize.max(1);
        let total_blocks = status.data_space_total / bs;
        let used_blocks = status.data_space_used / bs;
        let free_blocks = total_blocks.saturating_sub(used_blocks);
        let min_free_blocks = if min_free_space_percent == 0 {
            0
        } else {
            (total_blocks * min_free_space_percent as u64 / 100).max(1)
        };
        let mut h = PoolHealth {
            data_used_percent: percent(status.data_space_used, status.data_space_total),
            metadata_used_percent: percent(status.metadata_space_used, status.metadata_space_total),
            backing: backing.to_string(),
            lvm_volume,
            low_water_mark_blocks,
            data_free_blocks: free_blocks,
            below_low_water_mark: free_blocks < low_water_mark_blocks,
            min_free_bytes: min_free_blocks * bs,
            new_layers_refused: free_blocks < min_free_blocks,
            warnings: Vec::new(),
            status,
        };
        h.rewarn(t);
        h
    }

    /// Recomputes the warnings for thresholds `t` (the figures stay): a
    /// status a service published with its defaults, read with the
    /// caller's thresholds.
    pub fn rewarn(&mut self, t: Thresholds) {
        let (_, mut reasons) = self.evaluate(t);
        if self.backing == "loopback" {
            reasons.push("devicemapper: usage of loopback devices is strongly discouraged for production use. Use `--storage-opt dm.directlvm_device` or `dm.thinpooldev` to specify a custom block storage device.".into());
        }
        self.warnings = reasons;
    }

    /// The state by the monitoring rules, with one reason per problem:
    /// critical for a pool not running read-write, needing a check, over
    /// `crit`, or refusing new layers; warning over `warn` or with
    /// unreadable metadata files.
    pub fn evaluate(&self, t: Thresholds) -> (CheckState, Vec<String>) {
        let s = &self.status;
        let mut state = CheckState::Ok;
        let mut reasons = Vec::new();
        let mut raise = |to: CheckState, why: String| {
            state = state.max(to);
            reasons.push(why);
        };
        if s.pool_mode != "rw" {
            raise(
                CheckState::Critical,
                format!(
                    "pool mode is {} (writes fail or hang: extend the pool, then thin_check)",
                    s.pool_mode
                ),
            );
        }
        if s.needs_check {
            raise(
                CheckState::Critical,
                "the pool's metadata is flagged needs_check: run thin_check/thin_repair with the pool deactivated".into(),
            );
        }
        for (what, pct, used, total) in [
            (
                "data",
                self.data_used_percent,
                s.data_space_used,
                s.data_space_total,
            ),
            (
                "metadata",
                self.metadata_used_percent,
                s.metadata_space_used,
                s.metadata_space_total,
            ),
        ] {
            let level = if pct >= t.crit as f64 {
                Some((CheckState::Critical, t.crit))
            } else if pct >= t.warn as f64 {
                Some((CheckState::Warning, t.warn))
            } else {
                None
            };
            if let Some((st, limit)) = level {
                raise(
                    st,
                    format!(
                        "{what} space {pct:.1}% used ({} of {}), at or above {limit}%",
                        human_size(used),
                        human_size(total)
                    ),
                );
            }
        }
        if self.new_layers_refused {
            raise(
                CheckState::Critical,
                format!(
                    "new layers are refused: {} free data is below the minimum of {} (dm.min_free_space)",
                    human_size(s.data_space_total.saturating_sub(s.data_space_used)),
                    human_size(self.min_free_bytes)
                ),
            );
        }
        if !s.broken_metadata_files.is_empty() {
            raise(
                CheckState::Warning,
                format!(
                    "unreadable metadata files: {}",
                    s.broken_metadata_files.join(", ")
                ),
            );
        }
        (state, reasons)
    }

    /// One monitoring-plugin line: `THINPOOL <STATE> - <summary> | <perfdata>`.
    pub fn check_line(&self, t: Thresholds) -> (CheckState, String) {
        let (state, reasons) = self.evaluate(t);
        let s = &self.status;
        let summary = if reasons.is_empty() {
            format!(
                "{} data {:.1}% used ({} of {}), metadata {:.1}% used ({} of {}), mode {}",
                s.pool_name,
                self.data_used_percent,
                human_size(s.data_space_used),
                human_size(s.data_space_total),
                self.metadata_used_percent,
                human_size(s.metadata_space_used),
                human_size(s.metadata_space_total),
                s.pool_mode
            )
        } else {
            format!("{}: {}", s.pool_name, reasons.join("; "))
        };
        let perf = format!(
            "data={:.2}%;{};{};0;100 metadata={:.2}%;{};{};0;100 data_used={}B;;;0;{} metadata_used={}B;;;0;{} devices={}",
            self.data_used_percent,
            t.warn,
            t.crit,
            self.metadata_used_percent,
            t.warn,
            t.crit,
            s.data_space_used,
            s.data_space_total,
            s.metadata_space_used,
            s.metadata_space_total,
            s.devices
        );
        (
            state,
            format!("THINPOOL {} - {summary} | {perf}", state.as_str()),
        )
    }

    /// Prometheus text exposition (version 0.0.4).
    pub fn prometheus(&self, t: Thresholds) -> String {
        let s = &self.status;
        let pool = escape_label(&s.pool_name);
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, value: String| {
            out.push_str(&format!(
                "# HELP thinsnap_pool_{name} {help}\n# TYPE thinsnap_pool_{name} gauge\nthinsnap_pool_{name}{{pool=\"{pool}\"}} {value}\n"
            ));
        };
        gauge(
            "data_used_bytes",
            "Data space used in the thin pool.",
            s.data_space_used.to_string(),
        );
        gauge(
            "data_total_bytes",
            "Data space of the thin pool.",
            s.data_space_total.to_string(),
        );
        gauge(
            "metadata_used_bytes",
            "Metadata space used in the thin pool.",
            s.metadata_space_used.to_string(),
        );
        gauge(
            "metadata_total_bytes",
            "Metadata space of the thin pool.",
            s.metadata_space_total.to_string(),
        );
        gauge(
            "min_free_bytes",
            "Free data space below which new layers are refused (dm.min_free_space).",
            self.min_free_bytes.to_string(),
        );
        gauge(
            "devices",
            "Layers and containers (thin devices) in the store.",
            s.devices.to_string(),
        );
        gauge(
            "deferred_deleted_devices",
            "Devices marked for deferred deletion.",
            s.deferred_deleted_device_count.to_string(),
        );
        gauge(
            "transaction_id",
            "The pool's transaction id.",
            s.pool_transaction_id.to_string(),
        );
        gauge(
            "read_write",
            "1 when the pool runs read-write (not read_only, out_of_data_space or failed).",
            u8::from(s.pool_mode == "rw").to_string(),
        );
        gauge(
            "needs_check",
            "1 when the pool's metadata is flagged needs_check.",
            u8::from(s.needs_check).to_string(),
        );
        gauge(
            "check_state",
            &format!(
                "0 ok, 1 warning, 2 critical, by the `pool check` rules at {}%/{}%.",
                t.warn, t.crit
            ),
            self.evaluate(t).0.code().to_string(),
        );
        out
    }
}

/// Escapes a Prometheus label value (backslash, quote, newline).
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(used: u64, total: u64) -> StatusReport {
        StatusReport {
            pool_name: "docker-8:1-42-pool".into(),
            pool_blocksize: 65536,
            base_device_size: 10 << 30,
            backing_filesystem: "xfs".into(),
            udev_sync_supported: false,
            data_file: None,
            metadata_file: None,
            data_loop_file: None,
            metadata_loop_file: None,
            data_space_used: used,
            data_space_total: total,
            data_space_available: total - used,
            metadata_space_used: 1 << 20,
            metadata_space_total: 100 << 20,
            metadata_space_available: 99 << 20,
            thin_pool_minimum_free_space: 0,
            deferred_removal_enabled: true,
            deferred_deletion_enabled: true,
            deferred_deleted_device_count: 2,
            library_version: "x".into(),
            layout: "docker".into(),
            pool_mode: "rw".into(),
            needs_check: false,
            pool_transaction_id: 7,
            devices: 5,
            broken_metadata_files: vec![],
        }
    }

    /// A pool of 100 GiB (in 64 KiB blocks) with `pct` percent used.
    fn health(pct: u64, min_free: u32) -> PoolHealth {
        let total = 1_638_400 * 65536;
        let used = total / 100 * pct;
        PoolHealth::from_report(
            report(used, total),
            "lvm",
            Some("docker/thinpool".into()),
            32768,
            min_free,
            Thresholds::default(),
        )
    }

    #[test]
    fn thresholds_move_the_state_from_ok_to_warning_to_critical() {
        let t = Thresholds::new(80, 90).unwrap();
        assert_eq!(health(10, 0).evaluate(t).0, CheckState::Ok);
        assert_eq!(health(79, 0).evaluate(t).0, CheckState::Ok);
        let (st, why) = health(80, 0).evaluate(t);
        assert_eq!(st, CheckState::Warning);
        assert!(why[0].starts_with("data space 80.0% used"), "{why:?}");
        assert_eq!(health(89, 0).evaluate(t).0, CheckState::Warning);
        assert_eq!(health(90, 0).evaluate(t).0, CheckState::Critical);
        // The free-space guard refusing new layers is critical on its own.
        let (st, why) = health(50, 60).evaluate(t);
        assert_eq!(st, CheckState::Critical);
        assert!(why[0].starts_with("new layers are refused"), "{why:?}");
        assert!(Thresholds::new(95, 90).is_err());
        assert!(Thresholds::new(0, 90).is_err());
        assert!(Thresholds::new(80, 101).is_err());
    }

    #[test]
    fn mode_needs_check_and_metadata_are_judged_too() {
        let t = Thresholds::default();
        let mut h = health(10, 0);
        h.status.pool_mode = "out_of_data_space".into();
        assert_eq!(h.evaluate(t).0, CheckState::Critical);
        let mut h = health(10, 0);
        h.status.needs_check = true;
        assert_eq!(h.evaluate(t).0, CheckState::Critical);
        let mut h = health(10, 0);
        h.metadata_used_percent = 85.0;
        let (st, why) = h.evaluate(t);
        assert_eq!(st, CheckState::Warning);
        assert!(why[0].starts_with("metadata space 85.0%"), "{why:?}");
        let mut h = health(10, 0);
        h.status.broken_metadata_files = vec!["/x/metadata/a".into()];
        assert_eq!(h.evaluate(t).0, CheckState::Warning);
    }

    #[test]
    fn check_line_is_one_plugin_line_with_perfdata() {
        let t = Thresholds::new(80, 90).unwrap();
        let (st, line) = health(25, 10).check_line(t);
        assert_eq!(st, CheckState::Ok);
        assert!(!line.contains('\n'));
        assert!(
            line.starts_with("THINPOOL OK - docker-8:1-42-pool data 25.0% used (26.84GB of 107.4GB), metadata 1.0% used"),
            "{line}"
        );
        assert!(
            line.contains("| data=25.00%;80;90;0;100 metadata=1.00%;80;90;0;100"),
            "{line}"
        );
        let (st, line) = health(95, 10).check_line(t);
        assert_eq!(st.code(), 2);
        assert!(
            line.starts_with("THINPOOL CRITICAL - docker-8:1-42-pool: data space 95.0% used"),
            "{line}"
        );
    }

    #[test]
    fn low_water_mark_and_guard_figures() {
        let h = health(99, 10);
        assert!(h.below_low_water_mark, "1% of 1638400 blocks < 32768");
        assert!(h.new_layers_refused);
        assert_eq!(h.min_free_bytes, 163840 * 65536);
        assert!(!health(50, 10).below_low_water_mark);
        assert_eq!(health(50, 0).min_free_bytes, 0);
    }

    #[test]
    fn prometheus_text_has_help_type_and_values() {
        let mut h = health(50, 10);
        h.status.pool_name = "we\"ird\\pool".into();
        let text = h.prometheus(Thresholds::default());
        let total = 1_638_400u64 * 65536;
        assert!(text.contains("# TYPE thinsnap_pool_data_used_bytes gauge\n"));
        assert!(text.contains(&format!(
            "thinsnap_pool_data_used_bytes{{pool=\"we\\\"ird\\\\pool\"}} {}\n",
            total / 100 * 50
        )));
        assert!(text.contains(&format!(
            "thinsnap_pool_data_total_bytes{{pool=\"we\\\"ird\\\\pool\"}} {total}\n"
        )));
        assert!(
            text.contains("thinsnap_pool_deferred_deleted_devices{pool=\"we\\\"ird\\\\pool\"} 2\n")
        );
        assert!(text.contains("thinsnap_pool_devices{pool=\"we\\\"ird\\\\pool\"} 5\n"));
        assert!(text.contains("thinsnap_pool_check_state{pool=\"we\\\"ird\\\\pool\"} 0\n"));
        // Every sample line is preceded by its HELP and TYPE lines.
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len() % 3, 0);
        for chunk in lines.chunks(3) {
            assert!(chunk[0].starts_with("# HELP thinsnap_pool_"));
            assert!(chunk[1].starts_with("# TYPE thinsnap_pool_") && chunk[1].ends_with(" gauge"));
            let value = chunk[2].rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{}", chunk[2]);
        }
    }
}
