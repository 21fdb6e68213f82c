//! The drive's data encryption (SECURITY PROTOCOL IN/OUT, security protocol 0x20)
//! through the whole stack: tapevault's own page builders over our initiator, the
//! target, and the cartridge files on disk.

mod common;

use common::*;
use iscsi_target::initiator::{CommandResult, Initiator};
use tape_devices::scsi::cdb::{security_protocol_in, security_protocol_out};
use tape_devices::scsi::encryption as te;

const MIB: u64 = 1 << 20;

fn spin(i: &mut Initiator, protocol: u8, page: u16) -> CommandResult {
    ask(i, DRIVE0, &security_protocol_in(protocol, page, 8192), 8192)
}

fn spout(i: &mut Initiator, page: &[u8]) -> CommandResult {
    i.command(
        DRIVE0,
        &security_protocol_out(te::TAPE_DATA_ENCRYPTION, 0x0010, page.len() as u32),
        page,
        0,
    )
    .unwrap()
}

fn status(i: &mut Initiator) -> te::EncryptionStatus {
    let r = spin(i, 0x20, te::PAGE_STATUS);
    assert_good(&r);
    te::parse_status(&r.data).unwrap()
}

/// Every file of the library, searched for `needle`.
fn library_contains(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
            {
                hits.push(p);
            }
        }
    }
    hits
}

fn rewind_drive(i: &mut Initiator) {
    assert_good(&ask(i, DRIVE0, &rewind(), 0));
}

fn block_position(i: &mut Initiator) -> u32 {
    let r = ask(i, DRIVE0, &read_position(0), 20);
    assert_good(&r);
    u32::from_be_bytes(r.data[4..8].try_into().unwrap())
}

/// The set page laid out as stenc's `make_sde` builds it (SSC-4 8.5.3.2) for an
/// encrypting mode with `--ckod` and an RDMC choice: scope ALL I_T NEXUS, CEEM 1 (no
/// external encryption mode check), RDMC 2, CKOD, key format 0, an ASCII U-KAD (the
/// key's description).
fn stenc_page(key: &[u8; 32], decryption_mode: u8) -> Vec<u8> {
    let mut p = vec![0u8; 20];
    p[0..2].copy_from_slice(&0x0010u16.to_be_bytes());
    p[4] = 2 << 5;
    p[5] = (1 << 6) | (2 << 4) | 0x04;
    p[6] = 2;
    p[7] = decryption_mode;
    p[8] = 1;
    p[10] = 2; // KAD format ASCII
    p[18..20].copy_from_slice(&32u16.to_be_bytes());
    p.extend_from_slice(key);
    let kad = b"backup key 2026";
    p.extend_from_slice(&[0, 0, 0, kad.len() as u8]);
    p.extend_from_slice(kad);
    let n = (p.len() - 4) as u16;
    p[2..4].copy_from_slice(&n.to_be_bytes());
    p
}

#[test]
fn pages_report_one_aes256_gcm_algorithm_tapevault_accepts() {
    let s = Served::new(64 * MIB, MIB);
    let mut i = s.login(1);
    load(&mut i, 0, 0);
    let r = spin(&mut i, 0x00, 0x0000);
    assert_good(&r);
    assert_eq!(te::parse_protocol_list(&r.data).unwrap(), vec![0x00, 0x20]);
    let r = spin(&mut i, 0x20, te::PAGE_IN_SUPPORT);
    assert_eq!(
        te::parse_page_list(&r.data).unwrap(),
        vec![0x0000, 0x0001, 0x0010, 0x0020, 0x0021]
    );
    let r = spin(&mut i, 0x20, te::PAGE_OUT_SUPPORT);
    assert_eq!(te::parse_page_list(&r.data).unwrap(), vec![0x0010]);
    let r = spin(&mut i, 0x20, te::PAGE_CAPABILITIES);
    let algs = te::parse_capabilities(&r.data).unwrap();
    assert_eq!(algs.len(), 1);
    assert!(algs[0].usable(), "tapevault must accept it: {:?}", algs[0]);
    assert_eq!(algs[0].code, te::AES256_GCM);
    assert_eq!(algs[0].key_size, 32);
    // Nothing set yet.
    let st = status(&mut i);
    assert_eq!((st.encryption_mode, st.decryption_mode), (0, 0));
    // stenc's pages: on, then off (modes 0, the default algorithm index, no key).
    assert_good(&spout(&mut i, &stenc_page(&[4; 32], 2)));
    let r = spin(&mut i, 0x20, te::PAGE_STATUS);
    assert_eq!(r.data.len(), 24 + 4 + 15, "status page with the U-KAD");
    assert_eq!(r.data[4], (2 << 5) | 2, "scopes");
    assert_eq!(r.data[12] & 0x06, 1 << 1, "CEEMS as set");
    let mut off = vec![0u8; 20];
    off[0..2].copy_from_slice(&0x0010u16.to_be_bytes());
    off[2..4].copy_from_slice(&16u16.to_be_bytes());
    off[4] = 2 << 5;
    off[5] = 1 << 6;
    off[8] = 1;
    assert_good(&spout(&mut i, &off));
    let st = status(&mut i);
    assert_eq!((st.encryption_mode, st.decryption_mode), (0, 0));
    // Unknown page, unknown protocol, INC_512.
    assert_sense(&spin(&mut i, 0x20, 0x0022), 5, 0x24, 0x00);
    assert_sense(&spin(&mut i, 0x01, 0x0000), 5, 0x24, 0x00);
    let mut cdb = security_protocol_in(0x20, 0, 64);
    cdb[4] = 0x80;
    assert_sense(&ask(&mut i, DRIVE0, &cdb, 64), 5, 0x24, 0x00);
    // Allocation length cuts the page.
    let r = ask(&mut i, DRIVE0, &security_protocol_in(0x20, 0x0010, 8), 8);
    assert_good(&r);
    assert_eq!(r.data.len(), 8);
}

#[test]
fn encrypted_blocks_never_reach_the_cartridge_in_the_clear() {
    let s = Served::new(64 * MIB, MIB);
    let mut i = s.login(2);
    load(&mut i, 0, 0);
    let key_a = [0x5a; 32];
    let key_b = [0xa5; 32];
    let fp = [0x11; 16];
    let set_a = te::set_data_encryption_page(1, &key_a, te::KAD_UNAUTHENTICATED, &fp);
    assert_good(&spout(&mut i, &set_a));
    let st = status(&mut i);
    assert_eq!((st.encryption_mode, st.decryption_mode), (2, 2));
    assert_eq!(st.algorithm_index, 1);
    assert_eq!(st.kad, vec![(0u8, fp.to_vec())]);

    // Two encrypted blocks, a filemark.
    let canary: Vec<u8> = b"CANARY-PLAINTEXT-7f3e9a-"
        .iter()
        .copied()
        .cycle()
        .take(1000)
        .collect();
    let second = block(9, 4096);
    assert_good(&i.command(DRIVE0, &write6(1000, false), &canary, 0).unwrap());
    assert_good(&i.command(DRIVE0, &write6(4096, false), &second, 0).unwrap());
    assert_good(&ask(&mut i, DRIVE0, &write_filemarks(1), 0));
    // Turn encryption off and write a plain block after the filemark.
    assert_good(&spout(&mut i, &te::clear_data_encryption_page()));
    let st = status(&mut i);
    assert_eq!((st.encryption_mode, st.decryption_mode), (0, 0));
    let plain = block(3, 512);
    assert_good(&i.command(DRIVE0, &write6(512, false), &plain, 0).unwrap());
    assert_good(&ask(&mut i, DRIVE0, &write_filemarks(1), 0));

    // On disk: no plaintext of the encrypted blocks anywhere, the plain block as is,
    // and a version 2 index.
    let hits = library_contains(s.dir.path(), b"CANARY-PLAINTEXT");
    assert!(hits.is_empty(), "plaintext on disk in {hits:?}");
    let hits = library_contains(s.dir.path(), &second[..64]);
    assert!(hits.is_empty(), "plaintext on disk in {hits:?}");
    let hits = library_contains(s.dir.path(), &plain[..64]);
    assert_eq!(hits.len(), 1, "{hits:?}");
    let cart = hits[0].parent().unwrap();
    assert_eq!(
        &std::fs::read(cart.join("index")).unwrap()[..8],
        b"VTLIDX02"
    );

    // Next block encryption status (page 0x0021, what stenc shows): the block at BOT is
    // encrypted and, with no key, cannot be decrypted; the one after the first filemark
    // is plain; reading it does not move the tape.
    rewind_drive(&mut i);
    let nbes = |i: &mut Initiator| {
        let r = spin(i, 0x20, 0x0021);
        assert_good(&r);
        assert_eq!(&r.data[0..4], &[0x00, 0x21, 0x00, 12], "{:?}", r.data);
        (
            u64::from_be_bytes(r.data[4..12].try_into().unwrap()),
            r.data[12] & 0x0f,
        )
    };
    assert_eq!(nbes(&mut i), (0, 6), "encrypted, no key");
    assert_eq!(
        nbes(&mut i),
        (0, 6),
        "the status page does not move the tape"
    );
    assert_eq!(block_position(&mut i), 0);
    ask(&mut i, DRIVE0, &[0x11, 0x01, 0, 0, 1, 0], 0);
    assert_eq!(nbes(&mut i), (3, 3), "after the filemark: not encrypted");
    ask(&mut i, DRIVE0, &[0x11, 0x00, 0, 0, 1, 0], 0);
    assert_eq!(nbes(&mut i), (4, 2), "a filemark is not a logical block");
    ask(&mut i, DRIVE0, &[0x11, 0x03, 0, 0, 0, 0], 0);
    assert_eq!(nbes(&mut i), (5, 1), "end of data");
    assert_good(&spout(&mut i, &set_a));
    rewind_drive(&mut i);
    assert_eq!(nbes(&mut i), (0, 5), "encrypted, key loaded");
    assert_good(&spout(&mut i, &te::clear_data_encryption_page()));

    // No key: DATA PROTECT 74/01 and the position moves past the block.
    rewind_drive(&mut i);
    let r = ask(&mut i, DRIVE0, &read6(1000, false, false), 1000);
    assert_sense(&r, 7, 0x74, 0x01);
    assert!(r.data.is_empty());
    assert_eq!(block_position(&mut i), 1);
    // A plain block reads as is with decryption off.
    assert_good(&ask(&mut i, DRIVE0, &locate10(3), 0));
    let r = ask(&mut i, DRIVE0, &read6(512, false, false), 512);
    assert_good(&r);
    assert_eq!(r.data, plain);

    // Another key: the tag does not verify, 74/01.
    let set_b = te::set_data_encryption_page(1, &key_b, te::KAD_UNAUTHENTICATED, &fp);
    assert_good(&spout(&mut i, &set_b));
    rewind_drive(&mut i);
    let r = ask(&mut i, DRIVE0, &read6(1000, false, false), 1000);
    assert_sense(&r, 7, 0x74, 0x01);

    // The right key: the plaintext, with the lengths the host wrote.
    assert_good(&spout(&mut i, &set_a));
    rewind_drive(&mut i);
    let r = ask(&mut i, DRIVE0, &read6(1000, false, false), 1000);
    assert_good(&r);
    assert_eq!(r.data, canary);
    // Shorter than the block without SILI: ILI, residual against the plaintext length.
    let r = ask(&mut i, DRIVE0, &read6(100, false, false), 100);
    assert_eq!(r.status, 2);
    assert_eq!(r.data, &second[..100]);
    let sense = r.sense.clone();
    assert_ne!(sense[2] & 0x20, 0, "ILI: {sense:?}");
    assert_eq!(
        i32::from_be_bytes(sense[3..7].try_into().unwrap()),
        100 - 4096
    );
    assert_eq!(block_position(&mut i), 2);
    // Longer with SILI: GOOD, the true length.
    rewind_drive(&mut i);
    assert_good(&ask(&mut i, DRIVE0, &space6(0, 1), 0));
    let r = ask(&mut i, DRIVE0, &read6(8192, false, true), 8192);
    assert_good(&r);
    assert_eq!(r.data, second);
    // Mode DECRYPT refuses the plain block: 74/02.
    assert_good(&ask(&mut i, DRIVE0, &locate10(3), 0));
    let r = ask(&mut i, DRIVE0, &read6(512, false, false), 512);
    assert_sense(&r, 7, 0x74, 0x02);
    // Mode MIXED (the page stenc sends for --encrypt=mixed) reads both.
    assert_good(&spout(&mut i, &stenc_page(&key_a, 3)));
    let st = status(&mut i);
    assert_eq!((st.encryption_mode, st.decryption_mode), (2, 3));
    assert_eq!(st.kad, vec![(0u8, b"backup key 2026".to_vec())]);
    assert_good(&ask(&mut i, DRIVE0, &locate10(3), 0));
    let r = ask(&mut i, DRIVE0, &read6(512, false, false), 512);
    assert_good(&r);
    assert_eq!(r.data, plain);
    rewind_drive(&mut i);
    let r = ask(&mut i, DRIVE0, &read6(1000, false, false), 1000);
    assert_good(&r);
    assert_eq!(r.data, canary);

    // Unloading keeps the key (tapevault's page leaves CKOD clear)...
    assert_good(&spout(&mut i, &set_a));
    assert_eq!(unload_and_reload(&mut i), (2, 2));
    let r = ask(&mut i, DRIVE0, &read6(1000, false, false), 1000);
    assert_good(&r);
    assert_eq!(r.data, canary);
    // ...unless the host set CKOD (clear key on demount), as stenc's page does here.
    assert_good(&spout(&mut i, &stenc_page(&key_a, 2)));
    assert_eq!(unload_and_reload(&mut i), (0, 0));
    let r = ask(&mut i, DRIVE0, &read6(1000, false, false), 1000);
    assert_sense(&r, 7, 0x74, 0x01);
}

/// Unload and load the cartridge again (START STOP UNIT); the encryption and
/// decryption modes in force afterwards.
fn unload_and_reload(i: &mut Initiator) -> (u8, u8) {
    assert_good(&ask(i, DRIVE0, &[0x1b, 0, 0, 0, 0, 0], 0));
    assert_good(&ask(i, DRIVE0, &[0x1b, 0, 0, 0, 1, 0], 0));
    settle(i, DRIVE0);
    let st = status(i);
    (st.encryption_mode, st.decryption_mode)
}

/// `page` with byte `at` set to `value`.
fn patched(page: &[u8], at: usize, value: u8) -> Vec<u8> {
    let mut p = page.to_vec();
    p[at] = value;
    p
}

#[test]
fn malformed_set_pages_are_refused_and_change_nothing() {
    let s = Served::new(64 * MIB, MIB);
    let mut i = s.login(3);
    load(&mut i, 0, 0);
    let good = te::set_data_encryption_page(1, &[7; 32], te::KAD_UNAUTHENTICATED, &[1; 16]);
    assert_good(&spout(&mut i, &stenc_page(&[9; 32], 2)));
    let variants: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good[..10].to_vec()),
        ("empty", Vec::new()),
        ("page length too long", patched(&good, 3, good[3] + 1)),
        ("wrong page code", patched(&good, 1, 0x11)),
        ("algorithm 2", patched(&good, 8, 2)),
        ("key of 16 bytes", patched(&good, 19, 16)),
        ("key format 1", patched(&good, 9, 1)),
        ("encryption mode EXTERNAL", patched(&good, 6, 1)),
        ("decryption mode 7", patched(&good, 7, 7)),
        ("KAD longer than the page", patched(&good, 55, 200)),
    ];
    for (what, page) in variants {
        let r = spout(&mut i, &page);
        assert_eq!(r.status, 2, "{what} accepted");
        let (k, asc, _) = r.sense_code().unwrap();
        assert_eq!(k, 5, "{what}");
        assert!(asc == 0x26 || asc == 0x1a, "{what}: {r:?}");
    }
    // The parameters set before are still in force.
    let st = status(&mut i);
    assert_eq!((st.encryption_mode, st.decryption_mode), (2, 2));
    assert_eq!(st.kad, vec![(0u8, b"backup key 2026".to_vec())]);
    // Another protocol on SPOUT.
    let r = i
        .command(
            DRIVE0,
            &security_protocol_out(0x21, 0x0010, good.len() as u32),
            &good,
            0,
        )
        .unwrap();
    assert_sense(&r, 5, 0x24, 0x00);
    // LOGICAL UNIT RESET drops the key.
    let itt = i.send_tmf(5, DRIVE0, 0).unwrap();
    let resp = i.recv().unwrap();
    assert_eq!(resp.itt(), itt);
    assert_eq!(resp.bhs[2], 0, "TMF response: function complete");
    settle(&mut i, DRIVE0);
    let st = status(&mut i);
    assert_eq!((st.encryption_mode, st.decryption_mode), (0, 0));
    assert!(st.kad.is_empty());
    assert_eq!(i.logout().unwrap(), 0);
}

#[test]
fn a_key_set_once_encrypts_the_next_cartridge_too() {
    let s = Served::new(64 * MIB, MIB);
    let mut i = s.login(4);
    load(&mut i, 0, 0);
    let page = te::set_data_encryption_page(1, &[0x33; 32], te::KAD_UNAUTHENTICATED, &[2; 16]);
    assert_good(&spout(&mut i, &page));
    // The changer swaps cartridges; the key (no CKOD) stays in the drive.
    let r = ask(&mut i, CHANGER, &move_medium(DRIVE_BASE, SLOT_BASE), 0);
    assert_good(&r);
    load(&mut i, 1, 0);
    let st = status(&mut i);
    assert_eq!((st.encryption_mode, st.decryption_mode), (2, 2));
    let canary: Vec<u8> = b"SECOND-CARTRIDGE-CANARY-"
        .iter()
        .copied()
        .cycle()
        .take(2048)
        .collect();
    assert_good(&i.command(DRIVE0, &write6(2048, false), &canary, 0).unwrap());
    assert_good(&ask(&mut i, DRIVE0, &write_filemarks(1), 0));
    let hits = library_contains(s.dir.path(), b"SECOND-CARTRIDGE-CANARY");
    assert!(hits.is_empty(), "plaintext on disk in {hits:?}");
    rewind_drive(&mut i);
    let r = ask(&mut i, DRIVE0, &read6(2048, false, false), 2048);
    assert_good(&r);
    assert_eq!(r.data, canary);
    // Fixed-block mode: each 512-byte block sealed on its own, read back in one command;
    // a read with the key gone stops at the first block with nothing transferred.
    let p = vec![0u8, 0, 0x10, 8, 0, 0, 0, 0, 0, 0, 0x02, 0x00];
    assert_good(&i.command(DRIVE0, &mode_select6(12), &p, 0).unwrap());
    assert_good(&ask(&mut i, DRIVE0, &space6(3, 0), 0));
    let at = block_position(&mut i);
    let data = block(5, 2048);
    assert_good(&i.command(DRIVE0, &write6(4, true), &data, 0).unwrap());
    assert_good(&ask(&mut i, DRIVE0, &write_filemarks(1), 0));
    assert!(library_contains(s.dir.path(), &data[512..600]).is_empty());
    assert_good(&ask(&mut i, DRIVE0, &locate10(at), 0));
    let r = ask(&mut i, DRIVE0, &read6(4, true, false), 2048);
    assert_good(&r);
    assert_eq!(r.data, data);
    assert_good(&spout(&mut i, &te::clear_data_encryption_page()));
    assert_good(&ask(&mut i, DRIVE0, &locate10(at), 0));
    let r = ask(&mut i, DRIVE0, &read6(4, true, false), 2048);
    assert_sense(&r, 7, 0x74, 0x01);
    assert_eq!(r.information(), Some(4));
    assert!(r.data.is_empty());
}
