//! Thin device ids: the pool's 24-bit namespace.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Largest thin id a pool accepts (Docker's `MaxDeviceID`).
pub const MAX_THIN_ID: u32 = 0x00ff_ffff;

/// A thin device id inside a pool, checked to fit in 24 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct ThinId(u32);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("thin device id {0} is out of range (0..={MAX_THIN_ID})")]
pub struct ThinIdOutOfRange(pub u64);

impl ThinId {
    pub fn new(id: u64) -> Result<ThinId, ThinIdOutOfRange> {
        if id > MAX_THIN_ID as u64 {
            return Err(ThinIdOutOfRange(id));
        }
        Ok(ThinId(id as u32))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for ThinId {
    type Error = ThinIdOutOfRange;
    fn try_from(v: u32) -> Result<ThinId, ThinIdOutOfRange> {
        ThinId::new(v as u64)
    }
}

impl From<ThinId> for u32 {
    fn from(id: ThinId) -> u32 {
        id.0
    }
}

impl fmt::Display for ThinId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_is_24_bits() {
        assert!(ThinId::new(0).is_ok());
        assert_eq!(ThinId::new(0xffffff).unwrap().get(), 0xffffff);
        assert!(ThinId::new(0x1000000).is_err());
        assert!(serde_json::from_str::<ThinId>("16777216").is_err());
        assert_eq!(
            serde_json::to_string(&ThinId::new(7).unwrap()).unwrap(),
            "7"
        );
    }
}
