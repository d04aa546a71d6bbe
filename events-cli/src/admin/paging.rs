//! Listings read from Redis a page at a time and filtered here (entries by type, dead letters
//! by type and reason): one page of what the filter keeps, and where the next page starts.

use super::Failed;

/// Items shown per page, and read per call.
pub(crate) const PAGE: usize = 25;

/// A page of items and the id the next page starts after (`None` when nothing is left).
#[derive(Debug)]
pub(crate) struct Paged<T> {
    pub(crate) items: Vec<T>,
    pub(crate) next: Option<String>,
}

/// Up to [`PAGE`] items that `wanted` keeps, read with `read` (which reads [`PAGE`] items after
/// the id it is given, or from `start`'s place with `None`) until the page is full, the listing
/// ends or `most_scanned` items were read; `id` names an item.
pub(crate) async fn filtered_page<T, Read, Reading>(
    mut read: Read,
    id: impl Fn(&T) -> &str,
    wanted: impl Fn(&T) -> bool,
    most_scanned: usize,
) -> Result<Paged<T>, Failed>
where
    Read: FnMut(Option<String>) -> Reading,
    Reading: Future<Output = Result<Vec<T>, Failed>>,
{
    let (mut items, mut after, mut scanned) = (Vec::new(), None, 0);
    loop {
        let batch = read(after.take()).await?;
        let full = batch.len() == PAGE;
        let Some(last) = batch.last().map(|item| id(item).to_owned()) else {
            return Ok(Paged { items, next: None });
        };
        scanned += batch.len();
        for item in batch {
            if !wanted(&item) {
                continue;
            }
            if items.len() == PAGE {
                // A kept item beyond the page: the next page starts after the last one shown.
                let next = items.last().map(|item| id(item).to_owned());
                return Ok(Paged { items, next });
            }
            items.push(item);
        }
        if !full {
            return Ok(Paged { items, next: None });
        }
        if scanned >= most_scanned {
            return Ok(Paged {
                items,
                next: Some(last),
            });
        }
        after = Some(last);
    }
}
