//! The device-mapper layer: the only code that issues dm ioctls or touches
//! loop devices. Everything above it speaks in pools, thin ids and devices.

pub mod control;
pub mod error;

pub use control::DmControl;
pub use error::{DmError, DmResult};
