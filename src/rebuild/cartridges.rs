//! How a rebuild gets at a cartridge: loaded from a tape library, or the one cartridge
//! in a standalone drive.

use crate::catalog::Catalog;
use crate::error::{Context, Error, Result};
use crate::media::volume::{read_label, LabelRead};
use crate::media::{mount, unmount};
use tape_devices::changer::TapeLibrary;
use tape_devices::drive::TapeDrive;

/// How the rebuild gets at a cartridge: load it in a library, or the one cartridge in a
/// standalone drive.
pub trait Cartridges {
    /// Run `f` on a drive holding `barcode`, then put the cartridge away.
    fn with_cartridge(
        &mut self,
        barcode: &str,
        f: &mut dyn FnMut(&mut dyn TapeDrive) -> Result<()>,
    ) -> Result<()>;
}

/// Cartridges of a tape library (loaded into a free drive, put back afterwards).
pub struct InLibrary<'a> {
    pub cat: &'a Catalog,
    pub lib: &'a mut dyn TapeLibrary,
}

impl Cartridges for InLibrary<'_> {
    fn with_cartridge(
        &mut self,
        barcode: &str,
        f: &mut dyn FnMut(&mut dyn TapeDrive) -> Result<()>,
    ) -> Result<()> {
        let location = self.cat.media(barcode)?.map(|m| m.location);
        let mut m = mount(self.lib, barcode, location.as_deref())?;
        let r = f(m.drive.as_mut());
        let u = unmount(self.lib, m);
        r?;
        u
    }
}

/// The cartridge in a standalone drive (no changer): its barcode is the one on its label.
pub struct InDrive<'a> {
    pub drive: &'a mut dyn TapeDrive,
    pub barcode: String,
}

impl<'a> InDrive<'a> {
    /// Read the label of the loaded cartridge to learn its barcode.
    pub fn new(drive: &'a mut dyn TapeDrive) -> Result<Self> {
        let barcode = match read_label(drive).context("reading the label in the drive")? {
            LabelRead::Label(l) => l.barcode,
            LabelRead::Blank => {
                return Err(Error::MediaNeeded(format!(
                    "the cartridge in {} is blank",
                    drive.name()
                )))
            }
            LabelRead::Foreign(d) => {
                return Err(Error::MediaNeeded(format!(
                    "the cartridge in {} is not a tapevault cartridge: {d}",
                    drive.name()
                )))
            }
        };
        Ok(InDrive { drive, barcode })
    }
}

impl Cartridges for InDrive<'_> {
    fn with_cartridge(
        &mut self,
        barcode: &str,
        f: &mut dyn FnMut(&mut dyn TapeDrive) -> Result<()>,
    ) -> Result<()> {
        if barcode != self.barcode {
            return Err(Error::MediaNeeded(format!(
                "cartridge {barcode} is needed; {} holds {}",
                self.drive.name(),
                self.barcode
            )));
        }
        f(self.drive)
    }
}
