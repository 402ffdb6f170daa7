//! Thin devices: activation (`0 <len> thin <pool> <id>`), deactivation
//! (with deferred removal), suspend/resume around snapshots, status.

use std::time::Duration;

use super::control::{DevNo, DmControl};
use super::error::{DmError, DmResult};
use super::status::{ThinStatus, parse_thin_status};
use super::thin_id::ThinId;
use crate::units::Sectors;

/// How long a synchronous deactivation retries EBUSY (Docker: 200 x 100 ms).
pub const BUSY_WAIT: Duration = Duration::from_secs(5);

/// Activates thin device `id` of the pool at `pool` as `name`.
pub fn activate(
    ctl: &DmControl,
    name: &str,
    pool: DevNo,
    id: ThinId,
    len: Sectors,
) -> DmResult<DevNo> {
    ctl.create(
        name,
        &[(0, len.0, "thin".to_string(), format!("{pool} {id}"))],
    )
}

/// Deactivates `name` (missing is fine). With `deferred`, a device still
/// held open is removed by the kernel when the last opener closes it.
pub fn deactivate(ctl: &DmControl, name: &str, deferred: bool) -> DmResult<()> {
    ctl.remove(
        name,
        deferred,
        if deferred { Duration::ZERO } else { BUSY_WAIT },
    )
}

/// Mapped sectors of an active thin device.
pub fn status(ctl: &DmControl, name: &str) -> DmResult<ThinStatus> {
    let lines = ctl.status(name)?;
    let params = lines.first().map(|l| l.3.clone()).unwrap_or_default();
    parse_thin_status(&params).ok_or(DmError::Parse {
        what: "thin status",
        device: name.to_string(),
        line: params,
    })
}
