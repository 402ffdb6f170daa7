//! The measured scenarios (see the crate doc). Each subject gets a fresh
//! pool or root of the same size; every repetition is timed on its own.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use thinsnap::backend::{self, StoreConfig};
use thinsnap::service::client::BlockingClient;
use thinsnap::snapshot::container::{create_container, remove_container};
use thinsnap::snapshot::{CreateOpts, Driver, LayerId};

use crate::floor::{self, RawPool, Res, run_tool};
use crate::peers::{self, PeerSizes, Workload};
use crate::{BEGIN, END, Sample};

/// Pool sizes every devicemapper subject gets.
pub(crate) const DM_OPTS: &[&str] = &[
    "dm.loopdatasize=8G",
    "dm.loopmetadatasize=256M",
    "dm.basesize=1G",
    // The floor and containerd's snapshotter (discard_blocks=false) do not
    // discard on delete; neither does thinsnap here.
    "dm.blkdiscard=false",
    "dm.use_deferred_removal=false",
    "dm.use_deferred_deletion=false",
];
const BASE_SECTORS: u64 = (1 << 30) / 512;

struct Sizes {
    ops: usize,
    layers: usize,
    containers: usize,
}

pub(crate) struct Recorder {
    pub(crate) samples: Vec<Sample>,
}

impl Recorder {
    pub(crate) fn time<T>(
        &mut self,
        scenario: &str,
        subject: &str,
        op: &str,
        f: impl FnOnce() -> Res<T>,
    ) -> Res<T> {
        let start = Instant::now();
        let v = f().map_err(|e| format!("{scenario}/{subject}/{op}: {e}"))?;
        self.record(scenario, subject, op, start);
        Ok(v)
    }

    /// Adds one measured duration taken outside `time` (a span across
    /// several steps, e.g. a daemon start until it answers).
    pub(crate) fn record(&mut self, scenario: &str, subject: &str, op: &str, since: Instant) {
        self.push(
            scenario,
            subject,
            op,
            since.elapsed().as_secs_f64() * 1000.0,
        );
    }

    /// Appends `ms` to the (scenario, subject, op) sample.
    pub(crate) fn push(&mut self, scenario: &str, subject: &str, op: &str, ms: f64) {
        match self
            .samples
            .iter_mut()
            .find(|s| s.scenario == scenario && s.subject == subject && s.op == op)
        {
            Some(s) => s.ms.push(ms),
            None => self.samples.push(Sample {
                scenario: scenario.into(),
                subject: subject.into(),
                op: op.into(),
                ms: vec![ms],
            }),
        }
    }
}

/// The one setup operation every subject is timed on.
pub(crate) const OP_SETUP: &str = "pool + base device set-up";

pub(crate) fn id(s: &str) -> Res<LayerId> {
    LayerId::new(s).map_err(|e| e.to_string())
}

pub(crate) fn progress(msg: &str) {
    eprintln!("[bench] {msg}");
}

pub fn run(args: &[String]) -> Res<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let only: Vec<String> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').map(String::from).collect())
        .unwrap_or_else(|| {
            ["dm", "grpc", "workload", "backends", "scaling"]
                .map(String::from)
                .to_vec()
        });
    let peer_sizes = PeerSizes::new(quick);
    let workload = Workload::new(&peer_sizes);
    let sizes = if quick {
        Sizes {
            ops: 10,
            layers: 10,
            containers: 10,
        }
    } else {
        Sizes {
            ops: 100,
            layers: 50,
            containers: 50,
        }
    };
    if !Path::new("/dev/mapper/control").exists() {
        return Err(
            "device-mapper is not available here: run `make bench` (it runs this in the test VM)"
                .into(),
        );
    }
    let work = PathBuf::from("/tmp/thinsnap-bench");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let mut rec = Recorder {
        samples: Vec::new(),
    };
    let started = Instant::now();
    // The VM's /tmp is RAM: each scenario's pools and images are freed
    // before the next one starts.
    // THINSNAP_BENCH_KEEP=1 keeps them (daemon logs) for a look afterwards.
    let keep = std::env::var_os("THINSNAP_BENCH_KEEP").is_some();
    let free = |what: &str| {
        if !keep {
            let _ = fs::remove_dir_all(work.join(what));
        }
    };
    // One subject failing (a peer's pool going read-only, a daemon that
    // will not start) is recorded and the run goes on: the report shows it.
    let mut failures: Vec<String> = Vec::new();
    let mut attempt = |what: &str, r: Res<()>| {
        if let Err(e) = r {
            progress(&format!("FAILED {what}: {e}"));
            failures.push(format!("{what}: {e}"));
        }
    };
    if only.iter().any(|s| s == "dm") {
        attempt("dm: thinsnap library", dm_thinsnap(&work, &sizes, &mut rec));
        free("dm-thinsnap");
        attempt(
            "dm: floor and dmsetup",
            dm_floor_and_dmsetup(&work, &sizes, &mut rec),
        );
        free("dm-floor");
        attempt("dm: LVM", peers::lvm_dm(&work, &peer_sizes, &mut rec));
        free("dm-lvm");
    }
    let with_workload = only.iter().any(|s| s == "workload");
    if only.iter().any(|s| s == "grpc") || with_workload {
        let w = with_workload.then_some((&workload, &peer_sizes));
        attempt(
            "grpc: containerd",
            grpc_containerd(&work, &sizes, w, &mut rec),
        );
        free("grpc-containerd");
        // containerd leaves its devices behind when it fails half-way.
        let _ = run_tool("dmsetup", &["remove_all"]);
        attempt(
            "grpc: thinsnap serve",
            grpc_serve(&work, &sizes, w, &mut rec),
        );
        free("grpc-thinsnap");
    }
    if with_workload {
        attempt(
            "workload: Docker",
            peers::workload_docker(&work, &workload, &peer_sizes, &mut rec),
        );
        free("wl-docker");
        attempt(
            "workload: thinsnap library",
            peers::workload_library(&work, &workload, &peer_sizes, &mut rec),
        );
        free("wl-library");
    }
    if only.iter().any(|s| s == "backends") {
        attempt("backends", backends(&work, &sizes, &mut rec));
    }
    if only.iter().any(|s| s == "scaling") {
        attempt("scaling", peers::scaling(&work, &peer_sizes, &mut rec));
        free("scaling");
    }
    let meta = serde_json::json!({
        "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "accel": std::env::var("THINSNAP_VM_ACCEL").unwrap_or_else(|_| "tcg".into()),
        "ops": sizes.ops, "layers": sizes.layers, "containers": sizes.containers,
        "wall_s": started.elapsed().as_secs(),
        "containerd": run_tool("containerd", &["--version"]).unwrap_or_default().trim(),
        "docker": run_tool("dockerd", &["--version"]).unwrap_or_default().trim(),
        "lvm": run_tool("lvm", &["version"]).unwrap_or_default().lines().next().unwrap_or("").trim(),
        "image_layers": peer_sizes.image_layers, "workload_containers": peer_sizes.containers,
        "status_devices": peer_sizes.status_devices,
        "failures": failures,
        "only": only.join(","),
    });
    let out = serde_json::json!({"meta": meta, "samples": rec.samples});
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{BEGIN}").map_err(|e| e.to_string())?;
    writeln!(stdout, "{out}").map_err(|e| e.to_string())?;
    writeln!(stdout, "{END}").map_err(|e| e.to_string())?;
    Ok(())
}

pub(crate) fn opts(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// thinsnap's library on a loopback pool.
fn dm_thinsnap(work: &Path, sizes: &Sizes, rec: &mut Recorder) -> Res<()> {
    progress("dm: thinsnap library");
    let root = work.join("dm-thinsnap");
    let s = "thinsnap (library)";
    let d = rec.time("setup", s, OP_SETUP, || {
        backend::open_named(
            "devicemapper",
            &StoreConfig {
                root: root.clone(),
                driver: "devicemapper".into(),
                storage_opts: opts(DM_OPTS),
            },
        )
        .map_err(|e| e.to_string())
    })?;
    let img = id("image")?;
    d.create(&img, None, &CreateOpts::default())
        .map_err(|e| e.to_string())?;
    let ids: Vec<LayerId> = (0..sizes.ops)
        .map(|i| id(&format!("c{i}")))
        .collect::<Res<_>>()?;
    for c in &ids {
        rec.time("dm", s, "create snapshot", || {
            d.create(c, Some(&img), &CreateOpts::default())
                .map_err(|e| e.to_string())
        })?;
    }
    for c in &ids {
        rec.time("dm", s, "activate + mount", || {
            d.get(c, None).map_err(|e| e.to_string())
        })?;
        rec.time("dm", s, "umount + deactivate", || {
            d.put(c).map_err(|e| e.to_string())
        })?;
    }
    for c in &ids {
        rec.time("dm", s, "delete snapshot", || {
            d.remove(c).map_err(|e| e.to_string())
        })?;
    }
    d.remove(&img).map_err(|e| e.to_string())?;
    d.cleanup().map_err(|e| e.to_string())
}

/// The same operations as raw ioctls (the floor), then through dmsetup.
fn dm_floor_and_dmsetup(work: &Path, sizes: &Sizes, rec: &mut Recorder) -> Res<()> {
    progress("dm: floor (raw ioctls) and dmsetup");
    let pool = rec.time("setup", "floor (ioctls + mkfs.xfs)", OP_SETUP, || {
        let pool = RawPool::create(&work.join("dm-floor"), "bench-floor-pool", 8, 256)?;
        pool.make_base(1, BASE_SECTORS)?;
        Ok(pool)
    })?;
    let mnt = work.join("dm-floor-mnt");
    fs::create_dir_all(&mnt).map_err(|e| e.to_string())?;
    let s = "floor (ioctls)";
    let thin_ids: Vec<u32> = (0..sizes.ops as u32).map(|i| i + 2).collect();
    for t in &thin_ids {
        rec.time("dm", s, "create snapshot", || {
            pool.message(&format!("create_snap {t} 1"))
        })?;
    }
    for t in &thin_ids {
        let name = format!("bench-floor-{t}");
        rec.time("dm", s, "activate + mount", || {
            let node = pool.activate(&name, *t, BASE_SECTORS)?;
            floor::wait_for_node(&node)?;
            floor::mount_xfs(&node, &mnt)
        })?;
        rec.time("dm", s, "umount + deactivate", || {
            floor::umount(&mnt)?;
            pool.deactivate(&name)
        })?;
    }
    for t in &thin_ids {
        rec.time("dm", s, "delete snapshot", || {
            pool.message(&format!("delete {t}"))
        })?;
    }

    // The kernel operations of a Docker-compatible transaction, i.e. what
    // thinsnap (and Docker) issue per create/delete: the free-space check
    // (pool status) or the is-it-active check, the pool message, and
    // set_transaction_id (a second metadata commit).
    let s = "floor, Docker transaction (ioctls)";
    let mut tid = 0u64;
    for t in &thin_ids {
        rec.time("dm", s, "create snapshot", || {
            pool.status()?;
            pool.is_active(&format!("{}-base", pool.name))?;
            pool.message(&format!("create_snap {t} 1"))?;
            pool.message(&format!("set_transaction_id {tid} {}", tid + 1))?;
            tid += 1;
            Ok(())
        })?;
    }
    for t in &thin_ids {
        rec.time("dm", s, "delete snapshot", || {
            pool.is_active(&format!("bench-floor-{t}"))?;
            pool.message(&format!("delete {t}"))?;
            pool.message(&format!("set_transaction_id {tid} {}", tid + 1))?;
            tid += 1;
            Ok(())
        })?;
    }

    let s = "dmsetup (CLI)";
    let table_for = |t: u32| format!("0 {BASE_SECTORS} thin {} {t}", pool.devno);
    for t in &thin_ids {
        rec.time("dm", s, "create snapshot", || {
            run_tool(
                "dmsetup",
                &["message", &pool.name, "0", &format!("create_snap {t} 1")],
            )
        })?;
    }
    for t in &thin_ids {
        let name = format!("bench-dmsetup-{t}");
        let node = PathBuf::from(format!("/dev/mapper/{name}"));
        rec.time("dm", s, "activate + mount", || {
            run_tool("dmsetup", &["create", &name, "--table", &table_for(*t)])?;
            floor::wait_for_node(&node)?;
            floor::mount_xfs(&node, &mnt)
        })?;
        rec.time("dm", s, "umount + deactivate", || {
            floor::umount(&mnt)?;
            run_tool("dmsetup", &["remove", &name])
        })?;
    }
    for t in &thin_ids {
        rec.time("dm", s, "delete snapshot", || {
            run_tool(
                "dmsetup",
                &["message", &pool.name, "0", &format!("delete {t}")],
            )
        })?;
    }
    Ok(())
}

/// Active dm devices (any name).
fn dm_device_count() -> Res<usize> {
    let dm = devicemapper::DM::new().map_err(|e| e.to_string())?;
    dm.list_devices()
        .map(|v| v.len())
        .map_err(|e| format!("listing dm devices: {e}"))
}

/// Thin devices in the one active thin pool (from `thin_ls` on a metadata
/// snapshot): containerd deletes removed snapshots' devices in its
/// garbage collector, after the Remove RPC returned.
pub(crate) fn thin_device_count() -> Res<usize> {
    // Devices come and go while a garbage collector runs: one that vanishes
    // between the listing and its table is simply not a pool.
    let ctl = thinsnap::dm::DmControl::open().map_err(|e| e.to_string())?;
    let pools: Vec<thinsnap::dm::Pool> = ctl
        .list()
        .map_err(|e| e.to_string())?
        .iter()
        .filter_map(|n| thinsnap::dm::Pool::open(&ctl, n).ok().flatten())
        .map(|(p, _)| p)
        .collect();
    let [pool] = &pools[..] else {
        let names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
        return Err(format!("expected one active thin pool, found {names:?}"));
    };
    pool.thin_usage(&ctl)
        .map(|v| v.len())
        .map_err(|e| e.to_string())
}

/// A daemon child that gets SIGTERM (then SIGKILL) when dropped.
struct Daemon {
    child: Option<Child>,
    what: &'static str,
}

impl Daemon {
    fn spawn(what: &'static str, cmd: &mut Command, log: &Path) -> Res<Daemon> {
        let log = fs::File::create(log).map_err(|e| e.to_string())?;
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {what}: {e}"))?;
        Ok(Daemon {
            child: Some(child),
            what,
        })
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            progress(&format!("{} ignored SIGTERM; killing it", self.what));
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

fn connect(socket: &Path, log: &Path) -> Res<BlockingClient> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if socket.exists()
            && let Ok(c) = BlockingClient::connect(socket)
        {
            return Ok(c);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} never answered; log:\n{}",
                socket.display(),
                fs::read_to_string(log).unwrap_or_default()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// containerd's Snapshots API: a Prepare/Commit chain, read-write
/// Prepares + Mounts on its top, Removes.
fn snapshot_api(c: &mut BlockingClient, subject: &str, n: usize, rec: &mut Recorder) -> Res<()> {
    // containerd garbage-collects unreferenced snapshots after a Remove;
    // a gc root label keeps the chain (thinsnap stores it as any label).
    let labels: BTreeMap<String, String> =
        [("containerd.io/gc.root".to_string(), "bench".to_string())].into();
    let thin_before = thin_device_count()?;
    let mut parent = String::new();
    for i in 0..n {
        let (key, name) = (format!("chain-active-{i}"), format!("chain-{i}"));
        rec.time("grpc", subject, "Prepare (layer)", || {
            c.prepare(&key, &parent, &labels).map_err(|e| e.to_string())
        })?;
        rec.time("grpc", subject, "Commit", || {
            c.commit(&name, &key, &labels).map_err(|e| e.to_string())
        })?;
        parent = name;
    }
    let devices_before = dm_device_count()?;
    for i in 0..n {
        let key = format!("rw-{i}");
        rec.time("grpc", subject, "Prepare + Mounts (container)", || {
            c.prepare(&key, &parent, &labels)
                .map_err(|e| e.to_string())?;
            c.mounts(&key).map_err(|e| e.to_string())
        })?;
    }
    // containerd's Remove only drops its record; its garbage collector
    // deletes the device later. The batch op below waits until the active
    // devices are really gone, so both subjects pay for the same work.
    let batch = Instant::now();
    for i in 0..n {
        let key = format!("rw-{i}");
        rec.time("grpc", subject, "Remove (container)", || {
            c.remove(&key).map_err(|e| e.to_string())
        })?;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while dm_device_count()? > devices_before {
        if Instant::now() > deadline {
            return Err(format!(
                "{subject}: removed devices still active after 600 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let per_op = batch.elapsed().as_secs_f64() * 1000.0 / n as f64;
    rec.time(
        "grpc",
        subject,
        "Remove (container) until its device is gone, per op",
        || Ok(()),
    )?;
    if let Some(last) = rec.samples.last_mut() {
        last.ms = vec![per_op];
    }
    // Committed devices are inactive, so "gone" means deleted from the
    // pool: wait until the pool holds no more thin devices than before
    // the chain (and the containers) were made.
    let batch = Instant::now();
    for i in (0..n).rev() {
        let name = format!("chain-{i}");
        rec.time("grpc", subject, "Remove (layer)", || {
            c.remove(&name).map_err(|e| e.to_string())
        })?;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while thin_device_count()? > thin_before {
        if Instant::now() > deadline {
            return Err(format!(
                "{subject}: removed layers still in the pool after 600 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let per_op = batch.elapsed().as_secs_f64() * 1000.0 / n as f64;
    rec.time(
        "grpc",
        subject,
        "Remove (layer) until its device is deleted, per op",
        || Ok(()),
    )?;
    if let Some(last) = rec.samples.last_mut() {
        last.ms = vec![per_op];
    }
    Ok(())
}

/// The Snapshots API scenario, and (with `workload`) the peer workload
/// through the same daemons.
fn grpc_containerd(
    work: &Path,
    sizes: &Sizes,
    workload: Option<(&Workload, &PeerSizes)>,
    rec: &mut Recorder,
) -> Res<()> {
    progress("grpc: containerd devmapper snapshotter");
    let dir = work.join("grpc-containerd");
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    {
        let setup_started = Instant::now();
        let pool = RawPool::create(&dir.join("pool"), "bench-ctd-pool", 8, 256)?;
        let config = dir.join("config.toml");
        fs::write(
            &config,
            format!(
                r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{d}/containerd.sock"
[plugins."io.containerd.snapshotter.v1.devmapper"]
  root_path = "{d}/devmapper"
  pool_name = "{pool}"
  base_image_size = "1GB"
  discard_blocks = false
  async_remove = false
"#,
                d = dir.display(),
                pool = pool.name
            ),
        )
        .map_err(|e| e.to_string())?;
        let log = dir.join("containerd.log");
        let mut daemon = Daemon::spawn(
            "containerd",
            Command::new("containerd").arg("--config").arg(&config),
            &log,
        )?;
        let socket = dir.join("containerd.sock");
        let mut c = connect(&socket, &log)?.for_snapshotter("devmapper", "bench");
        // The devmapper plugin loads asynchronously: wait until it answers.
        let deadline = Instant::now() + Duration::from_secs(120);
        while let Err(e) = c.walk(&[]) {
            if Instant::now() > deadline {
                return Err(format!(
                    "containerd's devmapper snapshotter never answered: {e}; log:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        rec.record("setup", "containerd devmapper", OP_SETUP, setup_started);
        snapshot_api(&mut c, "containerd devmapper", sizes.ops, rec)?;
        if let Some((w, ps)) = workload {
            peers::workload_grpc(&mut c, "containerd devmapper", work, w, ps, rec)?;
        }
        drop(c);
        daemon.stop();
        // containerd leaves its base device active; the pool goes with it.
        let _ = run_tool("dmsetup", &["remove_all"]);
        drop(pool);
    }
    Ok(())
}

fn grpc_serve(
    work: &Path,
    sizes: &Sizes,
    workload: Option<(&Workload, &PeerSizes)>,
    rec: &mut Recorder,
) -> Res<()> {
    progress("grpc: thinsnap serve (devicemapper)");
    let dir = work.join("grpc-thinsnap");
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let thinsnap = exe.with_file_name("thinsnap");
    let config = dir.join("empty.toml");
    fs::write(&config, "").map_err(|e| e.to_string())?;
    let socket = dir.join("thinsnap.sock");
    let log = dir.join("thinsnap.log");
    let mut cmd = Command::new(&thinsnap);
    cmd.args(["serve", "--driver", "devicemapper", "--root"])
        .arg(dir.join("store"))
        .arg("--socket")
        .arg(&socket)
        .arg("--config")
        .arg(&config);
    for o in DM_OPTS {
        cmd.args(["--storage-opt", o]);
    }
    let setup_started = Instant::now();
    let mut daemon = Daemon::spawn("thinsnap serve", &mut cmd, &log)?;
    let mut c = connect(&socket, &log)?;
    rec.record("setup", "thinsnap serve", OP_SETUP, setup_started);
    snapshot_api(&mut c, "thinsnap serve", sizes.ops, rec)?;
    if let Some((w, ps)) = workload {
        peers::workload_grpc(&mut c, "thinsnap serve", work, w, ps, rec)?;
    }
    drop(c);
    daemon.stop();
    Ok(())
}

/// A filesystem on a sparse loop file, mounted at `at` (for union roots).
struct LoopFs {
    at: PathBuf,
}

impl LoopFs {
    fn new(image: &Path, at: &Path, mkfs: &[&str]) -> Res<LoopFs> {
        fs::File::create(image)
            .and_then(|f| f.set_len(6 << 30))
            .map_err(|e| e.to_string())?;
        let mut args: Vec<&str> = mkfs[1..].to_vec();
        let img = image.display().to_string();
        args.push(&img);
        run_tool(mkfs[0], &args)?;
        fs::create_dir_all(at).map_err(|e| e.to_string())?;
        run_tool("mount", &["-o", "loop", &img, &at.display().to_string()])?;
        Ok(LoopFs { at: at.into() })
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = run_tool("umount", &[&self.at.display().to_string()]);
    }
}

fn write_file(path: &Path, len: usize, byte: u8) -> Res<()> {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(&vec![byte; len])
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn backends(work: &Path, sizes: &Sizes, rec: &mut Recorder) -> Res<()> {
    let subjects: &[(&str, Option<&[&str]>)] = &[
        ("devicemapper", None),
        ("overlay2", Some(&["mkfs.xfs", "-q", "-f"])),
        ("overlay", Some(&["mkfs.xfs", "-q", "-f"])),
        ("btrfs", Some(&["mkfs.btrfs", "-q", "-f"])),
        ("vfs", Some(&["mkfs.xfs", "-q", "-f"])),
    ];
    for (name, mkfs) in subjects {
        progress(&format!("backends: {name}"));
        let dir = work.join(format!("backend-{name}"));
        fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let root = dir.join("root");
        let _fs = match mkfs {
            Some(m) => Some(LoopFs::new(&dir.join("fs.img"), &root, m)?),
            None => None,
        };
        let d = backend::open_named(
            name,
            &StoreConfig {
                root: root.clone(),
                driver: name.to_string(),
                storage_opts: if *name == "devicemapper" {
                    opts(DM_OPTS)
                } else {
                    Vec::new()
                },
            },
        )
        .map_err(|e| e.to_string())?;
        one_backend(d.as_ref(), name, sizes, rec)?;
        d.cleanup().map_err(|e| e.to_string())?;
        drop(d);
        drop(_fs);
        // The VM's /tmp is RAM: free each subject's images before the next.
        let _ = fs::remove_dir_all(&dir);
    }
    Ok(())
}

fn one_backend(d: &dyn Driver, name: &str, sizes: &Sizes, rec: &mut Recorder) -> Res<()> {
    let e = |e: thinsnap::snapshot::SnapshotError| e.to_string();
    let mut layers: Vec<LayerId> = Vec::new();
    for i in 0..sizes.layers {
        let l = id(&format!("layer{i}"))?;
        let parent = layers.last().cloned();
        rec.time(
            "backends",
            name,
            "image layer: create + mount + write 64 KiB + unmount",
            || {
                d.create(&l, parent.as_ref(), &CreateOpts::default())
                    .map_err(e)?;
                let p = d.get(&l, None).map_err(e)?;
                if i == 0 {
                    write_file(&p.join("big.bin"), 1 << 20, b'a')?;
                }
                write_file(&p.join(format!("f{i}")), 64 << 10, b'l')?;
                d.put(&l).map_err(e)
            },
        )?;
        layers.push(l);
    }
    let top = layers.last().cloned();
    for i in 0..sizes.containers {
        let c = id(&format!("ctr{i}"))?;
        rec.time("backends", name, "container create (-init + rw)", || {
            create_container(d, &c, top.as_ref(), &CreateOpts::default()).map_err(e)
        })?;
        let p = rec.time("backends", name, "mount", || d.get(&c, None).map_err(e))?;
        rec.time(
            "backends",
            name,
            "write 1 MiB over an image file (copy-up / CoW)",
            || write_file(&p.join("big.bin"), 1 << 20, b'c'),
        )?;
        rec.time("backends", name, "unmount", || d.put(&c).map_err(e))?;
        rec.time("backends", name, "container remove", || {
            remove_container(d, &c).map_err(e)
        })?;
    }
    for l in layers.iter().rev() {
        d.remove(l).map_err(e)?;
    }
    Ok(())
}
