//! 16 concurrent clients × 200 mixed operations (create, mount + write +
//! verify + unmount, diff, remove) on one overlay2 store: no layer lost or
//! duplicated, the store reopened from disk agrees, and nothing leaks
//! (mounts, loop devices). The devicemapper run is in vm_reliability_load.

mod common;

use thinsnap::backend::overlay2::Overlay2Driver;
use thinsnap::backend::shared::mounts;
use thinsnap::snapshot::Driver;

#[test]
fn overlay2_16_clients_x_200_mixed_operations() {
    common::require_root();
    let dir = tempfile::tempdir().unwrap();
    let loops_before = common::loops_backed_by(dir.path());
    let d = Overlay2Driver::open(dir.path(), &[]).unwrap();
    let images = common::hammer::stack_images(&d, 3);
    let tally = common::hammer::hammer(&d, &images, 16, 200);
    eprintln!("{tally:?}");
    assert_eq!(tally.by_kind.values().sum::<usize>(), 16 * 200);
    assert!(
        tally.by_kind.len() == 4,
        "every kind of operation ran: {tally:?}"
    );
    assert!(
        mounts::mount_points_below(dir.path()).unwrap().is_empty(),
        "no mount left"
    );
    drop(d);
    let d = Overlay2Driver::open(dir.path(), &[]).unwrap();
    let mut ids: Vec<String> = d
        .list()
        .unwrap()
        .into_iter()
        .map(|l| l.id.as_str().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["img0", "img1", "img2"], "the store on disk agrees");
    assert_eq!(common::loops_backed_by(dir.path()), loops_before);
}
