//! iSCSI protocol behaviour: login and negotiation, discovery, NOP during long
//! commands, task management, session reinstatement, malformed PDUs, shutdown.

mod common;

use common::*;
use iscsi_target::initiator::Initiator;
use iscsi_target::pdu::{encode_text, op, Pdu};
use vtl_sim::{FaultOp, Faults, Hang, Library, Read};

const MIB: u64 = 1 << 20;

/// Make drive 0's next write hang for `millis`, and send a TEST UNIT READY through `i`
/// so the drive notices the new fault settings before the timed part.
fn hang_next_write(s: &Served, i: &mut Initiator, millis: u64) {
    let barcode = s.lib.state().unwrap().drives[0].barcode.clone().unwrap();
    s.lib
        .set_faults(
            &barcode,
            &Faults {
                hang: Some(Hang {
                    op: FaultOp::Write,
                    millis,
                    times: 1,
                }),
                ..Default::default()
            },
        )
        .unwrap();
    assert_good(&i.command(DRIVE0, &tur(), &[], 0).unwrap());
}

fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn login_answers_keys_and_refuses_what_it_must() {
    let s = Served::new(64 * MIB, MIB);
    let i = s.login(1);
    let get = |k: &str| {
        i.login_keys
            .iter()
            .find(|(a, _)| a == k)
            .map(|(_, b)| b.clone())
    };
    assert_eq!(get("HeaderDigest").as_deref(), Some("None"));
    assert_eq!(get("DataDigest").as_deref(), Some("None"));
    assert_eq!(get("TargetPortalGroupTag").as_deref(), Some("1"));
    assert_eq!(get("MaxRecvDataSegmentLength").as_deref(), Some("262144"));
    assert_eq!(get("ImmediateData").as_deref(), Some("Yes"));
    assert_eq!(get("InitialR2T").as_deref(), Some("No"));
    assert!(i.tsih != 0);

    let attempt = |keys: &[(&str, &str)], flags: u8, tsih: u16| -> u16 {
        let mut c = Initiator::connect(s.addr).unwrap();
        c.tsih = tsih;
        let r = c.login_pdu(flags, &kv(keys)).unwrap();
        r.u16_at(36)
    };
    let base = [("InitiatorName", INITIATOR), ("SessionType", "Normal")];
    // Unknown target: 02/03; no TargetName: 02/07; no InitiatorName: 02/07.
    let mut k = base.to_vec();
    k.push(("TargetName", "iqn.2025-01.org.example:nothing"));
    assert_eq!(attempt(&k, 0x87, 0), 0x0203);
    assert_eq!(attempt(&base, 0x87, 0), 0x0207);
    assert_eq!(attempt(&[("TargetName", s.name.as_str())], 0x87, 0), 0x0207);
    // CHAP only: authentication failure; CRC32C only: refused.
    let mut k = base.to_vec();
    k.push(("TargetName", s.name.as_str()));
    let mut chap = k.clone();
    chap.push(("AuthMethod", "CHAP"));
    assert_eq!(attempt(&chap, 0x81, 0), 0x0201);
    let mut crc = k.clone();
    crc.push(("HeaderDigest", "CRC32C"));
    assert_eq!(attempt(&crc, 0x87, 0), 0x0200);
    // T and C together, and a current stage of 3: invalid request.
    assert_eq!(attempt(&k, 0xc7, 0), 0x020b);
    assert_eq!(attempt(&k, 0x0c, 0), 0x020b);
    // A second connection to an existing session (TSIH set): not supported.
    assert_eq!(attempt(&k, 0x87, i.tsih), 0x020a);
    // Security stage first, then operational, then full feature: three round trips.
    let mut c = Initiator::connect(s.addr).unwrap();
    let mut sec = k.clone();
    sec.push(("AuthMethod", "None"));
    let r = c.login_pdu(0x81, &kv(&sec)).unwrap();
    assert_eq!(r.u16_at(36), 0);
    assert_eq!(r.flags(), 0x81);
    let r = c
        .login_pdu(0x87, &kv(&[("MaxRecvDataSegmentLength", "8192")]))
        .unwrap();
    assert_eq!(r.u16_at(36), 0);
    assert_eq!(r.flags(), 0x87);
    assert!(r.u16_at(14) != 0, "TSIH assigned in the final response");
    // Something other than a login first: the connection is closed.
    let mut c = Initiator::connect(s.addr).unwrap();
    c.send(&Pdu::new(op::NOP_OUT)).unwrap();
    assert!(c.recv().is_err());
}

#[test]
fn discovery_lists_the_target_and_refuses_scsi() {
    let s = Served::new(64 * MIB, MIB);
    let mut d = Initiator::login(s.addr, INITIATOR, None, [0x80, 0, 0, 0, 0, 9]).unwrap();
    let t = d.send_targets().unwrap();
    assert_eq!(t[0], ("TargetName".to_string(), s.name.clone()));
    assert_eq!(
        t[1],
        (
            "TargetAddress".to_string(),
            format!("127.0.0.1:{},1", s.addr.port())
        )
    );
    let p = d.command_pdu(0, &tur(), &[], 0);
    d.send(&p).unwrap();
    let r = d.recv().unwrap();
    assert_eq!(r.opcode(), op::REJECT);
    assert_eq!(d.logout().unwrap(), 0);
}

#[test]
fn writes_with_r2t_only_when_initial_r2t_and_no_immediate_data() {
    let s = Served::new(64 * MIB, MIB);
    let mut i = Initiator::login_with(
        s.addr,
        INITIATOR,
        Some(&s.name),
        [0x80, 0, 0, 0, 0, 3],
        &[
            ("InitialR2T", "Yes"),
            ("ImmediateData", "No"),
            ("MaxBurstLength", "65536"),
        ],
    )
    .unwrap();
    assert!(i.initial_r2t && !i.immediate_data);
    assert_eq!(i.max_burst, 65536);
    load(&mut i, 0, 0);
    let data = block(5, 200_000);
    let r = i
        .command(DRIVE0, &write6(200_000, false), &data, 0)
        .unwrap();
    assert_good(&r);
    assert_eq!(r.r2ts, 4, "200000 bytes in 64 KiB bursts");
    // EDTL larger than the CDB needs: written, and the surplus is an underflow.
    let r = i
        .command_edtl(DRIVE0, &write6(10, false), &block(6, 16), false, 16)
        .unwrap();
    assert_good(&r);
    assert_eq!(r.residual, 6);
    assert_good(&i.command(DRIVE0, &rewind(), &[], 0).unwrap());
    let r = i
        .command(DRIVE0, &read6(200_000, false, false), &[], 200_000)
        .unwrap();
    assert_eq!(r.data, data);
    let r = i
        .command(DRIVE0, &read6(10, false, false), &[], 10)
        .unwrap();
    assert_eq!(r.data, block(6, 16)[..10].to_vec());
    // Unsolicited data-out with InitialR2T=No and no immediate data also works.
    let mut j = Initiator::login_with(
        s.addr,
        INITIATOR,
        Some(&s.name),
        [0x80, 0, 0, 0, 0, 4],
        &[("InitialR2T", "No"), ("ImmediateData", "No")],
    )
    .unwrap();
    settle(&mut j, DRIVE1);
    load(&mut j, 1, 1);
    let data = block(7, 300_000);
    let r = j
        .command(DRIVE1, &write6(300_000, false), &data, 0)
        .unwrap();
    assert_good(&r);
    assert_eq!(r.r2ts, 1, "first 262144 bytes unsolicited, the rest by R2T");
    assert_good(&j.command(DRIVE1, &rewind(), &[], 0).unwrap());
    let r = j
        .command(DRIVE1, &read6(300_000, false, false), &[], 300_000)
        .unwrap();
    assert_eq!(r.data, data);
}

#[test]
fn nop_is_answered_during_a_long_command_and_abort_drops_a_queued_one() {
    let s = Served::new(64 * MIB, MIB);
    let mut i = s.login(1);
    load(&mut i, 0, 0);
    hang_next_write(&s, &mut i, 3000);
    let w1 = i.command_pdu(DRIVE0, &write6(512, false), &block(1, 512), 0);
    let w2 = i.command_pdu(DRIVE0, &write6(512, false), &block(2, 512), 0);
    let (itt1, itt2) = (w1.itt(), w2.itt());
    i.send(&w1).unwrap();
    i.send(&w2).unwrap();
    let nop = i.nop_pdu(b"ping");
    i.send(&nop).unwrap();
    let r = i.recv().unwrap();
    assert_eq!(
        r.opcode(),
        op::NOP_IN,
        "NOP answered while the write hangs: {r:?}"
    );
    assert_eq!(r.data, b"ping");
    assert_eq!(r.itt(), nop.itt());
    // Abort the queued second write: its response never comes, the first completes.
    let tmf_itt = i.send_tmf(1, DRIVE0, itt2).unwrap();
    let mut seen = Vec::new();
    while !seen.contains(&tmf_itt) {
        let r = i.recv().unwrap();
        match r.opcode() {
            op::SCSI_RESP => {
                assert_eq!(r.itt(), itt1, "no response for the aborted task");
                assert_eq!(r.bhs[3], 0);
                seen.push(r.itt());
            }
            op::TMF_RESP => {
                assert_eq!(r.bhs[2], 0, "function complete");
                seen.push(r.itt());
            }
            other => panic!("unexpected opcode 0x{other:02x}"),
        }
    }
    assert!(seen.contains(&itt1));
    // ABORT TASK for a task the target does not hold (RFC 7143 11.5.1): numbered after
    // this request, or before it but already received, it does not exist; numbered
    // inside the window but never received (lost on the way), it counts as received
    // and aborted.
    let later = i.next_cmd_sn().wrapping_add(3);
    assert_eq!(i.tmf_ref(1, DRIVE0, 0x7777_0000, later).unwrap(), 1);
    let earlier = i.next_cmd_sn().wrapping_sub(1);
    assert_eq!(i.tmf_ref(1, DRIVE0, 0x7777_0001, earlier).unwrap(), 1);
    let lost = i.lose_cmd_sn();
    assert_eq!(i.tmf_ref(1, DRIVE0, 0x7777_0002, lost).unwrap(), 0);
    // Unsupported TMF function; LUN RESET of a LUN that does not exist.
    assert_eq!(i.tmf(3, DRIVE0, 0).unwrap(), 5);
    assert_eq!(i.tmf(5, 42, 0).unwrap(), 2);
    assert_good(&i.command(DRIVE0, &rewind(), &[], 0).unwrap());
    let r = i
        .command(DRIVE0, &read6(512, false, false), &[], 512)
        .unwrap();
    assert_eq!(r.data, block(1, 512));
    let r = i
        .command(DRIVE0, &read6(512, false, false), &[], 512)
        .unwrap();
    assert_sense(&r, 8, 0x00, 0x05);
}

/// The next PDU after an ABORT TASK is its response: nothing for the aborted task may
/// come first (its response would be queued ahead of the TMF response).
fn abort_answers_first(i: &mut Initiator, ref_itt: u32, ref_cmd_sn: u32) -> u8 {
    let tmf_itt = i.send_tmf_ref(1, DRIVE0, ref_itt, ref_cmd_sn).unwrap();
    let r = i.recv().unwrap();
    assert_eq!(r.opcode(), op::TMF_RESP, "TMF response first: {r:?}");
    assert_eq!(r.itt(), tmf_itt);
    r.bhs[2]
}

/// After the TMF response, the session answers the next command and nothing else.
fn only_the_next_command_answers(i: &mut Initiator) {
    let nop = i.nop_pdu(b"after");
    i.send(&nop).unwrap();
    let r = i.recv().unwrap();
    assert_eq!(
        r.opcode(),
        op::NOP_IN,
        "no late response for the aborted task: {r:?}"
    );
    assert_eq!(r.itt(), nop.itt());
}

#[test]
fn abort_task_of_a_write_already_answered_is_task_does_not_exist() {
    // libiscsi's AbortTaskSimpleAsync: a WRITE, then at once ABORT TASK naming it. When
    // the write completed first, its GOOD status and "function complete" together would
    // tell the initiator the write both happened and was aborted.
    let s = Served::new(64 * MIB, MIB);
    let mut i = s.login(1);
    load(&mut i, 0, 0);
    let w = i.command_pdu(DRIVE0, &write6(512, false), &block(4, 512), 0);
    let (itt, sn) = (w.itt(), w.u32_at(24));
    i.send(&w).unwrap();
    let r = i.recv().unwrap();
    assert_eq!((r.opcode(), r.itt(), r.bhs[3]), (op::SCSI_RESP, itt, 0));
    assert_eq!(
        abort_answers_first(&mut i, itt, sn),
        1,
        "task does not exist"
    );
    only_the_next_command_answers(&mut i);
    assert_good(&i.command(DRIVE0, &rewind(), &[], 0).unwrap());
    let r = i
        .command(DRIVE0, &read6(512, false, false), &[], 512)
        .unwrap();
    assert_eq!(r.data, block(4, 512), "the completed write stays written");
}

#[test]
fn abort_task_of_a_running_write_is_function_complete_and_unanswered() {
    let s = Served::new(64 * MIB, MIB);
    let mut i = s.login(1);
    load(&mut i, 0, 0);
    hang_next_write(&s, &mut i, 3000);
    let w = i.command_pdu(DRIVE0, &write6(512, false), &block(5, 512), 0);
    let (itt, sn) = (w.itt(), w.u32_at(24));
    i.send(&w).unwrap();
    // Queued or running, the write is pending until the worker answers it, and the
    // hang keeps it from being answered before the abort arrives.
    assert_eq!(abort_answers_first(&mut i, itt, sn), 0, "function complete");
    only_the_next_command_answers(&mut i);
}

#[test]
fn abort_task_of_a_write_awaiting_r2t_data_drops_it() {
    let s = Served::new(64 * MIB, MIB);
    let mut i = s.login(1);
    load(&mut i, 0, 0);
    // 512 bytes of a 1024-byte write come with the command (F bit set): the target
    // asks for the rest by R2T, and the write waits for it.
    let mut w = i.command_pdu(DRIVE0, &write6(1024, false), &block(6, 1024), 0);
    w.data.truncate(512);
    let (itt, sn) = (w.itt(), w.u32_at(24));
    i.send(&w).unwrap();
    let r2t = i.recv().unwrap();
    assert_eq!((r2t.opcode(), r2t.itt()), (op::R2T, itt), "{r2t:?}");
    assert_eq!((r2t.u32_at(40), r2t.u32_at(44)), (512, 512));
    // A later command waits behind the write (ordered delivery); the abort frees it.
    let t = i.command_pdu(DRIVE0, &tur(), &[], 0);
    i.send(&t).unwrap();
    let tmf_itt = i.send_tmf_ref(1, DRIVE0, itt, sn).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let r = i.recv().unwrap();
        assert!(r.itt() == t.itt() || r.itt() == tmf_itt, "{r:?}");
        if r.opcode() == op::TMF_RESP {
            assert_eq!(r.bhs[2], 0, "function complete");
        } else {
            assert_eq!((r.opcode(), r.bhs[3]), (op::SCSI_RESP, 0), "{r:?}");
        }
        seen.push(r.itt());
    }
    // The data the R2T asked for, sent anyway: dropped, never answered.
    let mut d = Pdu::new(op::DATA_OUT);
    d.set_flags(0x80);
    d.set_lun(r2t.lun());
    d.set_itt(itt);
    d.set_u32(20, r2t.u32_at(20));
    d.set_u32(40, 512);
    d.data = block(6, 1024)[512..].to_vec();
    i.send(&d).unwrap();
    only_the_next_command_answers(&mut i);
    // Nothing reached the tape.
    let r = i.command(DRIVE0, &read_position(0), &[], 20).unwrap();
    assert_good(&r);
    assert_eq!(u32::from_be_bytes(r.data[4..8].try_into().unwrap()), 0);
}

#[test]
fn lun_reset_raises_unit_attention_for_other_nexus() {
    let s = Served::new(64 * MIB, MIB);
    let mut a = s.login(1);
    let mut b = s.login(2);
    settle(&mut a, DRIVE0);
    settle(&mut b, DRIVE0);
    assert_good(&b.command(DRIVE0, &[0x1e, 0, 0, 0, 1, 0], &[], 0).unwrap());
    assert_eq!(a.tmf(5, DRIVE0, 0).unwrap(), 0);
    let r = b.command(DRIVE0, &tur(), &[], 0).unwrap();
    assert_sense(&r, 6, 0x29, 0x03);
    let r = a.command(DRIVE0, &tur(), &[], 0).unwrap();
    assert_sense(&r, 2, 0x3a, 0x00);
    // The reset released b's PREVENT: a RESERVE by a, and b conflicts.
    assert_good(&a.command(DRIVE0, &[0x16, 0, 0, 0, 0, 0], &[], 0).unwrap());
    let r = b.command(DRIVE0, &tur(), &[], 0).unwrap();
    assert_eq!(r.status, 0x18);
    assert_good(&a.command(DRIVE0, &[0x17, 0, 0, 0, 0, 0], &[], 0).unwrap());
}

#[test]
fn session_reinstatement_closes_the_old_session() {
    let s = Served::new(64 * MIB, MIB);
    let mut old = s.login(7);
    settle(&mut old, CHANGER);
    assert_good(
        &old.command(DRIVE0, &inquiry(false, 0, 36), &[], 36)
            .unwrap(),
    );
    let mut new = s.login(7);
    assert!(old.nop(b"x").is_err(), "the old connection is closed");
    // The new session is a new nexus: power-on UA, then normal service.
    let r = new.command(CHANGER, &tur(), &[], 0).unwrap();
    assert_sense(&r, 6, 0x29, 0x00);
    assert_good(&new.command(CHANGER, &tur(), &[], 0).unwrap());
    assert_eq!(s.handle.as_ref().unwrap().sessions(), 1);
}

#[test]
fn malformed_pdus_get_rejects_not_hangs() {
    let s = Served::new(64 * MIB, MIB);
    let mut i = s.login(1);
    // Unknown opcode: Reject "command not supported" carrying the header.
    let mut p = Pdu::new(0x1c);
    p.set_itt(0x1234);
    i.send(&p).unwrap();
    let r = i.recv().unwrap();
    assert_eq!(r.opcode(), op::REJECT);
    assert_eq!(r.bhs[2], 0x05);
    assert_eq!(&r.data[..], &p.encode()[..48]);
    // SNACK at ErrorRecoveryLevel 0 is not supported either.
    i.send(&Pdu::new(op::SNACK_REQ)).unwrap();
    assert_eq!(i.recv().unwrap().bhs[2], 0x05);
    // A data segment beyond our MaxRecvDataSegmentLength: protocol error.
    let mut p = i.nop_pdu(&[]);
    p.data = vec![0; 300_000];
    i.send(&p).unwrap();
    let r = i.recv().unwrap();
    assert_eq!((r.opcode(), r.bhs[2]), (op::REJECT, 0x04));
    // Data-Out for a task nobody knows: dropped; the session goes on.
    let mut d = Pdu::new(op::DATA_OUT);
    d.set_itt(0x4242);
    d.data = vec![1; 100];
    i.send(&d).unwrap();
    assert_eq!(i.nop(b"alive").unwrap(), b"alive");
    // A login request in full feature phase: protocol error.
    let mut l = Pdu::new(op::LOGIN_REQ);
    l.data = encode_text(&kv(&[("InitiatorName", "x")]));
    i.send(&l).unwrap();
    assert_eq!(i.recv().unwrap().bhs[2], 0x04);
    // Immediate data larger than the command's EDTL: protocol error, no execution.
    let mut c = i.command_pdu(DRIVE0, &write6(8, false), &block(0, 16), 0);
    c.set_u32(20, 8);
    i.send(&c).unwrap();
    assert_eq!(i.recv().unwrap().bhs[2], 0x04);
    // CDBs: an unknown opcode and a short group-5 command with garbage.
    let r = i.command(DRIVE0, &[0xff; 16], &[], 0).unwrap();
    assert_sense(&r, 6, 0x29, 0x00);
    let r = i.command(DRIVE0, &[0xff; 16], &[], 0).unwrap();
    assert_sense(&r, 5, 0x20, 0x00);
    let r = i
        .command(CHANGER, &[0xb8, 0x0f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0)
        .unwrap();
    assert_sense(&r, 6, 0x29, 0x00);
    let r = i
        .command(CHANGER, &[0xb8, 0x0f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0)
        .unwrap();
    assert_sense(&r, 5, 0x24, 0x00);
    // A truncated PDU and a hang-up: the target keeps serving others.
    let mut bad = Initiator::connect(s.addr).unwrap();
    bad.send_bytes(&[0x43, 0x87, 0, 0, 0, 0, 1]).unwrap();
    bad.drop_connection();
    let mut j = s.login(2);
    assert_eq!(j.nop(b"ok").unwrap(), b"ok");
    assert_eq!(i.nop(b"ok").unwrap(), b"ok");
}

#[test]
fn disconnect_mid_command_and_shutdown_leave_cartridges_consistent() {
    let mut s = Served::new(64 * MIB, MIB);
    let mut i = s.login(1);
    load(&mut i, 0, 0);
    for k in 0..5 {
        assert_good(
            &i.command(DRIVE0, &write6(4096, false), &block(k, 4096), 0)
                .unwrap(),
        );
    }
    hang_next_write(&s, &mut i, 1500);
    let w = i.command_pdu(DRIVE0, &write6(4096, false), &block(5, 4096), 0);
    i.send(&w).unwrap();
    // Give the worker a moment to start the write (if it has not, the write is simply
    // never done: it was not acknowledged either way).
    std::thread::sleep(std::time::Duration::from_millis(200));
    i.drop_connection();
    // Another initiator gets the drive once the write is done.
    let mut j = s.login(2);
    let r = settle(&mut j, DRIVE0);
    assert_good(&r);
    assert_good(&j.command(DRIVE0, &write_filemarks(1), &[], 0).unwrap());
    // Shut down with j still logged in.
    s.shutdown();
    assert!(j.nop(b"x").is_err());
    let lib = Library::open(s.dir.path()).unwrap();
    let mut d = lib.open_drive(0).unwrap();
    d.locate(0).unwrap();
    let mut buf = vec![0u8; 8192];
    for k in 0..5 {
        assert_eq!(
            d.read_block(&mut buf).unwrap(),
            Read::Block(4096),
            "block {k}"
        );
        assert_eq!(&buf[..4096], &block(k, 4096)[..]);
    }
    // The unacknowledged write is either whole on the cartridge or absent.
    match d.read_block(&mut buf).unwrap() {
        Read::Block(4096) => {
            assert_eq!(&buf[..4096], &block(5, 4096)[..]);
            assert_eq!(d.read_block(&mut buf).unwrap(), Read::Filemark);
        }
        Read::Filemark => {}
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(d.read_block(&mut buf).unwrap(), Read::EndOfData);
}

#[test]
fn refuses_non_loopback_without_permission() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = iscsi_target::TargetConfig::new(dir.path());
    cfg.listen = "0.0.0.0:0".parse().unwrap();
    let e = iscsi_target::Target::serve(cfg.clone()).err().unwrap();
    assert!(e.to_string().contains("not a loopback address"), "{e}");
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    let e = iscsi_target::Target::serve(cfg).err().unwrap();
    assert!(
        e.to_string().contains("holds no virtual tape library"),
        "{e}"
    );
}

#[test]
fn data_out_out_of_sequence_ends_the_task_with_aborted_command() {
    let s = Served::new(64 * MIB, MIB);
    let mut i = Initiator::login_with(
        s.addr,
        INITIATOR,
        Some(&s.name),
        [0x80, 0, 0, 0, 0, 5],
        &[("InitialR2T", "Yes"), ("ImmediateData", "No")],
    )
    .unwrap();
    load(&mut i, 0, 0);
    for (data_sn, offset, ascq) in [(1u32, 0u32, 0x00u8), (0, 512, 0x05)] {
        let mut c = i.command_pdu(DRIVE0, &write6(1024, false), &block(0, 1024), 0);
        c.data.clear();
        let itt = c.itt();
        i.send(&c).unwrap();
        let r2t = i.recv().unwrap();
        assert_eq!(r2t.opcode(), op::R2T);
        let mut d = Pdu::new(op::DATA_OUT);
        d.set_flags(0x80);
        d.set_lun(r2t.lun());
        d.set_itt(itt);
        d.set_u32(20, r2t.u32_at(20));
        d.set_u32(36, data_sn);
        d.set_u32(40, offset);
        d.data = vec![0; 512];
        i.send(&d).unwrap();
        let r = i.recv().unwrap();
        assert_eq!(r.opcode(), op::SCSI_RESP);
        assert_eq!(r.bhs[3], 2, "CHECK CONDITION");
        assert_eq!(
            (r.data[2 + 2] & 0x0f, r.data[2 + 12], r.data[2 + 13]),
            (0x0b, 0x4b, ascq)
        );
    }
    // Nothing was written; the session goes on.
    let r = i.command(DRIVE0, &read_position(0), &[], 20).unwrap();
    assert_eq!(&r.data[4..8], &0u32.to_be_bytes());
    assert_eq!(i.nop(b"ok").unwrap(), b"ok");
}

#[test]
fn lun_reset_from_another_session_aborts_queued_tasks_silently() {
    let s = Served::new(64 * MIB, MIB);
    let mut a = s.login(1);
    let mut b = s.login(2);
    load(&mut a, 0, 0);
    settle(&mut b, DRIVE0);
    hang_next_write(&s, &mut a, 1500);
    let w1 = a.command_pdu(DRIVE0, &write6(512, false), &block(1, 512), 0);
    let w2 = a.command_pdu(DRIVE0, &write6(512, false), &block(2, 512), 0);
    a.send(&w1).unwrap();
    a.send(&w2).unwrap();
    // Once the NOP is answered, the target has both writes (PDUs are read in order).
    let nop = a.nop_pdu(b"sync");
    a.send(&nop).unwrap();
    let r = a.recv().unwrap();
    assert_eq!((r.opcode(), r.itt()), (op::NOP_IN, nop.itt()));
    // b resets the LUN while a's first write hangs and its second is queued.
    assert_eq!(b.tmf(5, DRIVE0, 0).unwrap(), 0);
    // a gets no response for either write; its next command sees the reset.
    let t = a.command_pdu(DRIVE0, &tur(), &[], 0);
    a.send(&t).unwrap();
    let r = a.recv().unwrap();
    assert_eq!(r.opcode(), op::SCSI_RESP);
    assert_eq!(r.itt(), t.itt(), "no response for the aborted writes");
    assert_eq!(r.bhs[3], 2);
    assert_eq!(
        (r.data[2 + 2] & 0x0f, r.data[2 + 12], r.data[2 + 13]),
        (6, 0x29, 0x03)
    );
    // The first write either was running (and completed) or had not started (and never
    // ran); the queued second one never ran.
    assert_good(&a.command(DRIVE0, &rewind(), &[], 0).unwrap());
    let mut r = a
        .command(DRIVE0, &read6(512, false, false), &[], 512)
        .unwrap();
    if r.status == 0 {
        assert_eq!(r.data, block(1, 512));
        r = a
            .command(DRIVE0, &read6(512, false, false), &[], 512)
            .unwrap();
    }
    assert_sense(&r, 8, 0x00, 0x05);
}

#[test]
fn login_text_split_over_continuation_pdus() {
    let s = Served::new(64 * MIB, MIB);
    let mut c = Initiator::connect(s.addr).unwrap();
    // The key list in two PDUs, cut in the middle of a value: C=1, then T=1.
    let text = encode_text(&kv(&[
        ("InitiatorName", INITIATOR),
        ("TargetName", s.name.as_str()),
        ("SessionType", "Normal"),
        ("HeaderDigest", "None"),
        ("DataDigest", "None"),
    ]));
    let cut = 30;
    let mut p = Pdu::new(op::LOGIN_REQ);
    p.set_immediate(true);
    p.set_flags(0x40 | 0x04); // C, CSG=1
    p.bhs[8..14].copy_from_slice(&[0x80, 0, 0, 0, 0, 0x31]);
    p.data = text[..cut].to_vec();
    c.send(&p).unwrap();
    let r = c.recv().unwrap();
    assert_eq!(r.opcode(), op::LOGIN_RESP);
    assert_eq!(r.u16_at(36), 0);
    assert_eq!(r.flags() & 0x80, 0, "no transit while the text continues");
    assert!(r.data.is_empty());
    p.set_flags(0x87);
    p.data = text[cut..].to_vec();
    c.send(&p).unwrap();
    let r = c.recv().unwrap();
    assert_eq!(r.u16_at(36), 0);
    assert_eq!(r.flags(), 0x87);
    let keys = iscsi_target::pdu::parse_text(&r.data);
    assert!(
        keys.contains(&("HeaderDigest".into(), "None".into())),
        "{keys:?}"
    );
}

#[test]
fn too_many_tasks_get_task_set_full() {
    let s = Served::new(64 * MIB, MIB);
    let mut i = s.login(1);
    load(&mut i, 0, 0);
    hang_next_write(&s, &mut i, 1500);
    let w = i.command_pdu(DRIVE0, &write6(512, false), &block(1, 512), 0);
    i.send(&w).unwrap();
    // 40 immediate commands behind the hung write: the session holds at most 32 tasks.
    let mut itts = Vec::new();
    for _ in 0..40 {
        let p = i.command_pdu_with(DRIVE0, &tur(), &[], 0, true);
        itts.push(p.itt());
        i.send(&p).unwrap();
    }
    let mut full = 0;
    let mut good = 0;
    for _ in 0..41 {
        let r = i.recv().unwrap();
        assert_eq!(r.opcode(), op::SCSI_RESP);
        match r.bhs[3] {
            0x28 => full += 1,
            0 => good += 1,
            other => panic!("status 0x{other:02x}"),
        }
    }
    assert_eq!(good, 32, "the write and 31 TURs");
    assert_eq!(full, 9);
    assert_eq!(i.nop(b"ok").unwrap(), b"ok");
}

#[test]
fn the_log_names_sessions_and_the_cause_of_failures() {
    let dir = tempfile::tempdir().unwrap();
    let lib = Library::create(
        dir.path(),
        &vtl_sim::LibraryConfig {
            slots: 2,
            drives: 1,
            mail_slots: 0,
            cartridges: 1,
            capacity: 8 * MIB,
            early_warning: 0,
        },
    )
    .unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    let mut cfg = iscsi_target::TargetConfig::new(dir.path());
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.log = Some(std::sync::Arc::new(move |l: &str| {
        sink.lock().unwrap().push(l.to_string())
    }));
    let h = iscsi_target::Target::serve(cfg).unwrap();
    let mut i = Initiator::login(
        h.local_addr(),
        INITIATOR,
        Some(h.target_name()),
        [0x80, 0, 0, 0, 0, 1],
    )
    .unwrap();
    load(&mut i, 0, 0);
    assert_good(
        &i.command(DRIVE0, &write6(512, false), &block(0, 512), 0)
            .unwrap(),
    );
    lib.set_faults(
        "TV0001L9",
        &Faults {
            media_error_blocks: vec![0],
            ..Default::default()
        },
    )
    .unwrap();
    assert_good(&i.command(DRIVE0, &rewind(), &[], 0).unwrap());
    let r = i
        .command(DRIVE0, &read6(512, false, false), &[], 512)
        .unwrap();
    assert_sense(&r, 3, 0x11, 0x00);
    assert_eq!(i.logout().unwrap(), 0);
    h.shutdown().unwrap();
    let all = lines.lock().unwrap().join("\n");
    assert!(
        all.contains(&format!("login: {INITIATOR} isid 0x800000000001")),
        "{all}"
    );
    assert!(all.contains("drive 0: media error at block 0"), "{all}");
    assert!(all.contains("logged out"), "{all}");
}

#[test]
fn many_commands_in_flight_run_in_order_within_the_cmdsn_window() {
    let s = Served::new(64 * MIB, MIB);
    let mut i = s.login(9);
    settle(&mut i, DRIVE0);
    load(&mut i, 0, 0);
    assert!(i.immediate_data && !i.initial_r2t);
    // 40 writes, more than the target's window of 16: the initiator waits for MaxCmdSN
    // to open (a command beyond it would be dropped and the test would time out). Sizes
    // alternate between all-immediate and immediate plus R2T for the rest.
    let sizes: Vec<usize> = (0..40)
        .map(|k| if k % 3 == 0 { 400_000 } else { 1000 + k * 4099 })
        .collect();
    let mut sent = std::collections::VecDeque::new();
    let mut answered = 0;
    for (k, &n) in sizes.iter().enumerate() {
        let itt = i
            .submit(DRIVE0, &write6(n as u32, false), &block(k as u32, n), 0)
            .unwrap();
        sent.push_back((itt, k));
        assert!(
            !pdu_sn_lt(i.max_cmd_sn(), i.next_cmd_sn().wrapping_sub(1)),
            "command {k} sent beyond MaxCmdSN"
        );
        // Collect only now and then, so the window fills.
        if k % 10 == 9 {
            while sent.len() > 2 {
                let (itt, r) = i.next_done().unwrap();
                let (want, kk) = sent.pop_front().unwrap();
                assert_eq!(itt, want, "write {kk} answered out of order");
                assert_good(&r);
                assert_eq!(r.r2ts, u32::from(sizes[kk] > 262_144), "write {kk}");
                answered += 1;
            }
        }
    }
    while let Some((want, kk)) = sent.pop_front() {
        let (itt, r) = i.next_done().unwrap();
        assert_eq!(itt, want, "write {kk} answered out of order");
        assert_good(&r);
        answered += 1;
    }
    assert_eq!(answered, 40);
    assert_eq!(i.in_flight(), 0);
    assert!(i.next_done().is_err(), "nothing in flight");
    assert_good(&i.command(DRIVE0, &rewind(), &[], 0).unwrap());
    // Read them back with 8 in flight: each block in the order written.
    let mut next = 0;
    for (k, &n) in sizes.iter().enumerate() {
        while next < sizes.len() && sent.len() < 8 {
            let m = sizes[next] as u32;
            sent.push_back((
                i.submit(DRIVE0, &read6(m, false, false), &[], m).unwrap(),
                next,
            ));
            next += 1;
        }
        let (itt, r) = i.next_done().unwrap();
        assert_eq!((itt, k), (sent[0].0, sent[0].1));
        sent.pop_front();
        assert_good(&r);
        assert_eq!(r.data, block(k as u32, n), "block {k}");
    }
    // A failing command among queued ones fails alone: reading past the end of data.
    let a = i.submit(DRIVE0, &read6(10, false, false), &[], 10).unwrap();
    let b = i.submit(DRIVE0, &tur(), &[], 0).unwrap();
    let (itt, r) = i.next_done().unwrap();
    assert_eq!(itt, a);
    assert_eq!(r.status, 2, "CHECK CONDITION at the end of data");
    let (itt, r) = i.next_done().unwrap();
    assert_eq!(itt, b);
    assert_good(&r);
}

fn pdu_sn_lt(a: u32, b: u32) -> bool {
    iscsi_target::pdu::sn_lt(a, b)
}
