//! The device-mapper layer: the only code that issues dm ioctls or touches
//! loop devices. Everything above it speaks in pools, thin ids and devices.

pub mod block;
pub mod control;
pub mod devnode;
pub mod error;
pub mod holders;
pub mod loopback;
pub mod pool;
pub mod status;
pub mod thin;
pub mod thin_id;

pub use control::{DevNo, DmControl};
pub use error::{DmError, DmResult};
pub use pool::{Pool, PoolTable, ThinUsage};
pub use status::{PoolMode, PoolStatus, ThinStatus};
pub use thin_id::ThinId;
