//! hull's image unpacker: OCI image layouts and `docker save` archives, from untrusted
//! bytes to one root filesystem tree.
//!
//! Everything here reads input hull did not produce: archives from anywhere, later registry
//! replies. What it guarantees (docs/security.md):
//! - nothing outside the directory it unpacks into is created, changed or removed: paths
//!   are resolved under a directory descriptor ([`root`]), never joined into strings;
//! - what an import may spend is capped ([`meter::Limits`]): bytes per layer and per
//!   image, entries, compression ratio, tar metadata held in memory;
//! - blobs match their digests and layers their `diff_ids`.
//!
//! Single-threaded; no global state.

pub mod archive;
pub mod layer;
pub mod meter;
pub mod root;

pub use archive::{unpack_image, ArchiveError, RunConfig, Unpacked};
pub use layer::{apply_layer, Applied, Budget, LayerError};
pub use meter::{Breach, Limits};
pub use root::{InPath, Root, RootError};
