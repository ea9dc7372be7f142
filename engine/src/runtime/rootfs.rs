//! A container's root filesystem: an overlay of the image's layers below the
//! container's own writable layer (`upper`), with one read-only layer between
//! them that holds the mount points every container's config names: `/proc`,
//! `/sys`, `/dev` and the files bound over `/etc` (`ETC_FILES`).
//!
//! libcontainer makes a mount point that the root lacks before it mounts
//! there. For an image without them (busybox, anything `FROM scratch`, and
//! most images for `/etc/hostname` and `/etc/resolv.conf`), each start made
//! them in the container's writable layer, and copied `/etc` up to do so.
//! Docker makes an "init" layer of the same mount points for each container.
//! The mount points are the same for every container, so Shoal makes the
//! layer once and every container's root lists it.
//!
//! A directory in an upper layer hides the attributes of the same directory
//! below it (and all of a non-directory). `/proc`, `/sys` and `/dev` are
//! mounted over, so that never shows there. `/etc` is not: an image whose
//! `/etc` is anything but a directory that root owns with mode 0755 (a
//! directory its user owns or may write, a symlink) gets the layer without
//! `/etc` ([`Variant::Kernel`]), and its init makes the `/etc` files as
//! before. An image's own `/etc/hosts`, `/etc/hostname` and
//! `/etc/resolv.conf` are hidden by the layer's, which every running
//! container has bound over anyway (`cp` from a stopped container reads the
//! layer's empty ones, as from Docker's).
//!
//! A root mounted again (after a reboot) may get another stack than it was
//! made with: the layer went missing, or the container predates it. overlayfs
//! allows that with its inode index off, so the mount asks for it off where
//! the kernel has the option (as Docker's overlay2 does).

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{ContainerError, Containers, ETC_FILES};

impl Containers {
    /// Mounts the root filesystem of the container in `dir`, made of
    /// `image`'s layers and the mount points' layer for them, at `dir/rootfs`.
    pub(super) fn mount_root(&self, image: &str, dir: &Path) -> Result<(), ContainerError> {
        let layers = self.images.layer_dirs(image)?;
        let target = dir.join("rootfs");
        let opts = overlay_options(self.mountpoints.layer_for(&layers).as_deref(), &layers, dir);
        crate::sys::mount_overlay(&target, &opts).map_err(|source| ContainerError::Io {
            what: "mounting the overlay root at",
            path: target.to_path_buf(),
            source,
        })
    }
}

/// The layers' names, with their version: a layer in use is never changed,
/// so a layer with other entries gets another name.
const FULL: &str = "mountpoints-1";
const KERNEL: &str = "mountpoints-1-kernel";

/// Which layer an image's containers get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Variant {
    /// `/dev`, `/etc` with the `ETC_FILES`, `/proc`, `/sys`.
    Full,
    /// Only the kernel filesystems' mount points: `/dev`, `/proc`, `/sys`.
    Kernel,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Full => FULL,
            Variant::Kernel => KERNEL,
        }
    }

    fn dirs(self) -> &'static [&'static str] {
        match self {
            Variant::Full => &["dev", "etc", "proc", "sys"],
            Variant::Kernel => &["dev", "proc", "sys"],
        }
    }

    fn files(self) -> Vec<&'static str> {
        match self {
            Variant::Full => ETC_FILES.iter().map(|(_, target)| target.trim_start_matches('/')).collect(),
            Variant::Kernel => Vec::new(),
        }
    }

    /// The variant for an image of `layers` (bottom first): the topmost
    /// layer with an `/etc` entry says what the image's `/etc` is (a
    /// whiteout there means it has none).
    pub(super) fn of_image(layers: &[PathBuf]) -> Variant {
        for layer in layers.iter().rev() {
            let m = match std::fs::symlink_metadata(layer.join("etc")) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                // Cannot tell: keep whatever the image has.
                Err(_) => return Variant::Kernel,
            };
            let whiteout = m.file_type().is_char_device() && m.rdev() == 0;
            let plain = m.is_dir() && m.permissions().mode() & 0o7777 == 0o755 && m.uid() == 0 && m.gid() == 0;
            return if whiteout || plain { Variant::Full } else { Variant::Kernel };
        }
        Variant::Full
    }
}

/// The layers of mount points, in one directory beside the containers'.
pub(super) struct MountPoints {
    parent: PathBuf,
    /// A layer could not be made: said once, then only at debug level.
    warned: std::sync::atomic::AtomicBool,
}

impl MountPoints {
    /// The layers in `parent`; what a daemon stopped while making one left
    /// there is removed.
    pub(super) fn new(parent: &Path) -> MountPoints {
        for e in std::fs::read_dir(parent).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(".mountpoints-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        MountPoints { parent: parent.to_path_buf(), warned: Default::default() }
    }

    /// The layer for an image of `layers` (bottom first), made the first
    /// time it is asked for (and again if it went missing). None if it
    /// cannot be made: the container's init then makes its mount points in
    /// the container's own layer, as it would without one.
    pub(super) fn layer_for(&self, layers: &[PathBuf]) -> Option<PathBuf> {
        let variant = Variant::of_image(layers);
        let layer = self.parent.join(variant.name());
        if layer.is_dir() {
            return Some(layer);
        }
        match make(&self.parent, &layer, variant) {
            Ok(()) => Some(layer),
            // Made meanwhile by another start.
            Err(_) if layer.is_dir() => Some(layer),
            Err(e) => {
                if self.warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::debug!(dir = %layer.display(), error = %e, "cannot make the layer of mount points");
                } else {
                    tracing::warn!(dir = %layer.display(), error = %e, "cannot make the layer of mount points: each start makes them in the container's own layer");
                }
                None
            }
        }
    }
}

/// Makes `layer` (whole, under another name, then renamed into place).
fn make(parent: &Path, layer: &Path, variant: Variant) -> io::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let tmp =
        parent.join(format!(".{}.{}.{}", variant.name(), std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
    let made = (|| {
        std::fs::create_dir_all(&tmp)?;
        for d in std::iter::once(tmp.clone()).chain(variant.dirs().iter().map(|d| tmp.join(d))) {
            std::fs::create_dir_all(&d)?;
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
        }
        for f in variant.files() {
            let f = tmp.join(f);
            std::fs::File::create(&f)?;
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644))?;
        }
        for d in std::iter::once(tmp.clone()).chain(variant.dirs().iter().map(|d| tmp.join(d))) {
            std::fs::File::open(&d)?.sync_all()?;
        }
        std::fs::rename(&tmp, layer)?;
        std::fs::File::open(parent)?.sync_all()
    })();
    if made.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    made
}

/// The overlay's mount options for the container in `dir`: `image_layers`
/// from the image's bottom layer to its top, the mount points' layer above
/// them (where there is one), the container's writable layer on top.
pub(super) fn overlay_options(mountpoints: Option<&Path>, image_layers: &[PathBuf], dir: &Path) -> String {
    // overlayfs: lowerdir lists the top layer first.
    let lower: Vec<String> = mountpoints
        .into_iter()
        .chain(image_layers.iter().rev().map(PathBuf::as_path))
        .map(|p| p.display().to_string())
        .collect();
    format!(
        "lowerdir={},upperdir={},workdir={}{}",
        lower.join(":"),
        dir.join("upper").display(),
        dir.join("work").display(),
        if index_option() { ",index=off" } else { "" }
    )
}

/// Whether this kernel's overlayfs has the `index` option (4.13 and later).
fn index_option() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| Path::new("/sys/module/overlay/parameters/index").exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn each_layer_is_made_once_with_its_mount_points() {
        let tmp = tempfile::tempdir().unwrap();
        let (image, parent) = (tmp.path().join("image"), tmp.path().join("mp"));
        std::fs::create_dir_all(&parent).unwrap();
        // Stale half-made layers of a daemon that stopped are cleared; a made one stays.
        std::fs::create_dir_all(parent.join(format!(".{FULL}.1.0/etc"))).unwrap();
        std::fs::create_dir_all(parent.join(format!(".{KERNEL}.1.1/dev"))).unwrap();
        std::fs::create_dir_all(parent.join(format!("{KERNEL}/dev"))).unwrap();
        let mp = MountPoints::new(&parent);
        assert_eq!(names(&parent), [KERNEL.to_string()]);
        std::fs::remove_dir_all(parent.join(KERNEL)).unwrap();

        std::fs::create_dir_all(image.join("bin")).unwrap();
        let full = mp.layer_for(std::slice::from_ref(&image)).unwrap();
        assert_eq!(full, parent.join(FULL));
        assert_eq!(names(&full), ["dev", "etc", "proc", "sys"]);
        for d in ["dev", "etc", "proc", "sys"] {
            let m = std::fs::metadata(full.join(d)).unwrap();
            assert!(m.is_dir() && m.permissions().mode() & 0o7777 == 0o755, "{d}");
        }
        assert_eq!(names(&full.join("etc")), ["hostname", "hosts", "resolv.conf"]);
        for (_, target) in ETC_FILES {
            let m = std::fs::metadata(full.join(target.trim_start_matches('/'))).unwrap();
            assert!(m.is_file() && m.len() == 0 && m.permissions().mode() & 0o7777 == 0o644, "{target}");
        }
        // A layer that is there is used as it is, never made again.
        std::fs::write(full.join("etc/hosts"), "kept").unwrap();
        assert_eq!(mp.layer_for(std::slice::from_ref(&image)), Some(full.clone()));
        assert_eq!(std::fs::read_to_string(full.join("etc/hosts")).unwrap(), "kept");
        // One that went missing is made again.
        std::fs::remove_dir_all(&full).unwrap();
        assert_eq!(mp.layer_for(std::slice::from_ref(&image)), Some(full.clone()));
        assert!(full.join("etc/resolv.conf").is_file());
        assert_eq!(names(&parent), [FULL]);
    }

    #[test]
    fn an_image_whose_etc_is_its_own_keeps_it() {
        let tmp = tempfile::tempdir().unwrap();
        let (bottom, top) = (tmp.path().join("bottom"), tmp.path().join("top"));
        std::fs::create_dir_all(bottom.join("etc")).unwrap();
        std::fs::create_dir_all(&top).unwrap();
        let layers = [bottom.clone(), top.clone()];
        // Only root's /etc is the plain one: as another user, the tests' directories are not root's.
        let root = std::fs::metadata(&bottom).unwrap().uid() == 0;
        if !root {
            eprintln!("not root: the cases of a plain /etc are skipped");
        }
        let plain = if root { Variant::Full } else { Variant::Kernel };
        let set_mode = |p: &Path, mode| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
        // root's 0755 /etc: the full layer.
        set_mode(&bottom.join("etc"), 0o755);
        assert_eq!(Variant::of_image(&layers), plain);
        // A writable /etc keeps its mode: the layer without /etc.
        set_mode(&bottom.join("etc"), 0o775);
        assert_eq!(Variant::of_image(&layers), Variant::Kernel);
        // The topmost layer with an entry decides: a plain /etc above it...
        std::fs::create_dir_all(top.join("etc")).unwrap();
        set_mode(&top.join("etc"), 0o755);
        assert_eq!(Variant::of_image(&layers), plain);
        // ... a symlink...
        std::fs::remove_dir(top.join("etc")).unwrap();
        std::os::unix::fs::symlink("usr/etc", top.join("etc")).unwrap();
        assert_eq!(Variant::of_image(&layers), Variant::Kernel);
        // ... or a whiteout (the image has no /etc, as one without any layer's).
        std::fs::remove_file(top.join("etc")).unwrap();
        if crate::sys::mknod(&top.join("etc"), libc::S_IFCHR, 0o600, (0, 0)).is_ok() {
            assert_eq!(Variant::of_image(&layers), Variant::Full);
            std::fs::remove_file(top.join("etc")).unwrap();
        }
        std::fs::remove_dir_all(bottom.join("etc")).unwrap();
        assert_eq!(Variant::of_image(&layers), Variant::Full);

        let mp = MountPoints::new(&tmp.path().join("mp"));
        std::fs::create_dir_all(tmp.path().join("mp")).unwrap();
        std::fs::create_dir_all(bottom.join("etc")).unwrap();
        set_mode(&bottom.join("etc"), 0o775);
        let kernel = mp.layer_for(&layers).unwrap();
        assert_eq!(kernel, tmp.path().join("mp").join(KERNEL));
        assert_eq!(names(&kernel), ["dev", "proc", "sys"]);
    }

    #[test]
    fn a_parent_it_cannot_be_made_in_gives_none_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("not-a-dir");
        std::fs::write(&file, "").unwrap();
        assert_eq!(MountPoints::new(&file).layer_for(&[]), None);
        assert_eq!(names(tmp.path()), ["not-a-dir"]);
    }

    #[test]
    fn the_mount_points_sit_between_the_image_and_the_container() {
        let layers = [PathBuf::from("/l/bottom"), PathBuf::from("/l/top")];
        let dir = Path::new("/c/abc");
        let index = if index_option() { ",index=off" } else { "" };
        assert_eq!(
            overlay_options(Some(Path::new("/m")), &layers, dir),
            format!("lowerdir=/m:/l/top:/l/bottom,upperdir=/c/abc/upper,workdir=/c/abc/work{index}")
        );
        assert_eq!(
            overlay_options(None, &layers, dir),
            format!("lowerdir=/l/top:/l/bottom,upperdir=/c/abc/upper,workdir=/c/abc/work{index}")
        );
    }
}
