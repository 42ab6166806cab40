//! Architecture support. hull runs on x86_64 only for now; the module boundary keeps the
//! boot-protocol details out of the builder so another architecture can slot in later.
pub mod x86_64;
