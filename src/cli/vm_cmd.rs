//! `tapevault vm`: what tapevault sees of a running VM.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::Ctx;
use crate::error::{Error, Result};
use crate::source::qmp::disks::discover;
use crate::source::qmp::driver::QMP_TIMEOUT;
use crate::source::qmp::QmpClient;

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// List a running VM's disks as a --qmp backup would take them: identity (from the
    /// serial or wwn), node, image, size and tapevault's epoch bitmaps.
    Disks(DisksArgs),
}

#[derive(Debug, Args)]
pub struct DisksArgs {
    /// The running QEMU's QMP socket.
    #[arg(long, value_name = "SOCKET")]
    pub qmp: PathBuf,
}

#[derive(Serialize)]
struct DiskLine {
    /// The disk's identity for the catalog (`null`: the device has no serial or wwn).
    disk: Option<String>,
    identity_from: String,
    device: String,
    qdev: String,
    node: String,
    driver: String,
    /// The image file (or other backend) QEMU has open for it.
    path: String,
    size: u64,
    read_only: bool,
    serial: Option<String>,
    wwn: Option<String>,
    bitmaps: Vec<BitmapLine>,
}

#[derive(Serialize)]
struct DisksReport {
    disks: Vec<DiskLine>,
}

#[derive(Serialize)]
struct BitmapLine {
    name: String,
    granularity: u64,
    recording: bool,
    persistent: bool,
    inconsistent: bool,
    dirty_bytes: u64,
}

pub fn run(ctx: &Ctx, c: VmCommand) -> Result<()> {
    match c {
        VmCommand::Disks(a) => disks(ctx, a),
    }
}

fn disks(ctx: &Ctx, a: DisksArgs) -> Result<()> {
    let fail =
        |e: crate::source::qmp::QmpError| Error::Failed(format!("--qmp {}: {e}", a.qmp.display()));
    let mut c = QmpClient::connect(&a.qmp, QMP_TIMEOUT).map_err(fail)?;
    let found = discover(&mut c).map_err(fail)?;
    let lines: Vec<DiskLine> = found
        .iter()
        .map(|d| DiskLine {
            disk: d.derived_id().map(|u| u.to_string()),
            identity_from: d.identity_source(),
            device: d.device_name().to_string(),
            qdev: d.qdev.clone(),
            node: d.node.clone(),
            driver: d.driver.clone(),
            path: d.filename.clone(),
            size: d.size,
            read_only: d.read_only,
            serial: d.serial.clone(),
            wwn: d.wwn.clone(),
            bitmaps: d
                .bitmaps
                .iter()
                .map(|b| BitmapLine {
                    name: b.name.clone(),
                    granularity: b.granularity,
                    recording: b.recording,
                    persistent: b.persistent,
                    inconsistent: b.inconsistent,
                    dirty_bytes: b.count,
                })
                .collect(),
        })
        .collect();
    let rep = DisksReport { disks: lines };
    let lines = &rep.disks;
    ctx.out.emit(&rep, || {
        let mut s = String::new();
        for d in lines {
            s.push_str(&format!(
                "{}  {} ({}) node {} {} {} bytes{}\n",
                d.disk
                    .as_deref()
                    .unwrap_or("(no identity: give the device a serial)"),
                d.device,
                d.identity_from,
                d.node,
                d.path,
                d.size,
                if d.read_only {
                    ", read-only: not backed up"
                } else {
                    ""
                }
            ));
            for b in &d.bitmaps {
                s.push_str(&format!(
                    "    bitmap {}: {} dirty bytes, granularity {}{}{}\n",
                    b.name,
                    b.dirty_bytes,
                    b.granularity,
                    if b.inconsistent { ", INCONSISTENT" } else { "" },
                    if b.recording { "" } else { ", not recording" }
                ));
            }
        }
        if lines.is_empty() {
            s.push_str("no disks\n");
        }
        s.trim_end().to_string()
    });
    Ok(())
}
