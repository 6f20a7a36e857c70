//! Memory limits for instances.
//!
//! With a writable cgroup v2 hierarchy whose memory controller is delegated to us, each
//! instance gets its own cgroup with `memory.max` (what Diego's garden does). Elsewhere
//! (cgroup v1 hosts, containers without delegation) the limit is `RLIMIT_AS`, set by the
//! shell that starts the instance (`ulimit -v`): it caps address space, not resident
//! memory, so it is stricter than CF for runtimes that reserve much virtual memory.

use std::path::{Path, PathBuf};

/// How this agent enforces `memory_mb`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryEnforcement {
    /// Per-instance cgroups under this directory.
    CgroupV2(PathBuf),
    /// `ulimit -v` in the instance's shell.
    RlimitAs,
}

impl MemoryEnforcement {
    /// Picks cgroup v2 when we can create child cgroups with a memory controller.
    pub fn detect(agent_id: &str) -> MemoryEnforcement {
        match cgroup_v2_parent(agent_id) {
            Some(dir) => MemoryEnforcement::CgroupV2(dir),
            None => MemoryEnforcement::RlimitAs,
        }
    }

    /// A short description for logs and the README.
    pub fn describe(&self) -> String {
        match self {
            MemoryEnforcement::CgroupV2(dir) => {
                format!("cgroup v2 memory.max under {}", dir.display())
            }
            MemoryEnforcement::RlimitAs => "RLIMIT_AS (ulimit -v) per instance".to_owned(),
        }
    }

    /// The shell prologue that applies the limit before the app's command.
    pub fn shell_prologue(&self, memory_mb: u32) -> String {
        match self {
            MemoryEnforcement::RlimitAs if memory_mb > 0 => {
                format!("ulimit -v {} || exit 125\n", u64::from(memory_mb) * 1024)
            }
            _ => String::new(),
        }
    }

    /// Creates the instance's cgroup with its limit; returns it so the child's pid can be
    /// moved in and the cgroup removed at the end. `None` when limits are rlimits.
    pub fn create_cgroup(
        &self,
        instance_guid: &str,
        memory_mb: u32,
    ) -> std::io::Result<Option<PathBuf>> {
        let MemoryEnforcement::CgroupV2(parent) = self else {
            return Ok(None);
        };
        let dir = parent.join(instance_guid);
        std::fs::create_dir_all(&dir)?;
        let bytes = u64::from(memory_mb) * 1024 * 1024;
        std::fs::write(dir.join("memory.max"), bytes.to_string())?;
        // No swap: an instance over its limit is OOM-killed, as in CF.
        let _ = std::fs::write(dir.join("memory.swap.max"), "0");
        Ok(Some(dir))
    }
}

/// Moves a process into a cgroup.
pub fn enter_cgroup(cgroup: &Path, pid: u32) -> std::io::Result<()> {
    std::fs::write(cgroup.join("cgroup.procs"), pid.to_string())
}

/// Removes an instance's (empty) cgroup.
pub fn remove_cgroup(cgroup: &Path) {
    // The kernel refuses while processes remain; they are gone by now, and a leftover
    // empty cgroup costs nothing.
    let _ = std::fs::remove_dir(cgroup);
}

fn cgroup_v2_parent(agent_id: &str) -> Option<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    std::fs::read_to_string(root.join("cgroup.controllers")).ok()?;
    // Our own cgroup ("0::/path"): children go next to us, in a sibling we create, since
    // a cgroup with processes cannot also delegate controllers to children.
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let own = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    let own_dir = root.join(own.trim_start_matches('/'));
    let base = own_dir.parent().unwrap_or(root);
    let controllers = std::fs::read_to_string(base.join("cgroup.subtree_control")).ok()?;
    if !controllers.split_whitespace().any(|c| c == "memory") {
        return None;
    }
    let dir = base.join(format!("controller-lite-{agent_id}"));
    std::fs::create_dir_all(&dir).ok()?;
    std::fs::write(dir.join("cgroup.subtree_control"), "+memory").ok()?;
    Some(dir)
}
