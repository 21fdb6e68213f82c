//! Image parts seen by a media scan whose image is not whole yet (see schema V2).
//!
//! A scan that reads only some cartridges of a media set finds an image's part 0 on
//! one and part 1 on another only if both are in the same run. These rows carry what
//! a scan learnt of each part (its header and trailer blocks as on tape, its counts and
//! coverage) from one rebuild to the next, so the parts join whatever batches the
//! cartridges come in.

use rusqlite::params;
use uuid::Uuid;

use super::{num, Catalog, CatalogError, Extent, Result};

/// One part of an image as a media scan read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedPart {
    pub image: Uuid,
    pub barcode: String,
    pub tape_file: u64,
    pub part: u32,
    /// The image header block of this part, exactly as on tape.
    pub header: Vec<u8>,
    /// The image trailer block, exactly as on tape; `None` when the part has none
    /// (its write was interrupted).
    pub trailer: Option<Vec<u8>>,
    pub records: u64,
    pub data_bytes: u64,
    pub stored_bytes: u64,
    /// Records of this part that were damaged or missing when it was read.
    pub damaged: u64,
    /// The disk ranges this part's records cover, in order.
    pub coverage: Vec<Extent>,
}

impl Catalog {
    /// Record (or replace) parts read by a scan.
    pub fn save_scanned_parts(&self, parts: &[ScannedPart]) -> Result<()> {
        let tx = self.write_tx()?;
        for p in parts {
            let coverage =
                serde_json::to_string(&p.coverage).map_err(|e| CatalogError::Invalid {
                    what: format!("coverage of image {} part {}", p.image, p.part),
                    reason: e.to_string(),
                })?;
            self.conn().execute(
                "INSERT OR REPLACE INTO scanned_parts (image_uuid, barcode, tape_file, part, header, \
                 trailer, records, data_bytes, stored_bytes, damaged, coverage) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    p.image.to_string(),
                    p.barcode,
                    num(p.tape_file, "tape file")?,
                    p.part,
                    p.header,
                    p.trailer,
                    num(p.records, "records")?,
                    num(p.data_bytes, "bytes")?,
                    num(p.stored_bytes, "bytes")?,
                    num(p.damaged, "records")?,
                    coverage
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The parts of `image` earlier scans recorded, by part number.
    pub fn scanned_parts(&self, image: Uuid) -> Result<Vec<ScannedPart>> {
        let mut st = self.conn().prepare(
            "SELECT barcode, tape_file, part, header, trailer, records, data_bytes, stored_bytes, \
             damaged, coverage FROM scanned_parts WHERE image_uuid=?1 ORDER BY part, barcode, tape_file",
        )?;
        let rows = st
            .query_map([image.to_string()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, u32>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, Option<Vec<u8>>>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, i64>(7)?,
                    r.get::<_, i64>(8)?,
                    r.get::<_, String>(9)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(
                |(
                    barcode,
                    tape_file,
                    part,
                    header,
                    trailer,
                    records,
                    data,
                    stored,
                    damaged,
                    cov,
                )| {
                    let coverage =
                        serde_json::from_str(&cov).map_err(|e| CatalogError::Invalid {
                            what: format!("scanned part {part} of image {image} on {barcode}"),
                            reason: format!("unreadable coverage: {e}"),
                        })?;
                    Ok(ScannedPart {
                        image,
                        barcode,
                        tape_file: tape_file as u64,
                        part,
                        header,
                        trailer,
                        records: records as u64,
                        data_bytes: data as u64,
                        stored_bytes: stored as u64,
                        damaged: damaged as u64,
                        coverage,
                    })
                },
            )
            .collect()
    }

    /// Forget the scanned parts of `image` (it is whole, or gone).
    pub fn drop_scanned_parts(&self, image: Uuid) -> Result<()> {
        self.conn().execute(
            "DELETE FROM scanned_parts WHERE image_uuid=?1",
            [image.to_string()],
        )?;
        Ok(())
    }

    /// Forget every scanned part on a cartridge (it was overwritten or recycled).
    pub fn drop_scanned_parts_on(&self, barcode: &str) -> Result<usize> {
        Ok(self
            .conn()
            .execute("DELETE FROM scanned_parts WHERE barcode=?1", [barcode])?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(image: Uuid, barcode: &str, n: u32) -> ScannedPart {
        ScannedPart {
            image,
            barcode: barcode.into(),
            tape_file: 3 + n as u64,
            part: n,
            header: vec![1, 2, 3, n as u8],
            trailer: (n == 0).then(|| vec![9; 40]),
            records: 10,
            data_bytes: 5 << 20,
            stored_bytes: 4 << 20,
            damaged: n as u64,
            coverage: vec![
                Extent {
                    offset: 0,
                    length: 4096,
                    is_zero: false,
                },
                Extent {
                    offset: 4096,
                    length: 1 << 30,
                    is_zero: true,
                },
            ],
        }
    }

    #[test]
    fn scanned_parts_round_trip_replace_and_go_with_their_cartridge() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open_path(&dir.path().join("c.db")).unwrap();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let (a0, a1, b0) = (
            part(a, "AAA001L9", 0),
            part(a, "BBB001L9", 1),
            part(b, "AAA001L9", 0),
        );
        cat.save_scanned_parts(&[a1.clone(), a0.clone(), b0.clone()])
            .unwrap();
        assert_eq!(cat.scanned_parts(a).unwrap(), vec![a0.clone(), a1.clone()]);
        // Read again: replaced, not doubled.
        let mut again = a0.clone();
        again.damaged = 7;
        cat.save_scanned_parts(&[again.clone()]).unwrap();
        assert_eq!(cat.scanned_parts(a).unwrap(), vec![again, a1.clone()]);
        assert_eq!(cat.drop_scanned_parts_on("AAA001L9").unwrap(), 2);
        assert_eq!(cat.scanned_parts(a).unwrap(), vec![a1]);
        assert!(cat.scanned_parts(b).unwrap().is_empty());
        cat.drop_scanned_parts(a).unwrap();
        assert!(cat.scanned_parts(a).unwrap().is_empty());
    }
}
