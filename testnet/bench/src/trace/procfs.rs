//! What the trace generator reads from `/proc` besides [`brume_migration::predictor::procfs`]
//! (which the node reads the same way): the resident pages of given runs, for a first dump's
//! written-page count.

pub use brume_migration::predictor::procfs::{cpu_jiffies, look, machine_load};

/// How many pages of the `[start, end)` runs of process `pid` are resident, from
/// `/proc/PID/pagemap` (bit 63 of each page's entry).
///
/// Why not the tracker's own count for runs it reports whole (mappings new to it): those come
/// from `PAGEMAP_SCAN` asking for present or swapped pages, and the write-protect markers that
/// arming leaves on a mapping's unpopulated entries are swap entries to it, so an armed thread
/// stack counts as all present. A first dump's "all present pages" must be what is resident.
pub fn resident_pages(pid: i32, runs: &[(u64, u64)]) -> std::io::Result<u64> {
    use brume_migration::PAGE;
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(format!("/proc/{pid}/pagemap"))?;
    let mut buf = vec![0u8; 8 * 4096];
    let mut resident = 0;
    for &(start, end) in runs {
        let mut page = start / PAGE;
        let last = end.div_ceil(PAGE);
        while page < last {
            let n = ((last - page) as usize).min(buf.len() / 8);
            let chunk = &mut buf[..n * 8];
            file.read_exact_at(chunk, page * 8)?;
            resident += chunk.chunks_exact(8).filter(|e| e[7] & 0x80 != 0).count() as u64;
            page += n as u64;
        }
    }
    Ok(resident)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touched_pages_are_resident_and_untouched_ones_not() {
        let mut v = vec![0u8; 64 * 4096];
        for i in (0..v.len()).step_by(4096 * 2) {
            v[i] = 1;
        }
        let start = (v.as_ptr() as u64).div_ceil(4096) * 4096;
        let me = std::process::id() as i32;
        let n = resident_pages(me, &[(start, start + 32 * 4096)]).expect("pagemap");
        std::hint::black_box(&v);
        // Every other page was written; the vec's allocation may have faulted in more.
        assert!((16..=32).contains(&n), "{n}");
        assert_eq!(resident_pages(me, &[]).expect("nothing"), 0);
    }
}
