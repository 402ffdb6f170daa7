//! Interoperability with the real thing: Debian's Docker 20.10 (the last
//! release with the devicemapper driver) writes a store, thinsnap opens and
//! serves it, and Docker reads back what thinsnap wrote.
//!
//! 1. dockerd (devicemapper, loopback) loads a two-layer image, creates a
//!    container (its `-init` and rw devices) and writes a file into it.
//! 2. With Docker stopped, thinsnap opens the same `--root`: every device
//!    Docker made is there, the container's layer shows the image's files,
//!    the `-init` layer's `.dockerenv` and Docker's file; thinsnap writes a
//!    file into the container and creates a layer of its own.
//! 3. dockerd starts again on the store: it reads thinsnap's file through
//!    its own mount, creates and writes a second container (its id
//!    allocation steps around thinsnap's device), removes both.
//! 4. thinsnap opens it once more: its own layer is intact, Docker's
//!    removals are seen, pool and metadata agree.

mod common;

use std::fs;
use std::path::Path;

use common::docker::{self, Dockerd};
use thinsnap::backend::devmapper::DevmapperDriver;
use thinsnap::snapshot::{CreateOpts, Driver, LayerId};

/// The same pool and base size for both (a different `dm.basesize` would
/// make either grow the base device).
const OPTS: &[&str] = &[
    "dm.loopdatasize=2G",
    "dm.loopmetadatasize=64M",
    "dm.basesize=512M",
];

fn open(root: &Path) -> DevmapperDriver {
    DevmapperDriver::open(
        root,
        &OPTS.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    )
    .unwrap_or_else(|e| panic!("thinsnap opening Docker's store: {e}"))
}

fn id(s: &str) -> LayerId {
    LayerId::new(s).unwrap()
}

/// Thin ids in the pool vs in the metadata files.
fn assert_pool_matches_metadata(d: &DevmapperDriver) {
    let set = d.device_set();
    let mut pool: Vec<u32> = set.thin_usage().unwrap().iter().map(|u| u.id).collect();
    pool.sort();
    let mut meta: Vec<u32> = set.devices().iter().map(|x| x.device_id).collect();
    meta.sort();
    assert_eq!(
        pool, meta,
        "thin ids in the pool vs Docker's metadata files"
    );
}

/// The graph-driver ids (cache-id) of the image's layers.
fn image_cache_ids(root: &Path) -> Vec<String> {
    let dir = root.join("image/devicemapper/layerdb/sha256");
    let mut ids: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| fs::read_to_string(e.path().join("cache-id")).unwrap())
        .collect();
    ids.sort();
    ids
}

#[test]
fn docker_20_10_and_thinsnap_share_one_devicemapper_store() {
    common::require_vm();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("docker");

    // 1. Docker writes the store.
    let mut dockerd = Dockerd::start(&root, OPTS).unwrap();
    let layers = vec![
        docker::files_tar(&[("etc/from-layer-1", b"first layer\n")]),
        docker::files_tar(&[("etc/from-layer-2", b"second layer\n")]),
    ];
    dockerd
        .load(&docker::image_tarball("interop:1", &layers))
        .unwrap();
    let c1 = dockerd.create_container("interop:1").unwrap();
    dockerd
        .put_archive(
            &c1,
            &docker::files_tar(&[("written-by-docker", b"docker wrote this\n")]),
        )
        .unwrap();
    let mount_id = dockerd.mount_id(&c1).unwrap();
    dockerd.stop().unwrap();
    let cache_ids = image_cache_ids(&root);
    assert_eq!(cache_ids.len(), 2);
    let meta = root.join("devicemapper/metadata");
    for f in [
        "base",
        "deviceset-metadata",
        "transaction-metadata",
        mount_id.as_str(),
        &format!("{mount_id}-init"),
    ] {
        assert!(meta.join(f).is_file(), "Docker wrote metadata/{f}");
    }

    // 2. thinsnap opens and serves it.
    let d = open(&root);
    let listed: Vec<String> = d.list().unwrap().iter().map(|l| l.id.to_string()).collect();
    for want in cache_ids
        .iter()
        .chain([&mount_id, &format!("{mount_id}-init")])
    {
        assert!(listed.contains(want), "{want} missing from {listed:?}");
    }
    assert_pool_matches_metadata(&d);
    let rootfs = d.get(&id(&mount_id), None).unwrap();
    assert_eq!(
        fs::read(rootfs.join("written-by-docker")).unwrap(),
        b"docker wrote this\n"
    );
    assert_eq!(
        fs::read(rootfs.join("etc/from-layer-1")).unwrap(),
        b"first layer\n"
    );
    assert_eq!(
        fs::read(rootfs.join("etc/from-layer-2")).unwrap(),
        b"second layer\n"
    );
    assert!(
        rootfs.join(".dockerenv").exists(),
        "the -init layer's files are in the container"
    );
    fs::write(rootfs.join("written-by-thinsnap"), b"thinsnap wrote this\n").unwrap();
    d.put(&id(&mount_id)).unwrap();
    // A layer of thinsnap's own on Docker's image.
    let top = cache_ids
        .iter()
        .find(|c| {
            // The top layer holds from-layer-2 (Docker's layer ids are random).
            let p = d.get(&id(c), None).unwrap();
            let has = p.join("etc/from-layer-2").exists();
            d.put(&id(c)).unwrap();
            has
        })
        .unwrap()
        .clone();
    d.create(&id("thinsnap-own"), Some(&id(&top)), &CreateOpts::default())
        .unwrap();
    let own = d.get(&id("thinsnap-own"), None).unwrap();
    fs::write(own.join("own-file"), b"kept across Docker\n").unwrap();
    d.put(&id("thinsnap-own")).unwrap();
    assert_pool_matches_metadata(&d);
    d.cleanup().unwrap();
    drop(d);

    // 3. Docker reads back what thinsnap wrote, and keeps working.
    let dockerd2 = Dockerd::start(&root, OPTS).unwrap();
    assert_eq!(
        dockerd2.read_file(&c1, "/written-by-thinsnap").unwrap(),
        b"thinsnap wrote this\n"
    );
    assert_eq!(
        dockerd2.read_file(&c1, "/written-by-docker").unwrap(),
        b"docker wrote this\n"
    );
    let c2 = dockerd2.create_container("interop:1").unwrap();
    dockerd2
        .put_archive(&c2, &docker::files_tar(&[("second", b"2\n")]))
        .unwrap();
    assert_eq!(dockerd2.read_file(&c2, "/second").unwrap(), b"2\n");
    assert_eq!(
        dockerd2.read_file(&c2, "/etc/from-layer-2").unwrap(),
        b"second layer\n"
    );
    dockerd2.remove_container(&c2).unwrap();
    dockerd2.remove_container(&c1).unwrap();
    let info = dockerd2.json("GET", "/info", None).unwrap();
    assert_eq!(info["Driver"], "devicemapper", "{info}");
    drop(dockerd2);

    // 4. thinsnap sees Docker's removals and still has its own layer.
    let d = open(&root);
    let listed: Vec<String> = d.list().unwrap().iter().map(|l| l.id.to_string()).collect();
    assert!(!listed.contains(&mount_id), "{listed:?}");
    assert!(listed.contains(&"thinsnap-own".to_string()), "{listed:?}");
    let own = d.get(&id("thinsnap-own"), None).unwrap();
    assert_eq!(
        fs::read(own.join("own-file")).unwrap(),
        b"kept across Docker\n"
    );
    assert_eq!(
        fs::read(own.join("etc/from-layer-2")).unwrap(),
        b"second layer\n"
    );
    d.put(&id("thinsnap-own")).unwrap();
    d.remove(&id("thinsnap-own")).unwrap();
    assert_pool_matches_metadata(&d);
    d.cleanup().unwrap();
}
