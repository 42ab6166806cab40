//! What a snapshot keeps of the connection table, and how a restored muxer takes it back:
//! idle host-initiated connections parked for `ADOPT`, every other one reset.

use std::os::unix::net::UnixStream;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{Muxer, MAX_CONNECTIONS, MAX_ORPHAN_RSTS};
use crate::devices::virtio::vsock::connection::{Connection, SavedConnection};

/// The connection table as a snapshot keeps it: idle host-initiated connections a new host
/// client may adopt, and the keys of every other connection, which a restore resets.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MuxerState {
    pub kept: Vec<SavedConnection>,
    pub reset: Vec<(u32, u32)>,
    pub local_port_last: u32,
}

impl Muxer {
    /// The connection table for a snapshot (see [`MuxerState`]).
    pub fn save(&self) -> MuxerState {
        let mut state = MuxerState {
            local_port_last: self.local_port_last,
            ..Default::default()
        };
        for (&(host, guest), c) in &self.conns {
            match c.save(host, guest) {
                Some(kept) => state.kept.push(kept),
                None if !c.is_finished() => state.reset.push((host, guest)),
                None => {}
            }
        }
        // RSTs still waiting for RX buffers: the restored guest must get them too.
        state.reset.extend(self.orphan_rsts.iter().copied());
        state.kept.sort_by_key(|k| (k.host_port, k.guest_port));
        state.reset.sort_unstable();
        state.reset.dedup();
        state
    }

    /// Takes a snapshot's connection table into a fresh muxer: kept connections wait for
    /// `ADOPT`, every other one gets an RST (the guest still holds it; no host client
    /// will). Returns how many were kept.
    pub fn restore(&mut self, state: &MuxerState) -> usize {
        let now = Instant::now();
        self.local_port_last = state.local_port_last;
        let mut kept = 0;
        for saved in state.kept.iter().take(MAX_CONNECTIONS) {
            let Ok((placeholder, _)) = UnixStream::pair() else {
                self.orphan_rst((saved.host_port, saved.guest_port));
                continue;
            };
            let key = (saved.host_port, saved.guest_port);
            self.conns
                .insert(key, Connection::parked(saved, placeholder, now));
            kept += 1;
        }
        for &key in state.reset.iter().take(MAX_ORPHAN_RSTS) {
            self.orphan_rst(key);
        }
        if kept > 0 {
            self.arm_timer();
        }
        kept
    }
}
