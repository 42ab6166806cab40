//! COM1: a 16550A UART (vm-superio) whose output goes to the console sink and whose
//! interrupt is an irqfd on GSI 4.

use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;

/// Raises a guest interrupt by writing to an irqfd.
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Where console bytes go. Flushed on every write so a reader of the VMM's stdout sees
/// the guest's output as it happens.
pub struct ConsoleSink(pub Box<dyn Write + Send>);

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.0.write(buf)?;
        self.0.flush()?;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

pub struct SerialDevice {
    uart: Serial<EventFdTrigger, NoEvents, ConsoleSink>,
}

impl SerialDevice {
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        SerialDevice {
            uart: Serial::new(EventFdTrigger(irq), ConsoleSink(out)),
        }
    }

    /// Queues bytes for the guest to read (console input).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 || offset > 7 {
            data.fill(0xff);
            return;
        }
        data[0] = self.uart.read(offset as u8);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 || offset > 7 {
            return;
        }
        if let Err(e) = self.uart.write(offset as u8, data[0]) {
            // A console sink that fails (closed stdout) must not stop the guest.
            log::debug!("serial write: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmitted_bytes_reach_the_sink() {
        let sink = Shared::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = SerialDevice::new(irq.try_clone().unwrap(), Box::new(sink.clone()));
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi\n");
    }

    #[test]
    fn ignores_wide_accesses() {
        let sink = Shared::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = SerialDevice::new(irq, Box::new(sink.clone()));
        s.write(0, &[1, 2]);
        let mut d = [0u8; 2];
        s.read(0, &mut d);
        assert_eq!(d, [0xff, 0xff]);
        assert!(sink.0.lock().unwrap().is_empty());
    }
}
