//! Giving freed memory back to the operating system. glibc's allocator keeps
//! what a burst of load freed (10,000 room members leaving, 20 stalled
//! downloads ending) in its arenas, so the process stays at its peak for
//! good; trimming now and then returns it.

use std::time::Duration;

/// How often to trim: a burst's memory is back with the OS within 2 s, and
/// it costs nothing measurable (a trim walks the arenas in well under a
/// millisecond when there is little to return, on the blocking pool).
pub const TRIM_EVERY: Duration = Duration::from_secs(2);

/// Trims in the background for as long as the runtime runs.
pub fn spawn_trimmer() {
    tokio::spawn(async {
        let mut ticker = tokio::time::interval(TRIM_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            // On the blocking pool: a trim with much to return takes
            // milliseconds, which every task queued on a worker would wait
            // through (audio streams among them).
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    });
}

/// Keeps the data path's buffers (64 KiB-1 MiB: read buffers, body chunks
/// held until acknowledged) on the heap. glibc otherwise maps each one anew
/// and unmaps it when freed, so every buffer costs page faults and zeroed
/// pages (6% of the agent's CPU in a bulk download, in `clear_page` and
/// `unmap_page_range`). Memory freed by a burst is still given back: by the
/// trimmer every 2 s, or at once beyond 1 MiB at the top of the heap.
/// Call once, before the runtime starts.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's thresholds; called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 20);
    }
}

/// Returns free heap memory to the OS now.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes the allocator's own locks; it only releases
    // memory that is free.
    unsafe {
        libc::malloc_trim(0);
    }
}
