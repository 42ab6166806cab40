//! Fuzzes the port-I/O devices a guest kernel reaches with `in`/`out`: the 16550A serial
//! port (console sink capped as hull-vmm caps a console file), the i8042 (reset line) and
//! the boot-timer port. Each input is a sequence of accesses (device, read or write,
//! offset, width, bytes) and console input. Nothing may panic, the console sink may not
//! grow past its cap and one closing note, and the boot timer keeps at most one record
//! per stage however often the guest writes it.
#![no_main]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hull_vmm::devices::boot_timer::BootTimer;
use hull_vmm::devices::i8042::I8042;
use hull_vmm::devices::serial::{CappedConsole, SerialDevice, CAPPED_NOTE};
use hull_vmm::devices::BusDevice;
use hull_vmm::exit::ExitEvent;
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::EventFd;

const CAP: u64 = 256;

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mem = hull_fuzz::guest_memory();
    let exit = ExitEvent::new().unwrap();
    let sink = Sink::default();
    let mut serial = SerialDevice::new(
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        Box::new(CappedConsole::new(sink.clone(), CAP)),
    );
    let mut i8042 = I8042::new(mem, exit.clone());
    let mut timer = BootTimer::new(Instant::now(), exit);
    let mut rest = data;
    while let Some((op, tail)) = rest.split_first_chunk::<3>() {
        rest = tail;
        let [kind, offset, width] = *op;
        let offset = u64::from(offset % 16);
        let width = usize::from(width % 9);
        let take = width.min(rest.len());
        let (bytes, tail) = rest.split_at(take);
        rest = tail;
        let mut buf = vec![0u8; width];
        let device: &mut dyn BusDevice = match kind % 3 {
            0 => &mut serial,
            1 => &mut i8042,
            _ => &mut timer,
        };
        match (kind >> 2) % 3 {
            0 => device.read(offset, &mut buf),
            1 => {
                buf[..take].copy_from_slice(bytes);
                device.write(offset, &buf);
            }
            _ => {
                serial.enqueue_input(bytes);
            }
        }
    }
    let console = sink.0.lock().unwrap();
    assert!(
        console.len() as u64 <= CAP + CAPPED_NOTE.len() as u64,
        "the console grew to {} bytes",
        console.len()
    );
    assert!(timer.stages().lock().unwrap().len() <= 3);
});
