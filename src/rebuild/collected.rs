//! What reading the cartridges collects before anything is merged: each cartridge's
//! label and end, image parts, sessions, snapshot locations, and tape files still to be
//! checked. [`Collected::add_file`] files away what one scanned tape file turned out to be.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, TimeZone, Utc};
use tape_formats::VolumeLabel;
use uuid::Uuid;

use super::positioning::FileHead;
use super::tape_file::{FileScan, PartScan};
use super::RebuildReport;
use crate::catalog::SnapshotLocation;

pub(super) fn time_of(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(secs, 0).single().unwrap_or_default()
}

pub(crate) fn nonzero(u: [u8; 16]) -> Option<Uuid> {
    (u != [0; 16]).then(|| Uuid::from_bytes(u))
}

/// What a cartridge's label says, with what was seen at its end.
pub(super) struct LabelSeen {
    pub(super) label: VolumeLabel,
    pub(super) eod_file: u64,
    /// Tape file of the newest end-of-session marker on it.
    pub(super) last_eos_file: Option<u64>,
    pub(super) early_warning: bool,
    pub(super) last_time: Option<i64>,
    pub(super) bytes: u64,
}

#[derive(Default)]
pub(super) struct SessionSeen {
    pub(super) pool: String,
    pub(super) set: Option<Uuid>,
    pub(super) first_time: Option<i64>,
    pub(super) end_time: Option<i64>,
    pub(super) has_images: bool,
}

/// Everything read from the media, merged at the end in dependency order.
#[derive(Default)]
pub(super) struct Collected {
    pub(super) labels: BTreeMap<String, LabelSeen>,
    pub(super) parts: BTreeMap<Uuid, Vec<PartScan>>,
    pub(super) sessions: HashMap<Uuid, SessionSeen>,
    pub(super) snapshots: Vec<SnapshotLocation>,
    /// Image part headers in tape files after a cartridge's last snapshot: scanned
    /// later unless another cartridge's snapshot covers them.
    pub(super) tails: Vec<(String, Vec<(u64, FileHead)>)>,
}

impl Collected {
    pub(super) fn session(&mut self, uuid: Uuid, label: &VolumeLabel) -> &mut SessionSeen {
        self.sessions.entry(uuid).or_insert_with(|| SessionSeen {
            pool: label.pool_name.clone(),
            set: nonzero(label.media_set_uuid),
            ..Default::default()
        })
    }

    pub(super) fn add_file(
        &mut self,
        label: &VolumeLabel,
        barcode: &str,
        tape_file: u64,
        file: FileScan,
        rep: &mut RebuildReport,
    ) {
        match file {
            FileScan::Part(p) => {
                let s = self.session(Uuid::from_bytes(p.header.session_uuid), label);
                s.has_images = true;
                s.first_time = Some(s.first_time.map_or(p.header.time, |t| t.min(p.header.time)));
                if let Some(l) = self.labels.get_mut(barcode) {
                    l.last_time = Some(l.last_time.map_or(p.header.time, |t| t.max(p.header.time)));
                }
                rep.damage.extend(p.damage.iter().cloned());
                let list = self
                    .parts
                    .entry(Uuid::from_bytes(p.header.image_uuid))
                    .or_default();
                if !list
                    .iter()
                    .any(|q| q.barcode == p.barcode && q.tape_file == p.tape_file)
                {
                    list.push(*p);
                }
            }
            FileScan::Snapshot { header, block } => {
                self.snapshots.push(SnapshotLocation {
                    barcode: barcode.to_string(),
                    tape_file,
                    block,
                    session_uuid: Some(Uuid::from_bytes(header.session_uuid)),
                    time: time_of(header.time),
                });
            }
            FileScan::EndOfSession(e) => {
                let s = self.session(Uuid::from_bytes(e.session_uuid), label);
                s.end_time = Some(s.end_time.map_or(e.time, |t| t.max(e.time)));
                if let Some(l) = self.labels.get_mut(barcode) {
                    l.last_time = Some(l.last_time.map_or(e.time, |t| t.max(e.time)));
                }
            }
            FileScan::Empty => {}
            FileScan::Unknown(d) => rep.damage.push(d),
        }
    }
}
