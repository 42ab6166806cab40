//! The `hull` CLI's library: everything but the command line itself, so the fuzz targets
//! and tests can reach the parsers of untrusted input (image archives) directly.

pub mod check;
pub mod image;
pub mod lifecycle;
pub mod oci;
pub mod paths;
pub mod progress;
pub mod run;
pub mod signals;
pub mod state;
pub mod store;
pub mod terminal;
