//! The peers users would pick instead of thinsnap, on one workload, API to
//! API: Docker 20.10's devicemapper driver through its HTTP API, containerd's
//! devmapper snapshotter and `thinsnap serve` through the Snapshots gRPC
//! API, and thinsnap's library; LVM thin snapshots (`lvcreate -s`, a CLI by
//! nature) next to the floor; and how thinsnap scales with the pool's size.
//!
//! Workload (`workload` scenario): import an image of generated layer
//! tars; create containers (Docker and the library: `-init` + rw layers;
//! gRPC: a read-write Prepare with its Mounts), mount each, write 1 MiB,
//! unmount, remove; then grow the pool to the status size and time status
//! and usage queries.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thinsnap::backend::devmapper::DevmapperDriver;
use thinsnap::backend::devmapper::admin::{self, SortKey};
use thinsnap::layer::WhiteoutFormat;
use thinsnap::layer::apply::apply_tar;
use thinsnap::service::client::BlockingClient;
use thinsnap::snapshot::container::{create_container, remove_container};
use thinsnap::snapshot::mountspec;
use thinsnap::snapshot::{CreateOpts, Driver};

use crate::docker::{self, Dockerd};
use crate::floor::{self, Res, run_tool};
use crate::scenarios::{DM_OPTS, Recorder, id, opts, progress, thin_device_count};

/// How much of the workload to run.
pub struct PeerSizes {
    pub image_layers: usize,
    pub containers: usize,
    /// Thin devices in the pool for the status/usage queries.
    pub status_devices: usize,
    /// Pool sizes (devices) at which scaling is sampled.
    pub scaling: Vec<usize>,
    /// Snapshots per LVM operation (each is a CLI run).
    pub lvm_ops: usize,
}

impl PeerSizes {
    pub fn new(quick: bool) -> PeerSizes {
        if quick {
            PeerSizes {
                image_layers: 10,
                containers: 10,
                status_devices: 50,
                scaling: vec![10, 50],
                lvm_ops: 5,
            }
        } else {
            PeerSizes {
                image_layers: 100,
                containers: 100,
                status_devices: 500,
                scaling: vec![10, 100, 500, 1000],
                lvm_ops: 30,
            }
        }
    }
}

/// The generated image and what each container writes.
pub struct Workload {
    pub layers: Vec<Vec<u8>>,
    pub image_tarball: Vec<u8>,
    pub one_mib: Vec<u8>,
    /// A tar holding `one_mib` as `/written` (Docker's archive upload).
    pub one_mib_tar: Vec<u8>,
}

pub const IMAGE: &str = "thinsnap-bench:1";
const WRITTEN: &str = "written";

impl Workload {
    pub fn new(sizes: &PeerSizes) -> Workload {
        let layers: Vec<Vec<u8>> = (0..sizes.image_layers)
            .map(|i| {
                let body: Vec<u8> = (0..16 << 10).map(|b| (b * 31 + i * 7) as u8).collect();
                let name = format!("layer-{i:03}/data");
                let etc = format!("etc/layer-{i:03}");
                docker::files_tar(&[(&name, &body), (&etc, format!("{i}\n").as_bytes())])
            })
            .collect();
        let one_mib: Vec<u8> = (0..1 << 20).map(|b: u32| (b % 251) as u8).collect();
        Workload {
            image_tarball: docker::image_tarball(IMAGE, &layers),
            one_mib_tar: docker::files_tar(&[(WRITTEN, &one_mib)]),
            layers,
            one_mib,
        }
    }
}

const OP_IMPORT: &str = "image import (all layers, total)";
const OP_CREATE: &str = "container create";
const OP_WRITE: &str = "mount + write 1 MiB + unmount";
const OP_REMOVE: &str = "container remove (call returns)";
pub const OP_REMOVE_DONE: &str = "container remove until its devices are deleted, per op";
pub const OP_STATUS: &str = "status (pool summary)";
pub const OP_USAGE_ALL: &str = "usage of every layer";
pub const OP_USAGE_ONE: &str = "usage of one snapshot";

fn write_synced(path: &Path, data: &[u8]) -> Res<()> {
    let mut f = fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(data).map_err(|e| e.to_string())?;
    f.sync_all().map_err(|e| e.to_string())
}

/// Waits until the pool holds at most `baseline` thin devices; returns the
/// time from `since` (the batch's start), per `n` operations.
fn until_deleted(baseline: usize, since: Instant, n: usize, what: &str) -> Res<f64> {
    let deadline = Instant::now() + Duration::from_secs(900);
    while thin_device_count()? > baseline {
        if Instant::now() > deadline {
            return Err(format!(
                "{what}: removed devices still in the pool after 900 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(since.elapsed().as_secs_f64() * 1000.0 / n.max(1) as f64)
}

fn record_batch(
    rec: &mut Recorder,
    scenario: &str,
    subject: &str,
    op: &str,
    per_op: f64,
) -> Res<()> {
    rec.push(scenario, subject, op, per_op);
    Ok(())
}

// ---- thinsnap library --------------------------------------------------

pub fn workload_library(
    work: &Path,
    w: &Workload,
    sizes: &PeerSizes,
    rec: &mut Recorder,
) -> Res<()> {
    progress("workload: thinsnap library");
    let subject = "thinsnap (library)";
    let root = work.join("wl-library");
    let d = DevmapperDriver::open(&root, &opts(DM_OPTS)).map_err(|e| e.to_string())?;
    let layer_ids = (0..w.layers.len())
        .map(|i| id(&format!("layer-{i}")))
        .collect::<Res<Vec<_>>>()?;
    rec.time("workload", subject, OP_IMPORT, || {
        let mut parent = None;
        for (l, tar) in layer_ids.iter().zip(&w.layers) {
            d.create(l, parent, &CreateOpts::default())
                .map_err(|e| e.to_string())?;
            d.apply_diff(l, parent, &mut &tar[..])
                .map_err(|e| e.to_string())?;
            parent = Some(l);
        }
        Ok(())
    })?;
    let top = layer_ids.last().ok_or("no layers")?;
    let baseline = thin_device_count()?;
    let ctrs = (0..sizes.containers)
        .map(|i| id(&format!("ctr-{i}")))
        .collect::<Res<Vec<_>>>()?;
    for c in &ctrs {
        rec.time("workload", subject, OP_CREATE, || {
            create_container(&d, c, Some(top), &CreateOpts::default()).map_err(|e| e.to_string())
        })?;
    }
    for c in &ctrs {
        rec.time("workload", subject, OP_WRITE, || {
            let dir = d.get(c, None).map_err(|e| e.to_string())?;
            write_synced(&dir.join(WRITTEN), &w.one_mib)?;
            d.put(c).map_err(|e| e.to_string())
        })?;
    }
    let batch = Instant::now();
    for c in &ctrs {
        rec.time("workload", subject, OP_REMOVE, || {
            remove_container(&d, c).map_err(|e| e.to_string())
        })?;
    }
    let per_op = until_deleted(baseline, batch, ctrs.len(), subject)?;
    record_batch(rec, "workload", subject, OP_REMOVE_DONE, per_op)?;

    // Grow to the status size with containers (two devices each).
    let mut n = 0;
    while thin_device_count()? < sizes.status_devices {
        for _ in 0..10 {
            let c = id(&format!("fill-{n}"))?;
            create_container(&d, &c, Some(top), &CreateOpts::default())
                .map_err(|e| e.to_string())?;
            n += 1;
        }
    }
    let dm = &d;
    for _ in 0..20 {
        rec.time("workload", subject, OP_STATUS, || {
            d.status().map(|_| ()).map_err(|e| e.to_string())
        })?;
    }
    for _ in 0..5 {
        rec.time("workload", subject, OP_USAGE_ALL, || {
            admin::usage::read(dm.device_set(), SortKey::Exclusive)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })?;
    }
    d.cleanup().map_err(|e| e.to_string())
}

// ---- gRPC (containerd devmapper, thinsnap serve) ------------------------

/// The workload through the Snapshots API. The client unpacks layers into
/// the mounts itself, as containerd's diff service does.
pub fn workload_grpc(
    c: &mut BlockingClient,
    subject: &str,
    work: &Path,
    w: &Workload,
    sizes: &PeerSizes,
    rec: &mut Recorder,
) -> Res<()> {
    progress(&format!("workload: {subject}"));
    let labels: BTreeMap<String, String> =
        [("containerd.io/gc.root".to_string(), "bench".to_string())].into();
    let mnt = work.join("wl-grpc-mnt");
    fs::create_dir_all(&mnt).map_err(|e| e.to_string())?;
    let mount_all = |specs: &[thinsnap::snapshot::mountspec::MountSpec]| -> Res<()> {
        let [spec] = specs else {
            return Err(format!("expected one mount, got {specs:?}"));
        };
        mountspec::perform(spec, &mnt).map_err(|e| e.to_string())
    };
    let mut parent = String::new();
    rec.time("workload", subject, OP_IMPORT, || {
        for (i, tar) in w.layers.iter().enumerate() {
            let key = format!("import-active-{i}");
            let name = format!("import-{i}");
            let specs = c
                .prepare(&key, &parent, &labels)
                .map_err(|e| e.to_string())?;
            mount_all(&specs)?;
            let applied =
                apply_tar(&mnt, &mut &tar[..], WhiteoutFormat::Apply).map_err(|e| e.to_string());
            floor::umount(&mnt)?;
            applied?;
            c.commit(&name, &key, &labels).map_err(|e| e.to_string())?;
            parent = name;
        }
        Ok(())
    })?;
    let baseline = thin_device_count()?;
    let keys: Vec<String> = (0..sizes.containers).map(|i| format!("ctr-{i}")).collect();
    let mut mounts = Vec::new();
    for k in &keys {
        let specs = rec.time("workload", subject, OP_CREATE, || {
            c.prepare(k, &parent, &labels).map_err(|e| e.to_string())
        })?;
        mounts.push(specs);
    }
    for specs in &mounts {
        rec.time("workload", subject, OP_WRITE, || {
            mount_all(specs)?;
            let written = write_synced(&mnt.join(WRITTEN), &w.one_mib);
            floor::umount(&mnt)?;
            written
        })?;
    }
    let batch = Instant::now();
    for k in &keys {
        rec.time("workload", subject, OP_REMOVE, || {
            c.remove(k).map_err(|e| e.to_string())
        })?;
    }
    let per_op = until_deleted(baseline, batch, keys.len(), subject)?;
    record_batch(rec, "workload", subject, OP_REMOVE_DONE, per_op)?;

    let mut n = 0;
    let mut have = thin_device_count()?;
    while have < sizes.status_devices {
        c.prepare(&format!("fill-{n}"), &parent, &labels)
            .map_err(|e| e.to_string())?;
        n += 1;
        have += 1;
    }
    for _ in 0..20 {
        rec.time("workload", subject, OP_USAGE_ONE, || {
            c.usage("fill-0").map(|_| ()).map_err(|e| e.to_string())
        })?;
    }
    Ok(())
}

// ---- Docker 20.10 -------------------------------------------------------

pub fn workload_docker(
    work: &Path,
    w: &Workload,
    sizes: &PeerSizes,
    rec: &mut Recorder,
) -> Res<()> {
    progress("workload: Docker 20.10 devicemapper (HTTP API)");
    let subject = "Docker 20.10 (HTTP API)";
    let root = work.join("wl-docker");
    let mut dockerd = rec.time("setup", subject, crate::scenarios::OP_SETUP, || {
        Dockerd::start(&root, DM_OPTS)
    })?;
    let result = (|| -> Res<()> {
        rec.time("workload", subject, OP_IMPORT, || {
            dockerd.load(&w.image_tarball)
        })?;
        let baseline = thin_device_count()?;
        let mut ids = Vec::new();
        for _ in 0..sizes.containers {
            ids.push(rec.time("workload", subject, OP_CREATE, || {
                dockerd.create_container(IMAGE)
            })?);
        }
        for c in &ids {
            rec.time("workload", subject, OP_WRITE, || {
                dockerd.put_archive(c, &w.one_mib_tar)
            })?;
        }
        let batch = Instant::now();
        for c in &ids {
            rec.time("workload", subject, OP_REMOVE, || {
                dockerd.remove_container(c)
            })?;
        }
        let per_op = until_deleted(baseline, batch, ids.len(), subject)?;
        record_batch(rec, "workload", subject, OP_REMOVE_DONE, per_op)?;
        while thin_device_count()? < sizes.status_devices {
            for _ in 0..10 {
                dockerd.create_container(IMAGE)?;
            }
        }
        for _ in 0..20 {
            rec.time("workload", subject, OP_STATUS, || {
                dockerd.json("GET", "/info", None).map(|_| ())
            })?;
        }
        // Each call takes minutes at 500 devices (Docker mounts and walks
        // every layer): three give a median.
        for _ in 0..3 {
            rec.time("workload", subject, OP_USAGE_ALL, || {
                dockerd.json("GET", "/system/df", None).map(|_| ())
            })?;
        }
        Ok(())
    })();
    let stopped = dockerd.stop();
    let _ = run_tool("dmsetup", &["remove_all"]);
    result.map_err(|e| format!("{e}; dockerd log:\n{}", dockerd.log_tail()))?;
    stopped
}

// ---- LVM thin snapshots (CLI) -------------------------------------------

/// `lvcreate -s` / `lvchange` / `lvremove` on an LVM thin pool of the same
/// block size, on a loop device: the storage admin's tool, a CLI by nature.
pub fn lvm_dm(work: &Path, sizes: &PeerSizes, rec: &mut Recorder) -> Res<()> {
    progress("dm: LVM thin snapshots (CLI)");
    let subject = "LVM lvcreate -s (CLI)";
    let dir = work.join("dm-lvm");
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let file = dir.join("pv");
    fs::File::create(&file)
        .and_then(|f| f.set_len(9 << 30))
        .map_err(|e| e.to_string())?;
    let pv = run_tool("losetup", &["-f", "--show", &file.display().to_string()])?
        .trim()
        .to_string();
    let lvm = |args: &[&str]| -> Res<String> {
        let mut v = vec![
            args[0],
            "--config",
            thinsnap::backend::devmapper::lvm::NO_UDEV_CONFIG,
        ];
        v.extend_from_slice(&args[1..]);
        run_tool("lvm", &v)
    };
    let mnt = dir.join("mnt");
    fs::create_dir_all(&mnt).map_err(|e| e.to_string())?;
    let result = (|| -> Res<()> {
        lvm(&["pvcreate", "-ff", "-y", &pv])?;
        lvm(&["vgcreate", "benchvg", &pv])?;
        lvm(&[
            "lvcreate",
            "-y",
            "--type",
            "thin-pool",
            "-L",
            "8G",
            "--poolmetadatasize",
            "256M",
            "-c",
            "64K",
            "-Zn",
            "-n",
            "pool",
            "benchvg",
        ])?;
        lvm(&[
            "lvcreate",
            "-y",
            "-V",
            "1G",
            "-T",
            "benchvg/pool",
            "-n",
            "base",
        ])?;
        run_tool("mkfs.xfs", &["-q", "-f", "/dev/mapper/benchvg-base"])?;
        lvm(&["lvchange", "-an", "benchvg/base"])?;
        let names: Vec<String> = (0..sizes.lvm_ops).map(|i| format!("s{i}")).collect();
        for n in &names {
            rec.time("dm", subject, "create snapshot", || {
                lvm(&["lvcreate", "-s", "-n", n, "benchvg/base"]).map(|_| ())
            })?;
        }
        for n in &names {
            let node = PathBuf::from(format!("/dev/mapper/benchvg-{n}"));
            rec.time("dm", subject, "activate + mount", || {
                lvm(&["lvchange", "-ay", "-K", &format!("benchvg/{n}")])?;
                floor::wait_for_node(&node)?;
                floor::mount_xfs(&node, &mnt)
            })?;
            rec.time("dm", subject, "umount + deactivate", || {
                floor::umount(&mnt)?;
                lvm(&["lvchange", "-an", &format!("benchvg/{n}")]).map(|_| ())
            })?;
        }
        for n in &names {
            rec.time("dm", subject, "delete snapshot", || {
                lvm(&["lvremove", "-f", &format!("benchvg/{n}")]).map(|_| ())
            })?;
        }
        Ok(())
    })();
    let _ = lvm(&["vgchange", "-an", "benchvg"]);
    let _ = lvm(&["vgremove", "-ff", "-y", "benchvg"]);
    let _ = run_tool("losetup", &["-d", &pv]);
    result
}

// ---- scaling -------------------------------------------------------------

pub fn scaling_op(what: &str, devices: usize) -> String {
    format!("{what} at {devices:>4} devices")
}

/// thinsnap's create, status and per-layer usage as the pool grows.
pub fn scaling(work: &Path, sizes: &PeerSizes, rec: &mut Recorder) -> Res<()> {
    progress("scaling: thinsnap library, 10 → 1000 devices");
    let subject = "thinsnap (library)";
    let root = work.join("scaling");
    let d = DevmapperDriver::open(&root, &opts(DM_OPTS)).map_err(|e| e.to_string())?;
    let dm = &d;
    let img = id("image")?;
    d.create(&img, None, &CreateOpts::default())
        .map_err(|e| e.to_string())?;
    let mut n = 0usize;
    let mut devices = 2; // base + image
    for &target in &sizes.scaling {
        while devices + 10 < target {
            d.create(&id(&format!("l{n}"))?, Some(&img), &CreateOpts::default())
                .map_err(|e| e.to_string())?;
            n += 1;
            devices += 1;
        }
        let op = scaling_op("create", target);
        for _ in 0..10 {
            let l = id(&format!("l{n}"))?;
            rec.time("scaling", subject, &op, || {
                d.create(&l, Some(&img), &CreateOpts::default())
                    .map_err(|e| e.to_string())
            })?;
            n += 1;
            devices += 1;
        }
        let op = scaling_op("status", target);
        for _ in 0..10 {
            rec.time("scaling", subject, &op, || {
                d.status().map(|_| ()).map_err(|e| e.to_string())
            })?;
        }
        let op = scaling_op("usage of every layer", target);
        for _ in 0..3 {
            rec.time("scaling", subject, &op, || {
                admin::usage::read(dm.device_set(), SortKey::Exclusive)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })?;
        }
    }
    d.cleanup().map_err(|e| e.to_string())
}
