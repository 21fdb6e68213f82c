//! libiscsi's own tools (Debian package libiscsi-bin) against the target: discovery
//! and login as QEMU's initiator does them. Skipped, with a reason, when not installed.

mod common;

use std::process::Command;

use common::*;

fn tool(name: &str) -> Option<String> {
    let p = format!("/usr/bin/{name}");
    if std::path::Path::new(&p).exists() {
        Some(p)
    } else {
        eprintln!("skipping: {name} is not installed (apt-get install libiscsi-bin)");
        None
    }
}

fn run(bin: &str, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg("60")
        .arg(bin)
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{bin} {args:?} failed: {text}");
    text
}

#[test]
fn iscsi_ls_lists_the_changer_and_drives() {
    let Some(ls) = tool("iscsi-ls") else { return };
    let s = Served::new(64 << 20, 1 << 20);
    let url = format!("iscsi://{}/", s.addr);
    let out = run(&ls, &["-s", &url]);
    assert!(
        out.contains(&format!("Target:{} Portal:{},1", s.name, s.addr)),
        "{out}"
    );
    assert!(out.contains("Lun:0    Type:MEDIA_CHANGER"), "{out}");
    assert!(out.contains("Lun:1    Type:SEQUENTIAL_ACCESS"), "{out}");
    assert!(out.contains("Lun:2    Type:SEQUENTIAL_ACCESS"), "{out}");
}

#[test]
fn iscsi_inq_reads_standard_and_vpd_pages() {
    let Some(inq) = tool("iscsi-inq") else { return };
    let s = Served::new(64 << 20, 1 << 20);
    let drive = format!("iscsi://{}/{}/1", s.addr, s.name);
    let out = run(&inq, &[&drive]);
    assert!(
        out.contains("Peripheral Device Type:SEQUENTIAL_ACCESS"),
        "{out}"
    );
    assert!(out.contains("Removable:1"), "{out}");
    assert!(out.contains("Vendor:TAPEVALT"), "{out}");
    let out = run(&inq, &["-e", "1", "-c", "0", &drive]);
    assert!(out.contains("Page:0x80 UNIT_SERIAL_NUMBER"), "{out}");
    assert!(out.contains("Page:0x83 DEVICE_IDENTIFICATION"), "{out}");
    let out = run(&inq, &["-e", "1", "-c", "128", &drive]);
    assert!(out.contains("Unit Serial Number:["), "{out}");
    assert!(out.contains("D000]"), "{out}");
    let changer = format!("iscsi://{}/{}/0", s.addr, s.name);
    let out = run(&inq, &[&changer]);
    assert!(
        out.contains("Peripheral Device Type:MEDIA_CHANGER"),
        "{out}"
    );
    let out = run(&inq, &["-e", "1", "-c", "131", &changer]);
    assert!(out.contains("Designator Type:(1) T10_VENDORT_ID"), "{out}");
}
