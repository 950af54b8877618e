//! A build context or `docker save` tarball as the process engine unpacks it into an image
//! tree (Dockerfile COPY, layers, links, modes, size budgets). Whatever the tar holds, nothing
//! may be written outside the engine's own directory.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use brume_engine::{Engine, ImageInput, ImageKind, ProcessEngine};
use libfuzzer_sys::fuzz_target;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

/// Every path under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap_or(&p).display().to_string());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(p);
            }
        }
    }
    out.sort();
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, tar)) = data.split_first() else {
        return;
    };
    let top = tempfile::tempdir().expect("a temp dir");
    let tar_path = top.path().join("input.tar");
    std::fs::write(&tar_path, tar).expect("the input written");
    std::fs::create_dir(top.path().join("outside")).expect("a canary dir");
    let before = tree(top.path());
    let engine = ProcessEngine::new(top.path().join("engine")).expect("a process engine");
    let input = ImageInput {
        kind: if kind & 1 == 0 {
            ImageKind::BuildContext
        } else {
            ImageKind::DockerSave
        },
        tar: tar_path,
        digest: format!("{:064x}", 0xb0a7u64),
    };
    let _ = runtime().block_on(engine.prepare(&input));
    drop(engine);
    let after: Vec<String> = tree(top.path())
        .into_iter()
        .filter(|p| !p.starts_with("engine"))
        .collect();
    assert_eq!(
        before, after,
        "the tar wrote outside the engine's directory"
    );
});
