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

/// Runs `f` with this thread's allocations in the staging region (see [`staging`]) when the
/// region is available, else on the heap as usual.
pub fn staged<T>(f: impl FnOnce() -> T) -> T {
    #[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "alloc-trial")))]
    {
        staging::staged(f)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu", not(feature = "alloc-trial"))))]
    {
        f()
    }
}

/// After everything [`staged`] allocated has been dropped: hands the region's pages back to
/// the OS for the next use. False (and nothing released) while any staged allocation lives.
pub fn release_staging() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "alloc-trial")))]
    {
        staging::release()
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu", not(feature = "alloc-trial"))))]
    {
        true
    }
}

/// What the staging region has done in this process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StagingStats {
    /// Blocks ever allocated in the region.
    pub staged_blocks: usize,
    /// Of those, not yet freed.
    pub live_blocks: usize,
    /// Times the region was emptied and its pages handed back.
    pub releases: usize,
}

/// The staging region's counts (all zero where there is no region).
pub fn staging_stats() -> StagingStats {
    #[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "alloc-trial")))]
    {
        staging::stats()
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu", not(feature = "alloc-trial"))))]
    {
        StagingStats::default()
    }
}

/// A staging region for the API source's compaction copy (issue 17, bench/RESULTS.md).
///
/// Why our own allocator layer: the store's objects are decoded on the runtime threads between
/// the much larger full objects they come from. Copying them in the heap while the originals
/// live puts the copies into the decoding's holes, and the originals, freed after, leave holes
/// of their own between the copies (about 2 MB at 10 000 services / 100 000 pods that no trim
/// can return). glibc has no way to put chosen allocations elsewhere, so the compaction copies
/// twice: first into this region, outside the heap; then the originals are dropped, all
/// together, and the second copy is made from the staged one into a heap that is now mostly
/// free, where it packs as densely as a file source's load. The staged copy is then dropped
/// and the region's pages handed back.
///
/// Only a thread inside [`staged`] allocates here (a bump pointer, no reuse: what is staged
/// lives for one copy); any thread may free, which only counts. The region is reserved once
/// (address space only) and never unmapped, so no heap pointer can ever fall within it.
#[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "alloc-trial")))]
mod staging {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// Address space reserved (not memory): enough to stage the store of a very large
    /// cluster; beyond it the rest of a copy is made on the heap, as without the region.
    const SIZE: usize = 1 << 30;

    thread_local! {
        static STAGING: Cell<bool> = const { Cell::new(false) };
    }
    /// Start of the region (0 until first used); fixed once set.
    static BASE: AtomicUsize = AtomicUsize::new(0);
    /// Next free byte.
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    /// Staged allocations not yet freed.
    static LIVE: AtomicUsize = AtomicUsize::new(0);
    /// Blocks ever staged, and releases of the region: what tests and debug logs read.
    static TOTAL: AtomicUsize = AtomicUsize::new(0);
    static RELEASES: AtomicUsize = AtomicUsize::new(0);
    /// One staging at a time (the region is reset between them).
    static USE: Mutex<()> = Mutex::new(());

    pub struct Allocator;

    #[global_allocator]
    static GLOBAL: Allocator = Allocator;

    #[inline]
    fn in_region(p: *mut u8) -> bool {
        let base = BASE.load(Ordering::Relaxed);
        (p as usize).wrapping_sub(base) < SIZE && base != 0
    }

    #[cold]
    fn reserve() -> usize {
        // SAFETY: a new private anonymous mapping; no existing memory is touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return 0;
        }
        let base = p as usize;
        NEXT.store(base, Ordering::Relaxed);
        BASE.store(base, Ordering::Release);
        base
    }

    /// A block of the region, or null when it is full (the caller then uses the heap).
    #[cold]
    fn bump(l: Layout) -> *mut u8 {
        let base = BASE.load(Ordering::Acquire);
        if base == 0 {
            return std::ptr::null_mut();
        }
        let mut cur = NEXT.load(Ordering::Relaxed);
        loop {
            let start = (cur + l.align() - 1) & !(l.align() - 1);
            let end = start + l.size().max(1);
            if end > base + SIZE {
                return std::ptr::null_mut();
            }
            match NEXT.compare_exchange_weak(cur, end, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    LIVE.fetch_add(1, Ordering::Relaxed);
                    TOTAL.fetch_add(1, Ordering::Relaxed);
                    return start as *mut u8;
                }
                Err(now) => cur = now,
            }
        }
    }

    #[inline]
    fn staging() -> bool {
        STAGING.with(|s| s.get())
    }

    // The methods are not inlined into the `__rust_alloc` shims: with LTO those shims are
    // inlined at every allocation site, and this body there (1 MB more code, spread over the
    // hot code) costs resident pages; a call, as to glibc's `__rdl_alloc` before, does not.
    // build/code-order.txt lists them beside the shims.
    // SAFETY: blocks come from glibc or from the reserved region, whose blocks never overlap
    // (bump pointer) and are never handed out again before every one of them was freed.
    unsafe impl GlobalAlloc for Allocator {
        #[inline(never)]
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            if staging() {
                let p = bump(l);
                if !p.is_null() {
                    return p;
                }
            }
            unsafe { System.alloc(l) }
        }

        #[inline(never)]
        unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
            if staging() {
                let p = bump(l);
                if !p.is_null() {
                    // Fresh pages are zero, but a block's bytes are not relied on being so.
                    unsafe { std::ptr::write_bytes(p, 0, l.size()) };
                    return p;
                }
            }
            unsafe { System.alloc_zeroed(l) }
        }

        #[inline(never)]
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            if in_region(p) {
                // Release: what the freeing thread did with the block comes before `release`
                // sees the count at zero and hands the pages back.
                LIVE.fetch_sub(1, Ordering::Release);
            } else {
                unsafe { System.dealloc(p, l) }
            }
        }

        #[inline(never)]
        unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
            if !staging() && !in_region(p) {
                return unsafe { System.realloc(p, l, new) };
            }
            // SAFETY: `new` with `l`'s alignment is a valid layout, as realloc's contract says.
            let n = unsafe { self.alloc(Layout::from_size_align_unchecked(new, l.align())) };
            if !n.is_null() {
                unsafe {
                    std::ptr::copy_nonoverlapping(p, n, l.size().min(new));
                    self.dealloc(p, l);
                }
            }
            n
        }
    }

    /// Resets the flag if `f` panics.
    struct Staging;
    impl Drop for Staging {
        fn drop(&mut self) {
            STAGING.with(|s| s.set(false));
        }
    }

    pub fn staged<T>(f: impl FnOnce() -> T) -> T {
        let _one = USE.lock().unwrap_or_else(|e| e.into_inner());
        if BASE.load(Ordering::Acquire) == 0 && reserve() == 0 {
            return f();
        }
        STAGING.with(|s| s.set(true));
        let _reset = Staging;
        f()
    }

    pub fn release() -> bool {
        let _one = USE.lock().unwrap_or_else(|e| e.into_inner());
        let base = BASE.load(Ordering::Acquire);
        if base == 0 {
            return true;
        }
        if LIVE.load(Ordering::Acquire) != 0 {
            return false;
        }
        let used = NEXT.load(Ordering::Relaxed) - base;
        if used > 0 {
            // SAFETY: no block of the region is live (LIVE is 0); the pages read as zero after.
            unsafe {
                libc::madvise(base as *mut libc::c_void, used, libc::MADV_DONTNEED);
            }
            NEXT.store(base, Ordering::Relaxed);
        }
        RELEASES.fetch_add(1, Ordering::Relaxed);
        true
    }

    pub fn stats() -> super::StagingStats {
        super::StagingStats {
            staged_blocks: TOTAL.load(Ordering::Relaxed),
            live_blocks: LIVE.load(Ordering::Acquire),
            releases: RELEASES.load(Ordering::Relaxed),
        }
    }

    #[cfg(test)]
    pub fn live() -> usize {
        LIVE.load(Ordering::Acquire)
    }

    #[cfg(test)]
    pub fn contains(p: *const u8) -> bool {
        in_region(p as *mut u8)
    }

    #[cfg(test)]
    pub static TEST_LOCK: Mutex<()> = Mutex::new(());
}

#[cfg(all(
    test,
    target_os = "linux",
    target_env = "gnu",
    not(feature = "alloc-trial")
))]
mod tests {
    use super::staging;

    #[test]
    fn staged_blocks_live_outside_the_heap_and_the_region_is_released_when_all_are_freed() {
        let _one = staging::TEST_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let before = staging::live();
        let heap = String::from("on the heap");
        let (staged, grown) = super::staged(|| {
            let mut grown = Vec::new();
            for i in 0..1000u32 {
                grown.push(i); // reallocations inside the region
            }
            (String::from("a staged string"), grown)
        });
        assert!(!staging::contains(heap.as_ptr()));
        assert!(staging::contains(staged.as_ptr()));
        assert!(staging::contains(grown.as_ptr().cast()));
        assert_eq!(grown.iter().sum::<u32>(), 999 * 1000 / 2);
        // Outside `staged` a thread allocates on the heap again.
        let after = String::from("not staged");
        assert!(!staging::contains(after.as_ptr()));
        assert_eq!(staging::live(), before + 2);
        assert!(
            !super::release_staging(),
            "released while staged blocks live"
        );
        let copy = staged.clone(); // a heap copy of a staged block
        assert!(!staging::contains(copy.as_ptr()));
        drop(staged);
        drop(grown);
        assert_eq!(staging::live(), before);
        assert!(super::release_staging());
        assert_eq!(copy, "a staged string");
    }
}
