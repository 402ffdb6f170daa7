//! Units that must never be confused: bytes and 512-byte sectors.
//!
//! Docker parses sizes with binary multipliers (`10G` = 10 GiB) but prints
//! them with decimal ones (`10.74GB`); both conventions live here so every
//! layer formats and parses the same way.

use std::fmt;
use std::ops::{Add, Sub};

use serde::{Deserialize, Serialize};

/// Bytes per sector as device-mapper tables count them.
pub const SECTOR_SIZE: u64 = 512;

/// A length in bytes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Bytes(pub u64);

/// A length in 512-byte sectors, the unit of device-mapper tables.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Sectors(pub u64);

impl Bytes {
    /// Whole sectors in this many bytes (rounded down, as dm tables require).
    pub fn sectors(self) -> Sectors {
        Sectors(self.0 / SECTOR_SIZE)
    }

    /// True when the length is a whole number of sectors.
    pub fn is_sector_aligned(self) -> bool {
        self.0.is_multiple_of(SECTOR_SIZE)
    }
}

impl Sectors {
    pub fn bytes(self) -> Bytes {
        Bytes(self.0.saturating_mul(SECTOR_SIZE))
    }
}

impl Add for Bytes {
    type Output = Bytes;
    fn add(self, rhs: Bytes) -> Bytes {
        Bytes(self.0.saturating_add(rhs.0))
    }
}

impl Sub for Bytes {
    type Output = Bytes;
    fn sub(self, rhs: Bytes) -> Bytes {
        Bytes(self.0.saturating_sub(rhs.0))
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&human_size(self.0))
    }
}

impl fmt::Display for Sectors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} sectors", self.0)
    }
}

/// Why a size string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error(
        "invalid size {0:?}: expected a number with an optional binary unit such as 512M, 10G or 1.5T"
    )]
    Malformed(String),
    #[error("size {0:?} is too large")]
    Overflow(String),
}

/// Parses a size the way Docker's `units.RAMInBytes` does: an optional
/// fraction, an optional space, and a binary unit `k|m|g|t|p` with optional
/// `i` and `b` (`10G`, `10GiB`, `512 mb`, `65536`). Case-insensitive.
pub fn parse_size(input: &str) -> Result<Bytes, SizeError> {
    let malformed = || SizeError::Malformed(input.to_string());
    let s = input.trim();
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, rest) = s.split_at(digits_end);
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return Err(malformed());
    }
    let rest = rest.strip_prefix(' ').unwrap_or(rest).to_ascii_lowercase();
    let mut chars = rest.chars().peekable();
    let shift = match chars.peek() {
        Some('k') => 10,
        Some('m') => 20,
        Some('g') => 30,
        Some('t') => 40,
        Some('p') => 50,
        _ => 0,
    };
    if shift != 0 {
        chars.next();
    }
    if chars.peek() == Some(&'i') {
        chars.next();
    }
    if chars.peek() == Some(&'b') {
        chars.next();
    }
    if chars.next().is_some() {
        return Err(malformed());
    }
    let multiplier = 1u128 << shift;
    let bytes = if let Some((whole, frac)) = number.split_once('.') {
        if frac.contains('.') {
            return Err(malformed());
        }
        let whole: u128 = whole.parse().map_err(|_| malformed())?;
        let frac_digits = frac.len().min(18) as u32;
        let frac_val: u128 = frac[..frac_digits as usize]
            .parse()
            .map_err(|_| malformed())?;
        let scale = 10u128.pow(frac_digits);
        whole
            .checked_mul(multiplier)
            .and_then(|w| w.checked_add(frac_val * multiplier / scale))
            .ok_or_else(|| SizeError::Overflow(input.to_string()))?
    } else {
        let whole: u128 = number
            .parse()
            .map_err(|_| SizeError::Overflow(input.to_string()))?;
        whole
            .checked_mul(multiplier)
            .ok_or_else(|| SizeError::Overflow(input.to_string()))?
    };
    u64::try_from(bytes)
        .map(Bytes)
        .map_err(|_| SizeError::Overflow(input.to_string()))
}

/// Formats a byte count as Docker's `units.HumanSize`: decimal units, four
/// significant digits, no space (`65.54kB`, `10.74GB`, `0B`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    format!("{}{}", format_g4(value), UNITS[unit])
}

/// `%.4g` for values in [0, 1000): four significant digits, trailing zeros
/// and a trailing point removed.
fn format_g4(value: f64) -> String {
    if value == 0.0 {
        return "0".to_string();
    }
    let int_digits = if value >= 1.0 {
        (value.log10().floor() as i32 + 1).max(1)
    } else {
        1
    };
    let decimals = (4 - int_digits).max(0) as usize;
    let mut s = format!("{value:.decimals$}");
    if s.contains('.') {
        while s.ends_with('0') {
            s.pop();
        }
        if s.ends_with('.') {
            s.pop();
        }
    }
    s
}

/// Formats a byte count with binary units for humans (`10 GiB`), used where
/// thinsnap prints its own (non-Docker) output.
pub fn human_size_binary(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_sizes() {
        assert_eq!(parse_size("10G").unwrap(), Bytes(10 * 1024 * 1024 * 1024));
        assert_eq!(parse_size("10GiB").unwrap(), Bytes(10 << 30));
        assert_eq!(parse_size("512M").unwrap(), Bytes(512 << 20));
        assert_eq!(parse_size("512 mb").unwrap(), Bytes(512 << 20));
        assert_eq!(parse_size("64k").unwrap(), Bytes(65536));
        assert_eq!(parse_size("65536").unwrap(), Bytes(65536));
        assert_eq!(parse_size("1.5G").unwrap(), Bytes(3 << 29));
        assert_eq!(parse_size("2T").unwrap(), Bytes(2 << 40));
        assert_eq!(parse_size("1b").unwrap(), Bytes(1));
    }

    #[test]
    fn rejects_malformed_sizes() {
        for bad in [
            "", "G", "10X", "-1G", "1..2G", "10GG", ".5G", "5.G", "10 G B", "1e3",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(matches!(
            parse_size("99999999999P"),
            Err(SizeError::Overflow(_))
        ));
    }

    #[test]
    fn formats_like_docker_human_size() {
        assert_eq!(human_size(65536), "65.54kB");
        assert_eq!(human_size(10737418240), "10.74GB");
        assert_eq!(human_size(107374182400), "107.4GB");
        assert_eq!(human_size(11730000), "11.73MB");
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1000), "1kB");
        assert_eq!(human_size(524288), "524.3kB");
        assert_eq!(human_size(2147483648), "2.147GB");
    }

    #[test]
    fn sector_conversions() {
        assert_eq!(Bytes(1024).sectors(), Sectors(2));
        assert_eq!(Sectors(2).bytes(), Bytes(1024));
        assert!(!Bytes(513).is_sector_aligned());
    }

    #[test]
    fn binary_human_size() {
        assert_eq!(human_size_binary(10 << 30), "10.00 GiB");
        assert_eq!(human_size_binary(12), "12 B");
    }
}
