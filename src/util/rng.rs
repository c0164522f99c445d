//! The seeded hash behind every seed and run id, so that a run replays
//! exactly from its one seed.

/// A fast, well-mixed 64-bit hash (Steele et al.), for seeds and run ids.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
