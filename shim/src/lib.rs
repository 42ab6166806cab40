//! `containerd-shim-hull-v2`'s library: containerd's Task API served over the host
//! library (`hull-host`), which runs the sandbox VM, its containers and processes. This
//! crate maps containerd's requests, states and events onto it and nothing more.

pub mod task;
