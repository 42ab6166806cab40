//! Fuzzes image import, whose input is an archive from anywhere: byte 0 picks the whole
//! import (an OCI layout or docker save tarball: manifests, digests, layers) or one layer
//! applied onto a scratch tree (whiteouts, links, paths). Nothing may panic, and nothing may
//! appear outside the scratch tree: a sibling directory must stay empty.
#![no_main]

use std::path::PathBuf;
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
    std::fs::create_dir_all(&outside).unwrap();
    let input = work.join("input.tar");
    std::fs::write(&input, rest).unwrap();
    if mode % 2 == 0 {
        let store = work.join("store");
        if let Ok(names) = hull_cli::store::import(&store, &input, Some("fuzz")) {
            assert_eq!(names, ["fuzz:latest"]);
            assert!(hull_cli::store::lookup(&store, "fuzz").is_ok());
        }
    } else {
        let root = work.join("root");
        std::fs::create_dir_all(&root).unwrap();
        let _ = hull_cli::store::apply_layer(&input, &root);
    }
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "an archive wrote outside its tree"
    );
    assert!(
        std::fs::read_dir(base).unwrap().count() <= 2,
        "an archive wrote beside the scratch tree"
    );
});
