//! Hardware (drive) encryption through the SSC-4 tape data encryption security protocol
//! (0x20), as `stenc` does: SECURITY PROTOCOL IN pages 0x0000 (supported pages), 0x0010
//! (data encryption capabilities) and 0x0020 (data encryption status); SECURITY PROTOCOL
//! OUT page 0x0010 (set data encryption). Keys travel to the drive in the clear over SCSI:
//! that is how the standard works; the key-associated data (KAD) we attach is our key's
//! 16-byte fingerprint, recorded unencrypted on tape so a reader knows which key it needs.

use std::time::Duration;

use super::{cdb, DataDirection, ScsiError, SgDevice};

/// Security protocol: tape data encryption (SPC-4 table 258 / SSC-4 8.5).
pub const TAPE_DATA_ENCRYPTION: u8 = 0x20;
/// Security protocol 0: security protocol information (list of supported protocols).
pub const SECURITY_PROTOCOL_INFORMATION: u8 = 0x00;
pub const PAGE_IN_SUPPORT: u16 = 0x0000;
pub const PAGE_OUT_SUPPORT: u16 = 0x0001;
pub const PAGE_CAPABILITIES: u16 = 0x0010;
pub const PAGE_STATUS: u16 = 0x0020;
pub const PAGE_SET_DATA_ENCRYPTION: u16 = 0x0010;
/// SSC-4 security algorithm code of AES-256-GCM (IEEE 1619.1).
pub const AES256_GCM: u32 = 0x0001_0014;
/// Key length of AES-256.
pub const KEY_LEN: usize = 32;
/// Our key-associated data: the key fingerprint.
pub const KAD_LEN: usize = 16;
/// Allocation length for the IN pages (they are small; capabilities grows with the
/// number of algorithms, 20 bytes each).
const IN_ALLOC: u32 = 8192;
/// Timeout of the security protocol commands (no tape motion).
const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum EncryptionError {
    #[error("{device} does not offer hardware encryption: {reason}")]
    NotSupported { device: String, reason: String },
    #[error("the drive's reply to {what} is malformed: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error(transparent)]
    Scsi(#[from] ScsiError),
}

/// One algorithm descriptor of the data encryption capabilities page (SSC-4 8.5.2.5).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Algorithm {
    pub index: u8,
    /// ENCRYPT_C: 0 none, 1 only by external means, 2 controllable by this interface.
    pub encrypt_c: u8,
    pub decrypt_c: u8,
    pub max_ukad: u16,
    pub max_akad: u16,
    pub key_size: u16,
    pub code: u32,
}

impl Algorithm {
    /// Usable by us: AES-256-GCM, 32-byte keys, encrypt and decrypt controllable over
    /// this interface, room for our KAD.
    pub fn usable(&self) -> bool {
        self.code == AES256_GCM
            && self.key_size as usize == KEY_LEN
            && self.encrypt_c == 2
            && self.decrypt_c == 2
            && (self.max_ukad as usize >= KAD_LEN || self.max_akad as usize >= KAD_LEN)
    }
}

/// List of page codes (pages 0x0000/0x0001).
pub fn parse_page_list(b: &[u8]) -> Result<Vec<u16>, EncryptionError> {
    let len = page_len(b, "supported pages")?;
    Ok(b[4..4 + len]
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect())
}

/// Supported protocol list of security protocol 0 page 0 (SPC-4 7.7.1).
pub fn parse_protocol_list(b: &[u8]) -> Result<Vec<u8>, EncryptionError> {
    if b.len() < 8 {
        return Err(EncryptionError::Malformed {
            what: "supported protocols",
            detail: format!("{} bytes", b.len()),
        });
    }
    let n = u16::from_be_bytes([b[6], b[7]]) as usize;
    Ok(b.get(8..8 + n).unwrap_or(&b[8..]).to_vec())
}

fn page_len(b: &[u8], what: &'static str) -> Result<usize, EncryptionError> {
    if b.len() < 4 {
        return Err(EncryptionError::Malformed {
            what,
            detail: format!("{} bytes", b.len()),
        });
    }
    let len = u16::from_be_bytes([b[2], b[3]]) as usize;
    if 4 + len > b.len() {
        return Err(EncryptionError::Malformed {
            what,
            detail: format!("page length {len} exceeds the {} bytes received", b.len()),
        });
    }
    Ok(len)
}

/// Data encryption capabilities page (0x0010): its algorithm descriptors.
pub fn parse_capabilities(b: &[u8]) -> Result<Vec<Algorithm>, EncryptionError> {
    let what = "data encryption capabilities";
    let len = page_len(b, what)?;
    let end = 4 + len;
    let mut out = Vec::new();
    let mut p = 20;
    while p + 4 <= end {
        let dlen = u16::from_be_bytes([b[p + 2], b[p + 3]]) as usize;
        let d = b
            .get(p..p + 4 + dlen)
            .filter(|_| p + 4 + dlen <= end)
            .ok_or_else(|| EncryptionError::Malformed {
                what,
                detail: format!("algorithm descriptor at byte {p} overruns the page"),
            })?;
        if dlen < 20 {
            return Err(EncryptionError::Malformed {
                what,
                detail: format!("algorithm descriptor length {dlen}"),
            });
        }
        out.push(Algorithm {
            index: d[0],
            encrypt_c: d[4] & 0x03,
            decrypt_c: (d[4] >> 2) & 0x03,
            max_ukad: u16::from_be_bytes([d[6], d[7]]),
            max_akad: u16::from_be_bytes([d[8], d[9]]),
            key_size: u16::from_be_bytes([d[10], d[11]]),
            code: u32::from_be_bytes([d[20], d[21], d[22], d[23]]),
        });
        p += 4 + dlen;
    }
    Ok(out)
}

/// Data encryption status page (0x0020).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EncryptionStatus {
    /// 0 disabled, 1 external, 2 encrypt.
    pub encryption_mode: u8,
    /// 0 disabled, 1 raw, 2 decrypt, 3 mixed.
    pub decryption_mode: u8,
    pub algorithm_index: u8,
    pub key_instance_counter: u32,
    /// Key-associated data descriptors (type, bytes).
    pub kad: Vec<(u8, Vec<u8>)>,
}

pub fn parse_status(b: &[u8]) -> Result<EncryptionStatus, EncryptionError> {
    let what = "data encryption status";
    let len = page_len(b, what)?;
    if len < 20 {
        return Err(EncryptionError::Malformed {
            what,
            detail: format!("page length {len}"),
        });
    }
    let end = 4 + len;
    let mut kad = Vec::new();
    let mut p = 24;
    while p + 4 <= end {
        let dl = u16::from_be_bytes([b[p + 2], b[p + 3]]) as usize;
        let Some(d) = b.get(p + 4..p + 4 + dl).filter(|_| p + 4 + dl <= end) else {
            break;
        };
        kad.push((b[p], d.to_vec()));
        p += 4 + dl;
    }
    Ok(EncryptionStatus {
        encryption_mode: b[5],
        decryption_mode: b[6],
        algorithm_index: b[7],
        key_instance_counter: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        kad,
    })
}

/// SCOPE = ALL I_T NEXUS (2): the key applies to every initiator, as stenc sets it.
const SCOPE_ALL_IT_NEXUS: u8 = 2 << 5;
/// KAD descriptor types.
pub const KAD_UNAUTHENTICATED: u8 = 0x00;
pub const KAD_AUTHENTICATED: u8 = 0x01;

/// The Set Data Encryption page (SSC-4 8.5.3.2): encrypt and decrypt with `key` under
/// algorithm `index`, attaching `kad` as a KAD descriptor of type `kad_type`.
pub fn set_data_encryption_page(
    index: u8,
    key: &[u8; KEY_LEN],
    kad_type: u8,
    kad: &[u8; KAD_LEN],
) -> Vec<u8> {
    set_data_encryption_page_modes(index, key, kad_type, kad, ENCRYPT, DECRYPT)
}

/// Encryption mode ENCRYPT: the drive encrypts what it writes.
pub const ENCRYPT: u8 = 2;
/// Encryption mode DISABLE: the drive writes in the clear.
pub const ENCRYPT_DISABLE: u8 = 0;
/// Decryption mode DECRYPT: encrypted blocks are decrypted, a clear block is refused.
pub const DECRYPT: u8 = 2;
/// Decryption mode MIXED: encrypted blocks are decrypted, clear blocks read as they are
/// (a cartridge whose label is clear and whose data is encrypted).
pub const DECRYPT_MIXED: u8 = 3;

/// The Set Data Encryption page with explicit encryption and decryption modes.
pub fn set_data_encryption_page_modes(
    index: u8,
    key: &[u8; KEY_LEN],
    kad_type: u8,
    kad: &[u8; KAD_LEN],
    encryption_mode: u8,
    decryption_mode: u8,
) -> Vec<u8> {
    let mut p = vec![0u8; 20];
    p[0..2].copy_from_slice(&PAGE_SET_DATA_ENCRYPTION.to_be_bytes());
    p[4] = SCOPE_ALL_IT_NEXUS;
    p[5] = 0; // CEEM 0, RDMC 0 (vendor default), SDK/CKOD/CKORP/CKORL 0
    p[6] = encryption_mode;
    p[7] = decryption_mode;
    p[8] = index;
    p[9] = 0; // key format: plain key
    p[18..20].copy_from_slice(&(KEY_LEN as u16).to_be_bytes());
    p.extend_from_slice(key);
    p.extend_from_slice(&[kad_type, 0]);
    p.extend_from_slice(&(KAD_LEN as u16).to_be_bytes());
    p.extend_from_slice(kad);
    let n = (p.len() - 4) as u16;
    p[2..4].copy_from_slice(&n.to_be_bytes());
    p
}

/// The Set Data Encryption page that turns drive encryption off (modes 0, no key).
pub fn clear_data_encryption_page() -> Vec<u8> {
    let mut p = vec![0u8; 20];
    p[0..2].copy_from_slice(&PAGE_SET_DATA_ENCRYPTION.to_be_bytes());
    p[2..4].copy_from_slice(&16u16.to_be_bytes());
    p[4] = SCOPE_ALL_IT_NEXUS;
    p
}

fn sp_in(sg: &SgDevice, protocol: u8, page: u16) -> Result<Vec<u8>, ScsiError> {
    let mut buf = vec![0u8; IN_ALLOC as usize];
    let c = sg.execute(
        "SECURITY PROTOCOL IN",
        &cdb::security_protocol_in(protocol, page, IN_ALLOC),
        DataDirection::FromDevice,
        &mut buf,
        TIMEOUT,
    )?;
    buf.truncate(c.transferred);
    Ok(buf)
}

/// What a drive offers: the algorithm we would use.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HardwareEncryption {
    pub algorithm: Algorithm,
}

/// Query the drive. `Err(NotSupported)` says plainly why not (no security protocol
/// commands, no protocol 0x20, no AES-256-GCM under our control).
pub fn probe(sg: &SgDevice) -> Result<HardwareEncryption, EncryptionError> {
    let device = sg.path().display().to_string();
    let not = |reason: String| EncryptionError::NotSupported {
        device: device.clone(),
        reason,
    };
    let protocols = match sp_in(sg, SECURITY_PROTOCOL_INFORMATION, 0) {
        Ok(b) => parse_protocol_list(&b)?,
        Err(ScsiError::Unsupported { .. }) => {
            return Err(not("it rejects SECURITY PROTOCOL IN".into()))
        }
        Err(e @ ScsiError::Check { .. }) => {
            return Err(not(format!("SECURITY PROTOCOL IN failed: {e}")))
        }
        Err(e) => return Err(e.into()),
    };
    if !protocols.contains(&TAPE_DATA_ENCRYPTION) {
        return Err(not(
            "it does not list the tape data encryption security protocol (0x20)".into(),
        ));
    }
    let algs = parse_capabilities(&sp_in(sg, TAPE_DATA_ENCRYPTION, PAGE_CAPABILITIES)?)?;
    let algorithm = algs.into_iter().find(Algorithm::usable).ok_or_else(|| {
        not("no AES-256-GCM algorithm controllable over SCSI with room for a 16-byte KAD".into())
    })?;
    Ok(HardwareEncryption { algorithm })
}

/// Current encryption status of the drive.
pub fn status(sg: &SgDevice) -> Result<EncryptionStatus, EncryptionError> {
    parse_status(&sp_in(sg, TAPE_DATA_ENCRYPTION, PAGE_STATUS)?)
}

/// Load `key` into the drive (encrypt + decrypt) with `fingerprint` as KAD.
pub fn set_key(
    sg: &SgDevice,
    key: &[u8; KEY_LEN],
    fingerprint: &[u8; KAD_LEN],
) -> Result<(), EncryptionError> {
    set_key_modes(sg, key, fingerprint, ENCRYPT, DECRYPT)
}

/// Load `key` into the drive with the given encryption and decryption modes.
pub fn set_key_modes(
    sg: &SgDevice,
    key: &[u8; KEY_LEN],
    fingerprint: &[u8; KAD_LEN],
    encryption_mode: u8,
    decryption_mode: u8,
) -> Result<(), EncryptionError> {
    let hw = probe(sg)?;
    let kad_type = if hw.algorithm.max_ukad as usize >= KAD_LEN {
        KAD_UNAUTHENTICATED
    } else {
        KAD_AUTHENTICATED
    };
    let mut page = set_data_encryption_page_modes(
        hw.algorithm.index,
        key,
        kad_type,
        fingerprint,
        encryption_mode,
        decryption_mode,
    );
    let r = sg.execute(
        "SECURITY PROTOCOL OUT",
        &cdb::security_protocol_out(
            TAPE_DATA_ENCRYPTION,
            PAGE_SET_DATA_ENCRYPTION,
            page.len() as u32,
        ),
        DataDirection::ToDevice,
        &mut page,
        TIMEOUT,
    );
    page.fill(0); // the key does not linger in our memory
    r?;
    Ok(())
}

/// Turn drive encryption off.
pub fn clear_key(sg: &SgDevice) -> Result<(), EncryptionError> {
    probe(sg)?;
    let mut page = clear_data_encryption_page();
    sg.execute(
        "SECURITY PROTOCOL OUT",
        &cdb::security_protocol_out(
            TAPE_DATA_ENCRYPTION,
            PAGE_SET_DATA_ENCRYPTION,
            page.len() as u32,
        ),
        DataDirection::ToDevice,
        &mut page,
        TIMEOUT,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A capabilities page by hand (SSC-4 table 213/214): one AES-256-GCM descriptor.
    fn caps_page(encrypt_c: u8, code: u32, ukad: u16) -> Vec<u8> {
        let mut p = vec![0u8; 20];
        p[0..2].copy_from_slice(&0x0010u16.to_be_bytes());
        let mut d = vec![0u8; 24];
        d[0] = 1; // algorithm index
        d[2..4].copy_from_slice(&20u16.to_be_bytes());
        d[4] = (2 << 2) | encrypt_c;
        d[6..8].copy_from_slice(&ukad.to_be_bytes());
        d[8..10].copy_from_slice(&12u16.to_be_bytes());
        d[10..12].copy_from_slice(&32u16.to_be_bytes());
        d[20..24].copy_from_slice(&code.to_be_bytes());
        p.extend_from_slice(&d);
        let n = (p.len() - 4) as u16;
        p[2..4].copy_from_slice(&n.to_be_bytes());
        p
    }

    #[test]
    fn capabilities_page_descriptor_fields() {
        let algs = parse_capabilities(&caps_page(2, AES256_GCM, 32)).unwrap();
        assert_eq!(
            algs,
            vec![Algorithm {
                index: 1,
                encrypt_c: 2,
                decrypt_c: 2,
                max_ukad: 32,
                max_akad: 12,
                key_size: 32,
                code: AES256_GCM
            }]
        );
        assert!(algs[0].usable());
        assert!(
            !parse_capabilities(&caps_page(1, AES256_GCM, 32)).unwrap()[0].usable(),
            "external control only"
        );
        assert!(
            !parse_capabilities(&caps_page(2, 0x0001_0010, 32)).unwrap()[0].usable(),
            "not AES-256-GCM"
        );
    }

    #[test]
    fn set_data_encryption_page_matches_ssc4_layout() {
        let key = [0xabu8; 32];
        let kad = [0x11u8; 16];
        let p = set_data_encryption_page(1, &key, KAD_UNAUTHENTICATED, &kad);
        assert_eq!(p.len(), 20 + 32 + 4 + 16);
        assert_eq!(&p[0..2], &[0x00, 0x10], "page code");
        assert_eq!(
            u16::from_be_bytes([p[2], p[3]]) as usize,
            p.len() - 4,
            "page length"
        );
        assert_eq!(p[4], 0x40, "scope: all I_T nexus, no lock");
        assert_eq!(
            (p[6], p[7], p[8], p[9]),
            (2, 2, 1, 0),
            "encrypt, decrypt, index, plain key"
        );
        assert_eq!(&p[18..20], &[0, 32], "key length");
        assert_eq!(&p[20..52], &key);
        assert_eq!(
            &p[52..56],
            &[0x00, 0x00, 0x00, 0x10],
            "U-KAD descriptor header"
        );
        assert_eq!(&p[56..72], &kad);
    }

    #[test]
    fn clear_page_disables_both_directions() {
        let p = clear_data_encryption_page();
        assert_eq!(p.len(), 20);
        assert_eq!(&p[0..4], &[0, 0x10, 0, 16]);
        assert_eq!((p[6], p[7]), (0, 0));
        assert_eq!(&p[18..20], &[0, 0]);
    }

    #[test]
    fn status_page_with_kad() {
        let mut p = vec![0u8; 24];
        p[0..2].copy_from_slice(&0x0020u16.to_be_bytes());
        p[5] = 2;
        p[6] = 2;
        p[7] = 1;
        p[8..12].copy_from_slice(&7u32.to_be_bytes());
        p.extend_from_slice(&[0x00, 0x00, 0x00, 0x04, 1, 2, 3, 4]);
        let n = (p.len() - 4) as u16;
        p[2..4].copy_from_slice(&n.to_be_bytes());
        let s = parse_status(&p).unwrap();
        assert_eq!(
            (
                s.encryption_mode,
                s.decryption_mode,
                s.algorithm_index,
                s.key_instance_counter
            ),
            (2, 2, 1, 7)
        );
        assert_eq!(s.kad, vec![(0, vec![1, 2, 3, 4])]);
    }

    #[test]
    fn page_and_protocol_lists() {
        assert_eq!(
            parse_page_list(&[0, 0, 0, 4, 0, 0x10, 0, 0x20]).unwrap(),
            vec![0x10, 0x20]
        );
        assert!(parse_page_list(&[0, 0, 0, 9, 0]).is_err());
        assert_eq!(
            parse_protocol_list(&[0, 0, 0, 0, 0, 0, 0, 2, 0x00, 0x20]).unwrap(),
            vec![0x00, 0x20]
        );
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_without_panicking(b in proptest::collection::vec(proptest::num::u8::ANY, 0..120)) {
            let _ = parse_capabilities(&b);
            let _ = parse_status(&b);
            let _ = parse_page_list(&b);
            let _ = parse_protocol_list(&b);
        }
    }
}
