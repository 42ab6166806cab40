//! COM1: a 16550A UART (vm-superio) whose output goes to the console sink and whose
//! interrupt is an irqfd on GSI 4.

use std::io::Write;

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
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

/// A console file (or the VMM's log) with a size cap: a guest that prints without end
/// fills at most `max_bytes`, then one closing note says that the rest was dropped. Writes
/// past the cap succeed (the UART must not stall the guest), and are counted.
pub struct CappedConsole<W> {
    out: W,
    note: &'static str,
    max_bytes: u64,
    written: u64,
    dropped: u64,
}

/// The line a capped console ends with.
pub const CAPPED_NOTE: &str =
    "\n[hull-vmm: console output reached its cap (console_max_bytes); the rest is dropped]\n";

impl<W: Write> CappedConsole<W> {
    pub fn new(out: W, max_bytes: u64) -> Self {
        Self::with_note(out, max_bytes, CAPPED_NOTE)
    }

    /// A capped writer that ends with `note` instead of the console's.
    pub fn with_note(out: W, max_bytes: u64, note: &'static str) -> Self {
        CappedConsole {
            out,
            note,
            max_bytes,
            written: 0,
            dropped: 0,
        }
    }

    /// Bytes the guest wrote past the cap.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

impl<W: Write> Write for CappedConsole<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = self.max_bytes.saturating_sub(self.written);
        let take = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        if take > 0 {
            self.out.write_all(&buf[..take])?;
            self.written += take as u64;
        }
        if take < buf.len() {
            if self.dropped == 0 {
                self.out.write_all(self.note.as_bytes())?;
            }
            self.dropped += (buf.len() - take) as u64;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

pub struct SerialDevice {
    uart: Serial<EventFdTrigger, NoEvents, ConsoleSink>,
}

/// The 16550A's receive FIFO (vm-superio's, which it does not export).
const UART_FIFO_SIZE: usize = 64;

/// The UART's registers and receive FIFO, for a snapshot.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SerialSnapshot {
    pub registers: [u8; 9],
    pub in_buffer: Vec<u8>,
}

impl SerialDevice {
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        SerialDevice {
            uart: Serial::new(EventFdTrigger(irq), ConsoleSink(out)),
        }
    }

    /// A UART in the state a snapshot recorded. A receive FIFO longer than the UART's
    /// (only a corrupt file has one) is cut to fit.
    pub fn from_snapshot(irq: EventFd, out: Box<dyn Write + Send>, s: &SerialSnapshot) -> Self {
        let [dll, dlh, ier, iir, lcr, lsr, mcr, msr, scr] = s.registers;
        let mut in_buffer = s.in_buffer.clone();
        in_buffer.truncate(UART_FIFO_SIZE);
        let state = SerialState {
            baud_divisor_low: dll,
            baud_divisor_high: dlh,
            interrupt_enable: ier,
            interrupt_identification: iir,
            line_control: lcr,
            line_status: lsr,
            modem_control: mcr,
            modem_status: msr,
            scratch: scr,
            in_buffer,
        };
        let trigger = EventFdTrigger(irq);
        match Serial::from_state(&state, trigger, NoEvents, ConsoleSink(out)) {
            Ok(uart) => SerialDevice { uart },
            // Unreachable: the FIFO was cut to size above, the only check from_state makes.
            Err(e) => unreachable!("serial state rejected: {e:?}"),
        }
    }

    pub fn snapshot(&self) -> SerialSnapshot {
        let s = self.uart.state();
        SerialSnapshot {
            registers: [
                s.baud_divisor_low,
                s.baud_divisor_high,
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            in_buffer: s.in_buffer,
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
    fn a_capped_console_stops_at_its_cap_with_one_note() {
        let sink = Shared::default();
        let mut c = CappedConsole::new(sink.clone(), 100);
        for _ in 0..1000 {
            c.write_all(b"0123456789").unwrap();
        }
        let out = sink.0.lock().unwrap().clone();
        assert_eq!(out.len(), 100 + CAPPED_NOTE.len());
        assert!(out.ends_with(CAPPED_NOTE.as_bytes()));
        assert_eq!(c.dropped(), 9900);
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
    fn registers_survive_a_snapshot() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = SerialDevice::new(irq.try_clone().unwrap(), Box::new(std::io::sink()));
        s.write(3, &[0x83]); // DLAB on, 8 bits
        s.write(0, &[0x0c]); // divisor low
        s.write(3, &[0x03]); // DLAB off
        s.write(7, &[0x5a]); // scratch
        s.enqueue_input(b"ab");
        let snap = s.snapshot();
        let mut r = SerialDevice::from_snapshot(irq, Box::new(std::io::sink()), &snap);
        let mut d = [0u8];
        r.read(7, &mut d);
        assert_eq!(d[0], 0x5a);
        r.read(3, &mut d);
        assert_eq!(d[0], 0x03);
        r.read(0, &mut d);
        assert_eq!(d[0], b'a');
        assert_eq!(r.snapshot().registers[0], 0x0c);
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
