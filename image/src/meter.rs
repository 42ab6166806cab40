//! What an import may make the host spend, and the reader that enforces it.
//!
//! A [`Meter`] sits between a layer's (possibly compressed) bytes and the tar parser. It
//! counts the bytes that go in and the bytes that come out, hashes what comes out (the
//! layer's `diff_id`), and fails the read the moment a cap is crossed, so a gzip bomb is
//! stopped after at most one buffer past its cap, not after it has filled the disk.
//!
//! It also bounds memory. The tar crate reads GNU long names and PAX records whole into
//! memory, sized by the archive's own header. Everything the parser reads while the
//! applier is not copying an entry's data is such metadata (headers, padding, long names,
//! PAX records), so the meter caps the bytes read between two data reads.

use std::cell::RefCell;
use std::io::{self, Read};
use std::rc::Rc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Caps on what one image import may unpack. `[images]` in `/etc/hull/config.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Uncompressed bytes of one layer (its tar stream).
    pub max_layer_bytes: u64,
    /// Uncompressed bytes of all layers of one image together, and of the outer archive.
    pub max_image_bytes: u64,
    /// Archive entries (files, directories, links, whiteouts) of one image, all layers.
    pub max_entries: u64,
    /// Uncompressed bytes per compressed byte of a layer, checked once a layer has
    /// unpacked more than [`RATIO_FLOOR`] bytes.
    pub max_compression_ratio: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_layer_bytes: 8 << 30,
            max_image_bytes: 16 << 30,
            max_entries: 1_000_000,
            max_compression_ratio: 100,
        }
    }
}

/// Below this many unpacked bytes a layer's compression ratio is not judged: small layers
/// of empty files legitimately compress very well.
pub const RATIO_FLOOR: u64 = 8 << 20;

/// Metadata (headers, padding, long names, PAX records) the tar parser may read for one
/// entry; Go's archive/tar allows 1 MiB per special file.
pub const MAX_METADATA_RUN: u64 = 1 << 20;

/// The cap an import crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Breach {
    #[error("the layer unpacks to more than max_layer_bytes = {0}")]
    LayerBytes(u64),
    #[error("the image unpacks to more than max_image_bytes = {0}")]
    ImageBytes(u64),
    #[error("the image has more than max_entries = {0} entries")]
    Entries(u64),
    #[error(
        "the layer inflates more than max_compression_ratio = {0} times (a compression bomb?)"
    )]
    Ratio(u64),
    #[error("more than {0} bytes of tar metadata (long names, PAX records) before one entry")]
    Metadata(u64),
}

/// Counts shared by the meter (which reads) and the applier (which asks).
#[derive(Debug)]
struct Counts {
    limits: Limits,
    /// Unpacked bytes of earlier layers of the same image.
    image_before: u64,
    compressed: u64,
    unpacked: u64,
    metadata_run: u64,
    in_data: bool,
    breach: Option<Breach>,
    diff_id: Sha256,
}

impl Counts {
    fn take(&mut self, n: u64) -> Result<(), Breach> {
        self.unpacked += n;
        if self.in_data {
            self.metadata_run = 0;
        } else {
            self.metadata_run += n;
        }
        let l = &self.limits;
        if self.unpacked > l.max_layer_bytes {
            return Err(Breach::LayerBytes(l.max_layer_bytes));
        }
        if self.image_before.saturating_add(self.unpacked) > l.max_image_bytes {
            return Err(Breach::ImageBytes(l.max_image_bytes));
        }
        if self.unpacked > RATIO_FLOOR
            && self.unpacked / self.compressed.max(1) > l.max_compression_ratio
        {
            return Err(Breach::Ratio(l.max_compression_ratio));
        }
        if self.metadata_run > MAX_METADATA_RUN {
            return Err(Breach::Metadata(MAX_METADATA_RUN));
        }
        Ok(())
    }
}

/// The applier's side of a meter: what was read, and which cap (if any) stopped it.
#[derive(Debug, Clone)]
pub struct Gauge(Rc<RefCell<Counts>>);

impl Gauge {
    /// The cap that failed the last read, if one did: tar reports a failed read as its own
    /// I/O error, and this says why.
    pub fn breach(&self) -> Option<Breach> {
        self.0.borrow().breach
    }

    /// Marks the reads that follow as an entry's data (true) or as tar metadata (false).
    pub fn set_in_data(&self, in_data: bool) {
        self.0.borrow_mut().in_data = in_data;
    }

    /// An entry is done: the metadata the parser reads next belongs to the next entry.
    pub fn entry_done(&self) {
        self.0.borrow_mut().metadata_run = 0;
    }

    /// Uncompressed bytes read so far.
    pub fn unpacked(&self) -> u64 {
        self.0.borrow().unpacked
    }

    /// `sha256:<hex>` of the uncompressed bytes read so far.
    pub fn diff_id(&self) -> String {
        let h = self.0.borrow().diff_id.clone().finalize();
        format!("sha256:{}", hex(&h))
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Counts the compressed bytes the decompressor pulls from the file.
struct Compressed<R> {
    inner: R,
    counts: Rc<RefCell<Counts>>,
}

impl<R: Read> Read for Compressed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counts.borrow_mut().compressed += n as u64;
        Ok(n)
    }
}

/// The uncompressed stream of one layer, metered. See the module documentation.
pub struct Meter {
    inner: Box<dyn Read>,
    counts: Rc<RefCell<Counts>>,
}

impl Meter {
    /// Meters `file`, inflating it if it starts with the gzip magic. `image_before` is what
    /// earlier layers of the same image unpacked.
    pub fn new(
        mut file: std::fs::File,
        limits: Limits,
        image_before: u64,
    ) -> io::Result<(Meter, Gauge)> {
        use std::io::{Seek, SeekFrom};
        file.seek(SeekFrom::Start(0))?;
        let mut magic = [0u8; 2];
        let gzip = file.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
        file.seek(SeekFrom::Start(0))?;
        let counts = Rc::new(RefCell::new(Counts {
            limits,
            image_before,
            compressed: 0,
            unpacked: 0,
            metadata_run: 0,
            in_data: false,
            breach: None,
            diff_id: Sha256::new(),
        }));
        let source = Compressed {
            inner: io::BufReader::new(file),
            counts: counts.clone(),
        };
        let inner: Box<dyn Read> = if gzip {
            Box::new(flate2::read::GzDecoder::new(source))
        } else {
            Box::new(source)
        };
        let gauge = Gauge(counts.clone());
        Ok((Meter { inner, counts }, gauge))
    }
}

impl Read for Meter {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(b) = self.counts.borrow().breach {
            return Err(io::Error::other(b));
        }
        let n = self.inner.read(buf)?;
        let mut c = self.counts.borrow_mut();
        c.diff_id.update(&buf[..n]);
        if let Err(b) = c.take(n as u64) {
            c.breach = Some(b);
            return Err(io::Error::other(b));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_of(bytes: &[u8]) -> std::fs::File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn counts_and_hashes_what_comes_out_of_gzip() {
        let (mut m, g) = Meter::new(file_of(&gzip(b"abc")), Limits::default(), 0).unwrap();
        let mut out = Vec::new();
        m.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abc");
        assert_eq!(g.unpacked(), 3);
        assert_eq!(
            g.diff_id(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn stops_a_compression_bomb_at_the_ratio() {
        let zeros = vec![0u8; 32 << 20];
        let (mut m, g) = Meter::new(file_of(&gzip(&zeros)), Limits::default(), 0).unwrap();
        m.set_data_for_test();
        let e = io::copy(&mut m, &mut io::sink()).unwrap_err();
        assert_eq!(g.breach(), Some(Breach::Ratio(100)), "{e}");
        assert!(
            g.unpacked() < RATIO_FLOOR + (1 << 20),
            "stopped near the floor"
        );
    }

    #[test]
    fn stops_at_the_layer_and_image_caps() {
        let limits = Limits {
            max_layer_bytes: 1000,
            ..Limits::default()
        };
        let (mut m, g) = Meter::new(file_of(&[1u8; 4096]), limits, 0).unwrap();
        m.set_data_for_test();
        assert!(io::copy(&mut m, &mut io::sink()).is_err());
        assert_eq!(g.breach(), Some(Breach::LayerBytes(1000)));

        let limits = Limits {
            max_image_bytes: 5000,
            ..Limits::default()
        };
        let (mut m, g) = Meter::new(file_of(&[1u8; 4096]), limits, 2000).unwrap();
        m.set_data_for_test();
        assert!(io::copy(&mut m, &mut io::sink()).is_err());
        assert_eq!(g.breach(), Some(Breach::ImageBytes(5000)));
    }

    #[test]
    fn bounds_metadata_read_outside_entry_data() {
        let (mut m, g) = Meter::new(file_of(&vec![b'x'; 2 << 20]), Limits::default(), 0).unwrap();
        assert!(io::copy(&mut m, &mut io::sink()).is_err());
        assert_eq!(g.breach(), Some(Breach::Metadata(MAX_METADATA_RUN)));
    }

    impl Meter {
        fn set_data_for_test(&mut self) {
            self.counts.borrow_mut().in_data = true;
        }
    }
}
