//! An image's coverage (its `image_extents` rows) read one extent at a time, in disk
//! order, so that what a restore plan or a catalog snapshot holds does not follow the
//! number of extents: rows are read from the table's primary key (image, offset) as
//! they are consumed.

use serde::de::{SeqAccess, Visitor};
use serde::ser::{Error as _, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cell::RefCell;
use uuid::Uuid;

use super::images::ExtentCheck;
use super::{get_u64, Catalog, CatalogError, Extent, ImageRow, Result, Segment};
use crate::extent_spool::{ItemList, Spool};

const EXTENTS_IN_ORDER: &str =
    "SELECT offset, length, is_zero FROM image_extents WHERE image_uuid=?1 ORDER BY offset";

fn extent_row(r: &rusqlite::Row) -> rusqlite::Result<Extent> {
    Ok(Extent {
        offset: get_u64(r, 0)?,
        length: get_u64(r, 1)?,
        is_zero: r.get(2)?,
    })
}

/// One image's extents, ascending, read as they are consumed.
pub type ExtentCursor<'a> = Box<dyn Iterator<Item = Result<Extent>> + 'a>;

impl Catalog {
    /// Calls `f` with one cursor per image of `images` (in that order) over its
    /// extents, ascending by offset: a k-way merge over a restore chain reads them
    /// side by side, never holding an image's list.
    pub fn with_extent_cursors<R>(
        &self,
        images: &[Uuid],
        f: impl FnOnce(Vec<ExtentCursor<'_>>) -> R,
    ) -> Result<R> {
        let keys: Vec<String> = images.iter().map(Uuid::to_string).collect();
        let mut statements = Vec::with_capacity(images.len());
        for _ in images {
            statements.push(self.conn().prepare(EXTENTS_IN_ORDER)?);
        }
        let mut cursors: Vec<ExtentCursor<'_>> = Vec::with_capacity(images.len());
        for (st, key) in statements.iter_mut().zip(&keys) {
            let rows = st.query_map([key], extent_row)?;
            cursors.push(Box::new(rows.map(|r| r.map_err(CatalogError::from))));
        }
        Ok(f(cursors))
    }

    /// Calls `f` with each extent of `image`, ascending by offset.
    pub fn for_each_extent(
        &self,
        image: Uuid,
        mut f: impl FnMut(Extent) -> Result<()>,
    ) -> Result<()> {
        let mut st = self.conn().prepare_cached(EXTENTS_IN_ORDER)?;
        for e in st.query_map([image.to_string()], extent_row)? {
            f(e?)?;
        }
        Ok(())
    }
}

/// An image as a snapshot carries it ([`super::ImageDump`]'s fields, serialized the
/// same way) with its extents read from the catalog while they are serialized.
#[derive(Serialize)]
pub(super) struct StreamedImageDump<'a> {
    pub image: &'a ImageRow,
    pub segments: &'a [Segment],
    pub extents: StreamedExtents<'a>,
}

/// Serializes as the JSON array of an image's extents, read one at a time.
pub(super) struct StreamedExtents<'a> {
    pub cat: &'a Catalog,
    pub image: Uuid,
    /// Why reading failed, if it did (the serializer's error only carries text).
    pub error: RefCell<Option<CatalogError>>,
}

impl<'a> StreamedExtents<'a> {
    pub fn new(cat: &'a Catalog, image: Uuid) -> Self {
        StreamedExtents {
            cat,
            image,
            error: RefCell::new(None),
        }
    }
}

impl Serialize for StreamedExtents<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(None)?;
        let mut failed: Option<S::Error> = None;
        let r = self.cat.for_each_extent(self.image, |e| {
            if let Err(err) = seq.serialize_element(&e) {
                failed = Some(err);
                return Err(CatalogError::Invalid {
                    what: format!("extents of image {}", self.image),
                    reason: "serialization failed".into(),
                });
            }
            Ok(())
        });
        if let Some(err) = failed {
            return Err(err);
        }
        if let Err(e) = r {
            let msg = e.to_string();
            *self.error.borrow_mut() = Some(e);
            return Err(S::Error::custom(msg));
        }
        seq.end()
    }
}

/// An image's extents as a merge reads them: from an [`super::ImageDump`] in memory,
/// or spooled while a snapshot was parsed.
pub(super) enum DumpExtents<'a> {
    Slice(&'a [Extent]),
    Spooled(&'a ItemList<Extent>),
}

impl DumpExtents<'_> {
    pub fn is_empty(&self) -> bool {
        match self {
            DumpExtents::Slice(s) => s.is_empty(),
            DumpExtents::Spooled(l) => l.is_empty(),
        }
    }

    /// The extents in order; reading a spooled list back may fail.
    pub fn iter(&self) -> Box<dyn Iterator<Item = Result<Extent>> + '_> {
        match self {
            DumpExtents::Slice(s) => Box::new(s.iter().map(|e| Ok(*e))),
            DumpExtents::Spooled(l) => Box::new(l.reader().map(|r| {
                r.map_err(|e| CatalogError::Invalid {
                    what: "a snapshot's image extents".into(),
                    reason: format!("reading them back from their temporary file: {e}"),
                })
            })),
        }
    }

    /// The checks of [`ExtentCheck`], one extent at a time.
    pub fn validate(&self, img: &ImageRow) -> Result<()> {
        let mut check = ExtentCheck::new(img);
        for e in self.iter() {
            check.next(&e?)?;
        }
        check.finish()
    }
}

/// An image of a dump, borrowed for a merge.
pub(super) struct DumpParts<'a> {
    pub image: &'a ImageRow,
    pub segments: &'a [Segment],
    pub extents: DumpExtents<'a>,
}

/// An image of a snapshot as it is parsed ([`super::ImageDump`]'s shape), its
/// extents spooled (beyond the in-memory limit, in a temporary file).
#[derive(Deserialize)]
pub(super) struct SpooledImageDump {
    pub image: ImageRow,
    pub segments: Vec<Segment>,
    pub extents: SpooledExtents,
}

impl SpooledImageDump {
    pub fn parts(&self) -> DumpParts<'_> {
        DumpParts {
            image: &self.image,
            segments: &self.segments,
            extents: DumpExtents::Spooled(&self.extents.0),
        }
    }
}

/// A JSON array of extents, spooled as it is read.
pub(super) struct SpooledExtents(pub ItemList<Extent>);

impl<'de> Deserialize<'de> for SpooledExtents {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SpooledExtents;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of extents")
            }
            fn visit_seq<S: SeqAccess<'de>>(
                self,
                mut seq: S,
            ) -> std::result::Result<SpooledExtents, S::Error> {
                use serde::de::Error as _;
                let mut spool = Spool::new();
                let spool_err = |e: std::io::Error| {
                    S::Error::custom(format!(
                        "keeping an image's extents in a temporary file failed: {e}; check the space in TMPDIR"
                    ))
                };
                while let Some(e) = seq.next_element::<Extent>()? {
                    spool.push(e).map_err(spool_err)?;
                }
                Ok(SpooledExtents(spool.finish().map_err(spool_err)?))
            }
        }
        d.deserialize_seq(V)
    }
}

impl Catalog {
    /// Whether the catalog holds any extent of `image`.
    pub(super) fn has_extents(&self, image: Uuid) -> Result<bool> {
        let mut st = self
            .conn()
            .prepare_cached("SELECT 1 FROM image_extents WHERE image_uuid=?1 LIMIT 1")?;
        Ok(st.exists([image.to_string()])?)
    }
}
