//! Hostile layer tars: every archive of the corpus (`tests/tarslip/`,
//! committed under `fixtures/tarslip/`) applied to a vfs layer. Each must be
//! refused with an error naming the entry (or applied entirely inside the
//! layer, where the corpus says so), leave the layer incomplete when it
//! fails, and leave a sentinel tree outside the layer byte-identical.

mod common;
mod tarslip;

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use tarslip::{ETC_CANARY, Expect, SENTINEL};
use thinsnap::backend::vfs::VfsDriver;
use thinsnap::snapshot::{CreateOpts, Driver, ErrorKind, LayerId};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tarslip")
}

/// The sentinel lives at a fixed path (the archives aim at it); it goes
/// when the test ends, pass or fail.
struct RemoveOnDrop(&'static Path);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(self.0);
    }
}

fn make_sentinel() {
    let s = Path::new(SENTINEL);
    fs::create_dir_all(s.join("dir")).unwrap();
    fs::write(s.join("victim"), b"sentinel victim: must never change\n").unwrap();
    fs::write(s.join("dir/inner"), b"inner sentinel\n").unwrap();
}

#[test]
fn corpus_fixtures_are_current() {
    let regenerate = std::env::var("THINSNAP_REGENERATE_FIXTURES").is_ok_and(|v| v == "1");
    let corpus = tarslip::corpus();
    assert!(corpus.len() >= 15, "the corpus has at least 15 archives");
    let mut stale = Vec::new();
    for case in &corpus {
        let path = fixtures().join(case.file);
        match fs::read(&path) {
            Ok(bytes) if bytes == case.bytes => {}
            _ if regenerate => fs::write(&path, &case.bytes).unwrap(),
            _ => stale.push(case.file),
        }
    }
    assert!(
        stale.is_empty(),
        "fixtures/tarslip is out of date for {stale:?}: run \
         `THINSNAP_REGENERATE_FIXTURES=1 cargo test --test host_tarslip` and commit the result"
    );
    let readme = fs::read_to_string(fixtures().join("README.md")).unwrap();
    for case in &corpus {
        assert!(
            readme.contains(case.file),
            "README.md describes {}",
            case.file
        );
    }
}

fn full_message(e: &thinsnap::snapshot::SnapshotError) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(" / ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

#[test]
fn every_hostile_archive_stays_inside_the_layer() {
    common::require_root();
    make_sentinel();
    let _gone = RemoveOnDrop(Path::new(SENTINEL));
    let before = common::checksum_tree(Path::new(SENTINEL));
    let store = tempfile::tempdir().unwrap();
    let driver = VfsDriver::open(store.path(), &[]).unwrap();
    let mut failures = Vec::new();
    for (i, case) in tarslip::corpus().into_iter().enumerate() {
        let bytes = fs::read(fixtures().join(case.file)).unwrap_or(case.bytes.clone());
        let id = LayerId::new(&format!("slip-{i}")).unwrap();
        driver.create(&id, None, &CreateOpts::default()).unwrap();
        let result = driver.apply_diff(&id, None, &mut bytes.as_slice());
        let root = driver.layer_dir(&id);
        match &result {
            Ok(n) => eprintln!("{}: applied {n} bytes", case.file),
            Err(e) => eprintln!("{}: {}", case.file, full_message(e)),
        }
        let problem = match (&case.expect, result) {
            (Expect::Refused { entry }, Err(e)) => {
                let msg = full_message(&e);
                if !msg.contains(entry.as_str()) {
                    Some(format!("error does not name entry {entry:?}: {msg}"))
                } else if !matches!(e.kind(), ErrorKind::InvalidInput | ErrorKind::NoSpace) {
                    Some(format!("unexpected error kind {:?}: {msg}", e.kind()))
                } else {
                    None
                }
            }
            (Expect::Corrupt, Err(e)) => {
                let msg = full_message(&e);
                (!msg.contains("corrupt or truncated") || e.kind() != ErrorKind::InvalidInput)
                    .then(|| format!("not reported as a bad stream: {msg}"))
            }
            (Expect::Contained { check }, Ok(_)) => check.iter().find_map(|(p, kind)| {
                let forged = xattr::list(root.join(p))
                    .ok()?
                    .find(|n| n.to_string_lossy().starts_with("trusted.overlay."));
                if let Some(x) = forged {
                    return Some(format!("{p} got overlay xattr {x:?} from the tar"));
                }
                let md = fs::symlink_metadata(root.join(p)).ok()?;
                let ft = md.file_type();
                let got = if ft.is_dir() {
                    'd'
                } else if ft.is_symlink() {
                    'l'
                } else if ft.is_char_device() {
                    'c'
                } else {
                    'f'
                };
                (got != *kind).then(|| format!("{p} is {got}, expected {kind}"))
            }),
            (Expect::Contained { .. }, Err(e)) => Some(format!("refused: {}", full_message(&e))),
            (_, Ok(n)) => Some(format!("was applied ({n} bytes) but must fail")),
        };
        // A failed apply leaves the layer incomplete; a good one does not.
        let incomplete = driver.get(&id, None).map(|_| driver.put(&id));
        let expect_incomplete = !matches!(case.expect, Expect::Contained { .. });
        let is_incomplete = matches!(&incomplete, Err(e) if e.kind() == ErrorKind::Incomplete);
        let problem = problem.or_else(|| {
            (expect_incomplete != is_incomplete)
                .then(|| format!("incomplete mark is {is_incomplete}"))
        });
        if let Some(p) = problem {
            failures.push(format!("{}: {p}", case.file));
        }
        driver.remove(&id).unwrap();
        let after = common::checksum_tree(Path::new(SENTINEL));
        assert_eq!(
            before, after,
            "{}: the sentinel tree outside the layer changed",
            case.file
        );
        assert!(
            !Path::new(ETC_CANARY).exists(),
            "{}: wrote into the host's /etc",
            case.file
        );
        assert!(
            !store.path().join("thinsnap-escape").exists()
                && !store.path().join("vfs/thinsnap-escape").exists(),
            "{}: wrote next to the layer",
            case.file
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
