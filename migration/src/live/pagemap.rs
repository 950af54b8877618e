//! The lazy memory ranges of a dump, read from its `pagemap-<pid>.img` images, so the target's
//! page proxy can fetch every lazy page in the background without waiting for the daemon to ask.
//!
//! Format (CRIU's criu/include/magic.h, criu/protobuf.c, images/pagemap.proto): two u32 magics
//! (`IMG_COMMON_MAGIC`, `PAGEMAP_MAGIC`), then messages, each a little-endian u32 size and the
//! message: one `PagemapHead`, then `PagemapEntry { vaddr = 1, compat_nr_pages = 2,
//! in_parent = 3, flags = 4, nr_pages = 5 }` (CRIU 4 writes 0 in field 2 and the count in 5). The page server knows a task by `pstree_item_by_virt(dst_id)`, and the
//! lazy-pages daemon asks with its task's PID in the images (the one in the file name), so that
//! PID is the request's target id.

use std::path::Path;

use crate::criu::{protobuf_fields, Field};
use crate::PAGE;

const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
const PAGEMAP_MAGIC: u32 = 0x5608_4025;
/// criu/include/pagemap.h: the pages may be restored lazily.
const PE_LAZY: u64 = 1 << 1;

/// One lazy range: (target id, start address, end address).
pub type LazyRange = (u64, u64, u64);

/// The lazy ranges of every `pagemap-<pid>.img` in `dir`, sorted by task and address. A file
/// that cannot be read or parsed gives no ranges (the proxy then only serves the daemon's
/// requests, as without background fetching), so a surprise costs speed, never correctness.
pub fn lazy_ranges(dir: &Path) -> Vec<LazyRange> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("pagemap-"))
            .and_then(|n| n.strip_suffix(".img"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if let Ok(bytes) = std::fs::read(e.path()) {
            out.extend(
                parse(&bytes)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(a, b)| (pid, a, b)),
            );
        }
    }
    out.sort_unstable();
    out
}

/// The lazy (start, end) ranges of one pagemap image; `None` if it is not one.
pub fn parse(bytes: &[u8]) -> Option<Vec<(u64, u64)>> {
    let u32_at = |o: usize| -> Option<u32> {
        let b = bytes.get(o..o + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if u32_at(0)? != IMG_COMMON_MAGIC || u32_at(4)? != PAGEMAP_MAGIC {
        return None;
    }
    let mut at = 8;
    let mut first = true;
    let mut out = Vec::new();
    while at < bytes.len() {
        let len = u32_at(at)? as usize;
        let msg = bytes.get(at + 4..at + 4 + len)?;
        at += 4 + len;
        if std::mem::take(&mut first) {
            continue; // the PagemapHead
        }
        let (mut vaddr, mut compat, mut pages, mut flags) = (None, 0, None, 0);
        for (field, value) in protobuf_fields(msg)? {
            let Field::Varint(value) = value else {
                return None; // a PagemapEntry has varints only
            };
            match field {
                1 => vaddr = Some(value),
                2 => compat = value,
                4 => flags = value,
                5 => pages = Some(value),
                _ => {}
            }
        }
        let (vaddr, pages) = (vaddr?, pages.unwrap_or(compat));
        if flags & PE_LAZY != 0 && pages > 0 {
            out.push((vaddr, vaddr.checked_add(pages.checked_mul(PAGE)?)?));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn msg(fields: &[(u64, u64)], out: &mut Vec<u8>) {
        let mut m = Vec::new();
        for &(f, v) in fields {
            varint(f << 3, &mut m);
            varint(v, &mut m);
        }
        out.extend((m.len() as u32).to_le_bytes());
        out.extend(m);
    }

    #[test]
    fn lazy_entries_are_read_and_others_skipped() {
        let mut img = Vec::new();
        img.extend(IMG_COMMON_MAGIC.to_le_bytes());
        img.extend(PAGEMAP_MAGIC.to_le_bytes());
        msg(&[(1, 7)], &mut img);
        // Like CRIU 4.2's (seen in a real image): the count in field 5, 0 in field 2.
        msg(&[(1, 0x40_0000), (2, 0), (4, 4), (5, 3)], &mut img);
        msg(
            &[(1, 0x7f00_0000_0000), (2, 0), (4, 2 | 4), (5, 300)],
            &mut img,
        );
        // Older CRIUs: only the compat count.
        msg(&[(1, 0x7f00_1000_0000), (2, 1), (4, 2)], &mut img);
        assert_eq!(
            parse(&img),
            Some(vec![
                (0x7f00_0000_0000, 0x7f00_0000_0000 + 300 * PAGE),
                (0x7f00_1000_0000, 0x7f00_1000_0000 + PAGE)
            ])
        );
        assert_eq!(parse(&img[..img.len() - 1]), None, "a cut message");
        assert_eq!(parse(&img[4..]), None, "no magic");
    }
}
