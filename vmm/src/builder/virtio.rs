//! The VM's virtio devices: created from the configuration's plan (each with its stable
//! id), then placed on the MMIO bus. A booted VM places them in plan order; a restored one
//! puts each device in the slot its id had in the snapshot, with that id's saved state, so
//! the order of creation never matters to a restore.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{BuildError, Subscriber};
use crate::arch::x86_64::layout;
use crate::cmdline::{self, MmioDevice};
use crate::config::{VirtioPlan, VmConfig};
use crate::devices::virtio::block::{Block, DriveSlot};
use crate::devices::virtio::fs::{Fs, SessionStarter, Shares};
use crate::devices::virtio::mmio::{reg, TransportState};
use crate::devices::virtio::net::{Net, Tap, TapError};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::{Interrupt, MmioTransport, VirtioDevice};
use crate::devices::{Bus, BusDevice};
use crate::snapshot::{DeviceId, DeviceSnapshot};
use crate::vstate::vm::Vm;

/// The root disk's guest name, filesystem type and whether it is read-only.
pub(super) type RootSpec = Option<(String, Option<String>, bool)>;

/// One device as placed on the bus.
pub(crate) struct PlacedDevice {
    pub(crate) id: DeviceId,
    pub(crate) mmio_slot: u32,
    pub(crate) transport: Arc<Mutex<MmioTransport>>,
}

pub(super) struct VirtioDevices {
    pub(super) bus: Bus,
    /// Windows and interrupt lines in MMIO slot order (the kernel command line's order).
    pub(super) announced: Vec<MmioDevice>,
    pub(super) root: RootSpec,
    pub(super) vsock_reset: Option<EventFd>,
    pub(super) placed: Vec<PlacedDevice>,
    /// The drive slots, in slot order, with their transports (whose lock a change holds).
    pub(super) slots: Vec<(Arc<Mutex<MmioTransport>>, DriveSlot)>,
    /// The virtio-fs device's shares, if it has one.
    pub(super) shares: Option<Arc<Shares>>,
    /// The virtio-fs device's session starter, to be started once the jail is entered.
    pub(super) fs_sessions: Option<SessionStarter>,
}

/// A device made from its plan entry, not yet on the bus.
struct Created {
    id: DeviceId,
    device: Box<dyn VirtioDevice>,
    /// Its drive slot handle, for a drive slot.
    slot: Option<DriveSlot>,
}

/// Side products of creating the devices.
#[derive(Default)]
struct Extras {
    vsock_reset: Option<EventFd>,
    shares: Option<Arc<Shares>>,
    fs_sessions: Option<SessionStarter>,
}

/// Creates every device of `config`'s plan and places it: in plan order for a boot, at the
/// slot and with the state `saved` names for its id when restoring.
pub(super) fn virtio_devices(
    config: &VmConfig,
    vm: &Vm,
    mem: &GuestMemoryMmap,
    event_manager: &mut EventManager<Subscriber>,
    saved: Option<&[DeviceSnapshot]>,
) -> Result<VirtioDevices, BuildError> {
    let mut extras = Extras::default();
    let mut created = Vec::new();
    for (id, plan) in config.virtio_plan() {
        let (device, slot) = create(&id, plan, saved.is_some(), &mut extras)?;
        created.push(Created { id, device, slot });
    }
    let max = (layout::IOAPIC_PINS - layout::VIRTIO_IRQ_BASE) as usize;
    if created.len() > max {
        return Err(BuildError::TooManyDevices(created.len()));
    }
    let root = root_spec(config);
    let mut placement = placement(created, saved)?;
    placement.sort_by_key(|(mmio_slot, _, _)| *mmio_slot);
    let mut bus = Bus::new();
    let mut announced = Vec::new();
    let mut placed = Vec::new();
    let mut slots = Vec::new();
    for (mmio_slot, c, state) in placement {
        let (base, irq) = window(mmio_slot);
        let transport = attach(vm, mem, &mut bus, event_manager, c.device, state, mmio_slot)?;
        if let Some(handle) = c.slot {
            slots.push((c.id.name.clone(), transport.clone(), handle));
        }
        announced.push(MmioDevice { base, irq });
        placed.push(PlacedDevice {
            id: c.id,
            mmio_slot,
            transport,
        });
    }
    // Drive slots are numbered by their ids (slot0, slot1, ...), whatever their windows.
    slots.sort_by_key(|(name, _, _)| slot_number(name));
    Ok(VirtioDevices {
        bus,
        announced,
        root,
        vsock_reset: extras.vsock_reset,
        placed,
        slots: slots.into_iter().map(|(_, t, h)| (t, h)).collect(),
        shares: extras.shares,
        fs_sessions: extras.fs_sessions,
    })
}

fn slot_number(name: &str) -> u32 {
    name.strip_prefix("slot")
        .and_then(|n| n.parse().ok())
        .unwrap_or(u32::MAX)
}

/// The MMIO window's base and the interrupt line of slot `mmio_slot`.
fn window(mmio_slot: u32) -> (u64, u32) {
    (
        layout::VIRTIO_MMIO_START + u64::from(mmio_slot) * layout::VIRTIO_MMIO_SIZE,
        layout::VIRTIO_IRQ_BASE + mmio_slot,
    )
}

/// Where the root disk is: its plan position among the disks (root first) names it.
fn root_spec(config: &VmConfig) -> RootSpec {
    let disks = config
        .virtio_plan()
        .into_iter()
        .filter_map(|(_, p)| match p {
            VirtioPlan::Drive(d) => Some(d),
            _ => None,
        });
    for (i, d) in disks.enumerate() {
        if d.root {
            return Some((cmdline::disk_name(i), d.fstype.clone(), d.read_only));
        }
    }
    None
}

/// The device for one plan entry.
fn create(
    id: &DeviceId,
    plan: VirtioPlan<'_>,
    restoring: bool,
    extras: &mut Extras,
) -> Result<(Box<dyn VirtioDevice>, Option<DriveSlot>), BuildError> {
    let device: Box<dyn VirtioDevice> = match plan {
        VirtioPlan::Drive(drive) => {
            let mut block = Block::new(&drive.path, drive.read_only, drive.serial.as_deref())?;
            log::info!(
                "drive {}: {} ({} sectors, {})",
                id.name,
                drive.path.display(),
                block.sectors(),
                if drive.read_only {
                    "read-only"
                } else {
                    "read-write"
                }
            );
            Box::new(block)
        }
        VirtioPlan::DriveSlot => {
            let (block, handle) = Block::slot()?;
            return Ok((Box::new(block), Some(handle)));
        }
        VirtioPlan::Net(index, n) => Box::new(net(index, n)?),
        VirtioPlan::Vsock(v) => {
            let vsock = if restoring {
                Vsock::for_restore(v.guest_cid, &v.uds_path)?
            } else {
                Vsock::new(v.guest_cid, &v.uds_path)?
            };
            extras.vsock_reset = Some(vsock.reset_trigger()?);
            log::info!(
                "vsock: guest CID {}, host socket {}",
                v.guest_cid,
                v.uds_path.display()
            );
            Box::new(vsock)
        }
        VirtioPlan::Entropy => Box::new(Rng::new()),
        VirtioPlan::Fs(tag) => {
            let shares = Arc::new(Shares::new());
            let (sessions, starter) = crate::devices::virtio::fs::sessions();
            let fs = Fs::new(tag, shares.clone(), sessions)?;
            log::info!("virtio-fs: tag {tag}");
            extras.shares = Some(shares);
            extras.fs_sessions = Some(starter);
            Box::new(fs)
        }
    };
    Ok((device, None))
}

fn net(index: usize, n: &crate::config::NetConfig) -> Result<Net<Tap>, BuildError> {
    let tap_err = |source| BuildError::Tap { index, source };
    let tap = match (&n.tap, n.tap_fd) {
        (Some(name), _) => Tap::open(name).map_err(tap_err)?,
        // SAFETY: the descriptor number came from whoever started us, who handed it over
        // for this purpose; nothing else in this process owns it.
        (None, Some(fd)) if fd >= 0 => unsafe { Tap::from_raw_fd(fd) }.map_err(tap_err)?,
        _ => return Err(tap_err(TapError::NoBackend)),
    };
    let offload = tap.supports_offload();
    let mac = n.mac.as_deref().and_then(crate::config::parse_mac);
    log::info!(
        "net {index}: tap {}{}, offload {}",
        tap.name(),
        n.mac
            .as_deref()
            .map(|m| format!(", mac {m}"))
            .unwrap_or_default(),
        if offload { "on" } else { "off" }
    );
    Ok(Net::new(tap, mac, offload))
}

/// A created device, its MMIO slot and the state to restore into it.
type Placement<'s> = (u32, Created, Option<&'s TransportState>);

/// Each created device's MMIO slot and saved state: plan order for a boot; for a restore,
/// the snapshot's slot and state for the device's id. The snapshot's shape was checked
/// against the plan already; what is checked here guards the indexing.
fn placement(
    created: Vec<Created>,
    saved: Option<&[DeviceSnapshot]>,
) -> Result<Vec<Placement<'_>>, BuildError> {
    let Some(saved) = saved else {
        return Ok(created
            .into_iter()
            .enumerate()
            .map(|(i, c)| (i as u32, c, None))
            .collect());
    };
    let by_id: HashMap<&DeviceId, &DeviceSnapshot> = saved.iter().map(|d| (&d.id, d)).collect();
    created
        .into_iter()
        .map(|c| match by_id.get(&c.id) {
            Some(s) => Ok((s.mmio_slot, c, Some(&s.transport))),
            None => Err(BuildError::NotInSnapshot(c.id.clone())),
        })
        .collect()
}

/// Puts one device's transport on the bus at `mmio_slot`, its interrupt line and queue
/// notifications wired to KVM, restored from `state` when given.
fn attach(
    vm: &Vm,
    mem: &GuestMemoryMmap,
    bus: &mut Bus,
    event_manager: &mut EventManager<Subscriber>,
    device: Box<dyn VirtioDevice>,
    state: Option<&TransportState>,
    mmio_slot: u32,
) -> Result<Arc<Mutex<MmioTransport>>, BuildError> {
    let (base, irq) = window(mmio_slot);
    let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?;
    vm.register_irqfd(&irqfd, irq)?;
    let mut transport = MmioTransport::new(device, mem.clone(), Arc::new(Interrupt::new(irqfd)))?;
    if let Some(state) = state {
        transport.restore_state(state)?;
    }
    for (q, evt) in transport.queue_evts().iter().enumerate() {
        vm.register_mmio_ioevent(evt, base + reg::QUEUE_NOTIFY, q as u32)?;
    }
    let transport = Arc::new(Mutex::new(transport));
    let as_bus: Arc<Mutex<dyn BusDevice>> = transport.clone();
    bus.insert(as_bus, base, layout::VIRTIO_MMIO_SIZE)?;
    event_manager.add_subscriber(transport.clone());
    Ok(transport)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use vm_memory::GuestAddress;

    use super::*;
    use crate::config::{ConfigFile, DriveConfig, DriveFormat};
    use crate::devices::bus::lock;
    use crate::devices::virtio::block::Attachment;
    use crate::devices::virtio::persist::DeviceState;
    use crate::vstate::vm::open_kvm;

    fn drive(dir: &Path, id: Option<&str>, root: bool) -> DriveConfig {
        let path = dir.join(format!("{}.img", id.unwrap_or("root")));
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        DriveConfig {
            id: id.map(Into::into),
            path,
            read_only: true,
            root,
            fstype: None,
            serial: None,
            format: DriveFormat::Raw,
        }
    }

    fn config(dir: &Path, drives: Vec<DriveConfig>) -> VmConfig {
        let kernel = dir.join("vmlinux");
        std::fs::write(&kernel, crate::config::tests::tiny_elf(16 << 20, 20 << 20)).unwrap();
        let file = ConfigFile {
            kernel: Some(kernel),
            drive: drives,
            drive_slots: Some(2),
            ..Default::default()
        };
        VmConfig::validate(file, 1).unwrap()
    }

    fn build(
        config: &VmConfig,
        saved: Option<&[DeviceSnapshot]>,
    ) -> Result<(VirtioDevices, Vm), BuildError> {
        let kvm = open_kvm().unwrap();
        let vm = Vm::new(&kvm).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut events = EventManager::<Subscriber>::new().unwrap();
        let devices = virtio_devices(config, &vm, &mem, &mut events, saved)?;
        Ok((devices, vm))
    }

    /// What a snapshot keeps of `devices`.
    fn saved(devices: &VirtioDevices) -> Vec<DeviceSnapshot> {
        devices
            .placed
            .iter()
            .map(|d| DeviceSnapshot {
                id: d.id.clone(),
                mmio_slot: d.mmio_slot,
                transport: lock(&d.transport).save_state(),
            })
            .collect()
    }

    fn slot_of(devices: &VirtioDevices, name: &str) -> u32 {
        devices
            .placed
            .iter()
            .find(|d| d.id.name == name)
            .unwrap_or_else(|| panic!("no device {name}"))
            .mmio_slot
    }

    /// A snapshot taken of a VM whose drives were listed (and so created) in one order
    /// restores into a VM that creates them in another: every device gets back the MMIO
    /// window the guest knows it by, and a drive slot gets back what it held.
    #[test]
    fn a_restore_places_devices_by_id_whatever_order_they_are_created_in() {
        if open_kvm().is_err() {
            eprintln!("skipped: no /dev/kvm");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (root, a, b) = (
            drive(dir.path(), None, true),
            drive(dir.path(), Some("a"), false),
            drive(dir.path(), Some("b"), false),
        );
        let booted = config(dir.path(), vec![root.clone(), a.clone(), b.clone()]);
        let (devices, _vm) = build(&booted, None).unwrap();
        let held = Attachment {
            path: a.path.clone(),
            read_only: true,
            serial: "held".into(),
        };
        devices.slots[1].1.attach(&held).unwrap();
        let saved = saved(&devices);

        let reordered = config(dir.path(), vec![b, a, root]);
        let plan: Vec<String> = reordered
            .virtio_plan()
            .into_iter()
            .map(|(id, _)| id.name)
            .collect();
        assert_eq!(plan[..3], ["root", "b", "a"], "created in another order");
        let (restored, _vm) = build(&reordered, Some(&saved)).unwrap();
        for d in &saved {
            assert_eq!(slot_of(&restored, &d.id.name), d.mmio_slot, "{}", d.id);
        }
        assert_eq!(restored.slots[1].1.attachment(), Some(held));
        assert_eq!(restored.slots[0].1.attachment(), None);
        let slot1 = &restored.placed[slot_of(&restored, "slot1") as usize].transport;
        assert!(matches!(
            lock(slot1).save_state().device,
            DeviceState::DriveSlot(Some(_))
        ));
    }

    #[test]
    fn a_device_the_snapshot_lacks_is_named() {
        if open_kvm().is_err() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = drive(dir.path(), None, true);
        let booted = config(dir.path(), vec![root.clone()]);
        let (devices, _vm) = build(&booted, None).unwrap();
        let saved = saved(&devices);
        let more = config(
            dir.path(),
            vec![root, drive(dir.path(), Some("extra"), false)],
        );
        let e = build(&more, Some(&saved)).err().unwrap().to_string();
        assert!(e.contains("no state for device extra (block)"), "{e}");
    }
}
