//! Storage admin on a real loopback pool (inside the test VM): where the
//! blocks went (`pool usage`), the health check moving 0 → 1 → 2 as the
//! pool fills, the free-space guard, online extend (also while a
//! container is mounted and written to), shrink refusal.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::DmStore;
use sha2::{Digest, Sha256};
use thinsnap::backend::devmapper::admin::{self, SortKey};
use thinsnap::snapshot::container::create_container;
use thinsnap::snapshot::{CreateOpts, Driver, ErrorKind, LayerId};

const MIB: u64 = 1 << 20;

fn id(s: &str) -> LayerId {
    LayerId::new(s).unwrap()
}

/// Deterministic bytes, different per `seed` and per 64 KiB chunk (so a
/// misplaced or lost block changes the checksum): one xorshift chunk,
/// repeated with (seed, chunk index) stamped at the start of each copy.
/// Cheap enough for a debug build under TCG.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    const CHUNK: usize = 64 << 10;
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut chunk = Vec::with_capacity(CHUNK);
    while chunk.len() < CHUNK {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.extend_from_slice(&x.to_le_bytes());
    }
    let mut v = Vec::with_capacity(len + CHUNK);
    for i in 0..len.div_ceil(CHUNK) {
        let start = v.len();
        v.extend_from_slice(&chunk);
        v[start..start + 8].copy_from_slice(&seed.to_le_bytes());
        v[start + 8..start + 16].copy_from_slice(&(i as u64).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Writes `len` bytes to `path` and syncs the file.
fn write_file(path: &Path, len: usize, seed: u64) -> String {
    let data = pseudo_random(len, seed);
    let mut f = fs::File::create(path).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    hex(&Sha256::digest(&data))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sha_of(path: &Path) -> String {
    hex(&Sha256::digest(fs::read(path).unwrap()))
}

fn syncfs(path: &Path) {
    nix::unistd::syncfs(fs::File::open(path).unwrap()).unwrap();
}

use common::cli;

fn usage_row<'a>(r: &'a admin::UsageReport, layer: &str) -> &'a admin::usage::UsageRow {
    r.rows
        .iter()
        .find(|x| x.id == layer)
        .unwrap_or_else(|| panic!("no usage row for {layer}: {r:#?}"))
}

#[test]
fn exclusive_accounting_and_sibling_sharing() {
    common::require_vm();
    let store = DmStore::new(&[]);
    let d = store.driver();
    let set = d.device_set();
    let bs = set.block_size().0;

    // An image layer holding 16 MiB, and two containers on it.
    d.create(&id("img"), None, &CreateOpts::default()).unwrap();
    let root = d.get(&id("img"), None).unwrap();
    let img_sum = write_file(&root.join("image-data"), 16 * MIB as usize, 1);
    syncfs(&root);
    d.put(&id("img")).unwrap();
    let before = admin::usage::read(set, SortKey::Exclusive).unwrap();
    let img_alone = usage_row(&before, "img").exclusive_bytes;
    assert!(
        img_alone >= 16 * MIB,
        "the image's 16 MiB are its own before anything shares them: {img_alone}"
    );
    for c in ["c1", "c2"] {
        create_container(d, &id(c), Some(&id("img")), &CreateOpts::default()).unwrap();
    }

    // Write 64 MiB into c1; measure its exclusive blocks around the write,
    // with the filesystem mounted and synced on both sides.
    let c1 = d.get(&id("c1"), None).unwrap();
    // A first small write copies the filesystem's shared metadata blocks
    // (xfs log, AG headers and free-space btrees, all mapped by the
    // image) into c1; afterwards only the new data adds blocks.
    write_file(&c1.join("warm-up"), 4096, 3);
    syncfs(&c1);
    let r0 = admin::usage::read(set, SortKey::Exclusive).unwrap();
    let c1_before = usage_row(&r0, "c1").exclusive_bytes;
    let c1_sum = write_file(&c1.join("sixty-four"), 64 * MIB as usize, 2);
    syncfs(&c1);
    let r1 = admin::usage::read(set, SortKey::Exclusive).unwrap();
    let c1_row = usage_row(&r1, "c1").clone();
    let grew = c1_row.exclusive_bytes as i64 - c1_before as i64;
    eprintln!(
        "c1 exclusive {} -> {} (grew {grew}, 64 MiB = {}); block {bs}",
        c1_before,
        c1_row.exclusive_bytes,
        64 * MIB
    );
    assert!(
        (grew - (64 * MIB) as i64).unsigned_abs() <= bs,
        "64 MiB written into c1 must add 64 MiB of exclusive blocks, within one pool block ({bs}): grew {grew}"
    );
    assert_eq!(c1_row.kind, admin::usage::DeviceKind::Container);
    assert_eq!(c1_row.parent.as_deref(), Some("c1-init"));
    assert!(
        c1_row.shared_bytes >= 16 * MIB,
        "c1 still shares the image's blocks: {c1_row:?}"
    );

    // The sibling shares the image and wrote nothing of its own.
    let c2 = usage_row(&r1, "c2");
    assert!(
        c2.shared_bytes >= 16 * MIB,
        "the sibling shows the image's 16 MiB as shared: {c2:?}"
    );
    assert!(
        c2.exclusive_bytes < 16 * MIB,
        "the image's blocks are not the sibling's own: {c2:?}"
    );
    let img = usage_row(&r1, "img");
    assert!(
        img.exclusive_bytes + 16 * MIB <= img_alone,
        "once shared, the image's 16 MiB are no longer exclusive to it: {img:?} (alone: {img_alone})"
    );
    assert_eq!(
        usage_row(&r1, "c2-init").kind,
        admin::usage::DeviceKind::ContainerInit
    );
    assert_eq!(
        r1.totals.exclusive_bytes + r1.totals.shared_bytes,
        r1.totals.pool_used_bytes
    );
    assert_eq!(
        r1.totals.pool_used_bytes,
        set.pool_status().unwrap().used_data_blocks * bs,
        "the totals are the pool's used data"
    );
    d.put(&id("c1")).unwrap();

    // The CLI shows the same table as the library (read again: unmounting
    // wrote the log); --sort mapped puts c1 first.
    let unmounted = admin::usage::read(set, SortKey::Mapped).unwrap();
    let (code, out, err) = cli(&store, &["pool", "usage", "--json", "--sort", "mapped"]);
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["rows"][0]["id"], "c1", "{out}");
    assert_eq!(
        j["rows"][0]["exclusive_bytes"],
        usage_row(&unmounted, "c1").exclusive_bytes
    );
    assert_eq!(
        j["totals"]["pool_used_bytes"],
        unmounted.totals.pool_used_bytes
    );
    let (code, out, err) = cli(&store, &["pool", "usage"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("THINID"), "{out}");
    assert!(out.contains(" c2-init "), "{out}");
    assert!(
        out.lines().last().unwrap().starts_with("TOTAL 6 devices"),
        "{out}"
    );

    // Exclusive means "freed by removing it": removing c1's writable layer
    // gives back exactly its exclusive blocks (blocks it shared only with
    // c1-init become c1-init's own and go with it).
    let used_before = set.pool_status().unwrap().used_data_blocks * bs;
    d.remove(&id("c1")).unwrap();
    let used_after = set.pool_status().unwrap().used_data_blocks * bs;
    assert_eq!(
        used_before - used_after,
        usage_row(&unmounted, "c1").exclusive_bytes
    );
    let r2 = admin::usage::read(set, SortKey::Exclusive).unwrap();
    let init_excl = usage_row(&r2, "c1-init").exclusive_bytes;
    d.remove(&id("c1-init")).unwrap();
    let used_last = set.pool_status().unwrap().used_data_blocks * bs;
    assert_eq!(used_after - used_last, init_excl);

    // Nothing was lost on the way.
    let root = d.get(&id("c2"), None).unwrap();
    assert_eq!(sha_of(&root.join("image-data")), img_sum);
    assert!(!root.join("sixty-four").exists());
    d.put(&id("c2")).unwrap();
    let _ = c1_sum;
    store.assert_consistent();
}

/// Fills a container of a 192 MiB pool until data use reaches `pct`.
fn fill_to(store: &DmStore, dir: &Path, pct: f64, files: &mut Vec<(PathBuf, String)>) {
    let set = store.driver().device_set();
    loop {
        let s = set.pool_status().unwrap();
        let used = s.used_data_blocks as f64 * 100.0 / s.total_data_blocks as f64;
        if used >= pct {
            return;
        }
        let n = files.len();
        let p = dir.join(format!("fill-{n}"));
        let sum = write_file(&p, 4 * MIB as usize, 100 + n as u64);
        syncfs(dir);
        files.push((p, sum));
        assert!(n < 200, "the pool never reached {pct}%");
    }
}

#[test]
fn fill_check_guard_extend_and_nothing_lost() {
    common::require_vm();
    let store = DmStore::new(&["dm.loopdatasize=192M", "dm.loopmetadatasize=16M"]);
    let d = store.driver();
    let check = |store: &DmStore| cli(store, &["pool", "check", "--warn", "80", "--crit", "90"]);

    let (code, line, err) = check(&store);
    assert_eq!(code, 0, "{line}{err}");
    assert!(line.starts_with("THINPOOL OK - "), "{line}");
    assert_eq!(line.lines().count(), 1);

    create_container(d, &id("filler"), None, &CreateOpts::default()).unwrap();
    let dir = d.get(&id("filler"), None).unwrap();
    let mut files = Vec::new();
    fill_to(&store, &dir, 80.5, &mut files);
    let (code, line, err) = check(&store);
    assert_eq!(code, 1, "{line}{err}");
    assert!(line.starts_with("THINPOOL WARNING - "), "{line}");
    assert!(line.contains("data space 8"), "{line}");

    fill_to(&store, &dir, 90.5, &mut files);
    let (code, line, err) = check(&store);
    assert_eq!(code, 2, "{line}{err}");
    assert!(line.starts_with("THINPOOL CRITICAL - "), "{line}");
    assert!(line.contains("new layers are refused"), "{line}");
    let (code, prom, _) = cli(&store, &["pool", "check", "--prometheus"]);
    assert_eq!(code, 2);
    assert!(prom.contains("thinsnap_pool_check_state{pool="), "{prom}");
    assert!(prom.contains("thinsnap_pool_up 1"), "{prom}");

    // The free-space guard refuses new snapshots.
    let e = d
        .create(&id("refused"), None, &CreateOpts::default())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoSpace, "{e}");
    assert!(e.to_string().contains("free data blocks"), "{e}");
    let (code, status, err) = cli(&store, &["pool", "status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let st: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(st["new_layers_refused"], true);
    assert_eq!(st["pool_mode"], "rw");
    assert!(st["data_used_percent"].as_f64().unwrap() >= 90.0);

    // Shrinking is refused, extending works online (the filler stays mounted).
    let (code, _, err) = cli(&store, &["pool", "extend", "--data", "100M"]);
    assert_ne!(code, 0);
    assert!(err.contains("shrinking it to"), "{err}");
    let (code, _, err) = cli(&store, &["pool", "extend", "--data", "-10M"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("shrinking a thin pool is not supported"),
        "{err}"
    );
    let total_before = d.device_set().pool_status().unwrap().total_data_blocks;
    let (code, out, err) = cli(&store, &["pool", "extend", "--data", "+192M", "--json"]);
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["method"], "loopback");
    assert_eq!(r["data_after"].as_u64().unwrap(), 384 * MIB, "{out}");
    let s = d.device_set().pool_status().unwrap();
    assert_eq!(s.total_data_blocks, total_before * 2);
    assert_eq!(
        fs::metadata(store.root().join("devicemapper/devicemapper/data"))
            .unwrap()
            .len(),
        384 * MIB
    );

    let (code, line, err) = check(&store);
    assert_eq!(code, 0, "{line}{err}");
    d.create(&id("after-extend"), None, &CreateOpts::default())
        .unwrap();

    // Everything written before is intact, read back after a remount.
    d.put(&id("filler")).unwrap();
    let dir = d.get(&id("filler"), None).unwrap();
    for (p, sum) in &files {
        let p = dir.join(p.file_name().unwrap());
        assert_eq!(&sha_of(&p), sum, "{}", p.display());
    }
    d.put(&id("filler")).unwrap();
    store.assert_consistent();
}

#[test]
fn extend_while_a_container_is_mounted_and_written() {
    common::require_vm();
    let store = DmStore::new(&["dm.loopdatasize=512M", "dm.loopmetadatasize=16M"]);
    let d = store.driver();
    create_container(d, &id("busy"), None, &CreateOpts::default()).unwrap();
    let dir = d.get(&id("busy"), None).unwrap();
    let meta_before = d.device_set().pool_status().unwrap().total_meta_blocks;

    let writer_dir = dir.clone();
    let writer = std::thread::spawn(move || {
        let mut sums = Vec::new();
        for i in 0..48u64 {
            let p = writer_dir.join(format!("w-{i}"));
            sums.push((p.clone(), write_file(&p, MIB as usize, 1000 + i)));
        }
        sums
    });
    let (code, out, err) = cli(
        &store,
        &["pool", "extend", "--data", "+512M", "--metadata", "+16M"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("extended pool "), "{out}");
    let sums = writer
        .join()
        .expect("the writer kept writing through the extend");
    syncfs(&dir);

    let s = d.device_set().pool_status().unwrap();
    assert_eq!(
        s.total_data_blocks * d.device_set().block_size().0,
        1024 * MIB
    );
    assert_eq!(s.total_meta_blocks, meta_before * 2, "metadata grew too");
    assert_eq!(s.mode, thinsnap::dm::PoolMode::ReadWrite);
    for (p, sum) in &sums {
        assert_eq!(&sha_of(p), sum, "{}", p.display());
    }
    d.put(&id("busy")).unwrap();
    // And after a remount.
    let dir = d.get(&id("busy"), None).unwrap();
    for (p, sum) in &sums {
        assert_eq!(&sha_of(&dir.join(p.file_name().unwrap())), sum);
    }
    d.put(&id("busy")).unwrap();
    store.assert_consistent();
}

#[test]
fn pool_commands_need_an_existing_store() {
    common::require_vm();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_thinsnap"))
        .arg("--root")
        .arg(dir.path())
        .args(["pool", "status"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no devicemapper store under"), "{err}");
    assert!(
        !dir.path().join("devicemapper").exists(),
        "pool status must not create a store"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_thinsnap"))
        .arg("--root")
        .arg(dir.path())
        .args(["pool", "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .starts_with("THINPOOL UNKNOWN - no devicemapper store")
    );
}

#[test]
fn pool_status_and_check_read_what_a_running_service_publishes() {
    common::require_vm();
    let root = tempfile::tempdir().unwrap();
    let socket = root.path().join("serve.sock");
    let config = root.path().join("config.toml");
    fs::write(&config, "").unwrap();
    let opts: Vec<String> = common::DM_TEST_OPTS.iter().map(|s| s.to_string()).collect();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_thinsnap"));
    cmd.args(["serve", "--driver", "devicemapper", "--root"])
        .arg(root.path())
        .arg("--socket")
        .arg(&socket)
        .arg("--config")
        .arg(&config);
    for o in &opts {
        cmd.args(["--storage-opt", o]);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(std::time::Instant::now() < deadline, "serve never listened");
        assert!(child.try_wait().unwrap().is_none(), "serve exited early");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_thinsnap"))
            .arg("--root")
            .arg(root.path())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["pool", "status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("(served by thinsnap serve, pid "), "{out}");
    assert!(out.contains(" Data Space Used Percent: "), "{out}");
    let (code, out, err) = run(&["pool", "status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        st["pool_name"].as_str().unwrap().ends_with("-pool"),
        "{out}"
    );
    assert_eq!(st["data_space_total"].as_u64(), Some(2 << 30), "{out}");
    let (code, out, err) = run(&["pool", "check", "--warn", "1", "--crit", "99"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.starts_with("THINPOOL WARNING - "), "{out}");
    // Changes and the block scan need the store itself: refused, naming
    // the service.
    let pid = child.id().to_string();
    for args in [
        &["pool", "extend", "--data", "+1G"][..],
        &["pool", "usage"][..],
    ] {
        let (code, _, err) = run(args);
        assert_ne!(code, 0);
        assert!(
            err.contains(&format!("served by thinsnap serve (pid {pid}")),
            "{args:?}: {err}"
        );
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    // The service left its pool active for the next start; release it.
    let d = thinsnap::backend::devmapper::DevmapperDriver::open(root.path(), &opts).unwrap();
    d.cleanup().unwrap();
}
