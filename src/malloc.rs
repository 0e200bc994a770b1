//! Process-wide settings of glibc's allocator (issue 17; measurements in bench/RESULTS.md).

/// How many malloc arenas the process may use: the main one only.
const ARENAS: i32 = 1;

/// Caps glibc's malloc arenas (by default up to eight per core: a thread that finds its arena
/// busy gets a new one). Every runtime thread that decodes an API list otherwise ends up with
/// an arena of its own, each keeping what the list left between live allocations: at 10 000
/// services / 100 000 pods the API source used 84-90 MiB with the default, 69-70 MiB with two
/// arenas and 64-65 MiB with one, with no loss of queries per second or CPU per query that
/// the benchmark could tell from noise (2 cores; the query path's small allocations are served
/// by glibc's per-thread caches without the arena lock). The user's `MALLOC_ARENA_MAX` or
/// `glibc.malloc.arena_max` tunable wins. Call before any thread is started.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let tuned = std::env::var_os("MALLOC_ARENA_MAX").is_some()
            || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("arena_max"));
        if !tuned {
            // SAFETY: mallopt sets one parameter of the allocator; no other thread exists yet.
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, ARENAS);
            }
        }
    }
}
