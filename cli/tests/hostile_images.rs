//! Crafted image archives against `hull image import`'s store: each hostile archive must
//! fail with a clear error, leave a populated directory outside the store byte-for-byte
//! unchanged, and leave nothing in staging. Each of these deleted, linked or read host files
//! before the importer resolved paths under a directory descriptor.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use hull_cli::store;
use hull_image::Limits;
use sha2::{Digest, Sha256};

/// One layer's tar, entry by entry; headers are written by hand so that hostile names and
/// link targets (absolute, `..`) go in exactly as given.
#[derive(Default)]
struct Layer(Vec<u8>);

impl Layer {
    fn entry(mut self, path: &str, kind: tar::EntryType, link: &str, body: &[u8]) -> Self {
        let mut h = tar::Header::new_gnu();
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..path.len()].copy_from_slice(path.as_bytes());
        gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_size(body.len() as u64);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(946_684_800);
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(body);
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
        self
    }
    fn dir(self, p: &str) -> Self {
        self.entry(p, tar::EntryType::Directory, "", b"")
    }
    fn file(self, p: &str, body: &str) -> Self {
        self.entry(p, tar::EntryType::Regular, "", body.as_bytes())
    }
    fn symlink(self, p: &str, target: &str) -> Self {
        self.entry(p, tar::EntryType::Symlink, target, b"")
    }
    fn hardlink(self, p: &str, target: &str) -> Self {
        self.entry(p, tar::EntryType::Link, target, b"")
    }
    fn tar(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0u8; 1024]);
        self.0
    }
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// The outer archive: plain files, in order.
fn outer(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut l = Layer::default();
    for (path, body) in files {
        l = l.entry(path, tar::EntryType::Regular, "", body);
    }
    l.tar()
}

/// An OCI image layout of `layers` (blob bytes, and their uncompressed tar for diff_ids).
fn oci_layout(layers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for (blob, tar) in layers {
        let d = sha256(blob);
        descs.push(format!(
            r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:{d}","size":{}}}"#,
            blob.len()
        ));
        diff_ids.push(format!("\"sha256:{}\"", sha256(tar)));
        blobs.push((d, blob.clone()));
    }
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["sh"]}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        diff_ids.join(",")
    )
    .into_bytes();
    let cd = sha256(&config);
    let manifest = format!(
        r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{cd}","size":{}}},"layers":[{}]}}"#,
        config.len(),
        descs.join(",")
    )
    .into_bytes();
    let md = sha256(&manifest);
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{md}","size":{}}}]}}"#,
        manifest.len()
    );
    let mut files: Vec<(String, Vec<u8>)> = vec![
        (
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".into(), index.into_bytes()),
        (format!("blobs/sha256/{md}"), manifest),
        (format!("blobs/sha256/{cd}"), config),
    ];
    for (d, b) in blobs {
        files.push((format!("blobs/sha256/{d}"), b));
    }
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(p, b)| (p.as_str(), &b[..])).collect();
    outer(&refs)
}

fn plain(layers: Vec<Vec<u8>>) -> Vec<u8> {
    oci_layout(
        &layers
            .into_iter()
            .map(|t| (t.clone(), t))
            .collect::<Vec<_>>(),
    )
}

/// A store, an archive to import, and a populated directory beside them that must not change.
struct Scene {
    dir: tempfile::TempDir,
}

#[derive(Debug, PartialEq, Eq)]
struct Seen {
    kind: &'static str,
    mode: u32,
    nlink: u64,
    bytes: Vec<u8>,
}

impl Scene {
    fn new() -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("outside");
        std::fs::create_dir_all(out.join("sub/deeper")).unwrap();
        std::fs::write(out.join("victim"), "precious").unwrap();
        std::fs::write(out.join("sub/secret"), "keep me").unwrap();
        std::fs::write(out.join("sub/deeper/file"), "deep").unwrap();
        std::os::unix::fs::symlink("victim", out.join("link")).unwrap();
        Scene { dir }
    }
    fn outside(&self) -> PathBuf {
        self.dir.path().join("outside")
    }
    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }
    fn snapshot(&self) -> BTreeMap<PathBuf, Seen> {
        let mut all = BTreeMap::new();
        walk(&self.outside(), Path::new(""), &mut all);
        all
    }
    /// Imports `archive`; on failure checks that staging is gone and returns the message.
    fn import_with(&self, archive: &[u8], limits: Limits) -> Result<Vec<String>, String> {
        let file = self.dir.path().join("image.tar");
        std::fs::write(&file, archive).unwrap();
        store::import(&self.store(), &file, Some("test"), limits).map_err(|e| {
            let staged: Vec<_> = std::fs::read_dir(self.store())
                .map(|d| d.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default();
            assert!(
                staged
                    .iter()
                    .all(|n| !n.to_string_lossy().starts_with(".import")),
                "staging left behind: {staged:?}"
            );
            hull_vmm_api::error_chain(&e)
        })
    }
    /// Imports a hostile `archive`: it must fail saying `want`, leaving the outside as it was.
    fn refuse(&self, archive: &[u8], want: &str) {
        self.refuse_with(archive, Limits::default(), want)
    }
    fn refuse_with(&self, archive: &[u8], limits: Limits, want: &str) {
        let before = self.snapshot();
        let e = self.import_with(archive, limits).unwrap_err();
        assert!(e.contains(want), "{want:?} not in: {e}");
        assert_eq!(self.snapshot(), before, "the outside directory changed");
    }
}

fn walk(base: &Path, rel: &Path, all: &mut BTreeMap<PathBuf, Seen>) {
    let p = base.join(rel);
    let m = std::fs::symlink_metadata(&p).unwrap();
    let (kind, bytes) = if m.file_type().is_symlink() {
        (
            "symlink",
            std::fs::read_link(&p)
                .unwrap()
                .into_os_string()
                .into_encoded_bytes(),
        )
    } else if m.is_dir() {
        ("dir", Vec::new())
    } else {
        ("file", std::fs::read(&p).unwrap())
    };
    all.insert(
        rel.to_path_buf(),
        Seen {
            kind,
            mode: m.mode(),
            nlink: m.nlink(),
            bytes,
        },
    );
    if kind == "dir" {
        for e in std::fs::read_dir(&p).unwrap().flatten() {
            walk(base, &rel.join(e.file_name()), all);
        }
    }
}

fn root_or_skip() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: image import tests need root (owners, device nodes)");
        return false;
    }
    true
}

#[test]
fn whiteout_through_a_symlinked_parent_is_refused() {
    if !root_or_skip() {
        return;
    }
    let s = Scene::new();
    let out = s.outside().display().to_string();
    let l1 = Layer::default().symlink("x", &out).tar();
    let l2 = Layer::default().file("x/.wh.victim", "").tar();
    s.refuse(
        &plain(vec![l1, l2]),
        "a parent is a symlink that leads out of the image",
    );
}

#[test]
fn opaque_whiteout_through_a_symlinked_parent_is_refused() {
    if !root_or_skip() {
        return;
    }
    let s = Scene::new();
    let out = s.outside().display().to_string();
    let l1 = Layer::default().symlink("x", &out).tar();
    let l2 = Layer::default().file("x/.wh..wh..opq", "").tar();
    s.refuse(&plain(vec![l1, l2]), "leads out of the image");
}

#[test]
fn a_parent_symlinked_to_the_host_root_is_refused() {
    if !root_or_skip() {
        return;
    }
    let s = Scene::new();
    let from_root = s.outside().display().to_string();
    let from_root = from_root.trim_start_matches('/');
    let l1 = Layer::default().symlink("x", "/").tar();
    let l2 = Layer::default()
        .file(&format!("x/{from_root}/.wh.victim"), "")
        .file(&format!("x/{from_root}/sub/.wh..wh..opq"), "")
        .tar();
    s.refuse(&plain(vec![l1, l2]), "leads out of the image");
    let l3 = Layer::default()
        .symlink("y", "/")
        .file(&format!("y/{from_root}/planted"), "x")
        .tar();
    s.refuse(&plain(vec![l3]), "leads out of the image");
}

#[test]
fn a_hard_link_to_a_host_file_is_refused() {
    if !root_or_skip() {
        return;
    }
    let s = Scene::new();
    let victim = s.outside().join("victim").display().to_string();
    // Absolute targets are taken inside the image, where there is no such file.
    let l = Layer::default().hardlink("stolen", &victim).tar();
    s.refuse(&plain(vec![l]), "is not in the image");
    // Through a parent that leads out.
    let out = s.outside().display().to_string();
    let l = Layer::default()
        .symlink("x", &out)
        .hardlink("stolen", "x/victim")
        .tar();
    s.refuse(&plain(vec![l]), "leads out of the image");
    // And climbing with "..".
    let l = Layer::default()
        .hardlink("stolen", "../../../outside/victim")
        .tar();
    s.refuse(&plain(vec![l]), "names a parent directory");
}

#[test]
fn a_relative_symlink_chain_that_climbs_out_is_refused() {
    if !root_or_skip() {
        return;
    }
    let s = Scene::new();
    // The staging root is <store>/.import-<pid>/rootfs: three levels below the scene.
    let l1 = Layer::default()
        .dir("d")
        .symlink("d/a", "../b")
        .symlink("b", "c/../..")
        .symlink("c", ".")
        .symlink("up3", "../../../outside")
        .tar();
    let l2 = Layer::default().file("d/a/outside/.wh.victim", "").tar();
    s.refuse(&plain(vec![l1.clone(), l2]), "leads out of the image");
    let l2 = Layer::default().file("up3/.wh.victim", "").tar();
    s.refuse(&plain(vec![l1, l2]), "leads out of the image");
}

#[test]
fn a_file_written_over_a_symlink_replaces_the_symlink() {
    if !root_or_skip() {
        return;
    }
    let s = Scene::new();
    let victim = s.outside().join("victim").display().to_string();
    let l1 = Layer::default().symlink("f", &victim).tar();
    let l2 = Layer::default().file("f", "pwned").tar();
    let before = s.snapshot();
    // Succeeds: the image's own f becomes a file, the host's victim is untouched.
    assert_eq!(
        s.import_with(&plain(vec![l1, l2]), Limits::default())
            .unwrap(),
        ["test:latest"]
    );
    assert_eq!(s.snapshot(), before);
}

#[test]
fn an_outer_symlink_to_a_device_is_refused() {
    if !root_or_skip() {
        return;
    }
    let s = Scene::new();
    let l = Layer::default().file("hello", "hi").tar();
    let d = sha256(&l);
    // A valid layout whose only layer blob is a symlink to /dev/zero.
    let good = plain(vec![l]);
    let mut archive = Vec::new();
    let mut t = tar::Archive::new(&good[..]);
    let mut b = tar::Builder::new(&mut archive);
    for e in t.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().into_owned();
        if path.ends_with(&d) {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, &path, "/dev/zero").unwrap();
        } else {
            let mut h = e.header().clone();
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut body).unwrap();
            b.append_data(&mut h, &path, &body[..]).unwrap();
        }
    }
    b.finish().unwrap();
    drop(b);
    s.refuse(&archive, "holds only files and directories, not a symlink");
}

#[test]
fn a_gzip_bomb_stops_at_its_cap() {
    if !root_or_skip() {
        return;
    }
    let s = Scene::new();
    let zeros = vec![0u8; 64 << 20];
    let tar = Layer::default()
        .entry("zeros", tar::EntryType::Regular, "", &zeros)
        .tar();
    let bomb = gzip(&tar);
    let archive = oci_layout(&[(bomb, tar)]);
    s.refuse(&archive, "max_compression_ratio = 100");
    let small = Limits {
        max_layer_bytes: 1 << 20,
        max_compression_ratio: 1 << 20,
        ..Limits::default()
    };
    s.refuse_with(&archive, small, "max_layer_bytes = 1048576");
}

#[test]
fn too_many_entries_stop_at_the_cap() {
    if !root_or_skip() {
        return;
    }
    let s = Scene::new();
    let mut l = Layer::default();
    for i in 0..50 {
        l = l.file(&format!("f{i}"), "");
    }
    let few = Limits {
        max_entries: 20,
        ..Limits::default()
    };
    s.refuse_with(&plain(vec![l.tar()]), few, "max_entries = 20");
}

#[test]
fn a_docker_save_layer_with_a_wrong_diff_id_is_refused() {
    if !root_or_skip() {
        return;
    }
    let s = Scene::new();
    let l = Layer::default().file("hello", "hi").tar();
    let wrong = sha256(b"something else");
    let config =
        format!(r#"{{"config":{{}},"rootfs":{{"type":"layers","diff_ids":["sha256:{wrong}"]}}}}"#);
    let archive = outer(&[
        ("l1/layer.tar", &l),
        ("config.json", config.as_bytes()),
        (
            "manifest.json",
            br#"[{"Config":"config.json","RepoTags":["x:1"],"Layers":["l1/layer.tar"]}]"#,
        ),
    ]);
    s.refuse(&archive, "diff_ids say");
    // Without diff_ids at all, too.
    let archive = outer(&[
        ("l1/layer.tar", &l),
        ("config.json", br#"{"config":{}}"#),
        (
            "manifest.json",
            br#"[{"Config":"config.json","Layers":["l1/layer.tar"]}]"#,
        ),
    ]);
    s.refuse(&archive, "rootfs.diff_ids names 0 layers, the manifest 1");
}

#[test]
fn a_file_that_is_not_an_archive_is_named_without_its_bytes() {
    if !root_or_skip() {
        return;
    }
    let s = Scene::new();
    let e = s
        .import_with(b"root:x:0:0:TOPSECRET:/root:/bin/bash\n", Limits::default())
        .unwrap_err();
    assert!(
        e.contains("not an OCI image layout or a docker save archive"),
        "{e}"
    );
    assert!(!e.contains("TOPSECRET") && !e.contains("root:x"), "{e}");
}

#[test]
fn images_import_with_in_image_symlinks_links_and_private_modes() {
    if !root_or_skip() {
        return;
    }
    let s = Scene::new();
    let l1 = Layer::default()
        .dir("usr")
        .dir("usr/bin")
        .symlink("bin", "usr/bin")
        .file("usr/bin/tool", "v1")
        .file("etc/old", "gone soon")
        .tar();
    let l2 = Layer::default()
        .file("bin/tool2", "through bin")
        .hardlink("usr/bin/tool-link", "usr/bin/tool")
        .file("etc/.wh.old", "")
        .tar();
    let names = s
        .import_with(
            &oci_layout(&[(gzip(&l1), l1), (l2.clone(), l2)]),
            Limits::default(),
        )
        .unwrap();
    assert_eq!(names, ["test:latest"]);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    let store = s.store();
    assert_eq!(mode(&store), 0o700);
    assert_eq!(mode(&store.join("refs.json")), 0o600);
    let (erofs, _) = store::lookup(&store, "test").unwrap();
    assert_eq!(mode(&erofs), 0o600);
    assert_eq!(mode(erofs.parent().unwrap()), 0o700);
    assert_eq!(mode(&erofs.with_file_name("config.json")), 0o600);
}
