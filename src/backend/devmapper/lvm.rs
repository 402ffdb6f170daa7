//! Running the lvm2 tools (pvcreate, vgcreate, lvcreate, lvconvert,
//! lvchange, lvextend, lvs, pvs) through argument vectors.
//!
//! lvm normally waits for udev to create `/dev/<vg>/<lv>` links and
//! finish its rules. Where no udev runs (no `/run/udev/control`:
//! containers, rescue shells, the test VM) lvm is told not to synchronise
//! with udev, not to expect udev's rules, and to scan `/dev` itself; libdm
//! is told the same through `DM_DISABLE_UDEV=1`. With udev running lvm is
//! left as the host configured it.

use std::path::Path;
use std::process::Command;

use super::error::DevmapperError;

type Res<T> = Result<T, DevmapperError>;

/// The `--config` given to every lvm tool when udev is not running.
pub const NO_UDEV_CONFIG: &str =
    "activation { udev_sync = 0 udev_rules = 0 } devices { obtain_device_list_from_udev = 0 }";

/// How to run lvm on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lvm {
    udev: bool,
}

/// Is a udev daemon running (its control socket exists)?
pub fn udev_running() -> bool {
    Path::new("/run/udev/control").exists()
}

/// True when `program` is an executable file on `PATH`.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

impl Lvm {
    pub fn detect() -> Lvm {
        Lvm {
            udev: udev_running(),
        }
    }

    /// The argument vector for `tool args…` (the config goes first).
    pub fn argv(&self, args: &[&str]) -> Vec<String> {
        let mut v = Vec::new();
        if !self.udev {
            v.push("--config".to_string());
            v.push(NO_UDEV_CONFIG.to_string());
        }
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }

    /// Runs `tool` and returns its stdout; a failure carries the tool's
    /// whole output (lvm writes its reasons to both streams).
    pub fn run(&self, tool: &str, args: &[&str]) -> Res<String> {
        let argv = self.argv(args);
        let mut cmd = Command::new(tool);
        cmd.args(&argv)
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .stdin(std::process::Stdio::null());
        if !self.udev {
            cmd.env("DM_DISABLE_UDEV", "1");
        }
        tracing::debug!(tool, args = ?args, "running lvm");
        let out = cmd.output().map_err(|e| DevmapperError::Tool {
            tool: tool.to_string(),
            target: args.join(" "),
            status: "not started".into(),
            stderr: format!(
                "{e} (is lvm2 installed? Debian/Ubuntu: apt-get install lvm2 thin-provisioning-tools; RHEL/CentOS: yum install lvm2 device-mapper-persistent-data)"
            ),
        })?;
        if !out.status.success() {
            let mut text = String::from_utf8_lossy(&out.stderr).trim().to_string();
            let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !stdout.is_empty() {
                if !text.is_empty() {
                    text.push_str(" / ");
                }
                text.push_str(&stdout);
            }
            return Err(DevmapperError::Tool {
                tool: tool.to_string(),
                target: args.join(" "),
                status: out.status.to_string(),
                stderr: text,
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The VG a physical volume belongs to: `None` when `dev` is not a PV,
    /// `Some("")` for a PV in no VG.
    pub fn pv_vg(&self, dev: &str) -> Res<Option<String>> {
        match self.run("pvs", &["--noheadings", "-o", "vg_name", dev]) {
            Ok(out) => Ok(Some(out.trim().to_string())),
            Err(DevmapperError::Tool { stderr, .. })
                if stderr.contains("Failed to find physical volume")
                    || stderr.contains("No physical volume") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// True when `vg` exists.
    pub fn vg_exists(&self, vg: &str) -> Res<bool> {
        let out = self.run("vgs", &["--noheadings", "-o", "vg_name"])?;
        Ok(out.lines().any(|l| l.trim() == vg))
    }

    /// Size in bytes and attributes of `vg/lv`, or `None` if it does not exist.
    pub fn lv(&self, vg: &str, lv: &str) -> Res<Option<LvInfo>> {
        let out = self.run(
            "lvs",
            &[
                "--noheadings",
                "--nosuffix",
                "--units",
                "b",
                "--separator",
                "|",
                "-o",
                "lv_name,lv_attr,lv_size,lv_metadata_size,lv_profile",
                vg,
            ],
        )?;
        Ok(parse_lvs(&out).into_iter().find(|l| l.name == lv))
    }
}

/// One row of `lvs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LvInfo {
    pub name: String,
    pub attr: String,
    pub size: u64,
    /// Metadata LV size of a thin pool.
    pub metadata_size: Option<u64>,
    pub profile: Option<String>,
}

impl LvInfo {
    /// A thin pool (`t` as the first attribute character).
    pub fn is_thin_pool(&self) -> bool {
        self.attr.starts_with('t')
    }
}

/// Parses `lvs --noheadings --nosuffix --units b --separator '|' -o
/// lv_name,lv_attr,lv_size,lv_metadata_size,lv_profile` (empty fields stay
/// in their column).
pub fn parse_lvs(text: &str) -> Vec<LvInfo> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('|').map(str::trim).collect();
            if f.len() < 3 {
                return None;
            }
            let nonempty = |s: Option<&&str>| s.filter(|s| !s.is_empty()).map(|s| s.to_string());
            Some(LvInfo {
                name: f[0].to_string(),
                attr: f[1].to_string(),
                size: f[2].parse().ok()?,
                metadata_size: f.get(3).and_then(|s| s.parse().ok()),
                profile: nonempty(f.get(4)),
            })
        })
        .collect()
}

/// The VG and LV behind a device-mapper name LVM made (`vg-lv`, with `-`
/// inside either name doubled), e.g. `docker-thinpool` → (`docker`, `thinpool`).
pub fn split_dm_name(name: &str) -> Option<(String, String)> {
    let b = name.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'-' {
            if b.get(i + 1) == Some(&b'-') {
                i += 2;
                continue;
            }
            let (vg, lv) = (&name[..i], &name[i + 1..]);
            if vg.is_empty() || lv.is_empty() {
                return None;
            }
            return Some((vg.replace("--", "-"), lv.replace("--", "-")));
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lvm_dm_names() {
        assert_eq!(
            split_dm_name("docker-thinpool"),
            Some(("docker".into(), "thinpool".into()))
        );
        assert_eq!(
            split_dm_name("my--vg-thin--pool"),
            Some(("my-vg".into(), "thin-pool".into()))
        );
        assert_eq!(split_dm_name("nodash"), None);
        assert_eq!(split_dm_name("-x"), None);
    }

    #[test]
    fn parses_lvs_rows() {
        let rows = parse_lvs(
            "  thinpool|twi-a-t---|2034237440|20971520|docker-thinpool\n  other|-wi-a-----|4194304||prof\n  garbage\n",
        );
        assert_eq!(rows.len(), 2);
        assert!(rows[0].is_thin_pool());
        assert_eq!(rows[0].size, 2034237440);
        assert_eq!(rows[0].metadata_size, Some(20971520));
        assert_eq!(rows[0].profile.as_deref(), Some("docker-thinpool"));
        assert!(!rows[1].is_thin_pool());
        assert_eq!(rows[1].metadata_size, None);
        assert_eq!(rows[1].profile.as_deref(), Some("prof"));
    }

    #[test]
    fn config_only_without_udev() {
        let without = Lvm { udev: false }.argv(&["lvs"]);
        assert_eq!(without, ["--config", NO_UDEV_CONFIG, "lvs"]);
        assert_eq!(Lvm { udev: true }.argv(&["lvs"]), ["lvs"]);
    }
}
