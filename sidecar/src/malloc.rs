//! glibc's allocator for a sidecar on one thread: one arena, not one per
//! thread.
//!
//! glibc gives each thread that allocates an arena of its own (up to eight
//! per core), and what an arena has touched stays resident. A sidecar's
//! request path runs on one thread (`--workers 1`); its other threads (the
//! OTLP exporter, tokio's blocking pool) allocate seldom, and their arena
//! kept 0.3–0.5 MB more resident at the peak of a traced sidecar
//! (docs/performance.md, "One malloc arena"). Sharing the main arena costs
//! them its lock, which every thread takes anyway once a second thread
//! exists; the request path contends for it only while one of them
//! allocates. With `--workers N` each worker would wait on the others, so
//! it is left alone, and so is a limit the operator set.

/// Limits glibc to one arena unless the environment sets a limit of its
/// own; whether it did. Call before any thread is spawned.
#[allow(unsafe_code)]
pub fn one_arena() -> bool {
    if !wanted_here() {
        return false;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt takes no pointers, and a limit only bounds the
        // arenas made for threads from here on.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// [`wanted`], for this process's environment.
fn wanted_here() -> bool {
    let tunables = std::env::var("GLIBC_TUNABLES").ok();
    wanted(
        std::env::var_os("MALLOC_ARENA_MAX").is_some(),
        tunables.as_deref(),
    )
}

/// Whether to set the limit: not when `MALLOC_ARENA_MAX` or the glibc
/// tunable `glibc.malloc.arena_max` already does.
fn wanted(arena_max_set: bool, tunables: Option<&str>) -> bool {
    !arena_max_set
        && !tunables.is_some_and(|t| {
            t.split(':')
                .any(|kv| kv.split('=').next() == Some("glibc.malloc.arena_max"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_from_the_environment_stands() {
        assert!(wanted(false, None));
        assert!(wanted(false, Some("glibc.malloc.tcache_count=100")));
        assert!(!wanted(true, None));
        assert!(!wanted(
            false,
            Some("glibc.malloc.tcache_count=100:glibc.malloc.arena_max=4")
        ));
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_takes_the_limit() {
        // Whether the environment of the test run sets one or not, the
        // answer must follow it; glibc accepts the option (mallopt 1).
        let set_outside = !wanted_here();
        assert_eq!(one_arena(), !set_outside);
    }
}
