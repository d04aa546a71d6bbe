//! Which rows a benchmark measures: `EVENTS_BENCH_ROWS`, such as `1,2` for a profile of those
//! alone, and always row 0, the baseline; every row when it is not set.

/// The rows to measure of `count`.
pub(crate) fn chosen(count: usize) -> Vec<usize> {
    match std::env::var("EVENTS_BENCH_ROWS") {
        Ok(rows) => std::iter::once(0)
            .chain(rows.split(',').filter_map(|row| row.trim().parse().ok()))
            .filter(|row| *row < count)
            .collect(),
        Err(_) => (0..count).collect(),
    }
}
