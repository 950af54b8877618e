//! A `docker save` tarball as brume reads it: the artifact layer's check when packing, and the
//! Docker engine's manifest read and untagged copy (which must refuse to retag other images).
#![no_main]

use brume_artifact::read_image_tar;
use brume_engine::tarball::{read_entry, read_save_manifest, untagged_copy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("a temp dir");
    let tar = dir.path().join("image.tar");
    std::fs::write(&tar, data).expect("the input written");
    let _ = read_image_tar(&tar);
    let _ = read_entry(&tar, "manifest.json");
    if read_save_manifest(&tar).is_ok() {
        if let Ok(copy) = untagged_copy(&tar, &dir.path().join("copy.tar")) {
            let _ = copy.image_id();
        }
    }
});
