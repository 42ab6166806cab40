//! KVM tests with tiny hand-assembled real-mode guests: each runs in milliseconds and
//! exercises the real vCPU run loop, buses and devices of hull-vmm against /dev/kvm.
//!
//! Guests start in real mode at 0x1000 with 512 KiB of RAM and an MMIO window at 0xc0000,
//! and end by pulsing the i8042 reset line.

use std::io::Write;
use std::sync::{Arc, Mutex};

use hull_vmm::devices::boot_timer::BootTimer;
use hull_vmm::devices::i8042::I8042;
use hull_vmm::devices::serial::SerialDevice;
use hull_vmm::devices::{Bus, BusDevice};
use hull_vmm::exit::{ExitEvent, ExitReason};
use hull_vmm::vstate::pause::PauseGate;
use hull_vmm::vstate::vcpu::{Vcpu, VcpuContext};
use hull_vmm::vstate::vm::{open_kvm, Vm};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use common::kvm_available;

mod common;

const CODE: u64 = 0x1000;
/// Reachable from real mode through a segment (0xc000:0000), and not backed by RAM.
const MMIO_BASE: u64 = 0xc_0000;
/// Guest RAM ends below the MMIO window.
const RAM_SIZE: usize = 0x8_0000;
const TEST_PORT: u16 = 0x510;
/// mov al, 0xfe; out 0x64, al; hlt; jmp $
const RESET: &[u8] = &[0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfe];

/// Records every access; reads return `0x40 + offset` in each byte.
#[derive(Default)]
struct Recorder {
    writes: Vec<(u64, Vec<u8>)>,
}

impl BusDevice for Recorder {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = 0x40 + offset as u8 + i as u8;
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.writes.push((offset, data.to_vec()));
    }
}

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

struct Outcome {
    reason: Option<ExitReason>,
    console: Vec<u8>,
    stages: Vec<hull_protocol::boot::Stage>,
    pio: Vec<(u64, Vec<u8>)>,
    mmio: Vec<(u64, Vec<u8>)>,
}

struct TinyGuest {
    code: Vec<u8>,
    /// Extra (address, bytes) to place in guest memory.
    data: Vec<(u64, Vec<u8>)>,
    /// The console sink's cap, as hull-vmm sets for a console file.
    console_cap: Option<u64>,
}

/// A virtio-mmio transport (of a virtio-rng device) at 0xc1000, segment 0xc100.
const VIRTIO_BASE: u64 = MMIO_BASE + 0x1000;

impl TinyGuest {
    fn new(code: Vec<u8>) -> Self {
        TinyGuest {
            code,
            data: vec![],
            console_cap: None,
        }
    }

    fn run(self) -> Outcome {
        let kvm = open_kvm().unwrap();
        let vm = Vm::new(&kvm).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM_SIZE)]).unwrap();
        mem.write_slice(&self.code, GuestAddress(CODE)).unwrap();
        for (addr, bytes) in &self.data {
            mem.write_slice(bytes, GuestAddress(*addr)).unwrap();
        }
        vm.register_memory(&mem).unwrap();
        let exit = ExitEvent::new().unwrap();

        let console = Sink::default();
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        vm.register_irqfd(&serial_irq, 4).unwrap();
        let pio_rec = Arc::new(Mutex::new(Recorder::default()));
        let mmio_rec = Arc::new(Mutex::new(Recorder::default()));
        let mut pio = Bus::new();
        let sink: Box<dyn Write + Send> = match self.console_cap {
            Some(cap) => Box::new(hull_vmm::devices::serial::CappedConsole::new(
                console.clone(),
                cap,
            )),
            None => Box::new(console.clone()),
        };
        let boot_timer = BootTimer::new(std::time::Instant::now(), exit.clone());
        let stages = boot_timer.stages();
        pio.insert(
            Arc::new(Mutex::new(SerialDevice::new(serial_irq, sink))),
            0x3f8,
            8,
        )
        .unwrap();
        pio.insert(
            Arc::new(Mutex::new(I8042::new(mem.clone(), exit.clone()))),
            0x60,
            5,
        )
        .unwrap();
        pio.insert(
            Arc::new(Mutex::new(boot_timer)),
            u64::from(hull_protocol::boot::BOOT_TIMER_PORT),
            1,
        )
        .unwrap();
        pio.insert(pio_rec.clone(), u64::from(TEST_PORT), 4)
            .unwrap();
        let mut mmio = Bus::new();
        mmio.insert(mmio_rec.clone(), MMIO_BASE, 0x1000).unwrap();
        let rng = hull_vmm::devices::virtio::mmio::MmioTransport::new(
            Box::new(hull_vmm::devices::virtio::rng::Rng::new()),
            mem.clone(),
            Arc::new(hull_vmm::devices::virtio::Interrupt::new(
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            )),
        )
        .unwrap();
        mmio.insert(Arc::new(Mutex::new(rng)), VIRTIO_BASE, 0x1000)
            .unwrap();

        let ctx = VcpuContext {
            pio: Arc::new(pio),
            mmio: Arc::new(mmio),
            mem: mem.clone(),
            exit: exit.clone(),
            emulated_host: hull_vmm::quirks::resolve(Default::default()).is_emulated(),
            pause: Arc::new(PauseGate::new(1)),
        };
        let mut vcpu = Vcpu::new(&vm, 0, ctx).unwrap();
        vcpu.configure_real_mode(CODE, 0x8000).unwrap();
        // A wedged guest must fail the test, not hang it.
        let watchdog_exit = exit.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(20));
            watchdog_exit.signal(ExitReason::VcpuError {
                vcpu: 0,
                message: "test watchdog: guest did not finish in 20 s".into(),
            });
        });
        vcpu.run();
        let out = Outcome {
            reason: exit.reason(),
            console: console.0.lock().unwrap().clone(),
            stages: stages.lock().unwrap().iter().map(|s| s.0).collect(),
            pio: pio_rec.lock().unwrap().writes.clone(),
            mmio: mmio_rec.lock().unwrap().writes.clone(),
        };
        out
    }
}

fn out_byte(port: u16, value: u8) -> Vec<u8> {
    let p = port.to_le_bytes();
    vec![0xba, p[0], p[1], 0xb0, value, 0xee] // mov dx, port; mov al, value; out dx, al
}

#[test]
fn serial_output_reaches_the_console_sink() {
    if !kvm_available() {
        return;
    }
    let mut code = Vec::new();
    for b in b"hull\n" {
        code.extend(out_byte(0x3f8, *b));
    }
    code.extend_from_slice(RESET);
    let out = TinyGuest::new(code).run();
    assert_eq!(String::from_utf8_lossy(&out.console), "hull\n");
    assert_eq!(out.reason, Some(ExitReason::Reset));
}

#[test]
fn port_io_and_mmio_reach_their_devices_with_relative_offsets() {
    if !kvm_available() {
        return;
    }
    let mut code = vec![
        0xba, 0x12, 0x05, // mov dx, 0x512
        0xec, // in al, dx        -> 0x42
        0xba, 0x11, 0x05, // mov dx, 0x511
        0xee, // out dx, al       -> port offset 1: [0x42]
        0xb8, 0x00, 0xc0, // mov ax, 0xc000
        0x8e, 0xd8, // mov ds, ax
        0x66, 0xa1, 0x10, 0x00, // mov eax, [0x10]  (linear 0xc0010) -> 0x53525150
        0x66, 0xa3, 0x20, 0x00, // mov [0x20], eax  (linear 0xc0020)
    ];
    code.extend_from_slice(RESET);
    let out = TinyGuest::new(code).run();
    assert_eq!(out.reason, Some(ExitReason::Reset));
    assert_eq!(out.pio, vec![(1, vec![0x42])]);
    assert_eq!(out.mmio, vec![(0x20, vec![0x50, 0x51, 0x52, 0x53])]);
}

#[test]
fn int3_runs_the_guest_breakpoint_handler_and_resumes() {
    if !kvm_available() {
        return;
    }
    // Handler at 0x2000 reports 'B' and returns; the main code then reports 'A'.
    let mut handler = out_byte(TEST_PORT, b'B');
    handler.push(0xcf); // iret
    let mut code = vec![0xcc]; // int3
    code.extend(out_byte(TEST_PORT, b'A'));
    code.extend_from_slice(RESET);
    let mut g = TinyGuest::new(code);
    g.data.push((0x2000, handler));
    g.data.push((3 * 4, vec![0x00, 0x20, 0x00, 0x00])); // IVT[3] = 0000:2000
    let out = g.run();
    assert_eq!(out.reason, Some(ExitReason::Reset));
    assert_eq!(out.pio, vec![(0, vec![b'B']), (0, vec![b'A'])]);
}

#[test]
fn announced_reset_is_reported_as_poweroff() {
    if !kvm_available() {
        return;
    }
    let mut code = out_byte(
        hull_protocol::boot::BOOT_TIMER_PORT,
        hull_protocol::boot::Stage::PoweroffRequested as u8,
    );
    code.extend_from_slice(RESET);
    assert_eq!(
        TinyGuest::new(code).run().reason,
        Some(ExitReason::Poweroff)
    );
}

#[test]
fn reset_after_a_panic_reboot_flag_is_reported_as_panic() {
    if !kvm_available() {
        return;
    }
    // mov word [0x472], 0x1234 (what Linux writes before its post-panic warm reboot)
    let mut code = vec![0xc7, 0x06, 0x72, 0x04, 0x34, 0x12];
    code.extend_from_slice(RESET);
    let out = TinyGuest::new(code).run();
    assert_eq!(out.reason, Some(ExitReason::GuestPanic));
    assert_ne!(out.reason.unwrap().exit_code(), 0);
}

#[test]
fn a_paused_vcpu_stops_running_guest_code_until_resumed() {
    use std::os::unix::thread::JoinHandleExt;
    use std::time::{Duration, Instant};
    if !kvm_available() {
        return;
    }
    hull_vmm::signals::install_kick_handler().unwrap();
    let kvm = open_kvm().unwrap();
    let vm = Vm::new(&kvm).unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM_SIZE)]).unwrap();
    // inc word [0x2000]; jmp back to it: a counter the host can watch.
    mem.write_slice(&[0xff, 0x06, 0x00, 0x20, 0xeb, 0xfa], GuestAddress(CODE))
        .unwrap();
    vm.register_memory(&mem).unwrap();
    let exit = ExitEvent::new().unwrap();
    let gate = Arc::new(PauseGate::new(1));
    let ctx = VcpuContext {
        pio: Arc::new(Bus::new()),
        mmio: Arc::new(Bus::new()),
        mem: mem.clone(),
        exit: exit.clone(),
        emulated_host: hull_vmm::quirks::resolve(Default::default()).is_emulated(),
        pause: gate.clone(),
    };
    let vcpu = Vcpu::new(&vm, 0, ctx).unwrap();
    vcpu.configure_real_mode(CODE, 0x8000).unwrap();
    let handle = vcpu.spawn().unwrap();
    let thread = handle.as_pthread_t();
    let counter = || mem.read_obj::<u16>(GuestAddress(0x2000)).unwrap();
    let kick = |_: usize| {
        // SAFETY: the vCPU thread is alive until it reports its end to the gate.
        unsafe { libc::pthread_kill(thread, hull_vmm::signals::kick_signal()) };
    };
    let wait_for_change = |from: u16| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while counter() == from {
            assert!(Instant::now() < deadline, "the guest counter did not move");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    wait_for_change(0);
    gate.pause(kick);
    let at = counter();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(counter(), at, "guest code ran while the vCPU was paused");
    gate.resume();
    wait_for_change(at);
    // A paused VM can still be stopped.
    gate.pause(kick);
    exit.signal(ExitReason::Signal(libc::SIGTERM));
    gate.resume();
    while !handle.is_finished() {
        kick(0);
        std::thread::sleep(Duration::from_millis(2));
    }
    handle.join().unwrap();
}

/// Snapshot a running guest (registers, MSRs, LAPIC, irqchip, clock, memory) and restore
/// it into a new VM: the restored vCPU continues from the saved register state.
#[test]
fn a_snapshot_restores_into_a_new_vm_and_continues() {
    use hull_vmm::vstate::vcpu_state::{self, VcpuState};
    use std::os::unix::thread::JoinHandleExt;
    use std::time::{Duration, Instant};
    if !kvm_available() {
        return;
    }
    hull_vmm::signals::install_kick_handler().unwrap();
    // inc eax (0x66 0x40); mov [0x2000], eax (0x66 0xa3 0x00 0x20); jmp back: the
    // counter lives in a register, the memory word only shows it to the host.
    let code = [0x66, 0x40, 0x66, 0xa3, 0x00, 0x20, 0xeb, 0xf8];
    let emulated = hull_vmm::quirks::resolve(Default::default()).is_emulated();
    let start_vm = |mem: &GuestMemoryMmap,
                    state: Option<&(VcpuState, hull_vmm::vstate::vm::VmState)>| {
        let kvm = open_kvm().unwrap();
        let vm = Vm::new(&kvm).unwrap();
        vm.register_memory(mem).unwrap();
        if let Some((_, vm_state)) = state {
            vm.restore_state(vm_state).unwrap();
        }
        let exit = ExitEvent::new().unwrap();
        let gate = Arc::new(PauseGate::new(1));
        let ctx = VcpuContext {
            pio: Arc::new(Bus::new()),
            mmio: Arc::new(Bus::new()),
            mem: mem.clone(),
            exit: exit.clone(),
            emulated_host: emulated,
            pause: gate.clone(),
        };
        let vcpu = Vcpu::new(&vm, 0, ctx).unwrap();
        match state {
            Some((vcpu_state, _)) => vcpu.restore_state(vcpu_state).unwrap(),
            None => vcpu.configure_real_mode(CODE, 0x8000).unwrap(),
        }
        let handle = vcpu.spawn().unwrap();
        (kvm, vm, exit, gate, handle)
    };
    let counter = |mem: &GuestMemoryMmap| mem.read_obj::<u32>(GuestAddress(0x2000)).unwrap();
    let wait_above = |mem: &GuestMemoryMmap, floor: u32| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while counter(mem) <= floor {
            assert!(
                Instant::now() < deadline,
                "the guest counter did not pass {floor}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let stop = |exit: ExitEvent, gate: Arc<PauseGate>, handle: std::thread::JoinHandle<_>| {
        let thread = handle.as_pthread_t();
        exit.signal(ExitReason::Signal(libc::SIGTERM));
        gate.resume();
        while !handle.is_finished() {
            // SAFETY: the thread has not returned (checked just above).
            unsafe { libc::pthread_kill(thread, hull_vmm::signals::kick_signal()) };
            std::thread::sleep(Duration::from_millis(2));
        }
        handle.join().unwrap();
    };

    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM_SIZE)]).unwrap();
    mem.write_slice(&code, GuestAddress(CODE)).unwrap();
    let (kvm, vm, exit, gate, handle) = start_vm(&mem, None);
    wait_above(&mem, 1000);
    let thread = handle.as_pthread_t();
    gate.pause(|_| {
        // SAFETY: the vCPU thread lives until it reports its end to the gate.
        unsafe { libc::pthread_kill(thread, hull_vmm::signals::kick_signal()) };
    });
    let msrs: Vec<u32> = kvm.get_msr_index_list().unwrap().as_slice().to_vec();
    let (tx, rx) = std::sync::mpsc::channel();
    gate.run_parked(
        0,
        Box::new(move |fd| {
            tx.send(vcpu_state::save(fd, 0, &msrs)).unwrap();
        }),
    )
    .unwrap();
    let saved = rx.recv().unwrap().expect("save vCPU state");
    let vm_state = vm.save_state().expect("save VM state");
    assert!(saved.regs.rax as u32 >= 1000);
    // Paused between the increment and the store at most.
    assert!((saved.regs.rax as u32).wrapping_sub(counter(&mem)) <= 1);
    let mut image = vec![0u8; RAM_SIZE];
    mem.read_slice(&mut image, GuestAddress(0)).unwrap();
    stop(exit, gate, handle);
    drop(vm);

    // Through the state file's serializer, as a restore in another process gets it.
    let bytes = postcard::to_stdvec(&(saved, vm_state)).unwrap();
    let restored: (VcpuState, hull_vmm::vstate::vm::VmState) =
        postcard::from_bytes(&bytes).unwrap();
    let at = restored.0.regs.rax as u32;
    let mem2 = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM_SIZE)]).unwrap();
    mem2.write_slice(&image, GuestAddress(0)).unwrap();
    // Clear the host-visible copy: whatever appears there now comes from the restored EAX.
    mem2.write_obj(0u32, GuestAddress(0x2000)).unwrap();
    let (_kvm2, _vm2, exit2, gate2, handle2) = start_vm(&mem2, Some(&restored));
    wait_above(&mem2, at);
    stop(exit2, gate2, handle2);
}

/// Counts what reaches the `log` facade: the lines hull-vmm would write to its log file.
/// nextest runs each test in its own process, so the counts are this test's.
mod log_count {
    use std::sync::atomic::{AtomicU64, Ordering};

    pub static LINES: AtomicU64 = AtomicU64::new(0);
    pub static BYTES: AtomicU64 = AtomicU64::new(0);

    struct Counter;

    impl log::Log for Counter {
        fn enabled(&self, m: &log::Metadata) -> bool {
            m.level() <= log::Level::Info
        }
        fn log(&self, r: &log::Record) {
            if self.enabled(r.metadata()) {
                LINES.fetch_add(1, Ordering::Relaxed);
                BYTES.fetch_add(r.args().to_string().len() as u64 + 40, Ordering::Relaxed);
            }
        }
        fn flush(&self) {}
    }

    pub fn install() {
        let _ = log::set_logger(&Counter);
        log::set_max_level(log::LevelFilter::Info);
    }

    pub fn lines() -> u64 {
        LINES.load(Ordering::Relaxed)
    }

    pub fn bytes() -> u64 {
        BYTES.load(Ordering::Relaxed)
    }
}

/// Guest code that runs `body` `n` times (ecx counts down), then resets.
fn looped(n: u32, body: &[u8]) -> Vec<u8> {
    let mut code = vec![0x66, 0xb9]; // mov ecx, n
    code.extend_from_slice(&n.to_le_bytes());
    let start = code.len();
    code.extend_from_slice(body);
    code.extend_from_slice(&[0x66, 0x49]); // dec ecx
    let back = i8::try_from(start as isize - (code.len() as isize + 2)).unwrap();
    code.extend_from_slice(&[0x75, back as u8]); // jnz start
    code.extend_from_slice(RESET);
    code
}

const FLOOD: u32 = 100_000;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_guest_looping_on_the_boot_port_is_recorded_and_logged_a_bounded_number_of_times() {
    if !kvm_available() {
        return;
    }
    log_count::install();
    let port = hull_protocol::boot::BOOT_TIMER_PORT.to_le_bytes();
    // mov dx, 0x440; mov al, AgentReady; out dx, al; mov al, 0x77 (unknown); out dx, al
    let body = [0xba, port[0], port[1], 0xb0, 0x02, 0xee, 0xb0, 0x77, 0xee];
    let rss = rss_kib();
    let out = TinyGuest::new(looped(FLOOD, &body)).run();
    assert_eq!(out.reason, Some(ExitReason::Reset));
    assert_eq!(out.stages, vec![hull_protocol::boot::Stage::AgentReady]);
    // One stage line, a burst of unknown-code warnings, perhaps a refill or two.
    let lines = log_count::lines();
    assert!(
        lines <= u64::from(hull_vmm::guest_log::BURST) + 5,
        "{lines} log lines"
    );
    assert!(
        log_count::bytes() < 4096,
        "{} log bytes",
        log_count::bytes()
    );
    assert!(
        rss_kib() < rss + 2048,
        "RSS grew from {rss} to {} KiB",
        rss_kib()
    );
}

#[test]
fn a_guest_looping_on_illegal_mmio_writes_is_logged_a_bounded_number_of_times() {
    if !kvm_available() {
        return;
    }
    log_count::install();
    // mov ax, 0xc100; mov ds, ax; then: mov [0x38], eax (QueueNum before negotiation)
    let mut code = vec![0xb8, 0x00, 0xc1, 0x8e, 0xd8];
    code.extend(looped(FLOOD, &[0x66, 0xa3, 0x38, 0x00]));
    let out = TinyGuest::new(code).run();
    assert_eq!(out.reason, Some(ExitReason::Reset));
    let lines = log_count::lines();
    assert!(
        lines <= u64::from(hull_vmm::guest_log::BURST) + 5,
        "{lines} log lines"
    );
}

#[test]
fn a_guest_flooding_the_serial_console_fills_at_most_its_cap() {
    if !kvm_available() {
        return;
    }
    log_count::install();
    let body = out_byte(0x3f8, b'x');
    let mut g = TinyGuest::new(looped(FLOOD, &body));
    g.console_cap = Some(4096);
    let out = g.run();
    assert_eq!(out.reason, Some(ExitReason::Reset));
    let note = hull_vmm::devices::serial::CAPPED_NOTE;
    assert_eq!(out.console.len(), 4096 + note.len());
    assert!(out.console.ends_with(note.as_bytes()));
    assert!(log_count::lines() <= 5, "{} log lines", log_count::lines());
}
