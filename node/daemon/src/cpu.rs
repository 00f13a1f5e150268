//! CPU placement: executors are pinned to CPUs from the process's affinity mask, so `taskset`
//! and systemd's `CPUAffinity=` are obeyed (glommio's own placement reads the online CPUs).

/// The CPUs this process may run on, ascending.
pub fn affinity_mask() -> Vec<usize> {
    // SAFETY: `set` is a plain bitmask sized by the type; sched_getaffinity writes at most
    // size_of::<cpu_set_t>() bytes into it, and CPU_ISSET only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![0];
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|c| libc::CPU_ISSET(*c, &set))
            .collect()
    }
}

/// The CPU for each executor: `explicit` if given, else the first `cores` CPUs of the mask
/// (all of them when `cores` is 0). With more executors than CPUs they share round-robin.
pub fn plan(cores: usize, explicit: &[usize], mask: &[usize]) -> Vec<usize> {
    let pool: &[usize] = if explicit.is_empty() { mask } else { explicit };
    let pool = if pool.is_empty() { &[0][..] } else { pool };
    let n = if cores == 0 { pool.len() } else { cores };
    (0..n).map(|i| pool[i % pool.len()]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_uses_mask_and_explicit_lists() {
        assert_eq!(plan(0, &[], &[2, 5]), vec![2, 5]);
        assert_eq!(plan(1, &[], &[2, 5]), vec![2]);
        assert_eq!(plan(3, &[], &[2, 5]), vec![2, 5, 2]);
        assert_eq!(plan(0, &[7], &[2, 5]), vec![7]);
        assert!(!affinity_mask().is_empty());
    }
}
