//! Short, stable identifiers derived from text: the same input gives the same id on every
//! machine and Rust release (std's hasher promises neither), for names osprov must find again
//! after a restart (a wave's label, a reprovisioned disk's volume name).

/// FNV-1a (64-bit) of `input`, folded to eight hex digits.
pub fn short_hash(input: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in input.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:08x}", h as u32)
}

#[cfg(test)]
mod tests {
    #[test]
    fn stable_and_distinct() {
        // Fixed vectors: a change here renames existing waves and volumes.
        assert_eq!(super::short_hash(""), "84222325");
        assert_eq!(super::short_hash("a"), "8601ec8c");
        assert_ne!(super::short_hash("u1/1/1"), super::short_hash("u1/1/2"));
    }
}
