//! The wall clock in unix milliseconds: what the store records, and what the API's own
//! dates (`createdAt`, `Retry-After` dates) are compared with. Waits use tokio's clock
//! instead, so tests can pause time.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
