//! The time jobs take as "now". `TAPEVAULT_NOW` (RFC 3339) overrides the system clock so
//! rotation schedules can be simulated over months in tests and dry runs.

use chrono::{DateTime, Utc};

pub const NOW_ENV: &str = "TAPEVAULT_NOW";

pub fn now() -> DateTime<Utc> {
    if let Ok(s) = std::env::var(NOW_ENV) {
        if let Ok(t) = DateTime::parse_from_rfc3339(s.trim()) {
            return t.with_timezone(&Utc);
        }
    }
    Utc::now()
}
