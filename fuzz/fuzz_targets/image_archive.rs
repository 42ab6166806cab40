//! Fuzzes image import, whose input is an archive from anywhere: byte 0 picks the whole
//! import (an OCI layout or docker save tarball: manifests, digests, layers) or one layer
//! applied onto a tree that already holds symlinks leading out of it (`out` to the
//! outside directory by absolute path, `rel` by `..`, `root` to `/`), as a lower layer
//! could have left them. Nothing may panic, and a populated directory outside the tree must
//! stay exactly as it was: no file changed, removed, linked or added.
#![no_main]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("hull-fuzz-image-{}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        p
    })
}

/// Every entry of `dir`: path to (mode, link count, contents or link target).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u32, u64, Vec<u8>)> {
    fn walk(p: &Path, all: &mut BTreeMap<PathBuf, (u32, u64, Vec<u8>)>) {
        let Ok(m) = std::fs::symlink_metadata(p) else {
            return;
        };
        let bytes = if m.file_type().is_symlink() {
            std::fs::read_link(p).unwrap_or_default().into_os_string().into_encoded_bytes()
        } else if m.is_file() {
            std::fs::read(p).unwrap_or_default()
        } else {
            Vec::new()
        };
        all.insert(p.to_path_buf(), (m.mode(), m.nlink(), bytes));
        if m.is_dir() {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                walk(&e.path(), all);
            }
        }
    }
    let mut all = BTreeMap::new();
    walk(dir, &mut all);
    all
}

fn populate(outside: &Path) {
    std::fs::create_dir_all(outside.join("sub")).unwrap();
    std::fs::write(outside.join("victim"), "precious").unwrap();
    std::fs::write(outside.join("sub/secret"), "keep me").unwrap();
    std::os::unix::fs::symlink("victim", outside.join("link")).unwrap();
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let base = scratch();
    let work = base.join("work");
    let outside = base.join("outside");
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir_all(&outside);
    std::fs::create_dir_all(&work).unwrap();
    populate(&outside);
    let before = snapshot(&outside);
    let input = work.join("input.tar");
    std::fs::write(&input, rest).unwrap();
    let small = hull_image::Limits {
        max_layer_bytes: 64 << 20,
        max_image_bytes: 128 << 20,
        max_entries: 10_000,
        max_compression_ratio: 100,
    };
    if mode % 2 == 0 {
        let store = work.join("store");
        if let Ok(names) = hull_cli::store::import(&store, &input, Some("fuzz"), small) {
            assert_eq!(names, ["fuzz:latest"]);
            assert!(hull_cli::store::lookup(&store, "fuzz").is_ok());
        }
        let staged = std::fs::read_dir(&store)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".import"));
        assert!(!staged, "an import left its staging directory");
    } else {
        let root = work.join("root");
        std::fs::create_dir_all(&root).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("out")).unwrap();
        std::os::unix::fs::symlink("../../outside", root.join("rel")).unwrap();
        std::os::unix::fs::symlink("/", root.join("root")).unwrap();
        let tree = hull_image::Root::open(&root).unwrap();
        let mut budget = hull_image::Budget::new(small);
        let file = std::fs::File::open(&input).unwrap();
        let _ = hull_image::apply_layer(file, &input, &tree, &mut budget);
    }
    assert_eq!(snapshot(&outside), before, "an archive changed the outside directory");
    assert!(
        std::fs::read_dir(base).unwrap().count() <= 2,
        "an archive wrote beside the scratch tree"
    );
});
