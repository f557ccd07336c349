//! The cgroup filter: cgroup v2 directories chosen with `--cgroup`, each with every cgroup
//! below it, in the form the kernel-side filter takes (cgroup ids: the inode numbers of the
//! directories), and whether a process is in one of them.

use std::{
    collections::BTreeSet,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// A chosen cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    /// Its directory in the mounted hierarchy.
    pub dir: PathBuf,
    /// Its path in the hierarchy, as `/proc/PID/cgroup` shows it (`/system.slice/x.scope`).
    pub path: String,
}

/// Where cgroup v2 is mounted (its root), from /proc/mounts.
pub fn v2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&"cgroup2"))
        .and_then(|f| f.get(1).map(PathBuf::from))
}

impl Cgroup {
    /// The cgroup `arg` names: a directory of the cgroup v2 hierarchy, given as a path in the
    /// mounted tree (`/sys/fs/cgroup/system.slice/nginx.service`) or in the hierarchy
    /// (`/system.slice/nginx.service`, as `/proc/PID/cgroup` shows it).
    pub fn resolve(arg: &str) -> Result<Cgroup, String> {
        let root = v2_root().ok_or_else(|| {
            "--cgroup needs cgroup v2, which is not mounted here \
             (mount -t cgroup2 none /sys/fs/cgroup)"
                .to_string()
        })?;
        Self::resolve_in(&root, arg)
    }

    fn resolve_in(root: &Path, arg: &str) -> Result<Cgroup, String> {
        if arg.trim().is_empty() {
            return Err("--cgroup: an empty path (write / for every cgroup)".to_string());
        }
        let arg_path = Path::new(arg.trim());
        let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
        let in_tree = root.join(arg_path.strip_prefix("/").unwrap_or(arg_path));
        let dir = [arg_path.to_path_buf(), in_tree]
            .into_iter()
            .filter_map(|p| p.canonicalize().ok())
            .find(|p| p.starts_with(&root) && p.is_dir())
            .ok_or_else(|| {
                format!(
                    "`{arg}` is not a cgroup: neither it nor {}/{} is a directory of the \
                     cgroup v2 hierarchy mounted at {}",
                    root.display(),
                    arg.trim().trim_start_matches('/'),
                    root.display()
                )
            })?;
        let rel = dir.strip_prefix(&root).unwrap_or(Path::new(""));
        let path = format!("/{}", rel.display());
        Ok(Cgroup { dir, path })
    }

    /// Whether a process whose cgroup is `path` (as `/proc/PID/cgroup` shows it) is in this
    /// cgroup or below it.
    pub fn holds(&self, path: &str) -> bool {
        self.path == "/"
            || path == self.path
            || path
                .strip_prefix(self.path.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

/// The ids of `cgroups` and of every cgroup below them, at most `cap`, nearest first (the
/// chosen ones, then their children...); the second value says whether some were left out.
pub fn ids(cgroups: &[Cgroup], cap: usize) -> (BTreeSet<u64>, bool) {
    let mut out = BTreeSet::new();
    let mut queue: std::collections::VecDeque<PathBuf> =
        cgroups.iter().map(|c| c.dir.clone()).collect();
    while let Some(dir) = queue.pop_front() {
        let Ok(meta) = std::fs::metadata(&dir) else {
            continue;
        };
        if out.len() >= cap {
            return (out, true);
        }
        out.insert(meta.ino());
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    queue.push_back(e.path());
                }
            }
        }
    }
    (out, false)
}

/// The cgroup v2 path of process `pid` (`/system.slice/x.scope`), if it has one.
pub fn of_process(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    v2_path(&text).map(str::to_string)
}

/// The cgroup v2 line's path in the text of a `/proc/PID/cgroup`.
fn v2_path(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// The id of the container that the process whose `/proc/PID/cgroup` is `text` runs in, as
/// the common runtimes name their cgroups: Docker (`/docker/ID`, `docker-ID.scope`),
/// containerd (`cri-containerd-ID.scope`, `/kubepods/.../ID`), CRI-O (`crio-ID.scope`) and
/// Podman (`libpod-ID.scope`); the id is 64 hexadecimal digits. The runtimes' monitor
/// processes (`crio-conmon-`, `libpod-conmon-`) are not containers.
pub fn container_id(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .find_map(|path| {
            path.rsplit('/').find_map(|segment| {
                if segment.contains("conmon-") {
                    return None;
                }
                let s = segment.strip_suffix(".scope").unwrap_or(segment);
                let id = [
                    "docker-",
                    "cri-containerd-",
                    "crio-",
                    "libpod-",
                    "containerd-",
                ]
                .iter()
                .find_map(|p| s.strip_prefix(p))
                .unwrap_or(s);
                (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
                    .then(|| id.to_ascii_lowercase())
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4b8c2a9d1e0f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a";

    #[test]
    fn container_ids_of_the_common_runtimes() {
        for text in [
            format!("0::/system.slice/docker-{ID}.scope\n"),
            format!("12:pids:/docker/{ID}\n11:cpu:/docker/{ID}\n0::/docker/{ID}\n"),
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b.slice/\
                 cri-containerd-{ID}.scope\n"
            ),
            format!("0::/kubepods/besteffort/pod0c6a1e4b-7f0e-4d5e-9d7a-2f6c1b0a9e8d/{ID}\n"),
            format!("0::/kubepods.slice/kubepods-pod1.slice/crio-{ID}.scope\n"),
            format!("0::/machine.slice/libpod-{ID}.scope/container\n"),
            format!("0::/user.slice/user-1000.slice/user@1000.service/docker-{ID}.scope\n"),
        ] {
            assert_eq!(container_id(&text).as_deref(), Some(ID), "{text}");
        }
        for text in [
            "0::/system.slice/nginx.service\n".to_string(),
            "0::/\n".to_string(),
            format!("0::/machine.slice/libpod-conmon-{ID}.scope\n"),
            format!("0::/kubepods.slice/crio-conmon-{ID}.scope\n"),
            // One digit short, and not hexadecimal.
            format!("0::/docker/{}\n", &ID[1..]),
            format!("0::/docker/{}g\n", &ID[1..]),
            String::new(),
            "garbage without colons".to_string(),
        ] {
            assert_eq!(container_id(&text), None, "{text}");
        }
    }

    #[test]
    fn a_cgroup_holds_itself_and_what_is_below_it() {
        let c = Cgroup {
            dir: "/sys/fs/cgroup/a.slice".into(),
            path: "/a.slice".into(),
        };
        assert!(c.holds("/a.slice"));
        assert!(c.holds("/a.slice/b.scope"));
        assert!(!c.holds("/a.slicex"));
        assert!(!c.holds("/b.slice/a.slice"));
        let root = Cgroup {
            dir: "/sys/fs/cgroup".into(),
            path: "/".into(),
        };
        assert!(root.holds("/anything"));
        assert_eq!(v2_path("1:cpu:/x\n0::/y.slice\n"), Some("/y.slice"));
    }

    #[test]
    fn cgroups_resolve_in_the_tree_or_the_hierarchy_and_ids_cover_descendants() {
        // A directory tree standing in for the mounted hierarchy.
        let root = std::env::temp_dir().join(format!("tracer-cgroup-{}", std::process::id()));
        std::fs::create_dir_all(root.join("a.slice/b.scope/c")).unwrap();
        std::fs::create_dir_all(root.join("other")).unwrap();
        let by_tree = Cgroup::resolve_in(&root, root.join("a.slice").to_str().unwrap()).unwrap();
        let by_path = Cgroup::resolve_in(&root, "/a.slice").unwrap();
        assert_eq!(by_tree, by_path);
        assert_eq!(by_path.path, "/a.slice");
        let err = Cgroup::resolve_in(&root, "/nope").unwrap_err();
        assert!(err.contains("`/nope` is not a cgroup"), "{err}");
        for blank in ["", "  "] {
            let err = Cgroup::resolve_in(&root, blank).unwrap_err();
            assert!(err.contains("empty path"), "{err}");
        }
        // Outside the hierarchy.
        assert!(Cgroup::resolve_in(&root, "/tmp").is_err());
        let (ids, cut) = ids(std::slice::from_ref(&by_path), 100);
        assert_eq!((ids.len(), cut), (3, false));
        let ino = |p: &str| std::fs::metadata(root.join(p)).unwrap().ino();
        assert!(ids.contains(&ino("a.slice/b.scope/c")));
        assert!(!ids.contains(&ino("other")));
        let (ids, cut) = ids_capped(&by_path);
        assert_eq!((ids, cut), (2, true));
        // Nearest first: with room for two of two choices' trees, both choices are kept.
        let other = Cgroup::resolve_in(&root, "/other").unwrap();
        let (kept, cut) = super::ids(&[by_path.clone(), other], 2);
        assert!(cut);
        assert!(kept.contains(&ino("a.slice")) && kept.contains(&ino("other")));
        std::fs::remove_dir_all(&root).unwrap();
    }

    fn ids_capped(c: &Cgroup) -> (usize, bool) {
        let (ids, cut) = ids(std::slice::from_ref(c), 2);
        (ids.len(), cut)
    }
}
