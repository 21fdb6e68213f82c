//! How tapevault prints and reads back the time of an image or session: one form
//! everywhere ([`show`], six fractional digits, as the catalog keeps it) and `--at`
//! parsing ([`parse_at`]) that counts a time to the precision given.

use chrono::{DateTime, Utc};

/// The one form in which tapevault prints an image's or session's time: RFC 3339 in
/// UTC with exactly six fractional digits, which is what the catalog stores. Given back
/// to `--at`, it selects exactly the image it was printed for.
pub fn show(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Serde `serialize_with` helpers printing times as [`show`] does, so JSON and text agree.
pub mod serde_show {
    use chrono::{DateTime, Utc};

    pub fn time<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::show(t))
    }

    pub fn opt<S: serde::Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&super::show(t)),
            None => s.serialize_none(),
        }
    }
}

/// Parse a point in time given to `--at`. Returns the latest instant (to the
/// microsecond) the text denotes, so that "the newest image at or before it" includes
/// every image whose time, cut to the precision given, equals it:
///
/// - `now` (the job's clock, `TAPEVAULT_NOW` or the system's);
/// - a date `YYYY-MM-DD`: the end of that day, UTC;
/// - a date and time with a zone (`Z` or `+HH:MM`/`-HH:MM`), `T` or a space between,
///   minutes, seconds and any number of fractional digits optional:
///   `2026-12-03T16:48Z` is the whole minute, `2026-12-03T16:48:16Z` the whole second,
///   `2026-12-03T16:48:16.520000Z` that microsecond.
pub fn parse_at(text: &str) -> Result<DateTime<Utc>, String> {
    use chrono::{Duration, FixedOffset, NaiveDate, NaiveTime, TimeZone};
    let s = text.trim();
    let bad = |why: &str| {
        format!(
            "bad time {text:?}: {why} (give `now`, a date such as 2026-12-03 (its end, UTC), or a time with a zone such as 2026-12-03T16:48:16Z, 2026-12-03T18:48:16+02:00 or 2026-12-03T16:48:16.520000Z as tapevault prints it)"
        )
    };
    if s.eq_ignore_ascii_case("now") {
        return Ok(crate::catalog::catalog_time(crate::home::clock::now()));
    }
    if s.len() == 10 {
        let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|e| bad(&e.to_string()))?;
        let end = d
            .and_hms_micro_opt(23, 59, 59, 999_999)
            .ok_or_else(|| bad("no such day"))?;
        return Ok(Utc.from_utc_datetime(&end));
    }
    if s.len() < 11 || !s.is_char_boundary(10) || !s.is_char_boundary(11) {
        return Err(bad("expected a date, a time and a zone"));
    }
    let date = NaiveDate::parse_from_str(&s[..10], "%Y-%m-%d").map_err(|e| bad(&e.to_string()))?;
    let sep = &s[10..11];
    if !(sep == "T" || sep == "t" || sep == " ") {
        return Err(bad("expected T or a space between the date and the time"));
    }
    let rest = &s[11..];
    // Split off the zone: a trailing Z, or +HH:MM / -HH:MM.
    let (clock, offset) = if let Some(c) = rest.strip_suffix(['Z', 'z']) {
        (c, FixedOffset::east_opt(0).expect("zero offset"))
    } else {
        let pos = rest.rfind(['+', '-']).ok_or_else(|| {
            bad("the time has no zone; add Z for UTC or an offset such as +02:00")
        })?;
        let z = &rest[pos..];
        let sign = if z.starts_with('-') { -1 } else { 1 };
        let hm = &z[1..];
        let (h, m) = match hm.split_once(':') {
            Some((h, m)) => (h, m),
            None if hm.len() == 4 => (&hm[..2], &hm[2..]),
            None => (hm, "00"),
        };
        let (h, m): (i32, i32) = match (h.parse::<i32>(), m.parse::<i32>()) {
            (Ok(hv), Ok(mv)) if h.len() == 2 && m.len() == 2 && hv < 24 && mv < 60 => (hv, mv),
            _ => return Err(bad(&format!("bad zone offset {z:?}"))),
        };
        (
            &rest[..pos],
            FixedOffset::east_opt(sign * (h * 3600 + m * 60)).ok_or_else(|| bad("bad zone"))?,
        )
    };
    let (hms, frac) = match clock.split_once(['.', ',']) {
        Some((a, f)) => (a, Some(f)),
        None => (clock, None),
    };
    let parts: Vec<&str> = hms.split(':').collect();
    let field = |p: &str, max: u32, what: &str| -> Result<u32, String> {
        match p.parse::<u32>() {
            Ok(v) if p.len() == 2 && v <= max => Ok(v),
            _ => Err(bad(&format!("bad {what} {p:?}"))),
        }
    };
    let (h, m, sec, unit_us): (u32, u32, u32, i64) = match parts.as_slice() {
        [h, m] if frac.is_none() => (
            field(h, 23, "hour")?,
            field(m, 59, "minute")?,
            0,
            60_000_000,
        ),
        [h, m, sec] => (
            field(h, 23, "hour")?,
            field(m, 59, "minute")?,
            field(sec, 59, "second")?,
            1_000_000,
        ),
        _ => return Err(bad("expected HH:MM or HH:MM:SS[.fraction]")),
    };
    let (micros, unit_us) = match frac {
        None => (0i64, unit_us),
        Some(f) if !f.is_empty() && f.len() <= 9 && f.bytes().all(|b| b.is_ascii_digit()) => {
            if f.len() > 6 && f[6..].bytes().any(|b| b != b'0') {
                return Err(bad(
                    "tapevault keeps times to the microsecond: give at most six fractional digits",
                ));
            }
            let six = format!("{:0<6}", &f[..f.len().min(6)]);
            let v: i64 = six.parse().map_err(|_| bad("bad fraction"))?;
            (v, 10i64.pow(6 - f.len().min(6) as u32))
        }
        Some(f) => return Err(bad(&format!("bad fraction {f:?}"))),
    };
    let t = NaiveTime::from_hms_opt(h, m, sec).ok_or_else(|| bad("no such time"))?;
    let local = date.and_time(t);
    let start = offset
        .from_local_datetime(&local)
        .single()
        .ok_or_else(|| bad("no such time"))?
        .with_timezone(&Utc)
        + Duration::microseconds(micros);
    Ok(start + Duration::microseconds(unit_us - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> String {
        show(&parse_at(s).unwrap())
    }

    #[test]
    fn at_covers_the_precision_given() {
        assert_eq!(p("2026-12-03"), "2026-12-03T23:59:59.999999Z");
        assert_eq!(p("2026-12-03T16:48Z"), "2026-12-03T16:48:59.999999Z");
        assert_eq!(p("2026-12-03T16:48:16Z"), "2026-12-03T16:48:16.999999Z");
        assert_eq!(p("2026-12-03 16:48:16.5Z"), "2026-12-03T16:48:16.599999Z");
        assert_eq!(
            p("2026-12-03T16:48:16.520000Z"),
            "2026-12-03T16:48:16.520000Z"
        );
        assert_eq!(
            p("2026-12-03T16:48:16.520000000Z"),
            "2026-12-03T16:48:16.520000Z"
        );
        assert_eq!(
            p("2026-12-03T18:48:16+02:00"),
            "2026-12-03T16:48:16.999999Z"
        );
        assert_eq!(
            p("2026-12-03T11:48:16-05:00"),
            "2026-12-03T16:48:16.999999Z"
        );
        assert_eq!(p("2026-12-03T18:48:16+0200"), "2026-12-03T16:48:16.999999Z");
        // Printed times round-trip exactly.
        let t: DateTime<Utc> = "2026-12-03T16:48:16.520001Z".parse().unwrap();
        assert_eq!(parse_at(&show(&t)).unwrap(), t);
    }

    #[test]
    fn bad_times_name_the_value() {
        for s in [
            "",
            "yesterday",
            "2026-13-03",
            "2026-02-30",
            "2026-12-03T16:48:16",
            "2026-12-03T25:00Z",
            "2026-12-03T16:48:16.1234567Z",
            "2026-12-03T16:48:16.Z",
            "2026-12-03T16:48:16+2:00",
            "2026-12-03X16:48Z",
        ] {
            let e = parse_at(s).unwrap_err();
            assert!(e.contains(&format!("{s:?}")), "{s}: {e}");
        }
    }
}
