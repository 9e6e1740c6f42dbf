//! The paired check: two services timed alternately in one process, so that a slow patch of the
//! machine falls on both sides of a ratio instead of one.
//!
//! A file's checks run interleaved: block after block of about `BLOCK` each, one check after the
//! other. Each block alternates `a` and `b` round by round (the order swapped every round) and
//! keeps the median of its rounds' `a` / `b` time ratios. A check is summed up over its block
//! medians: their median, quartiles and a distribution-free confidence interval of the median.
//! Block medians, not the rounds, are the sample because rounds next to each other share the
//! machine's state: thousands of rounds from one noisy second would give a narrow interval around
//! whatever that second did. Interleaving spreads each check's blocks over the whole paired
//! phase, so a few seconds of interference reach a few of its blocks, not all of them.
//!
//! Every check runs `LOOK` blocks. A check with a target that still lies inside its interval runs
//! `LOOK` more, up to `LOOKS` times in all: more blocks where a run would otherwise be undecided,
//! none where it is not. Looking at the interval more than once makes a wrong decision more
//! likely, so each look uses a 97.5 % interval (`TAIL` on each side): over the four looks, a
//! check whose true median lies exactly at its target comes out decided, one way or the other,
//! in about 5 % of runs (`check_statistics` simulates it; with 95 % intervals a scratch
//! simulation gave 7 %). The intervals assume block medians independent of each other, which
//! interleaving makes closer to true; the A/A checks show how far it holds.

use std::time::{Duration, Instant};

/// How long one block of rounds runs.
const BLOCK: Duration = Duration::from_millis(250);
/// Rounds in a block at least, however long they take.
const MIN_ROUNDS: usize = 5;
/// Blocks between two looks at a check's interval; every check runs this many.
const LOOK: usize = 16;
/// Looks at most: a check with a target runs at most `LOOK * LOOKS` blocks.
const LOOKS: usize = 4;
/// The probability each side of the interval leaves out: a 97.5 % interval of the median.
const TAIL: f64 = 0.0125;

/// The paired checks of one benchmark file; [`Paired::run`] runs them interleaved and prints one
/// line per check for `scripts/bench.sh`:
///
/// ```text
/// PAIRED <group>/<a>:<b> <median> <rounds> q1=<q1> q3=<q3> ci=<low>..<high> blocks=<blocks>
/// ```
///
/// all time ratios `a` / `b`, followed by a `PAIRED_BLOCKS <group>/<a>:<b> <median>...` line
/// with every block's median, in the order they ran.
#[derive(Default)]
pub(crate) struct Paired<'a> {
    checks: Vec<Check<'a>>,
}

struct Check<'a> {
    label: String,
    target: Option<f64>,
    a: Box<dyn FnMut() -> f64 + 'a>,
    b: Box<dyn FnMut() -> f64 + 'a>,
    blocks: Vec<f64>,
    rounds: usize,
}

impl<'a> Paired<'a> {
    /// Adds a check of `a` against `b`, each call returning the seconds it measured. `target` is
    /// the limit a target puts on the time ratio `a` / `b` (for a throughput target `t`, `1 / t`);
    /// while it lies inside the check's interval the check runs more blocks.
    pub(crate) fn check(
        &mut self,
        label: impl Into<String>,
        target: Option<f64>,
        a: impl FnMut() -> f64 + 'a,
        b: impl FnMut() -> f64 + 'a,
    ) {
        self.checks.push(Check {
            label: label.into(),
            target,
            a: Box::new(a),
            b: Box::new(b),
            blocks: Vec::new(),
            rounds: 0,
        });
    }

    /// Runs the checks interleaved and prints their results.
    pub(crate) fn run(mut self) {
        for look in 0..LOOKS {
            let due: Vec<usize> = (0..self.checks.len())
                .filter(|&i| look == 0 || self.checks[i].undecided())
                .collect();
            if due.is_empty() {
                break;
            }
            for pass in 0..LOOK {
                // Each check follows a different one from pass to pass.
                for k in 0..due.len() {
                    self.checks[due[(k + pass) % due.len()]].block();
                }
            }
        }
        for check in &self.checks {
            let summary = Summary::of(&check.blocks);
            println!(
                "PAIRED {} {:.4} {} q1={:.4} q3={:.4} ci={:.4}..{:.4} blocks={}",
                check.label,
                summary.median,
                check.rounds,
                summary.q1,
                summary.q3,
                summary.ci.0,
                summary.ci.1,
                check.blocks.len(),
            );
            let blocks: Vec<String> = check.blocks.iter().map(|r| format!("{r:.4}")).collect();
            println!("PAIRED_BLOCKS {} {}", check.label, blocks.join(" "));
        }
    }
}

impl Check<'_> {
    /// Whether the check has a target that still lies inside its interval.
    fn undecided(&self) -> bool {
        self.target.is_some_and(|target| {
            let (low, high) = Summary::of(&self.blocks).ci;
            low <= target && target < high
        })
    }

    /// One block: a round of each side untimed (the other check's services ran just before),
    /// then rounds until `BLOCK` has passed.
    fn block(&mut self) {
        (self.a)();
        (self.b)();
        let mut ratios = Vec::new();
        let end = Instant::now() + BLOCK;
        while Instant::now() < end || ratios.len() < MIN_ROUNDS {
            let (ta, tb) = if (self.rounds + ratios.len()) % 2 == 0 {
                let ta = (self.a)();
                (ta, (self.b)())
            } else {
                let tb = (self.b)();
                ((self.a)(), tb)
            };
            ratios.push(ta / tb);
        }
        self.rounds += ratios.len();
        self.blocks.push(Summary::of(&ratios).median);
    }
}

/// Median, quartiles and a 97.5 % confidence interval of the median, from order statistics.
#[derive(Debug, PartialEq)]
pub(crate) struct Summary {
    pub(crate) median: f64,
    pub(crate) q1: f64,
    pub(crate) q3: f64,
    pub(crate) ci: (f64, f64),
}

impl Summary {
    /// # Panics
    ///
    /// If `values` is empty.
    pub(crate) fn of(values: &[f64]) -> Summary {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let (low, high) = median_ci_ranks(sorted.len());
        Summary {
            median: quantile(&sorted, 0.5),
            q1: quantile(&sorted, 0.25),
            q3: quantile(&sorted, 0.75),
            ci: (sorted[low], sorted[high]),
        }
    }
}

/// The `p`-quantile of sorted values, interpolated between the two nearest ranks.
fn quantile(sorted: &[f64], p: f64) -> f64 {
    let at = p * (sorted.len() - 1) as f64;
    let (below, above) = (at.floor() as usize, at.ceil() as usize);
    sorted[below] + (sorted[above] - sorted[below]) * (at - below as f64)
}

/// The (0-based) ranks of a distribution-free confidence interval of the median of `n` values:
/// the `k`-th smallest and the `k`-th largest, `k` the largest with P(Binomial(n, ½) < k) ≤
/// `TAIL`, so the interval covers the median with at least 97.5 % probability (for large `n`,
/// the ranks n/2 ∓ 1.12·√n). Below 7 values no such `k` exists and the interval is the whole
/// range.
pub(crate) fn median_ci_ranks(n: usize) -> (usize, usize) {
    assert!(n > 0, "no values");
    // P(X = i) for X ~ Binomial(n, ½), in logs so that large `n` does not underflow at i = 0.
    let mut log_p = -(n as f64) * std::f64::consts::LN_2;
    let mut below = 0.0;
    let mut k = 0;
    while k < n / 2 {
        below += log_p.exp();
        if below > TAIL {
            break;
        }
        log_p += ((n - k) as f64 / (k + 1) as f64).ln();
        k += 1;
    }
    let k = k.max(1);
    (k - 1, n - k)
}

/// Checks the statistics the paired checks print. Runs in every mode of the request_path
/// benchmark, so `cargo bench -- --test` (in `scripts/test.sh`) runs it.
///
/// # Panics
///
/// If a statistic is wrong.
pub(crate) fn check_statistics() {
    // Exact binomial tails, X ~ Binomial(n, ½): for 16 values the 4th smallest and 4th largest
    // (P(X < 4) = 1.06 %, P(X < 5) = 3.84 %), for 32 the 10th (P(X < 10) = 1.00 %,
    // P(X < 11) = 2.51 %), for 7 the extremes (P(X < 1) = 0.78 %), for fewer the whole range.
    assert_eq!(median_ci_ranks(16), (3, 12));
    assert_eq!(median_ci_ranks(32), (9, 22));
    assert_eq!(median_ci_ranks(7), (0, 6));
    assert_eq!(median_ci_ranks(6), (0, 5));
    assert_eq!(median_ci_ranks(1), (0, 0));
    // Large n: the normal approximation n/2 ∓ 1.12·√n.
    assert_eq!(median_ci_ranks(100), (38, 61));
    for n in [48, 64, 1_000, 100_000] {
        let (low, high) = median_ci_ranks(n);
        let half = 1.12 * (n as f64).sqrt();
        assert!(
            (low as f64 + 1.0 - (n as f64 / 2.0 - half)).abs() <= 1.0,
            "n = {n}: {low}"
        );
        assert_eq!(low + high, n - 1, "n = {n}: symmetric");
    }

    // 1..=16 shuffled: median 8.5, quartiles 4.75 and 12.25, interval from the 4th to the 13th.
    let values: Vec<f64> = [7, 3, 16, 1, 12, 9, 5, 14, 2, 11, 8, 15, 4, 10, 6, 13]
        .iter()
        .map(|&v| f64::from(v))
        .collect();
    assert_eq!(
        Summary::of(&values),
        Summary {
            median: 8.5,
            q1: 4.75,
            q3: 12.25,
            ci: (4.0, 13.0),
        }
    );
    let one = Summary::of(&[1.5]);
    assert_eq!(
        (one.median, one.q1, one.q3, one.ci),
        (1.5, 1.5, 1.5, (1.5, 1.5))
    );

    // Extension: a target inside the interval keeps a check going; outside it, or none, stops it.
    let check = |target| Check {
        label: String::new(),
        target,
        a: Box::new(|| 1.0),
        b: Box::new(|| 1.0),
        blocks: values.clone(),
        rounds: 0,
    };
    assert!(check(Some(8.0)).undecided());
    assert!(!check(Some(3.5)).undecided());
    assert!(!check(Some(13.0)).undecided());
    assert!(!check(None).undecided());

    // The looks of `Paired::run` on block medians whose median is the target: decided in about
    // 5 % of runs. The interval of the median is distribution-free, so uniform values stand for
    // any; xorshift64 keeps the check deterministic.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1_u64 << 53) as f64
    };
    let runs = 20_000;
    let mut decided = 0;
    for _ in 0..runs {
        let mut check = check(Some(0.5));
        check.blocks.clear();
        for _ in 0..LOOKS {
            check.blocks.extend((0..LOOK).map(|_| uniform()));
            if !check.undecided() {
                decided += 1;
                break;
            }
        }
    }
    let rate = f64::from(decided) / f64::from(runs);
    assert!(
        (0.04..0.06).contains(&rate),
        "decided at the target in {rate} of runs"
    );
}
