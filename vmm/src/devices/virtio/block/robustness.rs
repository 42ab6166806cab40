//! A hostile driver against virtio-blk: every malformed queue the issue names, each
//! followed by a valid request that must still be served. Nothing here may panic the VMM;
//! a bad request fails alone.

use vm_memory::{Bytes, GuestAddress};

use super::request::*;
use super::Block;
use crate::devices::virtio::test_driver::{
    Buf, TestDriver, F_INDIRECT, F_NEXT, F_WRITE, MEM_SIZE, QUEUE_SIZE,
};

const SECTORS: u64 = 16;

fn driver() -> (TestDriver, tempfile::NamedTempFile) {
    let file = tempfile::NamedTempFile::new().unwrap();
    let content: Vec<u8> = (0..SECTORS * 512).map(|i| (i % 251) as u8).collect();
    std::fs::write(file.path(), content).unwrap();
    let block = Block::new(file.path(), false, None).unwrap();
    (TestDriver::new(Box::new(block)), file)
}

fn header(d: &mut TestDriver, type_: u32, sector: u64) -> u64 {
    let h = d.alloc(16);
    let mut raw = [0u8; 16];
    raw[..4].copy_from_slice(&type_.to_le_bytes());
    raw[8..].copy_from_slice(&sector.to_le_bytes());
    d.write(h, &raw);
    h
}

/// A valid one-sector read of sector 1 must complete with OK and the right bytes.
fn assert_still_serving(d: &mut TestDriver) {
    let h = header(d, VIRTIO_BLK_T_IN, 1);
    let data = d.alloc(512);
    let status = d.alloc(1);
    d.write(status, &[0xff]);
    let head = d.add_chain(
        0,
        &[
            Buf {
                addr: h,
                len: 16,
                write: false,
            },
            Buf {
                addr: data,
                len: 512,
                write: true,
            },
            Buf {
                addr: status,
                len: 1,
                write: true,
            },
        ],
    );
    d.notify(0);
    let used = d.take_used(0);
    assert!(
        used.contains(&(head, 513)),
        "the valid request after a bad one was not served: {used:?}"
    );
    assert_eq!(d.read(status, 1), [VIRTIO_BLK_S_OK]);
    let want: Vec<u8> = (512..1024u64).map(|i| (i % 251) as u8).collect();
    assert_eq!(d.read(data, 512), want);
}

/// Makes `head` available and notifies; returns what the device put in the used ring.
fn submit_head(d: &mut TestDriver, head: u16) -> Vec<(u16, u32)> {
    d.publish(0, head);
    d.notify(0);
    d.take_used(0)
}

#[test]
fn descriptor_pointing_to_itself() {
    let (mut d, _f) = driver();
    let h = header(&mut d, VIRTIO_BLK_T_IN, 0);
    d.write_desc(0, 40, h, 16, F_NEXT, 40);
    assert_eq!(submit_head(&mut d, 40), vec![(40, 0)]);
    assert_still_serving(&mut d);
}

#[test]
fn cycle_across_the_table() {
    let (mut d, _f) = driver();
    let h = header(&mut d, VIRTIO_BLK_T_IN, 0);
    let data = d.alloc(512);
    d.write_desc(0, 40, h, 16, F_NEXT, 41);
    d.write_desc(0, 41, data, 512, F_NEXT | F_WRITE, 42);
    d.write_desc(0, 42, data, 512, F_NEXT | F_WRITE, 40);
    let used = submit_head(&mut d, 40);
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].0, 40);
    assert_still_serving(&mut d);
}

#[test]
fn next_index_outside_the_table() {
    let (mut d, _f) = driver();
    let h = header(&mut d, VIRTIO_BLK_T_IN, 0);
    d.write_desc(0, 40, h, 16, F_NEXT, QUEUE_SIZE + 7);
    assert_eq!(submit_head(&mut d, 40), vec![(40, 0)]);
    assert_still_serving(&mut d);
}

#[test]
fn indirect_table_inside_an_indirect_table() {
    let (mut d, _f) = driver();
    let h = header(&mut d, VIRTIO_BLK_T_IN, 0);
    let status = d.alloc(1);
    // Inner table: a valid-looking request.
    let inner = d.alloc(32);
    d.write(inner, &desc_bytes(h, 16, F_NEXT, 1));
    d.write(inner + 16, &desc_bytes(status, 1, F_WRITE, 0));
    // Outer table: one descriptor that is itself indirect.
    let outer = d.alloc(16);
    d.write(outer, &desc_bytes(inner, 32, F_INDIRECT, 0));
    d.write_desc(0, 40, outer, 16, F_INDIRECT, 0);
    assert_eq!(submit_head(&mut d, 40), vec![(40, 0)]);
    assert_still_serving(&mut d);
}

#[test]
fn lengths_whose_sum_overflows() {
    let (mut d, _f) = driver();
    let h = header(&mut d, VIRTIO_BLK_T_IN, 0);
    // Three writable buffers of almost 4 GiB each: more than u32 and, on 32-bit
    // arithmetic, a wrapped total. They also lie past RAM, which must not matter first.
    d.write_desc(0, 40, h, 16, F_NEXT, 41);
    d.write_desc(0, 41, 0x1000, u32::MAX, F_NEXT | F_WRITE, 42);
    d.write_desc(0, 42, 0x1000, u32::MAX, F_NEXT | F_WRITE, 43);
    d.write_desc(0, 43, 0x1000, u32::MAX, F_WRITE, 0);
    let used = submit_head(&mut d, 40);
    assert_eq!(used, vec![(40, 0)]);
    assert_still_serving(&mut d);
}

#[test]
fn buffer_past_the_end_of_ram() {
    let (mut d, _f) = driver();
    let h = header(&mut d, VIRTIO_BLK_T_IN, 0);
    let status = d.alloc(1);
    d.write_desc(0, 40, h, 16, F_NEXT, 41);
    d.write_desc(0, 41, MEM_SIZE - 256, 512, F_NEXT | F_WRITE, 42);
    d.write_desc(0, 42, status, 1, F_WRITE, 0);
    assert_eq!(submit_head(&mut d, 40), vec![(40, 0)]);
    // And one whose address+length wraps the 64-bit space.
    d.write_desc(0, 41, u64::MAX - 100, 512, F_NEXT | F_WRITE, 42);
    assert_eq!(submit_head(&mut d, 40), vec![(40, 0)]);
    assert_still_serving(&mut d);
}

#[test]
fn buffer_ending_exactly_at_the_last_byte_of_ram_works() {
    let (mut d, _f) = driver();
    let h = header(&mut d, VIRTIO_BLK_T_IN, 2);
    let data = MEM_SIZE - 512 - 1;
    let status = MEM_SIZE - 1;
    d.write_desc(0, 40, h, 16, F_NEXT, 41);
    d.write_desc(0, 41, data, 512, F_NEXT | F_WRITE, 42);
    d.write_desc(0, 42, status, 1, F_WRITE, 0);
    assert_eq!(submit_head(&mut d, 40), vec![(40, 513)]);
    assert_eq!(d.read(status, 1), [VIRTIO_BLK_S_OK]);
    let want: Vec<u8> = (1024..1536u64).map(|i| (i % 251) as u8).collect();
    assert_eq!(d.read(data, 512), want);
    assert!(
        d.mem.read_obj::<u8>(GuestAddress(MEM_SIZE)).is_err(),
        "the status byte really was the last byte of RAM"
    );
}

#[test]
fn avail_index_far_ahead_of_the_ring() {
    let (mut d, _f) = driver();
    d.set_avail_idx(0, 1000);
    d.notify(0);
    assert!(
        d.take_used(0).is_empty(),
        "nothing served from a corrupt ring"
    );
    // The driver repairs its index: service resumes.
    d.set_avail_idx(0, 0);
    assert_still_serving(&mut d);
}

#[test]
fn chain_without_a_status_byte_is_consumed() {
    let (mut d, _f) = driver();
    let h = header(&mut d, VIRTIO_BLK_T_IN, 0);
    d.write_desc(0, 40, h, 16, 0, 0);
    assert_eq!(submit_head(&mut d, 40), vec![(40, 0)]);
    assert_still_serving(&mut d);
}

fn desc_bytes(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&addr.to_le_bytes());
    b[8..12].copy_from_slice(&len.to_le_bytes());
    b[12..14].copy_from_slice(&flags.to_le_bytes());
    b[14..].copy_from_slice(&next.to_le_bytes());
    b
}
