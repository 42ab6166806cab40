//! virtio-rng (the entropy device, virtio 1.2 section 5.4): the guest posts writable
//! buffers and gets them back full of bytes from the host's `getrandom(2)`. Linux exposes
//! it as /dev/hwrng and mixes it into its crng, so a sandbox has good entropy from its
//! first instruction even where the CPU offers no RDRAND.

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{ready, UsedQueues, VirtioDevice, VIRTIO_F_VERSION_1};

pub const VIRTIO_ID_ENTROPY: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
const QUEUE_SIZE: u16 = 64;
/// The most bytes handed out per request; a guest asking for more gets a short answer
/// (which the spec allows), so one request cannot hold the event loop.
pub const MAX_REQUEST_BYTES: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum RngError {
    #[error("getrandom failed")]
    GetRandom(#[source] std::io::Error),
}

/// Fills `buf` from the kernel's CSPRNG.
pub fn fill_random(buf: &mut [u8]) -> Result<(), RngError> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the pointer and length describe `rest`, a live, writable slice; the
        // kernel writes at most that many bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(RngError::GetRandom(e));
        }
        done += n as usize;
    }
    Ok(())
}

#[derive(Default)]
pub struct Rng {
    buf: Vec<u8>,
}

impl Rng {
    pub fn new() -> Self {
        Rng::default()
    }

    /// Serves every available request; returns whether any buffer was used.
    fn serve(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        // Bounded by the ring size: at most that many chains are available at once.
        for _ in 0..queue.size() {
            let chain = match queue.iter(mem) {
                Ok(mut available) => available.next(),
                Err(e) => {
                    crate::guest_warn!("virtio-rng: stopped serving the queue: {e}");
                    break;
                }
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let len = match chain.writer(mem) {
                Ok(mut writer) => {
                    let n = writer.available_bytes().min(MAX_REQUEST_BYTES);
                    self.buf.resize(n, 0);
                    match fill_random(&mut self.buf) {
                        Ok(()) => std::io::Write::write_all(&mut writer, &self.buf)
                            .map(|()| n)
                            .unwrap_or(0),
                        Err(e) => {
                            crate::guest_warn!("virtio-rng: {e}");
                            0
                        }
                    }
                }
                Err(e) => {
                    log::debug!("virtio-rng: malformed descriptor chain: {e}");
                    0
                }
            };
            if let Err(e) = queue.add_used(mem, head, len as u32) {
                crate::guest_warn!("virtio-rng: cannot return descriptor {head}: {e}");
            }
            used = true;
        }
        used
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_ENTROPY
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0); // the entropy device has no configuration space
    }

    fn activate(&mut self, _acked_features: u64) {}

    fn process_queue(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> UsedQueues {
        ready(queues, index)
            .map(|q| UsedQueues::one_if(index, self.serve(q, mem)))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_driver::{Buf, TestDriver, MEM_SIZE};

    /// Posts one writable buffer and returns the length the device reported.
    fn request(d: &mut TestDriver, addr: u64, len: u32) -> u32 {
        let head = d.add_chain(
            0,
            &[Buf {
                addr,
                len,
                write: true,
            }],
        );
        d.notify(0);
        let used = d.take_used(0);
        assert_eq!(used.len(), 1);
        assert_eq!(used[0].0, head);
        used[0].1
    }

    #[test]
    fn fills_the_buffer_with_fresh_bytes() {
        let mut d = TestDriver::new(Box::new(Rng::new()));
        let addr = d.alloc(256);
        assert_eq!(request(&mut d, addr, 256), 256);
        let a = d.read(addr, 256);
        assert!(a.iter().any(|b| *b != 0));
        assert_eq!(request(&mut d, addr, 256), 256);
        assert_ne!(a, d.read(addr, 256), "two requests got the same bytes");
    }

    #[test]
    fn oversized_requests_get_a_bounded_answer() {
        let mut d = TestDriver::new(Box::new(Rng::new()));
        let addr = d.alloc(0x30000);
        assert_eq!(request(&mut d, addr, 0x30000), MAX_REQUEST_BYTES as u32);
    }

    #[test]
    fn a_buffer_past_the_end_of_ram_is_returned_empty() {
        let mut d = TestDriver::new(Box::new(Rng::new()));
        assert_eq!(request(&mut d, MEM_SIZE - 16, 0x1000), 0);
        let addr = d.alloc(16);
        assert_eq!(request(&mut d, addr, 16), 16);
    }
}
