//! Store-level tests on archives built in code (`test_archives`); tests
//! that create device nodes, chown or set trusted xattrs return early (with
//! a note) unless run as root.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::json;
use tar::EntryType;

use super::test_archives::*;
use super::*;

fn open_store() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().expect("tmp");
    let store = ImageStore::open(&dir.path().join("images")).expect("open");
    (dir, store)
}

fn never(_: &str) -> bool {
    false
}

#[test]
fn docker_save_with_whiteouts_and_opaque_dir() {
    if !root_or_skip("docker_save_with_whiteouts_and_opaque_dir") {
        return;
    }
    let l1 = plain(&[
        d("etc/"),
        f("etc/a", "A").mode(0o600),
        f("etc/b", "B"),
        hard("etc/a2", "etc/a"),
        d("var/lib/"),
        f("var/lib/old", "o"),
        sym("bin", "usr/bin"),
        d("usr/").mode(0o555),
        f("usr/x", "x"),
    ]);
    let l2 = gz(&[f("etc/.wh.a", ""), f("var/lib/.wh..wh..opq", ""), f("var/lib/new", "n")]);
    let i = img(&[&l1, &l2], &["busybox:latest"]);
    let id = Digest::of(&i.config);
    let (_dir, store) = open_store();
    let loaded = store.load(&docker_archive(&[i])[..]).expect("load");
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].id, id);
    assert_eq!(loaded[0].repo_tags, vec!["busybox:latest".to_string()]);
    assert_eq!(loaded[0].size, (l1.tar.len() + l2.tar.len()) as u64);

    let dirs = store.layer_dirs("docker.io/library/busybox").expect("dirs");
    let root = store.root().to_path_buf();
    assert_eq!(
        dirs,
        vec![root.join("layers/sha256").join(l1.diff_id().hex()), root.join("layers/sha256").join(l2.diff_id().hex())]
    );
    let (bottom, top) = (&dirs[0], &dirs[1]);

    let md = |p: &str| fs::symlink_metadata(bottom.join(p)).expect(p);
    assert_eq!(fs::read(bottom.join("etc/a")).expect("a"), b"A");
    assert_eq!(md("etc/a").permissions().mode() & 0o7777, 0o600);
    assert_eq!(md("etc/a").ino(), md("etc/a2").ino(), "hard link shares the inode");
    assert_eq!(md("etc/b").mtime(), MTIME as i64);
    assert_eq!(fs::read_link(bottom.join("bin")).expect("bin"), PathBuf::from("usr/bin"));
    assert_eq!(md("usr").permissions().mode() & 0o7777, 0o555, "directory mode set after its children");
    assert_eq!(md("usr").mtime(), MTIME as i64, "directory mtime set after its children");
    assert_eq!(fs::symlink_metadata(bottom).expect("root").permissions().mode() & 0o777, 0o755);

    let wh = fs::symlink_metadata(top.join("etc/a")).expect("whiteout");
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0, "whiteout is a 0/0 character device");
    assert!(!top.join("etc/.wh.a").exists());
    assert!(!top.join("var/lib/.wh..wh..opq").exists());
    assert_eq!(get_xattr(&top.join("var/lib"), "trusted.overlay.opaque"), Some(b"y".to_vec()));
    assert_eq!(fs::read(top.join("var/lib/new")).expect("new"), b"n");
    // The gzip layer is stored as given, the plain one by its diff_id.
    assert!(root.join("blobs/sha256").join(Digest::of(&l2.blob()).hex()).is_file());
    assert!(root.join("blobs/sha256").join(l1.diff_id().hex()).is_file());
    assert!(root.join("blobs/sha256").join(id.hex()).is_file());

    let det = store.inspect("busybox").expect("inspect");
    assert_eq!(det.config.cmd, Some(vec!["sh".to_string()]));
    assert_eq!(det.layers, vec![l1.diff_id(), l2.diff_id()]);
    assert_eq!(det.os.as_deref(), Some("linux"));
    overlay_check(&dirs);
}

/// Mounts the layers with overlayfs, where the kernel allows it here, and
/// checks what a container would see.
fn overlay_check(dirs: &[PathBuf]) {
    let mnt = tempfile::tempdir().expect("mnt");
    let lower: Vec<String> = dirs.iter().rev().map(|p| p.display().to_string()).collect();
    let opts = CString::new(format!("lowerdir={}", lower.join(":"))).expect("opts");
    let mounted = rustix::mount::mount("overlay", mnt.path(), "overlay", rustix::mount::MountFlags::RDONLY, &*opts);
    if let Err(e) = mounted {
        eprintln!("note: overlay mount unavailable here ({}); whiteouts checked on disk only", std::io::Error::from(e));
        return;
    }
    let m = mnt.path();
    let seen = (
        m.join("etc/a").exists(),
        m.join("etc/a2").exists(),
        m.join("var/lib/old").exists(),
        m.join("var/lib/new").exists(),
    );
    crate::sys::unmount_detach(mnt.path()).expect("umount");
    assert_eq!(seen, (false, true, false, true), "(etc/a, etc/a2, var/lib/old, var/lib/new) through overlayfs");
}

#[test]
fn oci_layout_with_gzip_plain_and_nested_index() {
    let base = gz(&[d("bin/"), f("bin/sh", "#!")]);
    let app = plain(&[f("app", "1")]);
    let alpine = img(&[&base, &app], &[]);
    let tools = img(&[&base], &[]);
    let (alpine_id, tools_id) = (Digest::of(&alpine.config), Digest::of(&tools.config));
    let names = |pairs: &[(&'static str, &'static str)]| pairs.iter().copied().collect::<BTreeMap<_, _>>();
    let archive = oci_archive(&[
        (
            alpine,
            names(&[
                ("io.containerd.image.name", "docker.io/library/alpine:3.19"),
                ("org.opencontainers.image.ref.name", "3.19"),
            ]),
            false,
        ),
        (tools, names(&[("org.opencontainers.image.ref.name", "example.com/tools:v1")]), true),
    ]);
    let (_dir, store) = open_store();
    let loaded = store.load(&gzip(&archive)[..]).expect("load gzip outer archive");
    let ids: Vec<_> = loaded.iter().map(|s| s.id.clone()).collect();
    assert_eq!(ids, vec![alpine_id.clone(), tools_id.clone()]);
    assert_eq!(loaded[0].repo_tags, vec!["alpine:3.19".to_string()]);
    assert_eq!(loaded[1].repo_tags, vec!["example.com/tools:v1".to_string()]);
    let repo_digest = loaded[0].repo_digests.first().expect("repo digest").clone();
    assert!(repo_digest.starts_with("alpine@sha256:"), "{repo_digest}");
    assert_eq!(store.inspect(&repo_digest).expect("by digest").id, alpine_id);
    assert_eq!(store.inspect(&format!("docker.io/library/{repo_digest}")).expect("full").id, alpine_id);
    // One unpacked copy of the shared base layer.
    let a = store.layer_dirs("alpine:3.19").expect("dirs");
    let t = store.layer_dirs(&tools_id.hex()[..12]).expect("dirs by id prefix");
    assert_eq!(a[0], t[0]);
    assert_eq!(fs::read(a[0].join("bin/sh")).expect("sh"), b"#!");
    assert_eq!(fs::read(a[1].join("app")).expect("app"), b"1");
    assert_eq!(fs::read_dir(store.root().join("layers/sha256")).expect("layers").count(), 2);
    assert_eq!(store.list().len(), 2);
}

#[test]
fn tag_remove_and_reference_counting() {
    let base = plain(&[f("base", "b")]);
    let (top1, top2) = (plain(&[f("one", "1")]), gz(&[f("two", "2")]));
    let a = img(&[&base, &top1], &["a:1"]);
    let b = img(&[&base, &top2], &["b:1"]);
    let (a_id, b_id) = (Digest::of(&a.config), Digest::of(&b.config));
    let (_dir, store) = open_store();
    store.load(&docker_archive(&[a, b])[..]).expect("load");
    let root = store.root().to_path_buf();
    let layer = |l: &Layer| root.join("layers/sha256").join(l.diff_id().hex());
    let blob = |d: &Digest| root.join("blobs/sha256").join(d.hex());

    store.tag("a:1", "a:latest").expect("tag");
    store.tag(&a_id.to_string(), "quay.io/c/d:x").expect("tag by id");
    assert!(matches!(store.tag("a:1", &format!("a@{b_id}")), Err(ImageError::TagWithDigest { .. })));
    assert_eq!(store.remove("a", false, &never).expect("untag"), vec![Removed::Untagged("a:latest".into())]);
    let e = store.remove(&a_id.to_string(), false, &never).expect_err("several repositories");
    assert!(matches!(e, ImageError::MultipleRepositories { .. }), "{e}");
    assert_eq!(
        store.remove("quay.io/c/d:x", false, &never).expect("untag"),
        vec![Removed::Untagged("quay.io/c/d:x".into())]
    );

    let a_busy = |id: &str| id == a_id.to_string();
    let e = store.remove("a:1", false, &a_busy).expect_err("in use");
    assert_eq!(e.to_string(), "image a:1 is in use by a container; remove the container first or use --force");
    assert_eq!(store.remove("a:1", true, &a_busy).expect("forced"), vec![Removed::Untagged("a:1".into())]);
    let dangling = store.list().into_iter().find(|s| s.id == a_id).expect("kept while in use");
    assert!(dangling.repo_tags.is_empty());
    assert!(layer(&top1).is_dir(), "a used image keeps its layers");

    let e = store.remove(&a_id.hex()[..12], false, &a_busy).expect_err("still in use");
    assert!(matches!(e, ImageError::InUse { .. }));
    assert_eq!(store.remove(&a_id.hex()[..12], false, &never).expect("rm"), vec![Removed::Deleted(a_id.clone())]);
    assert!(!layer(&top1).exists() && !blob(&a_id).exists() && !blob(&top1.diff_id()).exists());
    assert!(layer(&base).is_dir() && blob(&base.diff_id()).is_file(), "the shared layer stays");

    let removed = store.remove("b:1", false, &never).expect("rm b");
    assert_eq!(removed, vec![Removed::Untagged("b:1".into()), Removed::Deleted(b_id)]);
    assert_eq!(fs::read_dir(root.join("layers/sha256")).expect("layers").count(), 0);
    assert_eq!(fs::read_dir(root.join("blobs/sha256")).expect("blobs").count(), 0);
    assert!(store.list().is_empty());
    let e = store.remove("nope", false, &never).expect_err("unknown");
    assert_eq!(e.to_string(), "no such image: nope:latest");
}

/// Archives that must be refused whole, each with a check on the error.
type BadCase = (&'static str, Vec<u8>, Box<dyn Fn(&ImageError) -> bool>);

fn bad_archives(outside: &Path) -> Vec<BadCase> {
    let mut cases: Vec<BadCase> = Vec::new();
    let good = plain(&[f("fine", "1")]);
    let one = |l: &Layer| docker_archive(&[img(&[l], &["evil:1"])]);
    let unsafe_entry = |want: Refusal| -> Box<dyn Fn(&ImageError) -> bool> {
        Box::new(move |e| matches!(e, ImageError::UnsafeEntry { reason, .. } if *reason == want))
    };

    let l = plain(&[f("ok", "1"), f("../evil", "x")]);
    cases.push((
        "traversal",
        docker_archive(&[img(&[&good], &["good:1"]), img(&[&l], &["evil:1"])]),
        unsafe_entry(Refusal::Escapes),
    ));
    let l = gz(&[sym("link", &outside.display().to_string()), f("link/x", "x")]);
    cases.push(("symlink escape", one(&l), unsafe_entry(Refusal::ThroughSymlink("link".into()))));
    let l = plain(&[hard("x", "../../etc/passwd")]);
    cases.push(("hardlink escape", one(&l), unsafe_entry(Refusal::HardlinkEscapes("../../etc/passwd".into()))));

    let mut i = img(&[&good], &["evil:1"]);
    i.config = config(&[Digest::of(b"another layer")], "2024-01-01T00:00:00Z");
    cases.push(("wrong diff_id", docker_archive(&[i]), Box::new(|e| matches!(e, ImageError::DiffIdMismatch { .. }))));

    let forged = Digest::of(b"X");
    let blob = ent(EntryType::Regular, &format!("blobs/sha256/{}", forged.hex()), "", b"Y", 0o644);
    cases.push((
        "wrong blob digest",
        tar_of(&[blob]),
        Box::new(move |e| matches!(e, ImageError::DigestMismatch { expected, .. } if *expected == forged)),
    ));
    let i = img(&[&good], &["evil:1"]);
    let mut files = vec![ent(EntryType::Regular, &format!("{}.json", Digest::of(b"nope").hex()), "", &i.config, 0o644)];
    files.push(ent(EntryType::Regular, "l.tar", "", &good.tar, 0o644));
    let manifest =
        json!([{"Config": format!("{}.json", Digest::of(b"nope").hex()), "RepoTags": ["x:1"], "Layers": ["l.tar"]}]);
    files.push(f("manifest.json", &manifest.to_string()));
    cases.push(("wrong config digest", tar_of(&files), Box::new(|e| matches!(e, ImageError::DigestMismatch { .. }))));

    let outer_escape = |e: &ImageError| matches!(e, ImageError::UnsafeArchiveEntry { .. });
    cases.push(("outer traversal", tar_of(&[f("../evil", "x")]), Box::new(outer_escape)));
    let manifest = json!([{"Config": "../../etc/passwd", "RepoTags": [], "Layers": []}]);
    cases.push(("manifest path escape", tar_of(&[f("manifest.json", &manifest.to_string())]), Box::new(outer_escape)));
    let manifest = json!([{"Config": "c.json", "RepoTags": [], "Layers": []}]);
    let files = [sym("c.json", "/etc/passwd"), f("manifest.json", &manifest.to_string())];
    cases.push(("absolute link out", tar_of(&files), Box::new(outer_escape)));
    cases.push((
        "not an image",
        tar_of(&[f("etc/hosts", "x")]),
        Box::new(|e| matches!(e, ImageError::BadArchive { reason } if reason.contains("shoal image import"))),
    ));
    cases
}

#[test]
fn refused_archives_leave_the_store_unchanged() {
    let outside = tempfile::tempdir().expect("outside");
    let (_dir, store) = open_store();
    let keep = plain(&[f("keep", "k")]);
    store.load(&docker_archive(&[img(&[&keep], &["keep:1"])])[..]).expect("load");
    let before = tree(store.root());
    for (name, archive, check) in bad_archives(outside.path()) {
        let e = store.load(&archive[..]).expect_err(name);
        assert!(check(&e), "{name}: unexpected error: {e}");
        assert_eq!(tree(store.root()), before, "{name}: the store changed");
    }
    assert_eq!(fs::read_dir(outside.path()).expect("outside").count(), 0, "nothing written through the link");
    assert_eq!(store.list().len(), 1);
    assert_eq!(store.inspect("keep:1").expect("kept").repo_tags, vec!["keep:1".to_string()]);

    let e = store
        .load(&docker_archive(&[img(&[&plain(&[f("ok", "1"), f("../evil", "x")])], &["x:1"])])[..])
        .expect_err("evil");
    let text = e.to_string();
    assert!(
        text.starts_with("layer sha256:")
            && text.ends_with("entry \"../evil\" escapes the layer root; refusing the archive"),
        "{text}"
    );
}

#[test]
fn save_round_trips_through_load() {
    let base = gz(&[d("lib/"), f("lib/libc.so", "elf")]);
    let (v1, v2, other) = (plain(&[f("v", "1")]), gz(&[f("v", "2")]), plain(&[f("o", "o")]));
    let (i1, i2, i3) =
        (img(&[&base, &v1], &["app:1"]), img(&[&base, &v2], &["app:2"]), img(&[&other], &["other:latest"]));
    let (id1, id2, id3) = (Digest::of(&i1.config), Digest::of(&i2.config), Digest::of(&i3.config));
    let (_dir, store) = open_store();
    store.load(&docker_archive(&[i1, i2, i3])[..]).expect("load");

    let mut saved = Vec::new();
    store.save(&["app", &id3.hex()[..8]], &mut saved).expect("save");
    let (_dir2, copy) = open_store();
    let loaded = copy.load(&saved[..]).expect("load saved");
    let got: Vec<(Digest, Vec<String>)> = loaded.into_iter().map(|s| (s.id, s.repo_tags)).collect();
    assert_eq!(got, vec![(id1.clone(), vec!["app:1".into()]), (id2, vec!["app:2".into()]), (id3, vec![])]);
    let dirs = copy.layer_dirs("app:2").expect("dirs");
    assert_eq!(fs::read(dirs[1].join("v")).expect("v"), b"2");
    assert_eq!(fs::read(dirs[0].join("lib/libc.so")).expect("lib"), b"elf");

    // Without manifest.json the same archive is an OCI layout, with the
    // same images and names.
    let mut oci = tar::Builder::new(Vec::new());
    let mut reader = tar::Archive::new(&saved[..]);
    for e in reader.entries().expect("entries") {
        let mut e = e.expect("entry");
        let header = e.header().clone();
        if e.path().expect("path").as_os_str() != "manifest.json" {
            let mut data = Vec::new();
            e.read_to_end(&mut data).expect("read");
            oci.append(&header, &data[..]).expect("append");
        }
    }
    let (_dir3, from_oci) = open_store();
    let loaded = from_oci.load(&oci.into_inner().expect("tar")[..]).expect("load as OCI");
    assert_eq!(loaded[0].id, id1);
    assert_eq!(loaded[0].repo_tags, vec!["app:1".to_string()]);
    assert_eq!(loaded.len(), 3);
}

#[test]
fn import_makes_a_one_layer_image() {
    let (_dir, store) = open_store();
    let rootfs = gzip(&tar_of(&[d("bin/"), f("bin/sh", "#!/bin/true").mode(0o755)]));
    let s = store.import(&rootfs[..], "myroot:1").expect("import");
    assert_eq!(s.repo_tags, vec!["myroot:1".to_string()]);
    let det = store.inspect("myroot:1").expect("inspect");
    assert_eq!(det.architecture.as_deref(), Some(config::go_arch()));
    assert_eq!(det.layers.len(), 1);
    let dirs = store.layer_dirs(&s.id.to_string()).expect("dirs");
    let sh = dirs[0].join("bin/sh");
    assert_eq!(fs::read(&sh).expect("sh"), b"#!/bin/true");
    assert_eq!(fs::metadata(&sh).expect("sh").permissions().mode() & 0o777, 0o755);

    let before = tree(store.root());
    let d = Digest::of(b"x");
    assert!(matches!(store.import(&rootfs[..], &format!("x@{d}")), Err(ImageError::TagWithDigest { .. })));
    assert!(matches!(store.import(&rootfs[..], "Bad"), Err(ImageError::InvalidReference { .. })));
    let evil = tar_of(&[f("../../evil", "x")]);
    let e = store.import(&evil[..], "evil:1").expect_err("traversal");
    assert!(matches!(e, ImageError::UnsafeEntry { reason: Refusal::Escapes, .. }), "{e}");
    assert_eq!(tree(store.root()), before);
}

#[test]
fn loading_twice_changes_nothing() {
    let l = gz(&[f("x", "1")]);
    let archive = docker_archive(&[img(&[&l], &["x:1", "x:2"])]);
    let (_dir, store) = open_store();
    let first = store.load(&archive[..]).expect("load");
    let before = tree(store.root());
    let second = store.load(&archive[..]).expect("reload");
    assert_eq!(first, second);
    assert_eq!(second[0].repo_tags, vec!["x:1".to_string(), "x:2".to_string()]);
    assert_eq!(tree(store.root()), before);
}

#[test]
fn open_sweeps_leftovers_and_locks() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path().join("images");
    let l = plain(&[f("x", "1")]);
    {
        let store = ImageStore::open(&root).expect("open");
        store.load(&docker_archive(&[img(&[&l], &["x:1"])])[..]).expect("load");
        assert!(matches!(ImageStore::open(&root), Err(ImageError::Locked { .. })));
    }
    let kept = tree(&root);
    let orphan = Digest::of(b"orphan");
    fs::write(root.join("blobs/sha256").join(orphan.hex()), b"orphan").expect("orphan blob");
    fs::create_dir_all(root.join("layers/sha256").join(orphan.hex()).join("half")).expect("orphan layer");
    fs::create_dir_all(root.join("tmp/load-1-0/files")).expect("staging");
    fs::write(root.join("blobs/sha256/not-a-digest"), b"?").expect("junk");
    let store = ImageStore::open(&root).expect("reopen");
    assert_eq!(tree(&root), kept);
    assert_eq!(store.list()[0].repo_tags, vec!["x:1".to_string()]);
}

#[test]
fn unpack_keeps_owners_modes_devices_and_xattrs() {
    if !root_or_skip("unpack_keeps_owners_modes_devices_and_xattrs") {
        return;
    }
    let mut null = ent(EntryType::Char, "dev/null", "", b"", 0o666);
    null.dev = (1, 3);
    let mut capped = f("bin/ping", "elf").mode(0o4755);
    capped.xattr = Some(("user.shoal.test".into(), b"v".to_vec()));
    let mut trusted = f("bin/forged", "x");
    trusted.xattr = Some(("trusted.overlay.opaque".into(), b"y".to_vec()));
    let layer = tar_of(&[
        d("./").mode(0o755),
        d("home/u/").mode(0o700).owner(1000, 1000),
        f("home/u/file", "u").owner(1000, 100).mode(0o640),
        capped,
        trusted,
        null,
        ent(EntryType::Fifo, "run/fifo", "", b"", 0o600).owner(7, 8),
        sym("home/u/link", "/etc/passwd").owner(1000, 1000),
        ent(EntryType::Directory, "opt/", "", b"", 0o755),
        f("opt", "a file replaces the directory"),
    ]);
    let tmp = tempfile::tempdir().expect("tmp");
    let blob = tmp.path().join("blob");
    fs::write(&blob, &layer).expect("blob");
    let dest = tmp.path().join("layer");
    fs::create_dir(&dest).expect("dest");
    let (diff_id, size) = unpack::unpack_layer(&blob, &dest, "test").expect("unpack");
    assert_eq!((diff_id, size), (Digest::of(&layer), layer.len() as u64));
    let md = |p: &str| fs::symlink_metadata(dest.join(p)).expect(p);
    assert_eq!((md("home/u").uid(), md("home/u").gid(), md("home/u").mode() & 0o7777), (1000, 1000, 0o700));
    assert_eq!(
        (md("home/u/file").uid(), md("home/u/file").gid(), md("home/u/file").mode() & 0o7777),
        (1000, 100, 0o640)
    );
    assert_eq!(md("bin/ping").mode() & 0o7777, 0o4755, "set-uid survives the chown");
    assert!(md("dev/null").file_type().is_char_device());
    assert_eq!((md("dev/null").rdev(), md("dev/null").mode() & 0o777), (libc::makedev(1, 3), 0o666));
    assert!(md("run/fifo").file_type().is_fifo());
    assert_eq!((md("run/fifo").uid(), md("run/fifo").gid()), (7, 8));
    assert_eq!((md("home/u/link").uid(), md("home/u/link").mtime()), (1000, MTIME as i64));
    assert!(md("opt").is_file());
    assert_eq!(
        get_xattr(&dest.join("bin/forged"), "trusted.overlay.opaque"),
        None,
        "layers cannot forge overlay xattrs"
    );
    match get_xattr(&dest.join("bin/ping"), "user.shoal.test") {
        Some(v) => assert_eq!(v, b"v"),
        None => eprintln!("note: user xattrs unsupported on this filesystem"),
    }
}

#[test]
fn prune_removal_refuses_images_in_use_and_frees_only_unshared_layers() {
    let base = plain(&[f("base", "bbbb")]);
    let (top1, top2) = (plain(&[f("one", "1")]), plain(&[f("two", "22")]));
    let a = img(&[&base, &top1], &["a:1", "a:2"]);
    let b = img(&[&base, &top2], &[]);
    let (a_id, b_id) = (Digest::of(&a.config), Digest::of(&b.config));
    let (_dir, store) = open_store();
    store.load(&docker_archive(&[a, b])[..]).expect("load");
    let sizes = store.layer_sizes();
    assert_eq!(sizes.len(), 2);
    assert!(sizes.iter().all(|(_, layers)| layers.len() == 2 && layers[0].0 == base.diff_id()));

    let a_busy = |id: &str| id == a_id.to_string();
    let before = tree(store.root());
    let e = store.remove_unused(&a_id, &a_busy).expect_err("in use");
    assert!(matches!(e, ImageError::InUse { .. }), "{e}");
    assert_eq!(tree(store.root()), before, "an image in use keeps its tags and files");

    let (steps, freed) = store.remove_unused(&a_id, &never).expect("unused");
    assert_eq!(
        steps,
        vec![Removed::Untagged("a:1".into()), Removed::Untagged("a:2".into()), Removed::Deleted(a_id.clone())]
    );
    let top1_size = sizes.iter().find(|(s, _)| s.id == a_id).map(|(_, l)| l[1].1).expect("a's top layer");
    assert_eq!(freed, top1_size, "the shared base stays with b");
    assert!(store.root().join("layers/sha256").join(base.diff_id().hex()).is_dir());
    let (steps, _) = store.remove_unused(&b_id, &never).expect("dangling b");
    assert_eq!(steps, vec![Removed::Deleted(b_id)]);
    assert!(store.list().is_empty());
    assert!(matches!(store.remove_unused(&a_id, &never), Err(ImageError::NoSuchImage { .. })));
}
