//! 16 concurrent clients × 200 mixed operations (create, mount + write +
//! verify + unmount, diff, remove) on one devicemapper store: no thin id
//! lost or handed out twice, the pool's thin ids equal the metadata's,
//! transaction ids in step, thin_check clean, and no leaked mount or dm
//! device at the end.

mod common;

use std::collections::BTreeSet;

use common::DmStore;
use thinsnap::backend::shared::mounts;

#[test]
fn devicemapper_16_clients_x_200_mixed_operations() {
    common::require_vm();
    let mut store = DmStore::new(&["dm.fs=ext4"]);
    let d = store.driver();
    let images = common::hammer::stack_images(d, 3);
    let tally = common::hammer::hammer(d, &images, 16, 200);
    eprintln!("{tally:?}");
    assert_eq!(tally.by_kind.values().sum::<usize>(), 16 * 200);
    store.assert_consistent();
    let ids: Vec<u32> = d
        .device_set()
        .devices()
        .iter()
        .map(|x| x.device_id)
        .collect();
    let unique: BTreeSet<u32> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "no thin id handed out twice");
    assert!(
        mounts::mount_points_below(store.root()).unwrap().is_empty(),
        "no mount left"
    );
    let prefix = d.device_set().prefix().to_string();
    let pool = d.device_set().pool().name.clone();
    let leaked: Vec<String> = common::dm_device_names()
        .into_iter()
        .filter(|n| n.starts_with(&prefix) && *n != pool)
        .collect();
    assert!(leaked.is_empty(), "dm devices left active: {leaked:?}");
    // The store on disk agrees, as fsck sees it from another process.
    store.driver = None;
    let (code, out, err) = common::cli(&store, &["fsck"]);
    assert_eq!(code, 0, "fsck after the run: {out}{err}");
}
