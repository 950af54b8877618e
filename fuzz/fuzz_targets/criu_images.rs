//! A periodic CRIU checkpoint's archive as a new host unpacks it before a restore: only plain
//! files of one directory, within the size limit, whatever the bytes.
#![no_main]

use brume::heal::criu_images::unpack;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("a temp dir");
    let images = dir.path().join("images");
    std::fs::create_dir(&images).expect("the images dir");
    let _ = unpack(data, &images, 1 << 20);
    // Nothing is written beside the images directory.
    let beside: Vec<_> = std::fs::read_dir(dir.path())
        .expect("the temp dir")
        .map(|e| e.expect("an entry").file_name())
        .collect();
    assert_eq!(beside, ["images"], "an entry escaped the images directory");
});
