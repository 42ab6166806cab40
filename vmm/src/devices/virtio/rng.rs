//! virtio-rng (the entropy device, virtio 1.2 section 5.4): the guest posts writable
//! buffers and gets them back full of bytes from the host's `getrandom(2)`. Linux exposes
//! it as /dev/hwrng and mixes it into its crng, so a sandbox has good entropy from its
//! first instruction even where the CPU offers no RDRAND.

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{UsedQueues, VirtioDevice, VIRTIO_F_VERSION_1};

pub const VIRTIO_ID_ENTROPY: u32 = 4;
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
                    log::warn!("virtio-rng: stopped serving the queue: {e}");
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
                            log::error!("virtio-rng: {e}");
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
                log::warn!("virtio-rng: cannot return descriptor {head}: {e}");
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
        let Some(queue) = queues.get_mut(index) else {
            return UsedQueues::default();
        };
        UsedQueues::one_if(index, self.serve(queue, mem))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use vm_memory::{Address, Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::devices::bus::BusDevice;
    use crate::devices::virtio::mmio::{reg, tests::bring_up_queues, MmioTransport};
    use crate::devices::virtio::Interrupt;

    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;
    const BUF: u64 = 0x10000;

    fn setup() -> (GuestMemoryMmap, MmioTransport) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x40000)]).unwrap();
        let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let mut t = MmioTransport::new(Box::new(Rng::new()), mem.clone(), irq).unwrap();
        bring_up_queues(&mut t, &[(DESC, AVAIL, USED)]);
        (mem, t)
    }

    fn post(mem: &GuestMemoryMmap, t: &mut MmioTransport, len: u32, avail_idx: u16) -> u32 {
        let d = GuestAddress(DESC);
        mem.write_obj(BUF, d).unwrap();
        mem.write_obj(len, d.unchecked_add(8)).unwrap();
        mem.write_obj(2u16, d.unchecked_add(12)).unwrap(); // WRITE
        mem.write_obj(
            0u16,
            GuestAddress(AVAIL + 4 + 2 * u64::from((avail_idx - 1) % 16)),
        )
        .unwrap();
        mem.write_obj(avail_idx, GuestAddress(AVAIL + 2)).unwrap();
        t.write(reg::QUEUE_NOTIFY, &0u32.to_le_bytes());
        let used: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
        assert_eq!(used, avail_idx);
        mem.read_obj(GuestAddress(USED + 4 + 8 * u64::from((used - 1) % 16) + 4))
            .unwrap()
    }

    #[test]
    fn fills_the_buffer_with_fresh_bytes() {
        let (mem, mut t) = setup();
        assert_eq!(post(&mem, &mut t, 256, 1), 256);
        let mut a = [0u8; 256];
        mem.read_slice(&mut a, GuestAddress(BUF)).unwrap();
        assert!(a.iter().any(|b| *b != 0));
        assert_eq!(post(&mem, &mut t, 256, 2), 256);
        let mut b = [0u8; 256];
        mem.read_slice(&mut b, GuestAddress(BUF)).unwrap();
        assert_ne!(a, b, "two requests got the same bytes");
    }

    #[test]
    fn oversized_requests_get_a_bounded_answer() {
        let (mem, mut t) = setup();
        assert_eq!(post(&mem, &mut t, 0x30000, 1), MAX_REQUEST_BYTES as u32);
    }

    #[test]
    fn a_buffer_past_the_end_of_ram_is_returned_empty() {
        let (mem, mut t) = setup();
        // 0x10000 + 0x40000 runs past the 256 KiB of RAM: nothing written, next one works.
        assert_eq!(post(&mem, &mut t, 0x40000, 1), 0);
        assert_eq!(post(&mem, &mut t, 16, 2), 16);
    }
}
