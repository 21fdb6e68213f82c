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
    /// List a running VM's disks as a --qmp or --libvirt backup would take them:
    /// identity (from the serial or wwn), node or target, image, size and tapevault's
    /// epoch bitmaps or checkpoints.
    Disks(DisksArgs),
}

#[derive(Debug, Args)]
pub struct DisksArgs {
    /// The running QEMU's QMP socket.
    #[arg(
        long,
        value_name = "SOCKET",
        required_unless_present = "libvirt",
        conflicts_with = "libvirt"
    )]
    pub qmp: Option<PathBuf>,
    /// A libvirt domain (name or UUID), read with virsh.
    #[arg(long, value_name = "DOMAIN")]
    pub libvirt: Option<String>,
    /// The libvirt connection URI for --libvirt (default: virsh's).
    #[arg(long, value_name = "URI", requires = "libvirt")]
    pub connect: Option<String>,
}

#[derive(Serialize)]
struct DiskLine {
    /// The disk's identity for the catalog (`null`: the device has no serial or wwn).
    disk: Option<String>,
    identity_from: String,
    device: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    qdev: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    /// libvirt's target name (`vda`): not an identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    driver: String,
    /// The image file (or other backend) QEMU has open for it.
    path: String,
    size: u64,
    read_only: bool,
    serial: Option<String>,
    wwn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bitmaps: Option<Vec<BitmapLine>>,
    /// libvirt: tapevault's checkpoints holding a bitmap of the disk.
    #[serde(skip_serializing_if = "Option::is_none")]
    checkpoints: Option<Vec<String>>,
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

fn libvirt_lines(dom: &str, uri: Option<String>) -> std::result::Result<Vec<DiskLine>, String> {
    use crate::source::libvirt::{domain, driver::epoch_of, virsh::Virsh};
    let v = Virsh::new(uri);
    let d = domain::inspect(&v, dom).map_err(|e| e.to_string())?;
    let mut cps = Vec::new();
    for name in domain::checkpoints(&v, dom).map_err(|e| e.to_string())? {
        if epoch_of(&name).is_some() {
            let x = domain::checkpoint_xml(&v, dom, &name).map_err(|e| e.to_string())?;
            cps.push((name, domain::checkpoint_disks(&x)?));
        }
    }
    Ok(d.disks
        .iter()
        .filter(|x| x.device == "disk" || x.device == "lun")
        .map(|x| DiskLine {
            disk: x.derived_id().map(|u| u.to_string()),
            identity_from: x.identity_source(),
            device: x.target.clone(),
            qdev: None,
            node: None,
            target: Some(x.target.clone()),
            driver: x.format.clone(),
            path: x.source.clone(),
            size: x.size,
            read_only: x.read_only,
            serial: x.serial.clone(),
            wwn: x.wwn.clone(),
            bitmaps: None,
            checkpoints: Some(
                cps.iter()
                    .filter(|(_, t)| t.contains(&x.target))
                    .map(|(n, _)| n.clone())
                    .collect(),
            ),
        })
        .collect())
}

fn disks(ctx: &Ctx, a: DisksArgs) -> Result<()> {
    if let Some(dom) = &a.libvirt {
        let lines = libvirt_lines(dom, a.connect.clone())
            .map_err(|e| Error::Failed(format!("--libvirt {dom}: {e}")))?;
        return emit(ctx, DisksReport { disks: lines });
    }
    let qmp = a.qmp.clone().unwrap_or_default();
    let fail =
        |e: crate::source::qmp::QmpError| Error::Failed(format!("--qmp {}: {e}", qmp.display()));
    let mut c = QmpClient::connect(&qmp, QMP_TIMEOUT).map_err(fail)?;
    let found = discover(&mut c).map_err(fail)?;
    let lines: Vec<DiskLine> = found
        .iter()
        .map(|d| DiskLine {
            disk: d.derived_id().map(|u| u.to_string()),
            identity_from: d.identity_source(),
            device: d.device_name().to_string(),
            qdev: Some(d.qdev.clone()),
            node: Some(d.node.clone()),
            target: None,
            driver: d.driver.clone(),
            path: d.filename.clone(),
            size: d.size,
            read_only: d.read_only,
            serial: d.serial.clone(),
            wwn: d.wwn.clone(),
            checkpoints: None,
            bitmaps: Some(
                d.bitmaps
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
            ),
        })
        .collect();
    emit(ctx, DisksReport { disks: lines })
}

fn emit(ctx: &Ctx, rep: DisksReport) -> Result<()> {
    let lines = &rep.disks;
    ctx.out.emit(&rep, || {
        let mut s = String::new();
        for d in lines {
            s.push_str(&format!(
                "{}  {} ({}) {} {} {} bytes{}\n",
                d.disk
                    .as_deref()
                    .unwrap_or("(no identity: give the device a serial)"),
                d.device,
                d.identity_from,
                match (&d.node, &d.target) {
                    (Some(n), _) => format!("node {n}"),
                    (None, Some(t)) => format!("target {t}"),
                    _ => String::new(),
                },
                d.path,
                d.size,
                if d.read_only {
                    ", read-only: not backed up"
                } else {
                    ""
                }
            ));
            for c in d.checkpoints.iter().flatten() {
                s.push_str(&format!("    checkpoint {c}\n"));
            }
            for b in d.bitmaps.iter().flatten() {
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
