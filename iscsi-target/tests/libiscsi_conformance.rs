//! libiscsi's conformance suite (`iscsi-test-cu`, package libiscsi-bin) on the iSCSI
//! layer: CmdSN and DataSN handling, residuals, task management. Its tests need a disk,
//! so this test serves a small RAM disk (SBC) logical unit written here for the purpose
//! through `Target::serve_units`. Skipped, with a reason, when the tool is missing.

use std::process::Command;
use std::sync::{Arc, Mutex};

use iscsi_target::scsi::{inquiry, key, Identity};
use iscsi_target::{Handle, LogicalUnit, LunTable, Nexus, Response, Sense, Target, TargetConfig};

const BLOCK: usize = 512;
const BLOCKS: u64 = 4096;

/// A RAM disk: just enough SBC for iscsi-test-cu's iSCSI tests.
struct RamDisk {
    data: Mutex<Vec<u8>>,
    id: Identity,
}

impl RamDisk {
    fn rw(&self, cdb: &[u8], data_out: &[u8]) -> Response {
        let (lba, len) = match cdb[0] {
            0x28 | 0x2a | 0x2e => (
                u32::from_be_bytes(cdb[2..6].try_into().unwrap()) as u64,
                u16::from_be_bytes([cdb[7], cdb[8]]) as u64,
            ),
            0xa8 | 0xaa | 0xae => (
                u32::from_be_bytes(cdb[2..6].try_into().unwrap()) as u64,
                u32::from_be_bytes(cdb[6..10].try_into().unwrap()) as u64,
            ),
            _ => (
                u64::from_be_bytes(cdb[2..10].try_into().unwrap()),
                u32::from_be_bytes(cdb[10..14].try_into().unwrap()) as u64,
            ),
        };
        if lba.checked_add(len).is_none_or(|e| e > BLOCKS) {
            return Response::check(Sense::new(key::ILLEGAL_REQUEST, 0x21, 0x00));
        }
        let (a, b) = (lba as usize * BLOCK, (lba + len) as usize * BLOCK);
        let write = matches!(cdb[0], 0x2a | 0xaa | 0x8a | 0x2e | 0xae | 0x8e);
        let mut d = self.data.lock().unwrap();
        if write {
            let n = data_out.len().min(b - a);
            d[a..a + n].copy_from_slice(&data_out[..n]);
            Response::good().expecting(b - a)
        } else {
            Response::good().with_data(d[a..b].to_vec())
        }
    }
}

impl LogicalUnit for RamDisk {
    fn device_type(&self) -> u8 {
        0
    }
    fn execute(&self, _nexus: &Nexus, cdb: &[u8], data_out: &[u8]) -> Response {
        match cdb[0] {
            0x00 => Response::good(),
            0x03 => Response::data(Sense::new(0, 0, 0).to_bytes(), cdb[4] as usize),
            0x12 => inquiry(cdb, 0, false, &self.id),
            0x1a => Response::data(vec![3, 0, 0, 0], cdb[4] as usize),
            0x5a => Response::data(
                vec![0, 6, 0, 0, 0, 0, 0, 0],
                u16::from_be_bytes([cdb[7], cdb[8]]) as usize,
            ),
            0x25 => {
                let mut d = ((BLOCKS - 1) as u32).to_be_bytes().to_vec();
                d.extend((BLOCK as u32).to_be_bytes());
                Response::data(d, 8)
            }
            0x9e if cdb[1] & 0x1f == 0x10 => {
                let mut d = (BLOCKS - 1).to_be_bytes().to_vec();
                d.extend((BLOCK as u32).to_be_bytes());
                d.resize(32, 0);
                Response::data(
                    d,
                    u32::from_be_bytes(cdb[10..14].try_into().unwrap()) as usize,
                )
            }
            0x28 | 0x2a | 0x2e | 0xa8 | 0xaa | 0xae | 0x88 | 0x8a | 0x8e => self.rw(cdb, data_out),
            _ => Response::check(Sense::invalid_opcode()),
        }
    }
}

const BIN: &str = "/usr/bin/iscsi-test-cu";

/// A target serving one RAM disk as LUN 0.
fn ram_disk_target() -> Handle {
    let mut luns = LunTable::new();
    luns.insert(
        0,
        Arc::new(RamDisk {
            data: Mutex::new(vec![0u8; BLOCK * BLOCKS as usize]),
            id: Identity {
                vendor: "TAPEVALT".into(),
                product: "RAMDISK".into(),
                revision: "0001".into(),
                serial: "RAM0".into(),
                naa_id: 7,
            },
        }),
    );
    let mut cfg = TargetConfig::new("/nonexistent");
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    Target::serve_units(cfg, luns).unwrap()
}

fn url(h: &Handle) -> String {
    format!("iscsi://{}/{}/0", h.local_addr(), h.target_name())
}

fn installed() -> bool {
    let there = std::path::Path::new(BIN).exists();
    if !there {
        eprintln!("skipping: iscsi-test-cu is not installed (apt-get install libiscsi-bin)");
    }
    there
}

#[test]
fn iscsi_test_cu_iscsi_suite_passes() {
    if !installed() {
        return;
    }
    let h = ram_disk_target();
    let url = url(&h);
    // One retry: libiscsi's iSCSIDataSnInvalid was seen failing now and then (a later
    // WRITE(10) answered COMMAND ABORTED) on a loaded 2-core machine. A target that
    // fails the suite twice in a row fails the test; a single failure is printed.
    let mut failures = Vec::new();
    for _attempt in 0..2 {
        let out = Command::new("timeout")
            .args(["300", BIN, "--dataloss", "--test=iSCSI", &url])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        eprintln!("{text}");
        if out.status.success() {
            break;
        }
        failures.push(text);
    }
    assert!(
        failures.len() < 2,
        "iscsi-test-cu failed twice in a row:\n{}",
        failures.join("\n----- again -----\n")
    );
    if !failures.is_empty() {
        eprintln!("note: iscsi-test-cu failed once and passed on the second run");
    }
    h.shutdown().unwrap();
}

/// libiscsi's AbortTaskSimpleAsync races an ABORT TASK against the WRITE it names: the
/// target must answer either the write (GOOD) and "task does not exist", or "function
/// complete" and nothing for the write. Run it repeatedly (ISCSI_ABORT_ROUNDS, default
/// 20): a target that answers both the write and "function complete" fails some rounds.
#[test]
fn abort_task_simple_async_passes_repeatedly() {
    if !installed() {
        return;
    }
    let rounds: usize = std::env::var("ISCSI_ABORT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let h = ram_disk_target();
    let url = url(&h);
    let mut failed = Vec::new();
    for round in 0..rounds {
        let out = Command::new("timeout")
            .args([
                "60",
                BIN,
                "--dataloss",
                "--test=iSCSI.iSCSITMF.AbortTaskSimpleAsync",
                &url,
            ])
            .output()
            .unwrap();
        if !out.status.success() {
            failed.push(format!(
                "round {round}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    eprintln!(
        "AbortTaskSimpleAsync: {} of {rounds} rounds failed",
        failed.len()
    );
    assert!(failed.is_empty(), "{}", failed.join("\n-----\n"));
    h.shutdown().unwrap();
}
