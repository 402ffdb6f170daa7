//! Docker's JSON records. Field order, names and types are exactly those
//! of moby's `devInfo`, `DeviceSet` and `transaction` structs, serialised
//! compactly, so files round-trip byte for byte. Missing fields read as
//! zero values and unknown fields are ignored, as Go's decoder does.

use serde::{Deserialize, Serialize};

/// `metadata/<hash>` (and `metadata/base`): one thin device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DevInfo {
    #[serde(default)]
    pub device_id: u32,
    /// Virtual size in bytes.
    #[serde(default)]
    pub size: u64,
    /// The transaction that created the device.
    #[serde(default)]
    pub transaction_id: u64,
    /// True only for the base device once its filesystem is made.
    #[serde(default)]
    pub initialized: bool,
    /// Marked for deferred deletion.
    #[serde(default)]
    pub deleted: bool,
}

/// `metadata/deviceset-metadata`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DeviceSetMeta {
    #[serde(default)]
    pub next_device_id: u32,
    #[serde(rename = "BaseDeviceUUID", default)]
    pub base_device_uuid: String,
    #[serde(rename = "BaseDeviceFilesystem", default)]
    pub base_device_filesystem: String,
}

/// `metadata/transaction-metadata`: the pool change in progress (or the
/// last one, which Docker never removes after it closes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Transaction {
    #[serde(default)]
    pub open_transaction_id: u64,
    /// The device's hash (layer id; `""` is the base device).
    #[serde(default)]
    pub device_hash: String,
    #[serde(default)]
    pub device_id: u32,
}

/// Compact JSON without a trailing newline, as Go's `json.Marshal`.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_docker_bytes() {
        let d = DevInfo {
            device_id: 1,
            size: 10737418240,
            transaction_id: 1,
            initialized: true,
            deleted: false,
        };
        assert_eq!(
            String::from_utf8(encode(&d)).unwrap(),
            r#"{"device_id":1,"size":10737418240,"transaction_id":1,"initialized":true,"deleted":false}"#
        );
        let s = DeviceSetMeta {
            next_device_id: 4,
            base_device_uuid: "378264e5-f41a-431e-bce6-fe40512bd8cb".into(),
            base_device_filesystem: "xfs".into(),
        };
        assert_eq!(
            String::from_utf8(encode(&s)).unwrap(),
            r#"{"next_device_id":4,"BaseDeviceUUID":"378264e5-f41a-431e-bce6-fe40512bd8cb","BaseDeviceFilesystem":"xfs"}"#
        );
        let t = Transaction {
            open_transaction_id: 5,
            device_hash: "c5dd".into(),
            device_id: 5,
        };
        assert_eq!(
            String::from_utf8(encode(&t)).unwrap(),
            r#"{"open_transaction_id":5,"device_hash":"c5dd","device_id":5}"#
        );
    }

    #[test]
    fn lenient_like_go() {
        let d: DevInfo = serde_json::from_str(r#"{"device_id":3,"extra":1}"#).unwrap();
        assert_eq!(d.device_id, 3);
        assert!(!d.initialized);
        assert!(serde_json::from_str::<DevInfo>(r#"{"device_id":"x"}"#).is_err());
    }
}
