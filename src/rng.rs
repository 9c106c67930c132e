//! A small deterministic pseudo-random number generator.
//!
//! Initializers and tests need reproducible random numbers without pulling a
//! dependency into the library: the same seed must give the same parameters on
//! every platform and every release. This is xoshiro256** (Blackman & Vigna),
//! seeded through SplitMix64 so that nearby seeds give unrelated streams.

/// xoshiro256** with SplitMix64 seeding; uniform, normal and truncated-normal draws.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    state: [u64; 4],
}

impl Rng {
    /// A generator whose whole stream is fixed by `seed`.
    pub fn new(seed: u64) -> Rng {
        let mut sm = seed;
        let mut next = || {
            sm = sm.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = sm;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        // SplitMix64 never yields four zero words in a row, so the state is valid.
        Rng {
            state: [next(), next(), next(), next()],
        }
    }

    /// The next 64 uniformly distributed bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)` with 53 random bits (every double of the form k * 2^-53).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform_in(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Standard normal (Box–Muller; one draw per call keeps the stream position simple).
    pub fn normal(&mut self) -> f64 {
        // 1 - u is in (0, 1], so the logarithm is finite.
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Normal with the given mean and standard deviation.
    pub fn normal_with(&mut self, mean: f64, stddev: f64) -> f64 {
        mean + stddev * self.normal()
    }

    /// Normal restricted to `mean ± 2 stddev` by rejection, as keras' and JAX's
    /// `truncated_normal` (the bounds are two standard deviations of the *untruncated*
    /// distribution; about 95% of draws are accepted).
    pub fn truncated_normal(&mut self, mean: f64, stddev: f64) -> f64 {
        loop {
            let z = self.normal();
            if z.abs() <= 2.0 {
                return mean + stddev * z;
            }
        }
    }

    /// Uniform integer in `0..n` (`n > 0`; returns 0 for `n == 0`).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        // Lemire's multiply-shift: bias below 2^-64 * n, irrelevant for tests and shuffles.
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
}
