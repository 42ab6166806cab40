//! A container's storage in its sandbox, the one pipeline both front doors run:
//!
//! 1. [`build_volume_images`]: each read-only bind mount copied into an erofs image of its
//!    own (before any VM is touched, so a bad volume costs nothing);
//! 2. [`crate::pod::Pod::attach_storage`]: the root image and the volume images leased into
//!    drive slots and mounted by the agent, the read-write binds shared over virtio-fs, and
//!    the guest paths of all of them written into the spec;
//! 3. the container is created with its stdio ([`crate::guest::Guest::create_container`]);
//! 4. [`crate::pod::Pod::release_storage`] takes the disks back when it is removed.

use std::path::{Path, PathBuf};

use crate::pod::{DriveLease, Pod, PodError};
use crate::rootfs::{self, RootfsError};
use crate::spec::{self, GuestPlan, Spec};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("create {}", .0.display())]
    Dir(PathBuf, #[source] std::io::Error),
    #[error("volume {destination}")]
    Volume {
        destination: String,
        #[source]
        source: RootfsError,
    },
    #[error("attach the root filesystem")]
    Root(#[source] Box<PodError>),
    #[error("attach the volume at {destination}")]
    Attach {
        destination: String,
        #[source]
        source: Box<PodError>,
    },
}

/// A read-only volume's copy on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeImage {
    pub image: PathBuf,
    /// For a single file: its name inside the image (whose root holds only it).
    pub file: Option<String>,
}

/// A container's disk in the VM and its image on the host.
#[derive(Debug, Clone)]
pub struct Disk {
    pub lease: DriveLease,
    pub image: PathBuf,
}

/// Copies each read-only volume of `plan` into an image in `dir` (created private here
/// when there is any; the caller removes it with the container).
pub fn build_volume_images(plan: &GuestPlan, dir: &Path) -> Result<Vec<VolumeImage>, StorageError> {
    if plan.volumes.is_empty() {
        return Ok(Vec::new());
    }
    crate::private::private_dir(dir).map_err(|e| StorageError::Dir(dir.to_path_buf(), e))?;
    plan.volumes
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let image = dir.join(format!("volume-{i}.erofs"));
            let file = rootfs::build_volume_image(&v.source, &image).map_err(|source| {
                StorageError::Volume {
                    destination: v.destination.clone(),
                    source,
                }
            })?;
            Ok(VolumeImage { image, file })
        })
        .collect()
}

impl Pod {
    /// Gives container `id` its storage in the VM and writes where each part is into
    /// `spec`: the root image (under a writable overlay unless `root.readonly`), the
    /// read-only volume images, and the read-write directories of `plan`. What was
    /// attached before a failure is released again.
    pub fn attach_storage(
        &self,
        id: &str,
        spec: &mut Spec,
        plan: &GuestPlan,
        root_image: &Path,
        volumes: &[VolumeImage],
    ) -> Result<Vec<Disk>, StorageError> {
        let mut disks = Vec::new();
        let attached = self
            .attach_root(id, spec, root_image, &mut disks)
            .and_then(|()| self.attach_volumes(id, spec, plan, volumes, &mut disks))
            .and_then(|()| self.share_volumes(spec, plan));
        if attached.is_err() {
            self.release_storage(id, &disks);
        }
        attached.map(|()| disks)
    }

    /// The root image, always under a writable overlay: the runtime creates the mount
    /// points an image lacks (scratch and distroless images have no `/proc`, `/sys` or
    /// `/dev`, Kubernetes' pause image has only `/pause`) as runc does in its writable
    /// root, then remounts the root read-only where the spec says `root.readonly`. The
    /// overlay's upper layer is a guest tmpfs: nothing is written unless the container
    /// writes.
    fn attach_root(
        &self,
        id: &str,
        spec: &mut Spec,
        root_image: &Path,
        disks: &mut Vec<Disk>,
    ) -> Result<(), StorageError> {
        let root = self
            .lease_drive(id, root_image, true)
            .map_err(|e| StorageError::Root(Box::new(e)))?;
        spec::set_root_path(spec, &root.guest_rootfs);
        disks.push(Disk {
            lease: root,
            image: root_image.to_path_buf(),
        });
        Ok(())
    }

    /// The read-only volumes' images, each mounted where its bind mount says.
    fn attach_volumes(
        &self,
        id: &str,
        spec: &mut Spec,
        plan: &GuestPlan,
        volumes: &[VolumeImage],
        disks: &mut Vec<Disk>,
    ) -> Result<(), StorageError> {
        for (i, (v, copy)) in plan.volumes.iter().zip(volumes).enumerate() {
            let lease = self
                .lease_drive(&format!("{id} volume {i}"), &copy.image, false)
                .map_err(|source| StorageError::Attach {
                    destination: v.destination.clone(),
                    source: Box::new(source),
                })?;
            let source = match &copy.file {
                Some(name) => format!("{}/{name}", lease.guest_rootfs),
                None => lease.guest_rootfs.clone(),
            };
            spec::add_volume(spec, v, &source, true);
            disks.push(Disk {
                lease,
                image: copy.image.clone(),
            });
        }
        Ok(())
    }

    /// Read-write volumes are shared live; a share stays for the VM's life (a pod's
    /// volumes are the pod's, and containers binding one directory see one share).
    fn share_volumes(&self, spec: &mut Spec, plan: &GuestPlan) -> Result<(), StorageError> {
        for v in &plan.shared {
            let source = self
                .share_dir(&v.source)
                .map_err(|source| StorageError::Attach {
                    destination: v.destination.clone(),
                    source: Box::new(source),
                })?;
            spec::add_volume(spec, v, &source, false);
        }
        Ok(())
    }

    /// Unmounts and detaches container `id`'s disks, newest first. A disk that will not
    /// come out cleanly retires its slot (see [`Pod::release_drive`]); the rest go on.
    pub fn release_storage(&self, id: &str, disks: &[Disk]) {
        for d in disks.iter().rev() {
            if let Err(e) = self.release_drive(&d.lease) {
                log::warn!(
                    "{id}: releasing disk {}: {}",
                    d.lease.name,
                    hull_vmm_api::error_chain(&e)
                );
            }
        }
    }
}
