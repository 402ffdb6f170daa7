//! The floor: a thin pool driven by raw device-mapper ioctls through the
//! `devicemapper` crate, with none of thinsnap's code in between, and the
//! same pool driven by `dmsetup`. Also used to make the pool containerd's
//! devmapper snapshotter needs (it never creates one itself).

use std::path::{Path, PathBuf};
use std::process::Command;

use devicemapper::{DM, DevId, DmName, DmOptions};

pub type Res<T> = Result<T, String>;

pub fn run_tool(program: &str, args: &[&str]) -> Res<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("running {program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn name(n: &str) -> Res<&DmName> {
    DmName::new(n).map_err(|e| format!("dm name {n}: {e}"))
}

/// A dm-thin pool on two sparse loop-backed files.
pub struct RawPool {
    pub dm: DM,
    pub name: String,
    /// `major:minor` of the pool device, for thin tables.
    pub devno: String,
    loops: Vec<loopdev::LoopDevice>,
    _files: Vec<PathBuf>,
}

impl RawPool {
    /// `data_gib` of data, `meta_mib` of metadata, 64 KiB blocks, no zeroing
    /// (the table Docker and thinsnap use).
    pub fn create(dir: &Path, name: &str, data_gib: u64, meta_mib: u64) -> Res<RawPool> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let ctl = loopdev::LoopControl::open().map_err(|e| format!("loop-control: {e}"))?;
        let mut loops = Vec::new();
        let mut files = Vec::new();
        for (file, bytes) in [("data", data_gib << 30), ("metadata", meta_mib << 20)] {
            let path = dir.join(file);
            let f = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            f.set_len(bytes)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let lo = ctl
                .next_free()
                .map_err(|e| format!("next free loop: {e}"))?;
            lo.with()
                .autoclear(true)
                .attach(&path)
                .map_err(|e| format!("attach {}: {e}", path.display()))?;
            loops.push(lo);
            files.push(path);
        }
        let dev = |l: &loopdev::LoopDevice| -> Res<String> {
            l.path()
                .map(|p| p.display().to_string())
                .ok_or_else(|| "loop device without path".to_string())
        };
        let data_dev = dev(&loops[0])?;
        let meta_dev = dev(&loops[1])?;
        // A fresh metadata device must start zeroed (it is, being sparse).
        let data_sectors = (data_gib << 30) / 512;
        let dm = DM::new().map_err(|e| format!("opening /dev/mapper/control: {e}"))?;
        let n = name.to_string();
        let info = dm
            .device_create(self::name(&n)?, None, DmOptions::private())
            .map_err(|e| format!("create {n}: {e}"))?;
        let id = DevId::Name(self::name(&n)?);
        dm.table_load(
            &id,
            &[(
                0,
                data_sectors,
                "thin-pool".into(),
                format!("{meta_dev} {data_dev} 128 32768 1 skip_block_zeroing"),
            )],
            DmOptions::private(),
        )
        .map_err(|e| format!("load {n}: {e}"))?;
        dm.device_suspend(&id, DmOptions::private())
            .map_err(|e| format!("resume {n}: {e}"))?;
        let d = info.device();
        // No udev in the VM: containerd's snapshotter looks the pool up by
        // its /dev/mapper node.
        let node = PathBuf::from(format!("/dev/mapper/{n}"));
        let _ = std::fs::remove_file(&node);
        nix::sys::stat::mknod(
            &node,
            nix::sys::stat::SFlag::S_IFBLK,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            nix::sys::stat::makedev(d.major.into(), d.minor.into()),
        )
        .map_err(|e| format!("mknod {}: {e}", node.display()))?;
        Ok(RawPool {
            dm,
            name: n,
            devno: format!("{}:{}", d.major, d.minor),
            loops,
            _files: files,
        })
    }

    pub fn message(&self, msg: &str) -> Res<()> {
        self.dm
            .target_msg(&DevId::Name(name(&self.name)?), Some(0), msg)
            .map(|_| ())
            .map_err(|e| format!("message {msg:?} to {}: {e}", self.name))
    }

    /// The pool's status line (what a free-space check reads).
    pub fn status(&self) -> Res<()> {
        self.dm
            .table_status(&DevId::Name(name(&self.name)?), DmOptions::default())
            .map(|_| ())
            .map_err(|e| format!("status of {}: {e}", self.name))
    }

    /// Whether `dev_name` is active (DM_DEV_STATUS; absent is not an error).
    pub fn is_active(&self, dev_name: &str) -> Res<bool> {
        Ok(self.dm.device_info(&DevId::Name(name(dev_name)?)).is_ok())
    }

    /// Activates thin `id` as `dev_name`; returns its `/dev/dm-N` node.
    pub fn activate(&self, dev_name: &str, id: u32, sectors: u64) -> Res<PathBuf> {
        let info = self
            .dm
            .device_create(name(dev_name)?, None, DmOptions::private())
            .map_err(|e| format!("create {dev_name}: {e}"))?;
        let devid = DevId::Name(name(dev_name)?);
        self.dm
            .table_load(
                &devid,
                &[(0, sectors, "thin".into(), format!("{} {id}", self.devno))],
                DmOptions::private(),
            )
            .map_err(|e| format!("load {dev_name}: {e}"))?;
        self.dm
            .device_suspend(&devid, DmOptions::private())
            .map_err(|e| format!("resume {dev_name}: {e}"))?;
        Ok(PathBuf::from(format!("/dev/dm-{}", info.device().minor)))
    }

    pub fn deactivate(&self, dev_name: &str) -> Res<()> {
        self.dm
            .device_remove(&DevId::Name(name(dev_name)?), DmOptions::private())
            .map(|_| ())
            .map_err(|e| format!("remove {dev_name}: {e}"))
    }

    /// Thin `id` with an xfs filesystem of `sectors` (set-up, not timed).
    pub fn make_base(&self, id: u32, sectors: u64) -> Res<()> {
        self.message(&format!("create_thin {id}"))?;
        let dev_name = format!("{}-base", self.name);
        let node = self.activate(&dev_name, id, sectors)?;
        wait_for_node(&node)?;
        let made = run_tool("mkfs.xfs", &["-q", "-f", &node.display().to_string()]);
        self.deactivate(&dev_name)?;
        made.map(|_| ())
    }
}

impl Drop for RawPool {
    fn drop(&mut self) {
        if let Ok(n) = name(&self.name) {
            let _ = self.dm.device_remove(&DevId::Name(n), DmOptions::private());
        }
        let _ = std::fs::remove_file(format!("/dev/mapper/{}", self.name));
        for l in &self.loops {
            let _ = l.detach();
        }
    }
}

/// devtmpfs creates `/dev/dm-N` right after the ioctl; wait a moment anyway.
pub fn wait_for_node(node: &Path) -> Res<()> {
    for _ in 0..200 {
        if node.exists() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Err(format!("{} never appeared", node.display()))
}

pub fn mount_xfs(dev: &Path, target: &Path) -> Res<()> {
    nix::mount::mount(
        Some(dev),
        target,
        Some("xfs"),
        nix::mount::MsFlags::empty(),
        Some("nouuid"),
    )
    .map_err(|e| format!("mount {} on {}: {e}", dev.display(), target.display()))
}

pub fn umount(target: &Path) -> Res<()> {
    nix::mount::umount2(target, nix::mount::MntFlags::empty())
        .map_err(|e| format!("umount {}: {e}", target.display()))
}
