//! A figure over a benchmark's rounds: its median, least and most.

/// The median, least and most of one figure over the rounds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spread {
    pub(crate) median: f64,
    pub(crate) least: f64,
    pub(crate) most: f64,
}

impl Spread {
    /// The spread of `values`, one per round (at least one).
    pub(crate) fn of(values: &[f64]) -> Self {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        Self {
            median: sorted[sorted.len() / 2],
            least: sorted[0],
            most: sorted[sorted.len() - 1],
        }
    }

    /// "median (least..most)", each with `decimals` decimals, the median `width` wide.
    pub(crate) fn show(&self, width: usize, decimals: usize) -> String {
        format!(
            "{:>width$.decimals$} ({:.decimals$}..{:.decimals$})",
            self.median, self.least, self.most
        )
    }
}
