//! Post-copy live migration with the real CRIU (lazy pages through brume's own relay of the page
//! server) over a loopback TCP connection: the `dirtier` keeps rewriting its memory, is frozen,
//! dumped without its memory, restored at once on the target, and gets its pages afterwards; its
//! counter continues exactly and its memory is exactly what its seed and steps make. Failure
//! safety: a target that goes away before the restore, or while pages are still moving, leaves
//! the task thawed on the source, and no copy of it on the target.
//!
//! Needs root, criu >= 4.2 and `fs.pipe-max-size` >= 4 MiB (scripts/install-deps.sh sets it);
//! skips without root or criu (fails under `BRUME_REQUIRE`). The dirtier runs in its own PID
//! namespace because source and target share this host. Nothing here asserts a duration: waits
//! are on events (the poller's answers, /proc), bounded by `LIVENESS` (60 s).

mod live_support;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use brume_migration::criu::Criu;
use brume_migration::lazy::check_pipe_max_size;
use brume_migration::live::wire::{read_message, write_message, Message};
use brume_migration::live::{
    migrate_in, migrate_out, InDoubt, LiveError, Migrated, Mode, RoundStats, SourceOptions,
    TargetOptions,
};
use live_support::{
    ask, assert_counter_continues, have_criu, longest_gap, poll, wait_answers, wait_for, Dirtier,
    TempDir, LIVENESS,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn ready(test: &str) -> bool {
    if !have_criu(test) {
        return false;
    }
    if let Err(e) = check_pipe_max_size() {
        panic!("{test}: {e}");
    }
    true
}

/// [`ready`], and the dirty-page tracker works here (what is missing is said as the suite says it).
fn tracking_ready(test: &str) -> bool {
    if !ready(test) {
        return false;
    }
    let support = brume_migration::track::probe();
    if support.method != brume_migration::track::Method::Tracked {
        brume_testnet::require::missing(test, brume_testnet::require::Need::Tracking, &support.why);
        return false;
    }
    true
}

fn post_copy(dir: &TempDir) -> SourceOptions {
    let mut o = SourceOptions::new(dir.path().join("source"));
    o.mode = Mode::PostCopy;
    o
}

/// Kills a restored copy when the test ends, whatever happened.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) has no memory effects.
        unsafe {
            libc::kill(self.0 as i32, libc::SIGKILL);
        }
    }
}

/// PIDs of dirtiers serving `socket`, from /proc.
fn dirtiers_serving(socket: &std::path::Path) -> Vec<u32> {
    let want = socket.to_string_lossy().to_string();
    let dirtier_path = live_support::dirtier().to_string_lossy().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).to_string())
            .collect();
        let is_dirtier = args.first().is_some_and(|a| *a == dirtier_path)
            && args.get(1).is_some_and(|a| a == "serve");
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = state
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z'));
        if is_dirtier && !zombie && args.contains(&want) {
            found.push(pid);
        }
    }
    found
}

/// CPU ticks a process has used, from /proc/<pid>/stat.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the command.
    field(11) + field(12)
}

/// One post-copy move of a 64 MiB dirtier over loopback TCP (with tracked rounds first when
/// `track`), checked as every such move must be: the restored copy answers, the original is
/// gone, the counter continues exactly and the memory is what the seed and steps make.
/// `final_inline` is the tracked plan's choice for the last round's pages. Returns the source's
/// view and its rounds.
fn move_64_mib(
    tag: &str,
    seed: u64,
    track: bool,
    final_inline: Option<Duration>,
) -> (Migrated, Vec<RoundStats>) {
    let dir = TempDir::new(tag);
    let socket = dir.path().join("w.sock");
    let mut task = Dirtier::start_in_pid_namespace(&socket, 64, seed, 8.0);
    let before_steps = task.assert_state_consistent();
    let poller = poll(&socket, Duration::from_millis(2));
    wait_answers(&poller, "answers before the move", 10);

    let rt = runtime();
    let mut rounds: Vec<RoundStats> = Vec::new();
    let staging = dir.path().join("staging");
    let mut source = post_copy(&dir);
    source.track = track;
    source.tracked.final_inline = final_inline;
    let (migrated, received) = rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let target = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            // Page faults are small requests that wait on their answer: no Nagle delay.
            stream.set_nodelay(true).expect("nodelay");
            let mut opts = TargetOptions::new(staging);
            opts.pid_namespace = true;
            migrate_in(stream, opts).await
        });
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let migrated = migrate_out(stream, task.pid, source, |r| {
            rounds.push(r.clone());
        })
        .await;
        (migrated, target.await.expect("target task"))
    });
    // Either side's failure names the other's too: a target that saw the link close says
    // little without the source's reason, and the other way round.
    let _restored = received.as_ref().ok().map(|r| KillOnDrop(r.pid));
    let (received, migrated) = match (received, migrated) {
        (Ok(r), Ok(m)) => (r, m),
        (r, m) => panic!(
            "target: {}; source: {}",
            r.as_ref().map_or_else(|e| e.to_string(), |_| "ok".into()),
            m.as_ref().map_or_else(|e| e.to_string(), |_| "ok".into())
        ),
    };
    // The restored copy (another host PID) answers the poller.
    let (answered, seen) = poller.wait_until(LIVENESS, |log| {
        log.iter().filter(|a| a.peer == received.pid).count() >= 10
    });
    assert!(
        answered,
        "the restored task (pid {}) answered {} times in {LIVENESS:?}; last answers {:?}",
        received.pid,
        seen.iter().filter(|a| a.peer == received.pid).count(),
        seen.iter().rev().take(3).collect::<Vec<_>>()
    );
    let log = poller.finish();

    let (gap, last_source, first_target) = longest_gap(&log).expect("answers");
    let post = migrated.post_copy.clone().expect("post-copy stats");
    let last = rounds.last().expect("a final round");
    eprintln!(
        "{tag}: {} rounds; frozen dump {} ms ({} KiB of images and final pages), downtime {} ms by the source (restore {} ms), {} ms by the poller (counter {last_source} -> {first_target}); pages {:.1} MiB from the source in {} ms after the restore; total {} ms",
        rounds.len(),
        last.dump.as_millis(),
        last.dumped_bytes / 1024,
        migrated.downtime.as_millis(),
        migrated.restore.as_millis(),
        gap.as_millis(),
        post.page_bytes as f64 / 1048576.0,
        post.pages_done.as_millis(),
        migrated.total.as_millis(),
    );
    assert_eq!(migrated.target_pid, received.pid);
    // Nothing of the move stays on the target: neither the staging directory nor CRIU's logs
    // and pid file beside it (they live in tmpfs on a node).
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .expect("the test's directory")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("staging"))
        .collect();
    assert!(left.is_empty(), "left on the target: {left:?}");
    assert_ne!(
        received.pid, task.pid,
        "a new PID namespace, so a new host PID"
    );
    // The original is gone: CRIU ends it once the target holds every page (and its `unshare`
    // parent exits, which the reaper waits for).
    task.wait_moved_away();
    assert_eq!(
        dirtiers_serving(&socket),
        vec![received.pid],
        "only the restored dirtier is left"
    );
    assert_counter_continues(&log);
    // Before the move the original answered, after it the restored copy, nobody else.
    let (old, new) = brume_testnet::poller::switch(&log, task.pid).expect("a switch");
    assert_eq!(new.peer, received.pid);
    assert!(log
        .iter()
        .all(|a| a.peer == task.pid || a.peer == received.pid));
    assert!(new.at > old.at);
    let steps = task.assert_state_consistent();
    task.wait_dirtying_past(steps.max(before_steps));
    task.assert_state_consistent();
    (migrated, rounds)
}

/// The post-copy tests below read their pages through `--lazy-pages-defer-read` (brume's patch
/// to CRIU): the page server takes each page from the frozen task when asked. This says that
/// the CRIU they run is the patched one, so that path is what they test.
#[test]
fn the_installed_criu_defers_lazy_reads() {
    if !ready("the_installed_criu_defers_lazy_reads") {
        return;
    }
    let defers = Criu::new().defers_lazy_reads().expect("criu --help");
    assert!(
        defers,
        "criu has no --lazy-pages-defer-read: run scripts/install-criu.sh (it applies scripts/criu-patches)"
    );
}

#[test]
fn postcopy_moves_a_64_mib_task_and_only_its_small_images_travel_frozen() {
    if !ready("postcopy_moves_a_64_mib_task_and_only_its_small_images_travel_frozen") {
        return;
    }
    let (migrated, rounds) = move_64_mib("post-64", 0x9c64, false, None);
    let post = migrated.post_copy.clone().expect("post-copy stats");
    let images = rounds.first().map(|r| r.dumped_bytes).unwrap_or(0);
    assert_eq!(rounds.len(), 1, "post-copy is one round: {rounds:?}");
    assert!(
        images < 8 << 20,
        "the frozen dump leaves the 64 MiB of memory out: {images} bytes of images"
    );
    assert!(
        post.page_bytes > 48 << 20,
        "the memory followed as pages: {} bytes",
        post.page_bytes
    );
}

#[test]
fn tracked_rounds_carry_the_memory_before_the_freeze_and_the_source_serves_no_page() {
    let test = "tracked_rounds_carry_the_memory_before_the_freeze_and_the_source_serves_no_page";
    if !tracking_ready(test) {
        return;
    }
    // The last round's pages before the restore, whatever the link's speed.
    let (migrated, rounds) = move_64_mib("tracked-64", 0x7c64, true, None);
    let post = migrated.post_copy.clone().expect("post-copy stats");
    assert!(post.final_inline, "the plan said before the restore");
    assert!(
        rounds.len() >= 2,
        "tracked rounds ran before the final: {rounds:?}"
    );
    // Round 1 read the whole task (64 MiB of state, resident), later rounds what it wrote.
    assert!(
        rounds[0].dumped_bytes >= 64 << 20,
        "round 1 read {} bytes",
        rounds[0].dumped_bytes
    );
    // Every page the lazy restore asked for came from the target's replica: what crossed
    // from the source's page server is only the close of the conversation.
    assert!(
        post.page_bytes < 64 << 10,
        "the source's page server sent {} bytes: the replica missed pages",
        post.page_bytes
    );
}

#[test]
fn the_last_tracked_pages_can_follow_the_restore_and_the_memory_is_still_exact() {
    let test = "the_last_tracked_pages_can_follow_the_restore_and_the_memory_is_still_exact";
    if !tracking_ready(test) {
        return;
    }
    // Never before the restore: only the addresses of what the task wrote since the last round
    // go while it is frozen, and the target asks the page server for those pages. move_64_mib
    // checks that the counter continues exactly and the memory is what seed and steps make, so
    // a page the replica kept stale, or one never sent, fails it.
    let (migrated, rounds) = move_64_mib("tracked-stale-64", 0x5a64, true, Some(Duration::ZERO));
    let post = migrated.post_copy.clone().expect("post-copy stats");
    assert!(
        rounds.len() >= 2,
        "tracked rounds ran before the final: {rounds:?}"
    );
    assert!(!post.final_inline, "the plan said after the restore");
    eprintln!(
        "{} pages written since the last round followed the restore; the page server sent {} bytes",
        post.final_pages, post.page_bytes
    );
    assert!(
        post.final_pages == 0 || post.page_bytes >= 4096,
        "{} stale pages, yet the source's page server sent {} bytes",
        post.final_pages,
        post.page_bytes
    );
}

/// A target that answers the hello as a real one does, takes the images up to the round's
/// end, then vanishes without restoring: `Err` if the source stopped first.
async fn a_target_that_vanishes_after_the_images(listener: TcpListener) -> Result<(), String> {
    let (mut stream, _) = listener.accept().await.expect("accept");
    match read_message(&mut stream).await {
        Ok(Message::Hello { .. }) => {}
        other => return Err(format!("the source began with {other:?}")),
    }
    write_message(&mut stream, &Message::Welcome { store_chunks: 0 })
        .await
        .map_err(|e| format!("welcome: {e}"))?;
    loop {
        match read_message(&mut stream).await {
            Ok(Message::RoundEnd { .. }) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(format!("the source stopped first: {e}")),
        }
    }
}

/// Moves `task` with `opts` to [`a_target_that_vanishes_after_the_images`]: what the source
/// said.
fn move_to_a_vanishing_target(
    task: &Dirtier,
    opts: SourceOptions,
    rt: &tokio::runtime::Runtime,
) -> Result<Migrated, LiveError> {
    let (result, target) = rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let target = tokio::spawn(a_target_that_vanishes_after_the_images(listener));
        let stream = TcpStream::connect(addr).await.expect("connect");
        let r = migrate_out(stream, task.pid, opts, |_| {}).await;
        (r, target.await.expect("target"))
    });
    // If the source gave up before sending its images, its own error says why.
    if let Err(why) = target {
        panic!("{why}; the source: {result:?}");
    }
    result
}

/// After a failed move: the same process answers, its counter goes on from `counter`, its
/// memory is consistent and it dirties.
fn runs_on_as_before(task: &Dirtier, socket: &std::path::Path, counter: u64) {
    assert_eq!(
        ask(socket, "TICK").expect("TICK"),
        (counter + 1).to_string()
    );
    assert_eq!(dirtiers_serving(socket), vec![task.pid]);
    let s1 = task.assert_state_consistent();
    task.wait_dirtying_past(s1);
    task.assert_state_consistent();
}

#[test]
fn a_target_gone_before_the_restore_leaves_the_task_thawed_on_the_source() {
    if !ready("a_target_gone_before_the_restore_leaves_the_task_thawed_on_the_source") {
        return;
    }
    let dir = TempDir::new("post-gone");
    let socket = dir.path().join("w.sock");
    let task = Dirtier::start_in_pid_namespace(&socket, 32, 0x90e, 8.0);
    let counter: u64 = ask(&socket, "TICK").expect("TICK").parse().expect("n");
    let result = move_to_a_vanishing_target(&task, post_copy(&dir), &runtime());
    let err = result.expect_err("the target went away");
    assert!(matches!(err, LiveError::Thawed { .. }), "{err}");
    assert!(err.task_untouched(), "{err}");
    runs_on_as_before(&task, &socket, counter);
    eprintln!("target gone before the restore: {err}");
}

/// The same loss, for a caller that settles the target itself (`InDoubt::Return`, as the
/// node): the target may have restored from the images it took, so the task is handed back
/// frozen, with every page still in it, and runs on only once the caller thaws it.
#[test]
fn a_target_lost_after_the_images_hands_the_task_back_frozen_until_thawed() {
    if !ready("a_target_lost_after_the_images_hands_the_task_back_frozen_until_thawed") {
        return;
    }
    let dir = TempDir::new("post-doubt");
    let socket = dir.path().join("w.sock");
    let task = Dirtier::start_in_pid_namespace(&socket, 32, 0x90f, 8.0);
    let counter: u64 = ask(&socket, "TICK").expect("TICK").parse().expect("n");
    let mut opts = post_copy(&dir);
    opts.in_doubt = InDoubt::Return;
    let rt = runtime();
    let result = move_to_a_vanishing_target(&task, opts, &rt);
    let Err(LiveError::FrozenInDoubt { cause, frozen, .. }) = result else {
        panic!("not handed back frozen: {result:?}");
    };
    // Frozen, held by the dump's ptrace (`t`, tracing stop), while the caller settles the
    // target: not running, not gone.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", task.pid)).expect("stat");
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().next());
    assert_eq!(state, Some("t"), "the task is not held frozen: {stat}");
    let thawed = rt.block_on(frozen.thaw(*cause));
    assert!(matches!(thawed, LiveError::Thawed { .. }), "{thawed}");
    runs_on_as_before(&task, &socket, counter);
}

/// A stream that fails every read once `limit` bytes were read: a link that breaks mid-way.
struct Breaking {
    inner: TcpStream,
    left: usize,
}

impl AsyncRead for Breaking {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.left == 0 {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "the test broke the link",
            )));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let got = buf.filled().len() - before;
        self.left = self.left.saturating_sub(got);
        r
    }
}

impl AsyncWrite for Breaking {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[test]
fn a_link_that_breaks_while_pages_move_thaws_the_source_and_kills_the_copy() {
    if !ready("a_link_that_breaks_while_pages_move_thaws_the_source_and_kills_the_copy") {
        return;
    }
    let dir = TempDir::new("post-break");
    let socket = dir.path().join("w.sock");
    let task = Dirtier::start_in_pid_namespace(&socket, 64, 0xb4ea, 8.0);
    let before_steps = task.assert_state_consistent();
    let rt = runtime();
    let staging = dir.path().join("staging");
    let (result, target) = rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let target = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let mut opts = TargetOptions::new(staging);
            opts.pid_namespace = true;
            // The images are a few MiB; the link breaks 16 MiB in, with pages still to come.
            let stream = Breaking {
                inner: stream,
                left: 16 << 20,
            };
            migrate_in(stream, opts).await
        });
        let stream = TcpStream::connect(addr).await.expect("connect");
        let r = migrate_out(stream, task.pid, post_copy(&dir), |_| {}).await;
        (r, target.await.expect("target task"))
    });
    assert!(target.is_err(), "the target saw its link break");
    let err = result.expect_err("the link broke");
    assert!(matches!(err, LiveError::Thawed { .. }), "{err}");
    assert!(err.task_untouched(), "{err}");
    // The restored copy goes (killed when the link broke; it may take a moment to be reaped)
    // and the original runs again (it burns CPU dirtying memory; its socket path may now name
    // the dead copy's socket, so its CPU time is what is watched).
    wait_for("only the original dirtier left", LIVENESS, || {
        let serving = dirtiers_serving(&socket);
        if serving == vec![task.pid] {
            Ok(())
        } else {
            Err(format!(
                "dirtiers serving {}: {serving:?}",
                socket.display()
            ))
        }
    });
    let t1 = cpu_ticks(task.pid);
    wait_for("the original running again", LIVENESS, || {
        let t2 = cpu_ticks(task.pid);
        if t2 > t1 {
            Ok(())
        } else {
            Err(format!("{t2} ticks of CPU, as before"))
        }
    });
    eprintln!(
        "link broke while pages moved: {err}; the original ({} steps before) runs on as pid {}",
        before_steps, task.pid
    );
}
