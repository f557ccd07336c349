//! Syscall tracepoints are found through tracefs; mount it where it is missing.

use std::path::Path;

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// Make sure tracefs is mounted, mounting it at `/sys/kernel/tracing` if needed.
pub fn ensure_mounted() -> Result<(), String> {
    let has_events = |dir: &str| Path::new(dir).join("events/syscalls").is_dir();
    if has_events(TRACEFS) || has_events(DEBUGFS_TRACING) {
        return Ok(());
    }
    let target = std::ffi::CString::new(TRACEFS).expect("no NUL in a constant");
    let fstype = std::ffi::CString::new("tracefs").expect("no NUL in a constant");
    let source = std::ffi::CString::new("nodev").expect("no NUL in a constant");
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        return Err(format!(
            "mounting tracefs at {TRACEFS} failed ({err}); mount it with \
             `mount -t tracefs nodev {TRACEFS}` and start again"
        ));
    }
    if !has_events(TRACEFS) {
        return Err(format!(
            "{TRACEFS}/events/syscalls is missing: the kernel needs CONFIG_FTRACE_SYSCALLS"
        ));
    }
    log::info!("mounted tracefs at {TRACEFS}");
    Ok(())
}
