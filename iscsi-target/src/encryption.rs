//! The tape drive's data encryption (SSC-4 4.2.23, security protocol 0x20): the pages of
//! SECURITY PROTOCOL IN / OUT and the AES-256-GCM sealing of blocks.
//!
//! One algorithm (index 1, AES-256-GCM, 32-byte plain keys). The key lives only in the
//! drive's memory: never on the cartridge, never on disk; it is dropped (and its key
//! schedule wiped) on a logical unit or target reset, on power loss, and when a cartridge
//! leaves the drive if the host set CKOD. Whatever scope the host asks for, the key
//! applies to the whole drive (every I_T nexus).
//!
//! An encrypted block on the cartridge is `nonce (12) || ciphertext || tag (16)`, marked
//! encrypted in the cartridge's index; the nonce is random per block (96 bits from the
//! operating system), so it never repeats under one key in practice.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use rand::RngCore;
use zeroize::Zeroizing;

/// Security protocols.
pub const PROTOCOL_INFO: u8 = 0x00;
pub const PROTOCOL_TAPE: u8 = 0x20;
/// SSC-4 security algorithm code of AES-256-GCM.
pub const AES256_GCM: u32 = 0x0001_0014;
/// Our one algorithm's index.
pub const ALGORITHM_INDEX: u8 = 1;
pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
/// Bytes an encrypted block takes beyond its plaintext.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// Longest key-associated data kept per type (unauthenticated, authenticated).
pub const MAX_UKAD: usize = 32;
pub const MAX_AKAD: usize = 12;

/// Encryption modes (SSC-4 table "ENCRYPTION MODE field").
pub const ENC_DISABLE: u8 = 0;
pub const ENC_ENCRYPT: u8 = 2;
/// Decryption modes.
pub const DEC_DISABLE: u8 = 0;
pub const DEC_DECRYPT: u8 = 2;
pub const DEC_MIXED: u8 = 3;

/// The data encryption parameters the host set (SPOUT page 0x0010).
pub struct Params {
    pub scope: u8,
    pub lock: bool,
    pub ceem: u8,
    pub rdmc: u8,
    pub ckod: bool,
    pub encryption_mode: u8,
    pub decryption_mode: u8,
    pub algorithm_index: u8,
    pub kad_format: u8,
    cipher: Option<Aes256Gcm>,
    /// Key-associated data descriptors (type, bytes), reported in the status page.
    pub kad: Vec<(u8, Vec<u8>)>,
}

impl Params {
    pub fn encrypting(&self) -> bool {
        self.encryption_mode == ENC_ENCRYPT && self.cipher.is_some()
    }

    /// Seal one block: `nonce || ciphertext || tag`.
    pub fn seal(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let cipher = self.cipher.as_ref()?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut out = Vec::with_capacity(plain.len() + OVERHEAD);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = cipher
            .encrypt_inout_detached(&Nonce::from(nonce), &[], (&mut out[NONCE_LEN..]).into())
            .ok()?;
        out.extend_from_slice(&tag);
        Some(out)
    }
}

/// What reading one stored block gives the host under the current parameters.
pub enum Opened {
    Plain(Vec<u8>),
    /// Sense 74/01: encrypted and no key to decrypt with, or the key does not open it.
    UnableToDecrypt,
    /// Sense 74/02: a plain block while the drive decrypts (mode DECRYPT).
    UnencryptedWhileDecrypting,
}

/// Open a block read from the cartridge (`encrypted`: its index mark).
pub fn open(params: Option<&Params>, mut stored: Vec<u8>, encrypted: bool) -> Opened {
    let dec = params.map_or(DEC_DISABLE, |p| p.decryption_mode);
    if !encrypted {
        return if dec == DEC_DECRYPT {
            Opened::UnencryptedWhileDecrypting
        } else {
            Opened::Plain(stored)
        };
    }
    let Some(cipher) = params
        .filter(|_| dec == DEC_DECRYPT || dec == DEC_MIXED)
        .and_then(|p| p.cipher.as_ref())
    else {
        return Opened::UnableToDecrypt;
    };
    if stored.len() < OVERHEAD {
        return Opened::UnableToDecrypt;
    }
    let nonce: [u8; NONCE_LEN] = stored[..NONCE_LEN].try_into().expect("12 bytes");
    let tag_at = stored.len() - TAG_LEN;
    let tag: [u8; TAG_LEN] = stored[tag_at..].try_into().expect("16 bytes");
    let ok = cipher
        .decrypt_inout_detached(
            &Nonce::from(nonce),
            &[],
            (&mut stored[NONCE_LEN..tag_at]).into(),
            &Tag::from(tag),
        )
        .is_ok();
    if !ok {
        return Opened::UnableToDecrypt;
    }
    stored.truncate(tag_at);
    stored.drain(..NONCE_LEN);
    Opened::Plain(stored)
}

fn be16(b: &[u8], at: usize) -> usize {
    u16::from_be_bytes([b[at], b[at + 1]]) as usize
}

/// Parse a Set Data Encryption page (SSC-4 8.5.3.2). `Err(byte)`: the offset of the
/// first field we refuse (for the sense data's field pointer); the page is `p` whole
/// (the command's parameter list).
pub fn parse_set(p: &[u8]) -> Result<Params, u16> {
    if p.len() < 20 {
        return Err(2);
    }
    if be16(p, 0) != 0x0010 {
        return Err(0);
    }
    if be16(p, 2) + 4 != p.len() {
        return Err(2);
    }
    let scope = p[4] >> 5;
    if scope > 2 || p[4] & 0x1e != 0 {
        return Err(4);
    }
    let lock = p[4] & 0x01 != 0;
    let ceem = p[5] >> 6;
    let rdmc = (p[5] >> 4) & 0x03;
    // CEEM 2 (check external encryption mode) needs EXTERNAL, which we do not offer;
    // RDMC 1 is reserved; SDK (supplemental decryption keys), CKORP and CKORL (clear on
    // reservation preempt/loss, we keep no persistent reservations) are not offered.
    if ceem > 1 || rdmc == 1 || p[5] & 0x0b != 0 {
        return Err(5);
    }
    let ckod = p[5] & 0x04 != 0;
    let encryption_mode = p[6];
    if encryption_mode != ENC_DISABLE && encryption_mode != ENC_ENCRYPT {
        return Err(6);
    }
    let decryption_mode = p[7];
    if ![DEC_DISABLE, DEC_DECRYPT, DEC_MIXED].contains(&decryption_mode) {
        return Err(7);
    }
    let off = encryption_mode == ENC_DISABLE && decryption_mode == DEC_DISABLE;
    let algorithm_index = p[8];
    if !off && algorithm_index != ALGORITHM_INDEX {
        return Err(8);
    }
    if p[9] != 0 {
        // Key format 0 (plain key) only.
        return Err(9);
    }
    let kad_format = p[10];
    if kad_format > 2 {
        return Err(10);
    }
    if p[11..18].iter().any(|&b| b != 0) {
        return Err(11);
    }
    let key_len = be16(p, 18);
    if key_len != KEY_LEN && (!off || key_len != 0) {
        return Err(18);
    }
    if 20 + key_len > p.len() {
        return Err(18);
    }
    let cipher = if off {
        None
    } else {
        let key = Zeroizing::new(<[u8; KEY_LEN]>::try_from(&p[20..20 + KEY_LEN]).expect("32"));
        Some(Aes256Gcm::new_from_slice(key.as_ref()).expect("32-byte key"))
    };
    let mut kad: Vec<(u8, Vec<u8>)> = Vec::new();
    let mut at = 20 + key_len;
    while at < p.len() {
        if at + 4 > p.len() {
            return Err(at as u16);
        }
        let (ty, n) = (p[at], be16(p, at + 2));
        let max = match ty {
            0x00 => MAX_UKAD,
            0x01 => MAX_AKAD,
            _ => return Err(at as u16),
        };
        if p[at + 1] != 0 || kad.iter().any(|(t, _)| *t == ty) {
            return Err(at as u16);
        }
        if n > max || at + 4 + n > p.len() {
            return Err((at + 2) as u16);
        }
        kad.push((ty, p[at + 4..at + 4 + n].to_vec()));
        at += 4 + n;
    }
    Ok(Params {
        scope,
        lock,
        ceem,
        rdmc,
        ckod,
        encryption_mode,
        decryption_mode,
        algorithm_index: if off { 0 } else { algorithm_index },
        kad_format,
        cipher,
        kad,
    })
}

fn page(code: u16, body: &[u8]) -> Vec<u8> {
    let mut d = code.to_be_bytes().to_vec();
    d.extend_from_slice(&(body.len() as u16).to_be_bytes());
    d.extend_from_slice(body);
    d
}

/// Security protocol 0, page 0: the supported protocols (SPC-4).
pub fn supported_protocols() -> Vec<u8> {
    vec![0, 0, 0, 0, 0, 0, 0, 2, PROTOCOL_INFO, PROTOCOL_TAPE]
}

/// Page 0x0000 (supported IN pages) and 0x0001 (supported OUT pages).
pub fn supported_in_pages() -> Vec<u8> {
    page(
        0x0000,
        &[0x00, 0x00, 0x00, 0x01, 0x00, 0x10, 0x00, 0x20, 0x00, 0x21],
    )
}
pub fn supported_out_pages() -> Vec<u8> {
    page(0x0001, &[0x00, 0x10])
}

/// Page 0x0010: data encryption capabilities, one algorithm descriptor.
pub fn capabilities(loaded: bool) -> Vec<u8> {
    let mut b = vec![0u8; 16];
    // One descriptor (SSC-4 algorithm descriptor, 20 bytes after its header).
    let mut d = vec![0u8; 24];
    d[0] = ALGORITHM_INDEX;
    d[2..4].copy_from_slice(&20u16.to_be_bytes());
    // AVFMV (valid for the mounted volume), DECRYPT_C 2, ENCRYPT_C 2 (both controlled
    // through this interface).
    d[4] = if loaded { 0x80 } else { 0 } | (2 << 2) | 2;
    // NONCE_C 1: the drive generates the nonces; UKADF/AKADF 0.
    d[5] = 1 << 4;
    d[6..8].copy_from_slice(&(MAX_UKAD as u16).to_be_bytes());
    d[8..10].copy_from_slice(&(MAX_AKAD as u16).to_be_bytes());
    d[10..12].copy_from_slice(&(KEY_LEN as u16).to_be_bytes());
    d[20..24].copy_from_slice(&AES256_GCM.to_be_bytes());
    b.extend(d);
    page(0x0010, &b)
}

/// Page 0x0020: data encryption status.
pub fn status(params: Option<&Params>) -> Vec<u8> {
    let mut b = vec![0u8; 20];
    if let Some(p) = params {
        b[0] = (p.scope << 5) | p.scope.min(2);
        b[1] = p.encryption_mode;
        b[2] = p.decryption_mode;
        b[3] = p.algorithm_index;
        // Key instance counter: 1 while a key is loaded.
        b[4..8].copy_from_slice(&(p.cipher.is_some() as u32).to_be_bytes());
        // PARAMETERS CONTROL 0 (not reported), CEEMS, RDMD.
        b[8] = (p.ceem << 1) | (p.rdmc == 2) as u8;
        for (ty, v) in &p.kad {
            b.extend_from_slice(&[*ty, 0]);
            b.extend_from_slice(&(v.len() as u16).to_be_bytes());
            b.extend_from_slice(v);
        }
    }
    page(0x0020, &b)
}

/// What the next logical object is, for page 0x0021.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextObject {
    /// End of data (nothing to read there).
    EndOfData,
    Filemark,
    /// A logical block and whether it is stored encrypted.
    Block {
        encrypted: bool,
    },
}

/// Encryption status codes of page 0x0021 (SSC-4 "ENCRYPTION STATUS field").
pub const NBES_NOT_AT_OBJECT: u8 = 1;
pub const NBES_NOT_A_BLOCK: u8 = 2;
pub const NBES_NOT_ENCRYPTED: u8 = 3;
pub const NBES_ENCRYPTED_CAN_DECRYPT: u8 = 5;
pub const NBES_ENCRYPTED_NO_KEY: u8 = 6;

/// Page 0x0021: next block encryption status, for the object at `position`. Whether the
/// drive can decrypt an encrypted block is judged from its state (a key loaded and
/// decryption enabled); reading the block is what proves the key right.
pub fn next_block_status(params: Option<&Params>, position: u64, next: NextObject) -> Vec<u8> {
    let mut b = vec![0u8; 12];
    b[0..8].copy_from_slice(&position.to_be_bytes());
    // COMPRESSION STATUS 0 (not reported) in the high nibble of byte 8.
    let can_decrypt = params.is_some_and(|p| {
        p.cipher.is_some() && (p.decryption_mode == DEC_DECRYPT || p.decryption_mode == DEC_MIXED)
    });
    b[8] = match next {
        NextObject::EndOfData => NBES_NOT_AT_OBJECT,
        NextObject::Filemark => NBES_NOT_A_BLOCK,
        NextObject::Block { encrypted: false } => NBES_NOT_ENCRYPTED,
        NextObject::Block { encrypted: true } if can_decrypt => NBES_ENCRYPTED_CAN_DECRYPT,
        NextObject::Block { encrypted: true } => NBES_ENCRYPTED_NO_KEY,
    };
    if matches!(next, NextObject::Block { encrypted: true }) {
        b[9] = ALGORITHM_INDEX;
    }
    page(0x0021, &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_page(key: &[u8; 32], dec: u8) -> Vec<u8> {
        let mut p = vec![0u8; 20];
        p[0..2].copy_from_slice(&0x0010u16.to_be_bytes());
        p[4] = 2 << 5;
        p[6] = ENC_ENCRYPT;
        p[7] = dec;
        p[8] = ALGORITHM_INDEX;
        p[18..20].copy_from_slice(&32u16.to_be_bytes());
        p.extend_from_slice(key);
        let n = (p.len() - 4) as u16;
        p[2..4].copy_from_slice(&n.to_be_bytes());
        p
    }

    #[test]
    fn seal_open_round_trip_and_wrong_key() {
        let a = parse_set(&key_page(&[7; 32], DEC_DECRYPT)).unwrap();
        let b = parse_set(&key_page(&[8; 32], DEC_DECRYPT)).unwrap();
        let sealed = a.seal(b"canary block").unwrap();
        assert_eq!(sealed.len(), 12 + OVERHEAD);
        assert!(!sealed.windows(6).any(|w| w == b"canary"));
        match open(Some(&a), sealed.clone(), true) {
            Opened::Plain(p) => assert_eq!(p, b"canary block"),
            _ => panic!("the right key must open the block"),
        }
        assert!(matches!(
            open(Some(&b), sealed.clone(), true),
            Opened::UnableToDecrypt
        ));
        assert!(matches!(open(None, sealed, true), Opened::UnableToDecrypt));
        assert!(matches!(
            open(Some(&a), b"plain".to_vec(), false),
            Opened::UnencryptedWhileDecrypting
        ));
        let m = parse_set(&key_page(&[7; 32], DEC_MIXED)).unwrap();
        assert!(matches!(
            open(Some(&m), b"plain".to_vec(), false),
            Opened::Plain(_)
        ));
        // Two seals of one block differ (fresh nonce).
        assert_ne!(a.seal(b"x").unwrap(), a.seal(b"x").unwrap());
    }

    #[test]
    fn next_block_status_says_what_the_next_object_is() {
        let with_key = parse_set(&key_page(&[7; 32], DEC_DECRYPT)).unwrap();
        let p = next_block_status(
            Some(&with_key),
            0x0102,
            NextObject::Block { encrypted: true },
        );
        assert_eq!(&p[0..4], &[0x00, 0x21, 0x00, 12]);
        assert_eq!(
            &p[4..12],
            &[0, 0, 0, 0, 0, 0, 1, 2],
            "logical object number"
        );
        assert_eq!(p[12] & 0x0f, NBES_ENCRYPTED_CAN_DECRYPT);
        assert_eq!(p[13], ALGORITHM_INDEX);
        let p = next_block_status(None, 0, NextObject::Block { encrypted: true });
        assert_eq!(p[12] & 0x0f, NBES_ENCRYPTED_NO_KEY);
        assert_eq!(p[13], ALGORITHM_INDEX);
        let p = next_block_status(Some(&with_key), 0, NextObject::Block { encrypted: false });
        assert_eq!((p[12] & 0x0f, p[13]), (NBES_NOT_ENCRYPTED, 0));
        let p = next_block_status(None, 3, NextObject::Filemark);
        assert_eq!(p[12] & 0x0f, NBES_NOT_A_BLOCK);
        let p = next_block_status(None, 4, NextObject::EndOfData);
        assert_eq!(p[12] & 0x0f, NBES_NOT_AT_OBJECT);
        // Decryption disabled: the key does not help.
        let mut off = key_page(&[7; 32], DEC_DISABLE);
        off[6] = ENC_ENCRYPT;
        let enc_only = parse_set(&off).unwrap();
        let p = next_block_status(Some(&enc_only), 0, NextObject::Block { encrypted: true });
        assert_eq!(p[12] & 0x0f, NBES_ENCRYPTED_NO_KEY);
    }

    #[test]
    fn malformed_pages_are_refused_with_the_field() {
        let good = key_page(&[1; 32], DEC_DECRYPT);
        assert!(parse_set(&good).is_ok());
        let bad = |at: usize, v: u8| {
            let mut p = good.clone();
            p[at] = v;
            parse_set(&p).err()
        };
        assert_eq!(bad(1, 0x11), Some(0));
        assert_eq!(bad(3, 0x31), Some(2));
        assert_eq!(bad(4, 7 << 5), Some(4));
        assert_eq!(bad(6, 1), Some(6)); // EXTERNAL not offered
        assert_eq!(bad(7, 1), Some(7)); // RAW not offered
        assert_eq!(bad(8, 2), Some(8));
        assert_eq!(bad(9, 1), Some(9));
        assert_eq!(bad(19, 16), Some(18));
        // Truncations at every length never panic and never pass.
        for n in 0..good.len() {
            assert!(parse_set(&good[..n]).is_err(), "{n} bytes accepted");
        }
        // A KAD descriptor overrunning the page.
        let mut p = good.clone();
        p.extend_from_slice(&[0, 0, 0, 40, 1, 2]);
        let n = (p.len() - 4) as u16;
        p[2..4].copy_from_slice(&n.to_be_bytes());
        assert_eq!(parse_set(&p).err(), Some(52 + 2));
    }
}
