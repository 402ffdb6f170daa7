//! The tar-slip corpus: hostile layer archives built byte by byte (the
//! `tar` crate refuses to write most of them), each with what applying it
//! must do. `tests/host_tarslip.rs` regenerates and verifies the committed
//! copies in `fixtures/tarslip/` and applies each to a vfs layer.
#![allow(dead_code)]

/// Where archives aim when they try to escape: a fixed absolute directory
/// the test fills with known files and checksums before and after.
pub const SENTINEL: &str = "/tmp/thinsnap-tarslip-sentinel";
/// A name that must never appear in the host's /etc.
pub const ETC_CANARY: &str = "/etc/thinsnap-tarslip-canary";

/// Enough `../` to reach `/` from any layer directory.
fn ups() -> String {
    "../".repeat(24)
}

/// What applying an archive must do.
#[derive(Debug, Clone)]
pub enum Expect {
    /// Refused with an error naming `entry`; nothing outside the layer changes.
    Refused { entry: String },
    /// The stream is unreadable (truncated, bad checksum): an error, and the
    /// layer stays incomplete.
    Corrupt,
    /// Applied, with everything inside the layer: `check` lists paths (relative
    /// to the layer root) and the file type each must have (`f`, `d`, `l`, `c`).
    Contained { check: Vec<(String, char)> },
}

pub struct Case {
    pub file: &'static str,
    pub what: &'static str,
    pub bytes: Vec<u8>,
    pub expect: Expect,
}

// --- raw tar writing ----------------------------------------------------------

const BLOCK: usize = 512;

fn octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let s = format!("{value:0width$o}");
    field[..width].copy_from_slice(&s.as_bytes()[s.len() - width..]);
    field[width] = 0;
}

/// Base-256 (GNU) numeric field, for values octal cannot hold.
fn base256(field: &mut [u8], value: u64) {
    field.fill(0);
    field[0] = 0x80;
    let n = field.len();
    for (i, b) in value.to_be_bytes().iter().enumerate() {
        field[n - 8 + i] = *b;
    }
}

/// A header block: ustar (or old GNU when `gnu`), name and link name raw.
fn header(name: &[u8], kind: u8, size: u64, link: &[u8], gnu: bool) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 1_600_000_000);
    h[156] = kind;
    let l = link.len().min(100);
    h[157..157 + l].copy_from_slice(&link[..l]);
    if gnu {
        h[257..265].copy_from_slice(b"ustar  \0");
    } else {
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
    }
    h
}

fn checksum(h: &mut [u8; BLOCK]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
}

fn pad(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(BLOCK) {
        out.push(0);
    }
}

/// An archive being written.
#[derive(Default)]
struct Raw {
    out: Vec<u8>,
}

impl Raw {
    fn entry(mut self, name: &[u8], kind: u8, link: &[u8], data: &[u8]) -> Self {
        let mut h = header(name, kind, data.len() as u64, link, false);
        checksum(&mut h);
        self.out.extend_from_slice(&h);
        self.out.extend_from_slice(data);
        pad(&mut self.out);
        self
    }
    fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(name.as_bytes(), b'0', b"", data)
    }
    fn dir(self, name: &str) -> Self {
        self.entry(name.as_bytes(), b'5', b"", b"")
    }
    fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(name.as_bytes(), b'2', target.as_bytes(), b"")
    }
    fn hardlink(self, name: &str, target: &str) -> Self {
        self.entry(name.as_bytes(), b'1', target.as_bytes(), b"")
    }
    /// PAX extended header (`x`) for the next entry.
    fn pax(self, records: &[(&str, &[u8])]) -> Self {
        let mut body = Vec::new();
        for (k, v) in records {
            // "<len> <key>=<value>\n" where len counts itself.
            let rest = k.len() + v.len() + 3;
            let mut len = rest + 1;
            while format!("{len}").len() + rest != len {
                len += 1;
            }
            body.extend_from_slice(format!("{len} {k}=").as_bytes());
            body.extend_from_slice(v);
            body.push(b'\n');
        }
        self.entry(b"PaxHeaders/x", b'x', b"", &body)
    }
    /// GNU long name (`L`) for the next entry.
    fn longname(mut self, name: &[u8]) -> Self {
        let mut data = name.to_vec();
        data.push(0);
        let mut h = header(b"././@LongLink", b'L', data.len() as u64, b"", true);
        checksum(&mut h);
        self.out.extend_from_slice(&h);
        self.out.extend_from_slice(&data);
        pad(&mut self.out);
        self
    }
    /// A header with a hand-set size field and `data` (which may be short).
    fn sized(mut self, name: &str, claimed: u64, data: &[u8]) -> Self {
        let mut h = header(name.as_bytes(), b'0', 0, b"", true);
        base256(&mut h[124..136], claimed);
        checksum(&mut h);
        self.out.extend_from_slice(&h);
        self.out.extend_from_slice(data);
        pad(&mut self.out);
        self
    }
    /// An old-GNU sparse entry: one 512-byte chunk at the end of a file
    /// claiming `real_size` bytes.
    fn sparse_bomb(mut self, name: &str, real_size: u64) -> Self {
        let mut h = header(name.as_bytes(), b'S', BLOCK as u64, b"", true);
        // First sparse descriptor (offset 386, 12+12 bytes), then isextended
        // (482) = 0, then realsize (483, 12 bytes).
        base256(&mut h[386..398], real_size - BLOCK as u64);
        octal(&mut h[398..410], BLOCK as u64);
        base256(&mut h[483..495], real_size);
        checksum(&mut h);
        self.out.extend_from_slice(&h);
        self.out.extend_from_slice(&[b'z'; BLOCK]);
        self
    }
    fn finish(mut self) -> Vec<u8> {
        self.out.extend_from_slice(&[0u8; 2 * BLOCK]);
        self.out
    }
    /// Without end-of-archive blocks and cut to `len` bytes.
    fn cut(self, len: usize) -> Vec<u8> {
        let mut out = self.out;
        out.truncate(len);
        out
    }
}

fn refused(entry: &str) -> Expect {
    Expect::Refused {
        entry: entry.to_string(),
    }
}

fn contained(check: &[(&str, char)]) -> Expect {
    Expect::Contained {
        check: check.iter().map(|(p, k)| (p.to_string(), *k)).collect(),
    }
}

/// Every archive of the corpus.
pub fn corpus() -> Vec<Case> {
    let s = SENTINEL;
    let victim = format!("{s}/victim");
    let up_victim = format!("{}{}", ups(), &victim[1..]);
    let case = |file, what, bytes, expect| Case {
        file,
        what,
        bytes,
        expect,
    };
    let long_dotdot = format!("{}/{}thinsnap-escape", "a".repeat(110), "../".repeat(3));
    vec![
        case(
            "dotdot-file.tar",
            "a file named ../thinsnap-escape",
            Raw::default().file("../thinsnap-escape", b"x").finish(),
            refused("../thinsnap-escape"),
        ),
        case(
            "dotdot-deep.tar",
            "a/b/../../../thinsnap-escape: climbs above the root after descending",
            Raw::default()
                .file("a/b/../../../thinsnap-escape", b"x")
                .finish(),
            refused("a/b/../../../thinsnap-escape"),
        ),
        case(
            "dotdot-to-sentinel.tar",
            "enough ../ to reach / then the sentinel victim",
            Raw::default().file(&up_victim, b"pwned").finish(),
            refused(&up_victim[..60]),
        ),
        case(
            "absolute-path.tar",
            "an absolute name: the leading / is dropped, it lands inside the layer",
            Raw::default().file(&victim, b"inside").finish(),
            contained(&[("tmp/thinsnap-tarslip-sentinel/victim", 'f')]),
        ),
        case(
            "symlink-etc-then-write.tar",
            "etc -> /etc, then etc/thinsnap-tarslip-canary",
            Raw::default()
                .symlink("etc", "/etc")
                .file("etc/thinsnap-tarslip-canary", b"x")
                .finish(),
            refused("etc/thinsnap-tarslip-canary"),
        ),
        case(
            "symlink-sentinel-then-overwrite.tar",
            "s -> sentinel dir, then s/victim",
            Raw::default()
                .symlink("s", s)
                .file("s/victim", b"pwned")
                .finish(),
            refused("s/victim"),
        ),
        case(
            "symlink-dotdot-then-write.tar",
            "up -> .., then up/thinsnap-escape",
            Raw::default()
                .symlink("up", "..")
                .file("up/thinsnap-escape", b"x")
                .finish(),
            refused("up/thinsnap-escape"),
        ),
        case(
            "symlink-chain.tar",
            "x -> y, y -> ../../…/sentinel, then x/victim",
            Raw::default()
                .symlink("x", "y")
                .symlink("y", &format!("{}{}", ups(), &s[1..]))
                .file("x/victim", b"pwned")
                .finish(),
            refused("x/victim"),
        ),
        case(
            "symlink-replaces-dir.tar",
            "d/ and d/f, then d -> sentinel replacing the dir, then d/victim",
            Raw::default()
                .dir("d/")
                .file("d/f", b"ok")
                .symlink("d", s)
                .file("d/victim", b"pwned")
                .finish(),
            refused("d/victim"),
        ),
        case(
            "hardlink-dotdot.tar",
            "hardlink h -> ../…/etc/passwd",
            Raw::default()
                .hardlink("h", &format!("{}etc/passwd", ups()))
                .finish(),
            refused("h"),
        ),
        case(
            "hardlink-absolute.tar",
            "hardlink h -> /tmp/…/victim (resolved inside the layer: missing)",
            Raw::default().hardlink("h", &victim).finish(),
            refused("h"),
        ),
        case(
            "hardlink-through-symlink.tar",
            "s -> sentinel dir, hardlink h -> s/victim",
            Raw::default()
                .symlink("s", s)
                .hardlink("h", "s/victim")
                .finish(),
            refused("h"),
        ),
        case(
            "hardlink-to-symlink-then-write.tar",
            "f -> victim (symlink), h hardlinks the symlink, then a regular file h: the link is replaced, never written through",
            Raw::default()
                .symlink("f", &victim)
                .hardlink("h", "f")
                .file("h", b"inside")
                .finish(),
            contained(&[("f", 'l'), ("h", 'f')]),
        ),
        case(
            "symlink-then-file.tar",
            "f -> victim, then a regular file f: the symlink is replaced",
            Raw::default()
                .symlink("f", &victim)
                .file("f", b"inside")
                .finish(),
            contained(&[("f", 'f')]),
        ),
        case(
            "whiteout-dotdot.tar",
            ".wh... would delete the layer's parent directory",
            Raw::default().file(".wh...", b"").finish(),
            refused(".wh..."),
        ),
        case(
            "whiteout-through-symlink.tar",
            "s -> sentinel dir, then s/.wh.victim",
            Raw::default()
                .symlink("s", s)
                .file("s/.wh.victim", b"")
                .finish(),
            refused("s/.wh.victim"),
        ),
        case(
            "opaque-through-symlink.tar",
            "s -> sentinel dir, then s/.wh..wh..opq (would empty it)",
            Raw::default()
                .symlink("s", s)
                .file("s/.wh..wh..opq", b"")
                .finish(),
            refused("s/.wh..wh..opq"),
        ),
        case(
            "nul-in-name.tar",
            "a GNU long name with a NUL byte inside",
            Raw::default()
                .longname(b"safe\0../../thinsnap-escape")
                .file("placeholder", b"x")
                .finish(),
            refused("safe"),
        ),
        case(
            "pax-path-dotdot.tar",
            "PAX path=../thinsnap-escape over a benign ustar name",
            Raw::default()
                .pax(&[("path", b"../thinsnap-escape")])
                .file("benign", b"x")
                .finish(),
            refused("../thinsnap-escape"),
        ),
        case(
            "pax-linkpath-escape.tar",
            "a hardlink whose PAX linkpath climbs out",
            Raw::default()
                .pax(&[("linkpath", format!("{}etc/shadow", ups()).as_bytes())])
                .hardlink("h", "benign")
                .finish(),
            refused("h"),
        ),
        case(
            "longname-dotdot.tar",
            "a GNU long name (over 100 bytes) ending in ../../../thinsnap-escape",
            Raw::default()
                .longname(long_dotdot.as_bytes())
                .file("placeholder", b"x")
                .finish(),
            refused(&long_dotdot),
        ),
        case(
            "overlay-xattr.tar",
            "a file carrying trusted.overlay.redirect (overlay metadata forged by a tar): dropped",
            Raw::default()
                .pax(&[("SCHILY.xattr.trusted.overlay.redirect", b"/etc")])
                .file("f", b"x")
                .finish(),
            contained(&[("f", 'f')]),
        ),
        case(
            "huge-size.tar",
            "a header claiming 1 PiB with 512 bytes of data",
            Raw::default()
                .sized("bomb", 1 << 50, &[b'y'; BLOCK])
                .finish(),
            refused("bomb"),
        ),
        case(
            "gnu-sparse-bomb.tar",
            "an old-GNU sparse entry claiming a 1 EiB file",
            Raw::default().sparse_bomb("sparse-bomb", 1 << 60).finish(),
            refused("sparse-bomb"),
        ),
        case(
            "longname-bomb.tar",
            "a GNU long-name entry claiming 1 GiB (the parser would buffer it all)",
            {
                let mut h = header(b"././@LongLink", b'L', 1 << 30, b"", true);
                checksum(&mut h);
                let mut r = Raw::default();
                r.out.extend_from_slice(&h);
                r.out.extend_from_slice(&[b'a'; BLOCK]);
                r.finish()
            },
            Expect::Corrupt,
        ),
        case(
            "truncated.tar",
            "a header claiming 4096 bytes, the stream ends after 100",
            {
                let mut r = Raw::default().file("ok", b"fine");
                let full = r.out.len();
                let mut h = header(b"cut", b'0', 4096, b"", false);
                checksum(&mut h);
                r.out.extend_from_slice(&h);
                r.out.extend_from_slice(&[b'q'; 100]);
                r.cut(full + BLOCK + 100)
            },
            Expect::Corrupt,
        ),
        case(
            "bad-checksum.tar",
            "a header whose checksum is wrong",
            {
                let mut t = Raw::default().file("ok", b"fine").finish();
                t[150] ^= 0x01;
                t
            },
            Expect::Corrupt,
        ),
        case(
            "device-node.tar",
            "a character device dev/null 1:3: allowed when applied as root (as Docker does)",
            {
                let mut h = header(b"dev/null", b'3', 0, b"", false);
                octal(&mut h[329..337], 1);
                octal(&mut h[337..345], 3);
                checksum(&mut h);
                let mut r = Raw::default().dir("dev/");
                r.out.extend_from_slice(&h);
                r.finish()
            },
            contained(&[("dev/null", 'c')]),
        ),
    ]
}
