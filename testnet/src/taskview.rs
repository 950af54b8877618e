//! How a task's process sees the filesystem, read from `/proc`: the mount points of its mount
//! namespace and the files it maps, each checked against its root and the host's tree.
//!
//! Why: a CRIU-mode task of the process engine runs with its rootfs as root, in a mount
//! namespace of its own, so that a restore on another node needs nothing of that node's tree.
//! The tests check that property on the live process, before and after a move, rather than
//! trusting the engine's code.

use std::os::unix::fs::MetadataExt;

/// What [`read`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskView {
    pub pid: u32,
    /// The mount points of its namespace, sorted.
    pub mount_points: Vec<String>,
    /// Each file it maps, once (not deleted ones: those have no path to check).
    pub mapped: Vec<Mapped>,
}

/// One file a task maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    /// The path as the task sees it.
    pub path: String,
    /// The file at that path inside the task's root is the one mapped.
    pub in_its_root: bool,
    /// The host has a file at that path too, and it is another one.
    pub host_has_another: bool,
}

/// Reads the view of `pid` (which must run: a gone process's namespace cannot be read).
pub fn read(pid: u32) -> std::io::Result<TaskView> {
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    let mut mount_points: Vec<String> = mountinfo
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .collect();
    mount_points.sort();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let mut mapped: Vec<Mapped> = Vec::new();
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(inode), Some(path)) = (
            fields.get(4).and_then(|i| i.parse::<u64>().ok()),
            fields.get(5),
        ) else {
            continue;
        };
        // A deleted file (shared anonymous memory shows as `/dev/zero (deleted)`, SysV memory
        // and memfds as deleted files too) has no path to check.
        let deleted = fields.len() > 6 || path.starts_with("/memfd:");
        if inode == 0 || deleted || !path.starts_with('/') || mapped.iter().any(|m| m.path == *path)
        {
            continue;
        }
        let inside = std::fs::metadata(format!("/proc/{pid}/root{path}")).ok();
        let in_its_root = inside.as_ref().is_some_and(|m| m.ino() == inode);
        let host_has_another = match (std::fs::metadata(path), &inside) {
            (Ok(host), Some(inside)) => host.ino() != inside.ino() || host.dev() != inside.dev(),
            _ => false,
        };
        mapped.push(Mapped {
            path: path.to_string(),
            in_its_root,
            host_has_another,
        });
    }
    Ok(TaskView {
        pid,
        mount_points,
        mapped,
    })
}

impl TaskView {
    /// Whether the task runs in a mount namespace of its own holding only its root, `/proc`
    /// and `/dev`, and maps only files of that root; else what is wrong.
    pub fn rooted(&self) -> Result<(), String> {
        if self.mount_points != ["/", "/dev", "/proc"] {
            return Err(format!(
                "task {} has the mount points {:?}, not its own root, /proc and /dev",
                self.pid, self.mount_points
            ));
        }
        if self.mapped.is_empty() {
            return Err(format!("task {} maps no file", self.pid));
        }
        match self.mapped.iter().find(|m| !m.in_its_root) {
            Some(m) => Err(format!(
                "task {} maps {} from outside its root",
                self.pid, m.path
            )),
            None => Ok(()),
        }
    }

    /// How many of the files it maps the host also has at the same path as another file.
    pub fn not_the_hosts(&self) -> usize {
        self.mapped.iter().filter(|m| m.host_has_another).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_at_the_host_s_root_maps_its_files_from_there() {
        let view = read(std::process::id()).expect("own view");
        assert!(view.mount_points.iter().any(|p| p == "/"), "{view:?}");
        assert!(!view.mapped.is_empty(), "the test binary maps itself");
        assert!(view.mapped.iter().all(|m| m.in_its_root), "{view:?}");
        assert_eq!(view.not_the_hosts(), 0, "{view:?}");
    }

    #[test]
    fn rooted_wants_exactly_its_three_mounts_and_files_of_its_root() {
        let file = |in_its_root| Mapped {
            path: "/relay".into(),
            in_its_root,
            host_has_another: false,
        };
        let view = |points: &[&str], mapped: Vec<Mapped>| TaskView {
            pid: 7,
            mount_points: points.iter().map(|p| p.to_string()).collect(),
            mapped,
        };
        assert_eq!(
            view(&["/", "/dev", "/proc"], vec![file(true)]).rooted(),
            Ok(())
        );
        assert!(view(&["/", "/dev", "/proc", "/sys"], vec![file(true)])
            .rooted()
            .is_err());
        assert!(view(&["/", "/proc"], vec![file(true)]).rooted().is_err());
        assert!(view(&["/", "/dev", "/proc"], vec![file(false)])
            .rooted()
            .is_err());
        assert!(view(&["/", "/dev", "/proc"], vec![]).rooted().is_err());
    }
}
