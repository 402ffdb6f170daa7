//! The concurrency workload every backend faces: many clients, each doing
//! a stream of mixed operations (create, mount + write + verify + unmount,
//! diff, remove) on one shared store, on their own layers stacked on shared
//! image layers. Any error fails the test with the client, step and layer.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::sync::Mutex;

use thinsnap::snapshot::{CreateOpts, Driver, LayerId};

/// One client's own layers: id -> (parent, files written in it).
type Own = BTreeMap<String, (Option<String>, Vec<String>)>;

fn lid(s: &str) -> LayerId {
    LayerId::new(s).unwrap()
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a, T>(&mut self, v: &'a [T]) -> Option<&'a T> {
        if v.is_empty() {
            None
        } else {
            Some(&v[(self.next() % v.len() as u64) as usize])
        }
    }
}

/// A chain of `n` image layers (`img0` at the bottom), each with one file.
pub fn stack_images(d: &dyn Driver, n: usize) -> Vec<LayerId> {
    let images: Vec<LayerId> = (0..n).map(|i| lid(&format!("img{i}"))).collect();
    let mut parent: Option<&LayerId> = None;
    for img in &images {
        d.create(img, parent, &CreateOpts::default()).unwrap();
        let root = d.get(img, None).unwrap();
        fs::write(root.join(format!("{}.txt", img.as_str())), b"image").unwrap();
        d.put(img).unwrap();
        parent = Some(img);
    }
    images
}

/// What ran, for the test's report.
#[derive(Debug, Default)]
pub struct Tally {
    pub by_kind: BTreeMap<&'static str, usize>,
}

/// Runs `clients` threads × `ops` operations on `d`, parents drawn from
/// `images` (which must exist and stay). Returns the tally; at the end the
/// store's layer list must be exactly `images` plus every client's live
/// layers, and after each client removes its layers, exactly `images`.
pub fn hammer(d: &dyn Driver, images: &[LayerId], clients: usize, ops: usize) -> Tally {
    let tally = Mutex::new(Tally::default());
    let live = Mutex::new(BTreeSet::new());
    std::thread::scope(|s| {
        for c in 0..clients {
            let tally = &tally;
            let live = &live;
            s.spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((c as u64 + 1) * 0x1000_0001));
                let mut own: Own = BTreeMap::new();
                let mut n = 0;
                for step in 0..ops {
                    let ctx =
                        |what: &str, layer: &str| format!("client {c} step {step}: {what} {layer}");
                    let roll = rng.next() % 100;
                    let ids: Vec<String> = own.keys().cloned().collect();
                    let kind = if roll < 35 || ids.is_empty() {
                        let parent = if rng.next().is_multiple_of(2) || ids.is_empty() {
                            rng.pick(images).map(|p| p.as_str().to_string())
                        } else {
                            rng.pick(&ids).cloned()
                        };
                        let id = format!("c{c}-{n}");
                        n += 1;
                        d.create(
                            &lid(&id),
                            parent.as_deref().map(lid).as_ref(),
                            &CreateOpts::default(),
                        )
                        .unwrap_or_else(|e| panic!("{}: {e}", ctx("create", &id)));
                        own.insert(id, (parent, Vec::new()));
                        "create"
                    } else if roll < 60 {
                        let id = rng.pick(&ids).unwrap().clone();
                        let root = d
                            .get(&lid(&id), None)
                            .unwrap_or_else(|e| panic!("{}: {e}", ctx("mount", &id)));
                        let name = format!("f{step}");
                        fs::write(root.join(&name), id.as_bytes())
                            .unwrap_or_else(|e| panic!("{}: {e}", ctx("write", &id)));
                        for f in &own[&id].1 {
                            let got = fs::read(root.join(f))
                                .unwrap_or_else(|e| panic!("{}: {f}: {e}", ctx("read", &id)));
                            assert_eq!(got, id.as_bytes(), "{}: {f}", ctx("read back", &id));
                        }
                        d.put(&lid(&id))
                            .unwrap_or_else(|e| panic!("{}: {e}", ctx("unmount", &id)));
                        own.get_mut(&id).unwrap().1.push(name);
                        "mount+write+unmount"
                    } else if roll < 75 {
                        let id = rng.pick(&ids).unwrap().clone();
                        let parent = own[&id].0.clone();
                        let mut tar = Vec::new();
                        d.diff(&lid(&id), parent.as_deref().map(lid).as_ref(), &mut tar)
                            .unwrap_or_else(|e| panic!("{}: {e}", ctx("diff", &id)));
                        let mut names = BTreeSet::new();
                        let mut ar = tar::Archive::new(&tar[..]);
                        for e in ar.entries().unwrap() {
                            let mut e = e.unwrap();
                            let p = e
                                .path()
                                .unwrap()
                                .to_string_lossy()
                                .trim_start_matches("./")
                                .to_string();
                            if own[&id].1.contains(&p) {
                                let mut body = Vec::new();
                                e.read_to_end(&mut body).unwrap();
                                assert_eq!(
                                    body,
                                    id.as_bytes(),
                                    "{}: {p}",
                                    ctx("diff content", &id)
                                );
                            }
                            names.insert(p);
                        }
                        for f in &own[&id].1 {
                            assert!(
                                names.contains(f),
                                "{}: {f} missing from {names:?}",
                                ctx("diff", &id)
                            );
                        }
                        "diff"
                    } else {
                        let leaves: Vec<String> = ids
                            .iter()
                            .filter(|i| {
                                !own.values().any(|(p, _)| p.as_deref() == Some(i.as_str()))
                            })
                            .cloned()
                            .collect();
                        let id = rng.pick(&leaves).unwrap().clone();
                        d.remove(&lid(&id))
                            .unwrap_or_else(|e| panic!("{}: {e}", ctx("remove", &id)));
                        own.remove(&id);
                        "remove"
                    };
                    *tally.lock().unwrap().by_kind.entry(kind).or_default() += 1;
                }
                live.lock().unwrap().extend(own.keys().cloned());
            });
        }
    });
    let mut want: BTreeSet<String> = live.into_inner().unwrap();
    want.extend(images.iter().map(|i| i.as_str().to_string()));
    let have: BTreeSet<String> = d
        .list()
        .unwrap()
        .into_iter()
        .map(|l| l.id.as_str().to_string())
        .collect();
    assert_eq!(have, want, "no layer lost, none extra");
    // Children before parents: remove what is not an image, leaves first.
    loop {
        let layers = d.list().unwrap();
        let extra: Vec<_> = layers
            .iter()
            .filter(|l| !images.iter().any(|i| i == &l.id))
            .filter(|l| !layers.iter().any(|o| o.parent.as_ref() == Some(&l.id)))
            .map(|l| l.id.clone())
            .collect();
        if extra.is_empty() {
            break;
        }
        for id in extra {
            d.remove(&id)
                .unwrap_or_else(|e| panic!("final remove {id}: {e}"));
        }
    }
    let have: Vec<LayerId> = d.list().unwrap().into_iter().map(|l| l.id).collect();
    let mut want: Vec<LayerId> = images.to_vec();
    want.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    let mut have = have;
    have.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    assert_eq!(have, want);
    tally.into_inner().unwrap()
}
