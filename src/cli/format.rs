//! How results read to people: byte counts, and the one-line summary of each finished
//! item a job reports (an image written, an image read for a restore, a tape file
//! verified, a cartridge scanned).

use crate::backup::DiskReport;
use crate::catalog::ImageKind;
use crate::events::Finished;
use crate::restore::ImageUse;
use crate::verify::TapeFileReport;

/// Human-readable bytes: 1.5 GiB.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The log line of a finished item.
pub fn finished_line(f: &Finished<'_>) -> String {
    match f {
        Finished::Image(r) => image_written(r),
        Finished::RestoredFrom(u) => restored_from(u),
        Finished::TapeFile { file, .. } => tape_file(file),
        Finished::Cartridge {
            barcode,
            files,
            bytes,
        } => format!(
            "{barcode}: scanned {files} tape files ({})",
            human_bytes(*bytes)
        ),
    }
}

fn image_written(r: &DiskReport) -> String {
    let kind = match (r.kind, r.method, r.synthetic_of) {
        (ImageKind::Incremental, m, _) => format!("incremental ({m})"),
        (_, _, Some(of)) => format!("synthetic full (of image {of})"),
        (k, _, _) => k.to_string(),
    };
    format!(
        "disk {}: {kind} image {}: {} data, {} zero, {} stored in {} records on {} ({:.1} s)",
        r.disk,
        r.image,
        human_bytes(r.data_bytes),
        human_bytes(r.zero_bytes),
        human_bytes(r.stored_bytes),
        r.records,
        r.cartridges.join(", "),
        r.seconds
    )
}

fn restored_from(u: &ImageUse) -> String {
    let (records, checked, skipped) = u
        .read
        .as_ref()
        .map(|r| (r.records_read, r.digest_checked, r.records_skipped))
        .unwrap_or((0, false, 0));
    format!(
        "image {} ({}, {}): {} written from {} records{}",
        u.image,
        u.kind,
        crate::timefmt::show(&u.started),
        human_bytes(u.data_bytes),
        records,
        if checked {
            ", content digest verified".to_string()
        } else {
            format!(
                ", {skipped} records of superseded segments skipped (content digest not checked)"
            )
        }
    )
}

fn tape_file(f: &TapeFileReport) -> String {
    format!(
        "tape file {}: {}{}: {} block(s){}",
        f.file,
        f.kind,
        match (f.image, f.part) {
            (Some(i), Some(p)) => format!(" (image {i} part {p})"),
            _ => String::new(),
        },
        f.blocks,
        if f.problems.is_empty() {
            String::from(", ok")
        } else {
            format!(
                ", {} problem(s): {}",
                f.problems.len(),
                f.problems.join("; ")
            )
        }
    )
}
